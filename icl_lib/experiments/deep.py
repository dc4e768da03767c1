"""The deep residual stacks of the "Beyond the paper" chapters: one configuration, two kinds of stack.

* :func:`deep_regression_config`: the single definition of the trained pre-LN
  :class:`icl_lib.Transformer` that chapters 7 and 8 both train (each chapter runs on its own, so
  each retrains it from this configuration with :func:`icl_lib.experiments.training.train_block`);
* :func:`encoder_stack`: a stack of PyTorch's own ``nn.TransformerEncoderLayer`` blocks, pre-LN or
  post-LN, every layer independently initialised, in eval mode.

Why these sizes (d = 2, as in Dherin et al., 2025): width 16 with 2 heads gives heads of width 8
(the tokens ``(x, y)`` have only 3 coordinates, so an embedding lifts them into a wider residual
stream); depth 3 is the smallest stack with a block whose input *and* output are both inside the
network; ``hidden = 4 × width`` is the usual MLP ratio; N = 20 context examples (ten times ``d``)
make the task easy once learned; 1000 Adam steps of 64 fresh tasks with a cosine decay from 3e-3
bring the validation loss to about 2% of the zero predictor's in well under a minute on one CPU
thread.
"""

from __future__ import annotations

import torch
from torch import nn

from .training import TrainingConfig, _positive_int

__all__ = ["deep_regression_config", "encoder_stack"]


def deep_regression_config(seed: int = 0) -> TrainingConfig:
    """The configuration of the trained deep stack: 3 pre-LN residual blocks of width 16.

    Args:
        seed: seeds initialisation, training and validation tasks.

    Returns:
        a :class:`icl_lib.experiments.training.TrainingConfig` with ``depth=3, width=16, hidden=64, n_heads=2``,
        ``residual=True, layer_norm=True``, ``d=2, N=20``, ``1000`` steps of batch ``64``, Adam with
        a cosine decay from ``lr=3e-3``; validation every 100 steps on 500 tasks.
    """
    return TrainingConfig(
        dim=2,
        n_context=20,
        hidden=64,
        n_heads=2,
        activation="relu",
        residual=True,
        layer_norm=True,
        steps=1000,
        batch=64,
        lr=3e-3,
        schedule="cosine",
        eval_every=100,
        n_val=500,
        seed=seed,
        depth=3,
        width=16,
    )


def encoder_stack(
    width: int,
    depth: int,
    hidden: int,
    n_heads: int,
    *,
    norm_first: bool,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> nn.TransformerEncoder:
    """A stack of ``depth`` PyTorch ``nn.TransformerEncoderLayer`` blocks, untrained, in eval mode.

    ``nn.TransformerEncoder`` deep-copies one layer ``depth`` times, which would give every block
    the same weights; here each block is initialised on its own (seeded, global RNG untouched).
    A pre-LN stack (``norm_first=True``) ends with a LayerNorm, as pre-LN networks do; a post-LN
    stack already ends with one inside its last block.

    Args:
        width: ``d_model``; hidden: ``dim_feedforward``; n_heads: must divide ``width``.
        norm_first: pre-LN (``True``) or PyTorch's default post-LN (``False``).
        seed: seeds the initialisation.
        dtype: ``torch.float32`` or ``torch.float64``.

    Returns:
        ``nn.TransformerEncoder(..., enable_nested_tensor=False)`` in eval mode, ``batch_first``,
        ReLU MLPs. Shapes: ``(B, T, width) -> (B, T, width)``, no attention mask.
    """
    for name, value in (("width", width), ("depth", depth), ("hidden", hidden), ("n_heads", n_heads)):
        _positive_int(value, name)
    _positive_int(seed, "seed", minimum=0)
    if width % n_heads:
        raise ValueError(f"n_heads={n_heads} must divide width={width}")
    if not isinstance(norm_first, bool):
        raise TypeError(f"norm_first must be a bool, got {type(norm_first).__name__}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")

    def layer() -> nn.TransformerEncoderLayer:
        return nn.TransformerEncoderLayer(
            width, n_heads, hidden, dropout=0.0, activation="relu", batch_first=True, norm_first=norm_first
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        stack = nn.TransformerEncoder(
            layer(), depth, norm=nn.LayerNorm(width) if norm_first else None, enable_nested_tensor=False
        )
        stack.layers = nn.ModuleList(layer() for _ in range(depth))
    return stack.to(dtype).eval()
