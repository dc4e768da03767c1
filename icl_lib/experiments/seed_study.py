"""Chapter 6's headline numbers for one trained block, so that they can be re-run over seeds.

:func:`online_protocol_summary` runs v1's online protocol (one SGD step per example, only ``W``
trained) beside the implicit trajectory on a batch of tasks and returns the few statistics the
chapter's claims rest on; the chapter trains blocks from several seeds and reports the spread.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.implicit import forward_with_update
from ..core.metrics import frobenius_alignment
from ..core.trajectory import implicit_trajectory
from .finetune import finetune_online
from .tasks import RegressionBatch, read_prediction

__all__ = ["online_protocol_summary"]


def online_protocol_summary(block: nn.Module, tasks: RegressionBatch, *, lr: float, at: int) -> dict[str, float]:
    """In-context learning against online SGD on ``W`` after ``at`` examples, over ``B`` tasks.

    Args:
        block: a trained plain block.
        tasks: ``B`` prompts with ``N ≥ at`` examples.
        lr: the SGD learning rate ``λ``.
        at: the number of examples ``i`` at which the statistics are taken (``1 ≤ at ≤ N``).

    Returns:
        ``{"in context": median test loss of W + ΔW_i, "online SGD": median test loss after i
        steps, "loss ratio": their quotient (SGD over in context), "size ratio": median
        ‖ΔW^sgd_i‖_F / ‖ΔW_i‖_F, "cos_F": mean cos_F(ΔW^sgd_i, ΔW_i), "cos_F weights": mean
        cos_F(W + ΔW^sgd_i, W + ΔW_i), "cos_F no tuning": mean cos_F(W, W + ΔW_i), the same
        without any fine-tuning}``, plain floats.
    """
    if not isinstance(tasks, RegressionBatch):
        raise TypeError(f"tasks must be an icl_lib.RegressionBatch, got {type(tasks).__name__}")
    if not 1 <= at <= tasks.n_context:
        raise ValueError(f"at must be in 1..{tasks.n_context}, got {at}")
    with torch.no_grad():
        traj = implicit_trajectory(block, tasks.tokens)
        prompted = forward_with_update(block, traj.update, tasks.tokens[:, -1:])  # (B, N+1, D)
    implicit_loss = 0.5 * (read_prediction(prompted[:, at]) - tasks.targets) ** 2
    sgd = finetune_online(block, tasks, lr=lr)
    implicit = traj.update.delta_W[:, at]  # (B, H, D)
    tuned = sgd.delta_W[:, at]
    W = block.mlp.up.weight.detach()
    sizes = tuned.flatten(1).norm(dim=1) / traj.update.frobenius_norm()[:, at]
    in_context, online = implicit_loss.median().item(), sgd.query_loss[:, at].median().item()
    return {
        "in context": in_context,
        "online SGD": online,
        "loss ratio": online / in_context,
        "size ratio": sizes.median().item(),
        "cos_F": frobenius_alignment(tuned, implicit).mean().item(),
        "cos_F weights": frobenius_alignment(W + tuned, W + implicit).mean().item(),
        "cos_F no tuning": frobenius_alignment(W.expand_as(implicit), W + implicit).mean().item(),
    }
