"""Explicit fine-tuning of the first MLP weight ``W``: the protocols the implicit update is compared with.

The implicit update of Dherin et al. (2025) changes only ``W``. To compare it with ordinary
training we fine-tune the *same* matrix, and nothing else, from the trained weights. In every
protocol an example ``x_j`` is a query *without context*: the single token ``(x_j, 0)`` goes
through the block, and the prediction is the last coordinate of the output, as at test time.
Because a one-token prompt makes the contextual layer's output ``A((x_j, 0))`` independent of
``W``, it is computed once; gradient descent then only runs the MLP, batched over tasks (each
task has its own copy of ``W``, and summed losses keep their gradients independent).

Three protocols:

* :func:`finetune_online`, the one Dherin et al. publish (arXiv 2507.16003v1, Section 4.4):
  stochastic gradient descent with batch size 1, the context examples one at a time in the
  order the prompt holds them, one step per example, so that ``i`` examples are ``i`` steps, on
  ``½ (T_W((x_j, 0)) − y_j)²`` (the paper uses learning rate 0.01);
* :func:`finetune_first_weight`, the book's full-batch protocol: for each requested ``i``,
  ``steps`` steps of full-batch gradient descent on ``L_i(W) = ½ · mean_{j ≤ i} (T_W((x_j, 0)) − y_j)²``,
  every ``i`` starting afresh;
* :func:`distill_first_weight`, distillation at the query: gradient descent on
  ``½ ‖T_W((x_q, 0)) − target‖²``, the output the prompted block gives at the query. Its
  gradient is ``(∂/∂ pre) aᵀ`` with ``a = A((x_q, 0))``, the right factor of the implicit update.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.checks import check_tokens, module_dtype_device
from ..core.seeding import single_thread
from .tasks import RegressionBatch
from ..core.architecture import BlockView, view_of

__all__ = [
    "FineTuneResult",
    "finetune_first_weight",
    "OnlineFineTuneResult",
    "finetune_online",
    "DistillationResult",
    "distill_first_weight",
]


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


def _alone(view: BlockView, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """MLP input and residual stream of the one-token prompts ``(x, 0)``: ``(..., d) -> (..., D)``."""
    lead = x.shape[:-1]
    m, h = view.stream(_no_context_tokens(x).reshape(-1, 1, x.shape[-1] + 1))
    m = m[:, -1].reshape(*lead, m.shape[-1])
    return m, None if h is None else h[:, -1].reshape(*lead, h.shape[-1])


def _check_block_and_tasks(block: nn.Module, tasks: object) -> tuple[BlockView, torch.dtype, torch.device]:
    """The block's view, dtype and device, after checking that ``tasks`` fit the block."""
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
    return view, dtype, device


@single_thread()
def finetune_first_weight(
    block: nn.Module, tasks: RegressionBatch, n_examples: Sequence[int], *, steps: int, lr: float
) -> FineTuneResult:
    """Fine-tune only ``W`` by full-batch gradient descent on the first ``i`` context examples.

    For each ``i`` of ``n_examples``: start from the trained ``W`` (every ``i`` starts afresh,
    all other parameters frozen), run ``steps`` steps with learning rate ``lr`` on
    ``L_i(W) = ½ · mean_{j ≤ i} (T_W((x_j, 0)) − y_j)²``, and report ``ΔW_ft(i) = W_steps − W``
    and the prediction at the query ``(x_q, 0)`` (again without context), besides the loss on
    the examples and on the query at every step.

    Runs on one torch thread (``icl_lib.core.seeding.single_thread``): the result does not depend
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
    view, dtype, device = _check_block_and_tasks(block, tasks)
    sizes = _check_examples(n_examples, tasks.n_context)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")

    b, n, _ = tasks.x_context.shape
    k = len(sizes)
    n_ex = torch.tensor(sizes, device=device)
    weight_mask = (torch.arange(n, device=device)[None, :] < n_ex[:, None]).to(dtype) / n_ex[:, None].to(dtype)  # (K, N)

    with torch.no_grad():
        m_ctx, h_ctx = _alone(view, tasks.x_context[:, None])  # A((x_j, 0)), (B, 1, N, D): shared by every i
        m_q, h_q = _alone(view, tasks.x_query[:, None])  # (B, 1, D)

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
    with torch.enable_grad():  # also when the caller runs under torch.no_grad()
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


def _check_learning_rate(lr: object, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A positive finite learning rate, one number or one per task, as a ``(B,)`` tensor."""
    if isinstance(lr, Tensor):
        if lr.shape != (batch,):
            raise ValueError(f"a tensor lr must have shape ({batch},), one rate per task, got {tuple(lr.shape)}")
        if not lr.is_floating_point() or lr.dtype != dtype or lr.device != device:
            raise TypeError(f"a tensor lr must be {dtype} on {device}, got {lr.dtype} on {lr.device}")
        if not (torch.isfinite(lr) & (lr > 0)).all():
            raise ValueError("every learning rate must be positive and finite")
        return lr.detach()
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        raise ValueError(f"lr must be a positive finite number or a (B,) tensor, got {lr!r}")
    return torch.full((batch,), float(lr), dtype=dtype, device=device)


@dataclass(frozen=True)
class OnlineFineTuneResult:
    """Online SGD on the context examples, one step per example, for ``i = 0..N`` steps.

    Attributes:
        delta_W: ``(B, N + 1, H, D)``, ``ΔW_sgd(i) = W_i − W`` after ``i`` steps (``i = 0`` is 0).
        query_prediction: ``(B, N + 1)``, the prediction at ``(x_q, 0)`` after ``i`` steps.
        query_loss: ``(B, N + 1)``, ``½ (prediction − y_q)²``.
        example_loss: ``(B, N)``, ``½ (T_{W_{i−1}}((x_i, 0)) − y_i)²``: the loss of example ``i``
            just before the step that uses it.
    """

    delta_W: Tensor
    query_prediction: Tensor
    query_loss: Tensor
    example_loss: Tensor


@single_thread()
def finetune_online(block: nn.Module, tasks: RegressionBatch, *, lr: float | Tensor) -> OnlineFineTuneResult:
    """Fine-tune only ``W`` by SGD with batch size 1 on the context examples, in their order.

    The protocol of Dherin et al. (arXiv 2507.16003v1, Section 4.4): from the trained weights,
    step ``i`` (``i = 1..N``) is one gradient step with learning rate ``lr`` on
    ``½ (T_W((x_i, 0)) − y_i)²``, the ``i``-th context example presented alone. After ``i``
    steps the weight has seen exactly the first ``i`` examples, once each, so one run gives the
    fine-tuned weight for every ``i``. Runs on one torch thread.

    Args:
        block: an :class:`icl_lib.Block` (or a supported ``TransformerEncoderLayer``); not modified.
        tasks: ``B`` regression prompts of width ``d + 1`` matching the block, ``N`` examples each.
        lr: the learning rate, one positive number for every task or a ``(B,)`` tensor (for
            example the implicit dynamics' ``η = 1/‖A(x_q)‖²`` of each task's query).

    Returns:
        an :class:`OnlineFineTuneResult`.
    """
    view, dtype, device = _check_block_and_tasks(block, tasks)
    b, n, _ = tasks.x_context.shape
    rate = _check_learning_rate(lr, b, dtype, device)[:, None, None]  # (B, 1, 1)
    with torch.no_grad():
        m_ctx, h_ctx = _alone(view, tasks.x_context)  # (B, N, D), (B, N, D) | None
        m_q, h_q = _alone(view, tasks.x_query)  # (B, D), (B, D) | None
    w0 = view.first.weight.detach()
    bias = None if view.first.bias is None else view.first.bias.detach()

    def prediction(weight: Tensor, m: Tensor, h: Tensor | None) -> Tensor:  # (B, H, D), (B, D) -> (B,)
        pre = torch.einsum("bhd,bd->bh", weight, m)
        if bias is not None:
            pre = pre + bias
        return view.finish(pre, h)[..., -1]

    weight = w0.expand(b, *w0.shape).clone().requires_grad_(True)
    deltas, queries, example_losses = [weight.detach() - w0], [], []
    with torch.no_grad():
        queries.append(prediction(weight, m_q, h_q))
    for i in range(n):
        h_i = None if h_ctx is None else h_ctx[:, i]
        with torch.enable_grad():  # also when the caller runs under torch.no_grad()
            loss = 0.5 * (prediction(weight, m_ctx[:, i], h_i) - tasks.y_context[:, i]) ** 2  # (B,)
            (grad,) = torch.autograd.grad(loss.sum(), weight)
        with torch.no_grad():
            weight -= rate * grad
            example_losses.append(loss.detach())
            deltas.append(weight.detach() - w0)
            queries.append(prediction(weight, m_q, h_q))
    query_prediction = torch.stack(queries, dim=1)
    return OnlineFineTuneResult(
        delta_W=torch.stack(deltas, dim=1),
        query_prediction=query_prediction,
        query_loss=0.5 * (query_prediction - tasks.targets[:, None]) ** 2,
        example_loss=torch.stack(example_losses, dim=1),
    )


@dataclass(frozen=True)
class DistillationResult:
    """Distillation of prompted outputs into ``W`` at the query, for ``K`` targets per query.

    Attributes:
        delta_W: ``(B, K, H, D)``, ``W_steps − W`` for each query and target; every gradient, hence
            every ``ΔW``, has the right factor ``A(x_q)``.
        loss: ``(steps + 1, B, K)``, ``½ ‖T_{W_t}(x_q) − target‖²`` at each step ``t``.
    """

    delta_W: Tensor
    loss: Tensor


@single_thread()
def distill_first_weight(
    block: nn.Module, query: Tensor, targets: Tensor, *, steps: int, lr: float | Tensor
) -> DistillationResult:
    """Fit ``W`` so that the block on the query alone gives target outputs, by gradient descent.

    For each query ``x_q`` and each of its ``K`` targets ``t_k`` (typically the prompted outputs
    ``T_W(c_1..c_i, x_q)`` for several ``i``, from :func:`icl_lib.forward_with_update` on an
    :func:`icl_lib.implicit_trajectory`), start from the block's ``W`` and run ``steps`` steps of
    gradient descent on ``½ ‖T_W(x_q) − t_k‖²``, every output coordinate, all other parameters
    frozen. The gradient is ``g aᵀ`` with ``a`` the MLP input at the query alone (``A(x_q)`` for
    a plain block): every step, and so every result, is a rank-1 matrix with the right factor of
    the implicit update. Runs on one torch thread.

    Args:
        block: an :class:`icl_lib.Block` (or a supported ``TransformerEncoderLayer``); not modified.
        query: ``(B, 1, D)``, the query tokens alone.
        targets: ``(B, K, D_out)``, the outputs to reproduce at each query.
        steps: gradient-descent steps (``≥ 0``).
        lr: the learning rate, one positive number or a ``(B,)`` tensor (one per query).

    Returns:
        a :class:`DistillationResult`.
    """
    view = view_of(block)
    dtype, device = module_dtype_device(block)
    query = check_tokens(query, "query", width=view.first.in_features, dtype=dtype, device=device)
    if query.shape[1] != 1:
        raise ValueError(f"query must be the query tokens alone, shape (B, 1, D), got {tuple(query.shape)}")
    b = query.shape[0]
    if not isinstance(targets, Tensor) or targets.ndim != 3 or targets.shape[0] != b:
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a (B={b}, K, D_out) tensor, got {shape}")
    if targets.dtype != dtype or targets.device != device:
        raise TypeError(f"targets are {targets.dtype} on {targets.device} but the block is {dtype} on {device}")
    if not torch.isfinite(targets).all():
        raise ValueError("targets must be finite")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    rate = _check_learning_rate(lr, b, dtype, device)[:, None, None, None]  # (B, 1, 1, 1)
    k = targets.shape[1]
    with torch.no_grad():
        m, h = view.stream(query)
        m = m[:, -1][:, None].expand(b, k, m.shape[-1])  # (B, K, D)
        h = None if h is None else h[:, -1][:, None].expand(b, k, h.shape[-1])
    w0 = view.first.weight.detach()
    bias = None if view.first.bias is None else view.first.bias.detach()
    targets = targets.detach()

    def loss_of(weight: Tensor) -> Tensor:  # (B, K, H, D) -> (B, K)
        pre = torch.einsum("bkhd,bkd->bkh", weight, m)
        if bias is not None:
            pre = pre + bias
        out = view.finish(pre, h)
        if out.shape != targets.shape:
            raise ValueError(f"targets have shape {tuple(targets.shape)} but the block outputs {tuple(out.shape)}")
        return 0.5 * ((out - targets) ** 2).sum(-1)

    weight = w0.expand(b, k, *w0.shape).clone().requires_grad_(True)
    history = []
    with torch.enable_grad():  # also when the caller runs under torch.no_grad()
        for step in range(steps + 1):
            loss = loss_of(weight)
            history.append(loss.detach())
            if step == steps:
                break
            (grad,) = torch.autograd.grad(loss.sum(), weight)
            with torch.no_grad():
                weight -= rate * grad
    return DistillationResult(delta_W=weight.detach() - w0, loss=torch.stack(history))
