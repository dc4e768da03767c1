"""Explicit fine-tuning of the first MLP weight ``W`` on the context examples.

The implicit update of Dherin et al. (2025) changes only ``W``. To compare it with ordinary
training we fine-tune the *same* matrix, and nothing else, on the same examples:

Protocol (ours; the paper does not publish its own). For a task with context
``(x_1, y_1), .., (x_N, y_N)`` and each requested number of examples ``i``:

1. start from the trained weight ``W`` (every ``i`` starts afresh);
2. each example is a query *without context*: the single token ``(x_j, 0)`` goes through the
   block, and the prediction is the last coordinate of the output, as at test time;
3. run ``steps`` steps of full-batch gradient descent with learning rate ``lr`` on
   ``L_i(W) = ½ · mean_{j ≤ i} (T_W((x_j, 0)) − y_j)²``, all other parameters frozen;
4. report ``ΔW_ft(i) = W_steps − W`` and the prediction at the task's query ``(x_q, 0)``
   (again without context), besides the loss on the examples and on the query at every step.

Because a one-token prompt makes the contextual layer's output ``A((x_j, 0))`` independent of
``W``, it is computed once; gradient descent then only runs the MLP, batched over tasks and
over the requested ``i`` (each pair has its own copy of ``W``, and the summed loss keeps their
gradients independent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .checks import module_dtype_device
from .seeding import single_thread
from .tasks import RegressionBatch
from .views import view_of

__all__ = ["FineTuneResult", "finetune_first_weight"]


@dataclass(frozen=True)
class FineTuneResult:
    """Fine-tuning of ``W`` on the first ``i`` context examples, for several ``i``.

    Attributes:
        n_examples: ``(K,)`` the numbers of examples ``i`` (long tensor).
        delta_W: ``(B, K, H, D)``, ``ΔW_ft(i)`` for each task and ``i``.
        context_loss: ``(steps + 1, B, K)``, ``L_i(W_t)`` on the ``i`` examples at each step ``t``.
        query_loss: ``(steps + 1, B, K)``, ``½ (T_{W_t}((x_q, 0)) − y_q)²`` at each step ``t``.
        query_prediction: ``(B, K)``, the prediction at the query after the last step.
    """

    n_examples: Tensor
    delta_W: Tensor
    context_loss: Tensor
    query_loss: Tensor
    query_prediction: Tensor


def _check_examples(n_examples: object, n_context: int) -> list[int]:
    if isinstance(n_examples, (str, bytes)) or not isinstance(n_examples, Sequence) or len(n_examples) == 0:
        raise TypeError("n_examples must be a non-empty sequence of ints")
    for i in n_examples:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"n_examples must hold ints, got {type(i).__name__}")
        if not 1 <= i <= n_context:
            raise ValueError(f"each number of examples must be in [1, N={n_context}], got {i}")
    return list(n_examples)


def _no_context_tokens(x: Tensor) -> Tensor:
    """``(..., d) -> (..., 1, d + 1)``: the one-token prompt ``(x, 0)``."""
    return torch.cat([x, x.new_zeros(*x.shape[:-1], 1)], dim=-1)[..., None, :]


@single_thread()
def finetune_first_weight(
    block: nn.Module, tasks: RegressionBatch, n_examples: Sequence[int], *, steps: int, lr: float
) -> FineTuneResult:
    """Fine-tune only ``W`` by gradient descent on the first ``i`` context examples (protocol above).

    Runs on one torch thread (``icl_lib.seeding.single_thread``): the result does not depend
    on the caller's thread count.

    Args:
        block: an :class:`icl_lib.Block` (or a supported ``TransformerEncoderLayer``); not modified.
        tasks: ``B`` regression prompts of width ``d + 1`` matching the block, ``N`` examples each.
        n_examples: the values of ``i`` to fine-tune on, each in ``[1, N]``.
        steps: gradient-descent steps (``≥ 0``; 0 returns ``ΔW_ft = 0``).
        lr: the gradient-descent learning rate (``> 0``).

    Returns:
        a :class:`FineTuneResult`.
    """
    if not isinstance(tasks, RegressionBatch):
        raise TypeError(f"tasks must be an icl_lib.RegressionBatch, got {type(tasks).__name__}")
    view = view_of(block)
    dtype, device = module_dtype_device(block)
    if tasks.tokens.dtype != dtype or tasks.tokens.device != device:
        raise TypeError(
            f"tasks are {tasks.tokens.dtype} on {tasks.tokens.device} but the block is {dtype} on {device}"
        )
    if tasks.dim + 1 != view.first.in_features:
        raise ValueError(f"tasks have token width {tasks.dim + 1} but the block expects {view.first.in_features}")
    sizes = _check_examples(n_examples, tasks.n_context)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")

    b, n, d = tasks.x_context.shape
    k = len(sizes)
    n_ex = torch.tensor(sizes, device=device)
    weight_mask = (torch.arange(n, device=device)[None, :] < n_ex[:, None]).to(dtype) / n_ex[:, None].to(dtype)  # (K, N)

    with torch.no_grad():
        m_ctx, h_ctx = view.stream(_no_context_tokens(tasks.x_context).reshape(b * n, 1, d + 1))
        m_ctx = m_ctx[:, -1].reshape(b, 1, n, d + 1)  # A((x_j, 0)), shared by every i
        h_ctx = None if h_ctx is None else h_ctx[:, -1].reshape(b, 1, n, d + 1)
        m_q, h_q = view.stream(_no_context_tokens(tasks.x_query))
        m_q = m_q[:, -1][:, None]  # (B, 1, D)
        h_q = None if h_q is None else h_q[:, -1][:, None]

    w0 = view.first.weight.detach()
    bias = None if view.first.bias is None else view.first.bias.detach()

    def outputs(weight: Tensor, m: Tensor, h: Tensor | None) -> Tensor:
        pre = torch.einsum("bkhd,bk...d->bk...h", weight, m.expand(b, k, *m.shape[2:]))
        if bias is not None:
            pre = pre + bias
        return view.finish(pre, h)

    def losses(weight: Tensor) -> tuple[Tensor, Tensor]:
        pred_ctx = outputs(weight, m_ctx, h_ctx)[..., -1]  # the prediction is the last coordinate
        ctx = 0.5 * ((pred_ctx - tasks.y_context[:, None]) ** 2 * weight_mask).sum(-1)  # (B, K)
        pred_q = outputs(weight, m_q, h_q)[..., -1]
        return ctx, pred_q

    weight = w0.expand(b, k, *w0.shape).clone().requires_grad_(True)
    context_history, query_history = [], []
    for step in range(steps + 1):
        ctx, pred_q = losses(weight)
        context_history.append(ctx.detach())
        query_history.append(0.5 * (pred_q.detach() - tasks.targets[:, None]) ** 2)
        if step == steps:
            break
        (grad,) = torch.autograd.grad(ctx.sum(), weight)
        with torch.no_grad():
            weight -= lr * grad
    return FineTuneResult(
        n_examples=n_ex,
        delta_W=(weight.detach() - w0),
        context_loss=torch.stack(context_history),
        query_loss=torch.stack(query_history),
        query_prediction=pred_q.detach(),
    )
