"""icl_lib: the library behind the book *Learning without training, executed*.

A transformer block turns its context into an exact rank-1 update of its first MLP weight
(Dherin et al., 2025). This package builds the blocks, computes those updates and their
token-by-token dynamics, checks the proofs symbolically, and runs the book's experiments.

Subpackages, one layer each:

* ``core``: what the theorem computes, for any model: ``update`` (the factored patch),
  ``architecture`` (the interface a model is seen through), ``implicit`` (updates and patched
  runs), ``trajectory`` (token-by-token dynamics), ``analysis`` (gaps, ranks, cosines),
  ``metrics``, ``checks`` (input validation), ``seeding``;
* ``architectures``: the models it runs: ``contextual`` and ``blocks`` (the book's blocks),
  ``stacks`` (their views, PyTorch's encoder layers, stacks), ``families`` and ``causal_lm``
  (``transformers`` causal LMs, one data record per family, :func:`register_family`),
  ``pretrained`` (SmolLM2 and Gemma 3 270M from pip);
* ``experiments``: the book's tasks, training, baselines, fine-tuning, memory, compression,
  few-shot prompts, thought patches, function vectors, symbolic proofs and plotting helpers;
* ``benchmarks``: ``python -m icl_lib.benchmarks``, outside the core.
"""

from . import architectures  # registers the architectures with the core
from .architectures import families
from .architectures.blocks import MLP, Block, Transformer
from .architectures.causal_lm import Continuation, greedy_continuation, patch_contributions
from .architectures.contextual import LinearAttention, RecurrentLayer, SelfAttention
from .architectures.lsa import LinearSelfAttention, gd_linear_attention
from .architectures.families import DecoderFamily, norms_in_model_dtype, register_family, supported_families
from .architectures.pretrained import PRETRAINED, PretrainedModel, load_gemma3_270m, load_pretrained, load_smollm2
from .core.analysis import (
    block_gaps,
    mean_sem,
    network_gap,
    patch_cosines,
    position_gaps,
    singular_value_ratio,
    summed_update,
    update_cosines,
)
from .core.implicit import (
    block_inputs,
    forward_with_update,
    forward_with_updates,
    implicit_update,
    network_update,
)
from .core.metrics import alignment_factors, frobenius_alignment, relative_error
from .core.seeding import seed_everything
from .core.trajectory import ImplicitTrajectory, NetworkTrajectory, implicit_trajectory
from .core.update import ImplicitUpdate
from .experiments import fewshot, function_vectors, lm_attribution, lm_compression, plotting, proofs, thought_patches
from .experiments.glue import glue
from .experiments.gd_comparison import (
    GDComparison,
    compare_with_gd,
    gd_step,
    gd_weight_patch,
    one_step_expected_loss,
    optimal_one_step_lr,
    patch_errors,
)
from .experiments.seed_study import online_protocol_summary
from .experiments.tables import format_table, print_table
from .experiments.baselines import least_squares_expected_loss, least_squares_predict, zero_predictor_loss
from .experiments.compression import (
    BinnedMean,
    StaticPatch,
    apply_static_patch,
    apply_weight_patch,
    binned_mean,
    fit_static_patch,
    prompts_with_queries,
    transport_update,
)
from .experiments.deep import deep_regression_config, encoder_stack
from .experiments.evaluation import ContextCurve, context_length_curve, predictions_over_queries
from .experiments.fewshot import TASKS, answer_accuracy, task_prompts
from .experiments.generation import GENERATION_PROMPTS, GenerationComparison, compare_generation, left_padded
from .experiments.finetune import (
    DistillationResult,
    FineTuneResult,
    OnlineFineTuneResult,
    distill_first_weight,
    finetune_first_weight,
    finetune_online,
)
from .experiments.lm_attribution import (
    Ablation,
    ReferenceUpdate,
    ablation_scores,
    bootstrap_interval,
    PartEffects,
    alignment_by_kind,
    format_proportion,
    part_effects,
    static_patch_errors,
    reference_update,
    wilson_interval,
)
from .experiments.lm_compression import apply_lm_static_patch, fit_lm_static_patch, next_token_kl, transported_logits
from .experiments.memory import PowerLawFit, bootstrap_exponents, power_law_fit, token_influence
from .experiments.tasks import RegressionBatch, read_prediction, regression_loss, regression_tokens, sample_regression
from .experiments.training import TrainingConfig, TrainingHistory, build_block, predict, predict_implicit, train_block
# --- chapters 1-5 ---
from .experiments.seeds import SeedSpread, over_seeds

__all__ = [
    # layers, blocks, stacks
    "SelfAttention",
    "LinearAttention",
    "RecurrentLayer",
    "MLP",
    "Block",
    "Transformer",
    # the theorem: exact implicit updates
    "ImplicitUpdate",
    "implicit_update",
    "forward_with_update",
    "network_update",
    "forward_with_updates",
    "block_inputs",
    # the implicit dynamics
    "ImplicitTrajectory",
    "NetworkTrajectory",
    "implicit_trajectory",
    # real language models (transformers): the families, the pretrained model
    "families",
    "DecoderFamily",
    "register_family",
    "supported_families",
    "norms_in_model_dtype",
    "PRETRAINED",
    "PretrainedModel",
    "load_pretrained",
    "load_smollm2",
    "load_gemma3_270m",
    "patch_contributions",
    "Continuation",
    "greedy_continuation",
    "GENERATION_PROMPTS",
    "GenerationComparison",
    "compare_generation",
    "left_padded",
    "fewshot",
    "TASKS",
    "task_prompts",
    "answer_accuracy",
    "lm_compression",
    "fit_lm_static_patch",
    "apply_lm_static_patch",
    "transported_logits",
    "next_token_kl",
    "thought_patches",
    "function_vectors",
    "lm_attribution",
    "reference_update",
    "ReferenceUpdate",
    "part_effects",
    "PartEffects",
    "static_patch_errors",
    "alignment_by_kind",
    "ablation_scores",
    "Ablation",
    "wilson_interval",
    "format_proportion",
    "bootstrap_interval",
    # symbolic proofs
    "proofs",
    # the book's plotting helpers, and numbers glued into the prose
    "plotting",
    "glue",
    "format_table",
    "print_table",
    # reproducibility
    "seed_everything",
    # the regression task, training, baselines, fine-tuning
    "RegressionBatch",
    "sample_regression",
    "regression_tokens",
    "read_prediction",
    "regression_loss",
    "TrainingConfig",
    "TrainingHistory",
    "build_block",
    "train_block",
    "predict",
    "predict_implicit",
    "predictions_over_queries",
    "ContextCurve",
    "context_length_curve",
    "least_squares_predict",
    "least_squares_expected_loss",
    "zero_predictor_loss",
    "FineTuneResult",
    "finetune_first_weight",
    "OnlineFineTuneResult",
    "finetune_online",
    "DistillationResult",
    "distill_first_weight",
    "frobenius_alignment",
    "alignment_factors",
    "relative_error",
    # measurements of the later chapters
    "mean_sem",
    "block_gaps",
    "network_gap",
    "position_gaps",
    "summed_update",
    "singular_value_ratio",
    "update_cosines",
    "patch_cosines",
    "deep_regression_config",
    "encoder_stack",
    "PowerLawFit",
    "power_law_fit",
    "bootstrap_exponents",
    "token_influence",
    "prompts_with_queries",
    "transport_update",
    "StaticPatch",
    "fit_static_patch",
    "apply_static_patch",
    "apply_weight_patch",
    "BinnedMean",
    "binned_mean",
    # --- chapters 1-5 ---
    "SeedSpread",
    "over_seeds",
    # chapter 9: linear self-attention that takes one gradient step (von Oswald et al.)
    "LinearSelfAttention",
    "gd_linear_attention",
    "gd_step",
    "gd_weight_patch",
    "GDComparison",
    "compare_with_gd",
    "patch_errors",
    "one_step_expected_loss",
    "optimal_one_step_lr",
    # chapter 6: the headline statistics of one trained block, for the seed study
    "online_protocol_summary",
]
