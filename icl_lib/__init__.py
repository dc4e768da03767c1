"""icl_lib: the library behind the book *Learning without training, executed*.

A transformer block turns its context into an exact rank-1 update of its first MLP weight
(Dherin et al., 2025). This package builds the blocks, computes those updates and their
token-by-token dynamics, checks the proofs symbolically, and runs the book's experiments.

Modules, one job each:

* ``contextual``, ``blocks``: contextual layers, blocks ``T_W = M_W ∘ A`` and stacks;
* ``views``, ``checks``: how a block is split at ``W``; input validation;
* ``decoders``, ``language_models``, ``pretrained``: the same for ``transformers`` causal LMs
  (Llama family, Gemma 2/3, GPT-2) and the pretrained SmolLM2 shipped by pip;
* ``fewshot``, ``lm_compression``: few-shot tasks for a real model, static patches on it;
* ``implicit``, ``trajectory``: exact implicit updates, whole-network patches, token-by-token dynamics;
* ``proofs``: sympy checks of every proof step;
* ``plotting``: the book's plotting helpers (the schematics of the blocks);
* ``tasks``, ``training``, ``evaluation``, ``baselines``, ``finetune``, ``metrics``: the experiments;
* ``analysis``, ``deep``, ``memory``, ``compression``: measurements of the later chapters;
* ``seeding``: reproducibility; ``bench``: the benchmark (``python -m icl_lib.bench``).
"""

from . import decoders, fewshot, lm_compression, plotting, proofs
from .analysis import (
    block_gaps,
    mean_sem,
    network_gap,
    position_gaps,
    singular_value_ratio,
    summed_update,
    update_cosines,
    patch_cosines,
)
from .baselines import least_squares_expected_loss, least_squares_predict, zero_predictor_loss
from .blocks import MLP, Block, Transformer
from .compression import (
    BinnedMean,
    StaticPatch,
    apply_static_patch,
    apply_weight_patch,
    binned_mean,
    fit_static_patch,
    prompts_with_queries,
    transport_update,
)
from .contextual import LinearAttention, RecurrentLayer, SelfAttention
from .deep import deep_regression_config, encoder_stack
from .evaluation import ContextCurve, context_length_curve, predictions_over_queries
from .finetune import (
    DistillationResult,
    FineTuneResult,
    OnlineFineTuneResult,
    distill_first_weight,
    finetune_first_weight,
    finetune_online,
)
from .implicit import (
    ImplicitUpdate,
    block_inputs,
    forward_with_update,
    forward_with_updates,
    implicit_update,
    network_update,
)
from .memory import PowerLawFit, bootstrap_exponents, power_law_fit, token_influence
from .metrics import alignment_factors, frobenius_alignment, relative_error
from .seeding import seed_everything
from .tasks import RegressionBatch, read_prediction, regression_loss, regression_tokens, sample_regression
from .training import TrainingConfig, TrainingHistory, build_block, predict, predict_implicit, train_block
from .fewshot import TASKS, answer_accuracy, task_prompts
from .language_models import greedy_continuation, patch_contributions
from .lm_compression import apply_lm_static_patch, fit_lm_static_patch, next_token_kl, transported_logits
from .pretrained import load_smollm2
from .trajectory import ImplicitTrajectory, NetworkTrajectory, implicit_trajectory

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
    # real language models (transformers): the adapters, the pretrained model
    "decoders",
    "load_smollm2",
    "patch_contributions",
    "greedy_continuation",
    "fewshot",
    "TASKS",
    "task_prompts",
    "answer_accuracy",
    "lm_compression",
    "fit_lm_static_patch",
    "apply_lm_static_patch",
    "transported_logits",
    "next_token_kl",
    # symbolic proofs
    "proofs",
    # the book's plotting helpers
    "plotting",
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
]
