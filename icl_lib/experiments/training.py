"""Training a contextual block on in-context linear regression, deterministically.

Protocol (stated once here, used by every chapter): every optimiser step draws a *fresh*
minibatch of tasks (no fixed pool, so the block cannot memorise tasks), the loss is
``½ · mean (ŷ − y_q)²`` at the query, the optimiser is Adam with a cosine decay of the learning
rate to zero (or a constant rate). A fixed validation set is scored at regular intervals twice:

* *with the context*: the block run on the whole prompt;
* *without the context*: the block run on the query alone with ``W + ΔW``, where ``ΔW`` is the
  exact implicit update of :func:`icl_lib.implicit_update` (Dherin et al., 2025).

All randomness (initialisation, training tasks, validation tasks) comes from generators seeded
from ``config.seed``; the global random state is left as it was. With a fixed thread count
(:func:`icl_lib.seed_everything`) two runs on one machine give bit-identical weights.

On another CPU they need not: the instruction set (AVX2, AVX-512, AMX) changes how matrix
products and reductions round, and thousands of optimiser steps carry a float32 difference of
one rounding into the third digit of the trained losses. ``TrainingConfig(dtype=torch.float64)``
trains in double precision, where the same differences stay near 1e-12; the chapters that print
trained results to three digits without float32 being their subject train that way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..architectures.blocks import ACTIVATIONS, CONTEXTUAL_LAYERS, Block, Transformer
from ..core.checks import module_dtype_device
from ..core.implicit import forward_with_update, forward_with_updates, implicit_update, network_update
from ..core.seeding import single_thread
from .tasks import read_prediction, regression_loss, sample_regression

__all__ = ["TrainingConfig", "TrainingHistory", "build_block", "train_block", "predict", "predict_implicit"]


def _positive_int(value: object, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of one training run (defaults: the book's Fig. 2 block).

    Attributes:
        dim: input dimension ``d``; tokens have width ``d + 1``.
        n_context: context examples ``N`` per training prompt.
        hidden: MLP width ``H`` (rows of ``W``).
        n_heads: attention heads; must divide ``d + 1``.
        activation: MLP nonlinearity.
        residual, layer_norm: block variant (the paper's Fig. 2 block has neither).
        steps: optimiser steps; batch: tasks per step.
        lr: Adam's (peak) learning rate; schedule: ``"cosine"`` (decay to 0) or ``"constant"``.
        eval_every: validation interval in steps; n_val: validation tasks.
        seed: seeds initialisation, training tasks and validation tasks.
        contextual: the block's contextual layer, ``"softmax"`` (default), ``"linear"`` or
            ``"recurrent"`` (see :class:`icl_lib.Block`).
        depth: ``None`` (default) for one :class:`icl_lib.Block` of width ``d + 1``; an int for an
            :class:`icl_lib.Transformer` stack of ``depth`` blocks of width ``width`` (each block with
            ``hidden``, ``n_heads``, ``activation``, ``residual``, ``layer_norm``, ``contextual`` as
            above), a linear embedding of the ``d + 1``-wide tokens and a read-out back to ``d + 1``
            coordinates, so the prediction is again the last coordinate at the query.
        width: the stack's token width (``n_heads`` must divide it); set exactly when ``depth`` is.
        dtype: ``torch.float32`` (default) or ``torch.float64``: the precision of the weights, the
            tasks and every training step. Whatever the dtype, the initial weights are drawn in
            float32 and the tasks in float64 (:func:`icl_lib.sample_regression`), then cast: a
            float64 run starts from the same block and sees the same tasks as the float32 one.
    """

    dim: int = 2
    n_context: int = 20
    hidden: int = 64
    n_heads: int = 3
    activation: str = "relu"
    residual: bool = False
    layer_norm: bool = False
    steps: int = 3000
    batch: int = 64
    lr: float = 3e-3
    schedule: Literal["cosine", "constant"] = "cosine"
    eval_every: int = 100
    n_val: int = 1000
    seed: int = 0
    contextual: str = "softmax"
    depth: int | None = None
    width: int | None = None
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        for name in ("dim", "n_context", "hidden", "n_heads", "steps", "batch", "eval_every", "n_val"):
            _positive_int(getattr(self, name), name)
        _positive_int(self.seed, "seed", minimum=0)
        if (self.depth is None) != (self.width is None):
            raise ValueError(f"depth and width describe a stack and go together; got depth={self.depth}, width={self.width}")
        if self.depth is None:
            if (self.dim + 1) % self.n_heads:
                raise ValueError(f"n_heads={self.n_heads} must divide the token width d + 1 = {self.dim + 1}")
        else:
            _positive_int(self.depth, "depth")
            _positive_int(self.width, "width")
            if self.width % self.n_heads:
                raise ValueError(f"n_heads={self.n_heads} must divide the stack's width {self.width}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < float("inf"):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.layer_norm and not self.residual:
            raise ValueError("layer_norm=True requires residual=True (a pre-LN residual block)")
        if self.contextual not in CONTEXTUAL_LAYERS:
            raise ValueError(f"unknown contextual layer {self.contextual!r}; choose one of {CONTEXTUAL_LAYERS}")
        if self.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {self.dtype!r}")

    @property
    def token_dim(self) -> int:
        """Token width ``d + 1``."""
        return self.dim + 1

    def as_dict(self) -> dict:
        """The hyper-parameters as a plain dict (for printing)."""
        return asdict(self)


@dataclass(frozen=True)
class TrainingHistory:
    """What happened during training (NumPy arrays, float64).

    Attributes:
        train_loss: ``(steps,)``, the minibatch loss at each step (before that step's update).
        eval_steps: ``(E,)``, the number of optimiser steps done at each validation.
        val_loss: ``(E,)``, validation loss of the block on the whole prompt.
        val_loss_implicit: ``(E,)``, validation loss of the block on the query alone with ``W + ΔW``.
        val_max_gap: ``(E,)``, ``max |ŷ_context − ŷ_implicit|`` over the validation set.
    """

    train_loss: np.ndarray
    eval_steps: np.ndarray
    val_loss: np.ndarray
    val_loss_implicit: np.ndarray
    val_max_gap: np.ndarray


def _seeds(seed: int, count: int) -> list[int]:
    """``count`` independent 63-bit seeds derived from one seed."""
    state = np.random.SeedSequence(seed).generate_state(count, dtype=np.uint64)
    return [int(s) >> 1 for s in state]


def build_block(config: TrainingConfig) -> Block | Transformer:
    """A freshly initialised :class:`icl_lib.Block` of dtype ``config.dtype`` (seeded; global RNG untouched).

    The weights are drawn in float32 and then cast, so both dtypes start from the same block.

    With ``config.depth`` set, an :class:`icl_lib.Transformer` stack instead (see :class:`TrainingConfig`).
    """
    if not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a TrainingConfig, got {type(config).__name__}")
    variant = dict(
        residual=config.residual,
        layer_norm=config.layer_norm,
        activation=config.activation,
        contextual=config.contextual,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seeds(config.seed, 3)[0])
        if config.depth is not None:
            block = Transformer(
                config.width,
                config.depth,
                config.hidden,
                config.n_heads,
                in_dim=config.token_dim,
                out_dim=config.token_dim,
                **variant,
            )
        else:
            block = Block(config.token_dim, config.hidden, config.n_heads, **variant)
    return block.to(config.dtype)


def predict(block: torch.nn.Module, tokens: Tensor) -> Tensor:
    """``ŷ``: the block run on the whole prompt ``tokens (B, T, d+1)``; returns ``(B,)``."""
    return read_prediction(block(tokens)[:, -1])


def predict_implicit(block: torch.nn.Module, tokens: Tensor) -> Tensor:
    """``ŷ`` without the context: the query alone through the block with ``W + ΔW(C)``; ``(B,)``.

    ``ΔW(C)`` is computed from the whole prompt ``tokens (B, T, d+1)``, ``T ≥ 2``. For an
    :class:`icl_lib.Transformer` every block gets its own update and the query alone runs through
    the patched stack (:func:`icl_lib.network_update`, :func:`icl_lib.forward_with_updates`).
    """
    if isinstance(block, Transformer):
        return read_prediction(forward_with_updates(block, network_update(block, tokens), tokens[:, -1]))
    update = implicit_update(block, tokens)
    return read_prediction(forward_with_update(block, update, tokens[:, -1:]))


@single_thread()
def train_block(config: TrainingConfig, *, log_every: int = 0) -> tuple[Block | Transformer, TrainingHistory]:
    """Train a block from scratch under ``config``; returns it (eval mode, ``config.dtype``) and its history.

    Training runs on one torch thread (``icl_lib.core.seeding.single_thread``), so the trained
    weights do not depend on the caller's thread count.

    With ``config.depth`` set, the same loop trains an :class:`icl_lib.Transformer` stack; its
    implicit validation patches every block (:func:`predict_implicit`).

    Args:
        config: the hyper-parameters.
        log_every: print the minibatch and validation loss every ``log_every`` steps (0: silent).
    """
    if not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a TrainingConfig, got {type(config).__name__}")
    _positive_int(log_every, "log_every", minimum=0)
    _, train_seed, val_seed = _seeds(config.seed, 3)
    block = build_block(config)
    _, device = module_dtype_device(block)
    train_gen = torch.Generator(device).manual_seed(train_seed)
    val = sample_regression(
        config.n_val,
        config.n_context,
        config.dim,
        generator=torch.Generator(device).manual_seed(val_seed),
        dtype=config.dtype,
        device=device,
    )
    optimiser = torch.optim.Adam(block.parameters(), lr=config.lr)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, config.steps)
        if config.schedule == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)
    )

    train_loss = np.empty(config.steps)
    eval_steps, val_loss, val_implicit, val_gap = [], [], [], []

    def validate(step: int) -> None:
        with torch.no_grad():
            with_context = predict(block, val.tokens)
            without_context = predict_implicit(block, val.tokens)
        eval_steps.append(step)
        val_loss.append(regression_loss(with_context, val.targets).item())
        val_implicit.append(regression_loss(without_context, val.targets).item())
        val_gap.append((with_context - without_context).abs().max().item())

    block.train()
    for step in range(config.steps):
        if step % config.eval_every == 0:
            validate(step)
        tasks = sample_regression(
            config.batch, config.n_context, config.dim, generator=train_gen, dtype=config.dtype, device=device
        )
        loss = regression_loss(predict(block, tasks.tokens), tasks.targets)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        train_loss[step] = loss.item()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1:>6}: train {train_loss[step]:.4f}  validation {val_loss[-1]:.4f}")
    validate(config.steps)
    block.eval()
    history = TrainingHistory(
        train_loss=train_loss,
        eval_steps=np.asarray(eval_steps),
        val_loss=np.asarray(val_loss),
        val_loss_implicit=np.asarray(val_implicit),
        val_max_gap=np.asarray(val_gap),
    )
    return block, history
