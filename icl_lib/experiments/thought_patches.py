"""Thought patches (Mazzawi et al., 2025) on a causal LM: a context condensed into one weight edit per layer.

A context ``C`` (here the demonstrations of a few-shot task) is removed from the prompt
``[BOS, C, x, y]``, ``x`` the query line and ``y`` the teacher-forced first answer token. The
*aligned tokens* are the ``T`` tokens of the bare input ``[BOS, x, y]``; in the prompted run
they are BOS and the last ``T − 1`` tokens. At decoder layer ``ℓ``, aligned token ``i`` and query
``q`` let ``m^p``, ``h^p`` be the MLP input and the residual stream of the prompted run, and
``a``, ``h^x`` those of the bare run with the patches below ``ℓ`` in place. The patch of layer
``ℓ`` is fitted by ridge least squares, pooled over every aligned token of every calibration
query (``N = Q·T`` samples):

    ΔW_s = argmin_M Σ_i ‖M a_i − W_s (m^p_i − a_i)‖² + λ ‖M‖²_F,   λ = ρ · mean_i ‖a_i‖²,

which is ``ΔW_s = Uᵀ (A Aᵀ + λ I)⁻¹ A`` with ``A (N, D)`` the stacked ``a_i`` and ``U (N, H_s)``
the ``W_s (m^p_i − a_i)`` (kept factored, ``N`` is small); ``ρ = 0`` gives the minimum-norm
solution ``Uᵀ A⁺ᵀ``. The residual shift ``Δb′_i = h^p_i − h^x_i`` (the context's effect that does
not pass through the MLP) enters in one of two ways:

* ``output="vector"``: the *thought vector* ``mean_i Δb′_i``, added after the MLP;
* ``output="absorb"``: absorbed into the MLP's output side by a second ridge fit on the
  quantity the output map reads: ``ΔW_down = argmin Σ_i ‖ΔW g_i − Δb′_i‖² + λ′‖ΔW‖²`` on the
  hidden activations ``g_i`` (the input of ``W_down``, with the input-side patch in place) for
  a family whose MLP output is added as it is (Llama, SmolLM2); for a family whose MLP output
  passes a norm ``s ⊙ n`` first (Gemma 2/3), a patch ``Δs`` of that norm's scale, fitted
  coordinate by coordinate, ``Δs_j = Σ_i n_ij Δb′_ij / (Σ_i n_ij² + λ′)`` (Goldwaser et al.,
  2025, patch that scale exactly for one token; this pooled fit is the book's adaptation).

*Sequential* fitting (``sequential=True``, the paper's algorithm) fits layer ``ℓ`` on the bare
run with the fitted patches of layers ``< ℓ`` in place, so each layer corrects what the layers
below left; *one-shot* fitting (chapter 12's static patch) takes ``a`` from each layer fed its
*prompted* input at the aligned tokens, independently of the other layers' patches.
``pooled=False`` fits one patch per aligned position instead of one per layer.

Each layer is run on its own (its inputs and keyword arguments recorded from one pass of the
model), so a sequential fit costs about three passes of the bare input, not one per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..architectures.causal_lm import _hooks, _language_model, _LanguageModel, _layer_output, _Prompt, _trace, _unit_norm
from ..core.checks import check_rows
from .fewshot import FewShotTask, answer_accuracy, task_prompts

__all__ = [
    "OUTPUT_MODES",
    "ThoughtPrompts",
    "ThoughtLayer",
    "ThoughtPatch",
    "ThoughtData",
    "LayerRunner",
    "thought_prompts",
    "thought_data",
    "fit_thought_patch",
    "thought_logits",
    "cross_fitted_accuracy",
    "patched_drift",
    "residual_shifts",
]

#: How the residual shift ``Δb′`` enters a thought patch (see the module docstring).
OUTPUT_MODES = ("none", "vector", "absorb")


@dataclass(frozen=True)
class ThoughtPrompts:
    """Prompted and bare token ids of one task, aligned on their last tokens.

    Attributes:
        prompted: ``(Q, T_p)`` ``[S, context, query line, y]``, ``S`` the shared start (a BOS
            token where the tokenizer has one, by default).
        bare: ``(Q, T)`` ``[S, query line, y]``; ``y`` is the first token of the query's first
            accepted answer (teacher forcing).
        answers: per query, the accepted first tokens of its answer.
        start_tokens: ``P``, the length of the shared start ``S`` (0: none).
        demonstration_answers: the columns of ``prompted`` that hold the demonstrations' answers.
    """

    prompted: Tensor
    bare: Tensor
    answers: tuple[tuple[int, ...], ...]
    start_tokens: int
    demonstration_answers: tuple[int, ...] = ()

    @property
    def aligned(self) -> Tensor:
        """The columns of ``prompted`` aligned with the ``T`` columns of ``bare``: ``(T,)`` long."""
        t, tp, p = self.bare.shape[1], self.prompted.shape[1], self.start_tokens
        return torch.cat([torch.arange(p), torch.arange(tp - (t - p), tp)])

    @property
    def n_queries(self) -> int:
        return self.bare.shape[0]


def _token_ids(ids: object, name: str) -> list[int]:
    if isinstance(ids, (str, bytes)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ValueError(f"{name} must be a sequence of token ids (ints), got {ids!r}")
    return list(ids)


def thought_prompts(task: FewShotTask, tokenizer, n_examples: int, n_queries: int | None = None,
                    bos: bool = True, start: Sequence[int] = (), instruction: Sequence[int] = ()) -> ThoughtPrompts:
    """The prompted and bare rows of ``task`` (see :class:`ThoughtPrompts`).

    The context, which the bare row lacks, is the token ids ``instruction`` (an instruction line,
    say; none by default) followed by the ``n_examples`` demonstrations (0 only after an
    instruction); a retrieval task (per-query demonstrations) is refused, since a thought patch
    condenses one context shared by all queries. Both rows start with the tokenizer's BOS token
    (``bos=True``, where it has one) followed by the token ids ``start`` (a neutral line, say).
    With ``bos=False`` and no ``start`` the bare row is the query line alone, the reference of
    chapters 11 and 12.
    """
    if task.retrieval:
        raise ValueError(f"task {task.name!r} shows each query its own demonstrations; a thought patch needs one "
                         "shared context")
    instruction = _token_ids(instruction, "instruction")
    least = 0 if instruction else 1
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < least:
        raise ValueError(f"n_examples must be an int >= {least} (the context is the instruction and the "
                         f"demonstrations), got {n_examples!r}")
    with_context = task_prompts(task, tokenizer, n_examples, n_queries)
    alone = task_prompts(task, tokenizer, 0, n_queries)
    answer = torch.tensor([[accepted[0]] for accepted in with_context.answers])
    bos = getattr(tokenizer, "bos_token_id", None) if bos else None
    shared = ([bos] if bos is not None else []) + _token_ids(start, "start")
    rows = answer.shape[0]
    start = torch.tensor(shared, dtype=torch.long).expand(rows, len(shared))
    told = torch.tensor(instruction, dtype=torch.long).expand(rows, len(instruction))
    offset = start.shape[1] + told.shape[1]
    columns = tuple(offset + j * with_context.example_tokens + with_context.kept_tokens for j in range(n_examples))
    for column, (_, shown) in zip(columns, task.demonstrations[:n_examples]):
        if with_context.input_ids[0, column - offset] != tokenizer(" " + shown, add_special_tokens=False).input_ids[0]:
            raise ValueError(f"task {task.name!r}: a demonstration line is not 'query line, answer, newline' in tokens")
    return ThoughtPrompts(
        prompted=torch.cat([start, told, with_context.input_ids, answer], dim=1),
        bare=torch.cat([start, alone.input_ids, answer], dim=1),
        answers=with_context.answers,
        start_tokens=start.shape[1],
        demonstration_answers=columns,
    )


@dataclass(frozen=True)
class ThoughtLayer:
    """The thought patch of one decoder layer. ``P`` is 1 (pooled: every position) or the number
    of aligned positions (one patch per position); ``k`` the rank of the factored maps.

    Attributes:
        in_left, in_right: ``(P, H_s, k)``, ``(P, D, k)``: ``ΔW_s = in_left[p] in_right[p]ᵀ``.
        vector: ``(P, D_out)`` thought vector added after the MLP, or None.
        out_left, out_right: ``(P, D_out, k)``, ``(P, H, k)``: ``ΔW_down``, or None.
        scale: ``(P, D_out)`` patch ``Δs`` of the post-MLP norm's scale, or None.
        unexplained: the input fit's residual, ``Σ‖ΔW_s a_i − u_i‖² / Σ‖u_i‖²`` over its samples.
    """

    in_left: Tensor
    in_right: Tensor
    vector: Tensor | None = None
    out_left: Tensor | None = None
    out_right: Tensor | None = None
    scale: Tensor | None = None
    unexplained: float = 0.0


@dataclass(frozen=True)
class ThoughtPatch:
    """One :class:`ThoughtLayer` per decoder layer and how they were fitted."""

    layers: tuple[ThoughtLayer, ...]
    sequential: bool
    pooled: bool
    ridge: float
    output: str
    n_queries: int


def _check_model(lm: _LanguageModel) -> None:
    for sites in lm.sites:
        if not sites.first.hookable or sites.residual is None:
            raise TypeError(f"thought patches need sequential layers with hookable first MLP maps; the "
                            f"{lm.family.name} family is a mixture of experts or has parallel blocks")


def _factored(x: Tensor, right: Tensor, left: Tensor) -> Tensor:
    """``left[p] (right[p]ᵀ x_t)`` for ``x (B, T, D)``: ``(B, T, H)``; ``P = 1`` serves every position."""
    x = x.to(right.dtype)
    if right.shape[0] == 1:
        return (x @ right[0]) @ left[0].T
    t = x.shape[1]
    if t > right.shape[0]:
        raise ValueError(f"the run has {t} positions but the per-position patch was fitted for {right.shape[0]}")
    return torch.einsum("btd,tdk,thk->bth", x, right[:t], left[:t])


def _per_position(x: Tensor, t: int) -> Tensor:
    """A ``(P, ·)`` tensor for a run of ``t`` positions: ``(1, ·)`` or its first ``t`` rows, as ``(T, ·)``."""
    return x if x.shape[0] == 1 else x[:t]


def _layer_hooks(sites, patch: ThoughtLayer | None, store: dict[str, Tensor], record: set[str]) -> list:
    """Hooks that record (``m``, ``h``, ``g``, ``n``, ``out``) in ``store`` and apply ``patch``."""
    hooks: list = []
    apply = patch is not None
    if "h" in record:
        hooks.append((sites.residual, "pre", lambda m, a, k: store.__setitem__("h", (a[0] if a else k["hidden_states"]))))

    def mlp_input(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        store["m"] = x
        if apply:
            store["shift_in"] = _factored(x, patch.in_right, patch.in_left)

    hooks.append((sites.mlp, "pre", mlp_input))
    if apply:
        for module, cut in zip(sites.first.modules, sites.first.slices):
            hooks.append((module, "post", lambda mod, a, out, cut=cut: out + store["shift_in"][..., cut].to(out.dtype)))
    if "pre" in record:  # W_s m + b_s, the first-layer outputs (before any patch of this layer)
        store["pre"] = []
        for module in sites.first.modules:
            hooks.append((module, "post", lambda mod, a, out: store["pre"].append(out)))
    needs_g = "g" in record or (apply and patch.out_left is not None)
    if needs_g:
        if sites.down is None:
            raise TypeError("this family's MLP output passes a norm before the residual sum; it has no W_down to absorb into")
        hooks.append((sites.down, "pre", lambda m, a, k: store.__setitem__("g", a[0] if a else k["hidden_states"])))
    if apply and patch.out_left is not None:
        hooks.append((sites.down, "post", lambda m, a, out: out + _factored(store["g"], patch.out_right,
                                                                             patch.out_left).to(out.dtype)))
    needs_n = "n" in record or (apply and patch.scale is not None)
    if needs_n:
        if sites.norm_offset is None:
            raise TypeError("this family has no norm after the MLP whose scale could absorb the steering")
        hooks.append((sites.shift, "pre", lambda m, a, k: store.__setitem__(
            "n", _unit_norm(sites.shift, sites.norm_offset, a[0] if a else k["hidden_states"]))))
    if apply and patch.scale is not None:
        hooks.append((sites.shift, "post", lambda m, a, out: out + (
            store["n"] * _per_position(patch.scale, out.shape[1])).to(out.dtype)))
    if apply and patch.vector is not None:
        hooks.append((sites.shift, "post", lambda m, a, out: out + _per_position(patch.vector, out.shape[1]).to(out.dtype)))
    return hooks


def _ridge_factors(a: Tensor, targets: Tensor, ridge: float) -> tuple[Tensor, Tensor, float]:
    """``M = argmin Σ‖M a_i − t_i‖² + λ‖M‖²`` (``λ = ridge · mean‖a_i‖²``) as ``right (D, N)``, ``left (H, N)``
    with ``M = left rightᵀ``, and the share ``Σ‖M a_i − t_i‖² / Σ‖t_i‖²`` it leaves, for ``a (N, D)``,
    ``targets (N, H)``. Computed in float64."""
    a64, t64 = a.double(), targets.double()
    if ridge == 0:
        right = torch.linalg.pinv(a64)  # (D, N)
    else:
        gram = a64 @ a64.T
        lam = ridge * gram.diagonal().mean()
        right = a64.T @ torch.linalg.inv(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype))
    fitted = (a64 @ right) @ t64
    total = t64.pow(2).sum()
    share = ((fitted - t64).pow(2).sum() / total).item() if total > 0 else 0.0
    return right, t64.T, share


def _fit_map(a: Tensor, targets: Tensor, ridge: float, pooled: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor, float]:
    """Factors ``(P, D, k)``, ``(P, H, k)`` for samples ``a (Q, T, D)``, ``targets (Q, T, H)``."""
    groups = [(a.flatten(0, 1), targets.flatten(0, 1))] if pooled else [(a[:, t], targets[:, t]) for t in range(a.shape[1])]
    rights, lefts, num, den = [], [], 0.0, 0.0
    for x, y in groups:
        right, left, share = _ridge_factors(x, y, ridge)
        rights.append(right)
        lefts.append(left)
        weight = y.double().pow(2).sum().item()
        num, den = num + share * weight, den + weight
    return torch.stack(rights).to(dtype), torch.stack(lefts).to(dtype), (num / den if den > 0 else 0.0)


def _scale_fit(n: Tensor, targets: Tensor, ridge: float, pooled: bool) -> Tensor:
    """Coordinate-wise ridge fit of ``Δs`` with ``Δs ⊙ n_i ≈ t_i``: ``(P, D)``."""
    n64, t64 = n.double(), targets.double()
    dims = (0, 1) if pooled else (0,)
    energy = n64.pow(2).sum(dims)
    lam = ridge * energy.mean()
    ratio = (n64 * t64).sum(dims) / (energy + lam)
    ratio = torch.where(energy + lam > 0, ratio, torch.zeros_like(ratio))
    return (ratio[None] if pooled else ratio).to(n.dtype)


class LayerRunner:
    """Runs the decoder layers of ``model`` one at a time on ``(Q, T, D)`` inputs, with the keyword
    arguments (position embeddings, masks) the model passed them in one recorded pass of the token
    ids ``ids (Q, T)``; ``embedded`` is that pass's input of the first layer."""

    def __init__(self, model: nn.Module, ids: Tensor):
        lm = _language_model(model)
        self.lm = lm
        self.kwargs: list[dict] = []
        first: list[Tensor] = []

        def keep(module, args, kwargs):
            if not first:
                first.append(args[0] if args else kwargs["hidden_states"])
            self.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})

        handles = [layer.register_forward_pre_hook(keep, with_kwargs=True) for layer in lm.layers]
        try:
            positions = torch.arange(ids.shape[1], device=ids.device)[None]  # one row: the kwargs serve any batch
            with torch.no_grad():
                lm.model.base_model(input_ids=ids, position_ids=positions, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        self.embedded = first[0]

    def run(self, index: int, z: Tensor, patch: ThoughtLayer | None = None, record: set[str] = frozenset()) -> dict:
        """Layer ``index`` on ``z``: the recorded quantities and ``"out"``, the layer's output."""
        store: dict = {}
        if "pre" in record and patch is not None:
            raise ValueError("the first-layer outputs are recorded without a patch on this layer")
        registrations = _layer_hooks(self.lm.sites[index], patch, store, set(record))
        calls = [0] * len(registrations)
        with torch.no_grad(), _hooks(registrations, calls):
            store["out"] = _layer_output(self.lm.layers[index](z, **self.kwargs[index]))
        if "pre" in record:
            store["pre"] = torch.cat(store["pre"], dim=-1)
        return store


@dataclass(frozen=True)
class ThoughtData:
    """What every fit on one task reuses: the prompted run at the aligned tokens, the bare rows'
    layer-by-layer runner, and each query's answer with and without the context.

    Attributes:
        prompts: the task's :class:`ThoughtPrompts`.
        inputs, pre, residual: per layer, the prompted run's layer input ``(Q, T, D)``, first-layer
            output ``W_s m^p + b_s`` ``(Q, T, H_s)`` and residual stream ``(Q, T, D)`` at the
            aligned tokens.
        prompted_correct, bare_correct: ``(Q,)`` bool: the greedy answer to the query line (without
            the teacher-forced token) with the context, and without it.
        runner: the :class:`LayerRunner` of the bare rows.
    """

    prompts: ThoughtPrompts
    inputs: tuple[Tensor, ...]
    pre: tuple[Tensor, ...]
    residual: tuple[Tensor, ...]
    prompted_correct: Tensor
    bare_correct: Tensor
    runner: "LayerRunner"

    @property
    def filtered(self) -> Tensor:
        """``(Q,)`` bool: the queries the prompted model answers right and the bare model wrong."""
        return self.prompted_correct & ~self.bare_correct


def thought_data(model: nn.Module, prompts: ThoughtPrompts) -> ThoughtData:
    """Run the prompted rows once (recording the aligned tokens) and the bare rows once (recording
    each layer's keyword arguments); score both without the teacher-forced token."""
    if not isinstance(prompts, ThoughtPrompts):
        raise TypeError(f"prompts must be a ThoughtPrompts (from thought_prompts), got {type(prompts).__name__}")
    lm = _language_model(model)
    _check_model(lm)
    prompted = prompts.prompted.to(lm.device)
    aligned = prompts.aligned.to(lm.device)
    positions = torch.arange(prompted.shape[1], device=lm.device).expand_as(prompted)
    last_query = torch.tensor([prompted.shape[1] - 2], device=lm.device)  # the column before the answer token
    target = _trace(lm, _Prompt(prompted, None, positions), {"inputs": aligned, "pre": aligned, "residual": aligned},
                    logits=last_query)
    return ThoughtData(
        prompts=prompts,
        inputs=tuple(target.inputs),
        pre=tuple(target.pre),
        residual=tuple(target.residual),
        prompted_correct=answer_accuracy(target.logits[:, 0], prompts.answers),  # causal: the answer token is not seen
        bare_correct=answer_accuracy(thought_logits(model, None, prompts.bare[:, :-1]), prompts.answers),
        runner=LayerRunner(model, prompts.bare.to(lm.device)),
    )


def fit_thought_patch(
    model: nn.Module,
    data: ThoughtData,
    rows: Tensor | None = None,
    *,
    sequential: bool = True,
    pooled: bool = True,
    ridge: float = 1e-2,
    output: str = "absorb",
) -> ThoughtPatch:
    """Fit a thought patch on the calibration queries ``rows`` (default all) of a task.

    Args:
        model: a ``transformers`` causal LM in eval mode (sequential layers, hookable MLP maps).
        data: from :func:`thought_data` for this model.
        rows: 1-d index of the calibration queries.
        sequential: fit each layer on the bare run patched below it (else on each layer fed its
            prompted input: one-shot).
        pooled: one patch per layer over all aligned tokens (else one per aligned position).
        ridge: ``ρ ≥ 0``, the ridge relative to the mean squared norm of the fit's inputs.
        output: one of :data:`OUTPUT_MODES`.
    """
    if output not in OUTPUT_MODES:
        raise ValueError(f"output must be one of {OUTPUT_MODES}, got {output!r}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
        raise ValueError(f"ridge must be a non-negative number, got {ridge!r}")
    if not isinstance(data, ThoughtData):
        raise TypeError(f"data must be a ThoughtData (from thought_data), got {type(data).__name__}")
    lm = _language_model(model)
    if data.runner.lm.model is not model:
        raise ValueError("data was prepared for another model")
    rows = torch.arange(data.prompts.n_queries) if rows is None else check_rows(rows, "rows")
    runner = data.runner
    z = runner.embedded[rows]
    layers = []
    for index, sites in enumerate(lm.sites):
        start = z if sequential else data.inputs[index][rows]
        seen = runner.run(index, start, record={"h", "pre"})
        a = seen["m"]
        u = data.pre[index][rows] - seen["pre"]  # W_s (m^p − a): the bias cancels
        right, left, unexplained = _fit_map(a, u, ridge, pooled, lm.dtype)
        layer = ThoughtLayer(in_left=left, in_right=right, unexplained=unexplained)
        shift = data.residual[index][rows] - seen["h"]  # Δb′_i (Q, T, D)
        carrier = None if output != "absorb" else ("g" if sites.down is not None else "n")
        # the layer with its input-side patch: the carrier of the output side, and (sequential) its output
        seen_in = runner.run(index, start, layer, record={carrier} if carrier else set()) if (carrier or sequential) else {}
        added = None
        if output == "vector":
            vector = (shift.mean((0, 1))[None] if pooled else shift.mean(0)).to(lm.dtype)
            layer = ThoughtLayer(left, right, vector=vector, unexplained=unexplained)
            added = _per_position(vector, start.shape[1])
        elif carrier == "g":
            out_right, out_left, _ = _fit_map(seen_in["g"], shift, ridge, pooled, lm.dtype)
            layer = ThoughtLayer(left, right, out_left=out_left, out_right=out_right, unexplained=unexplained)
            added = _factored(seen_in["g"], out_right, out_left)  # W_down's output is added as it is
        elif carrier == "n":
            scale = _scale_fit(seen_in["n"], shift, ridge, pooled)
            layer = ThoughtLayer(left, right, scale=scale, unexplained=unexplained)
            added = seen_in["n"] * _per_position(scale, start.shape[1])  # s ⊙ n + Δs ⊙ n
        layers.append(layer)
        if sequential:
            z = seen_in["out"] if added is None else seen_in["out"] + added.to(seen_in["out"].dtype)
    return ThoughtPatch(layers=tuple(layers), sequential=sequential, pooled=pooled, ridge=float(ridge), output=output,
                        n_queries=rows.numel())


def thought_logits(model: nn.Module, patch: ThoughtPatch | None, ids: Tensor) -> Tensor:
    """Next-token logits ``(B, vocab)`` at the last token of ``ids (B, T)`` (positions from 0), with
    ``patch`` applied to every layer (``None``: the model as it is)."""
    lm = _language_model(model)
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.dtype != torch.long:
        raise ValueError("ids must be a (B, T) tensor of token ids (torch.long)")
    if patch is not None and len(patch.layers) != len(lm.sites):
        raise ValueError(f"the patch has {len(patch.layers)} layers but the model has {len(lm.sites)}")
    registrations: list = []
    if patch is not None:
        _check_model(lm)
        for sites, layer in zip(lm.sites, patch.layers):
            registrations += _layer_hooks(sites, layer, {}, set())
    ids = ids.to(lm.device)
    positions = torch.arange(ids.shape[1], device=lm.device).expand_as(ids)
    calls = [0] * len(registrations)
    with torch.no_grad(), _hooks(registrations, calls):
        logits = lm.model(input_ids=ids, position_ids=positions, use_cache=False, logits_to_keep=1).logits[:, -1]
    if any(c != 1 for c in calls):
        raise RuntimeError(f"the patch hooks ran {calls} times, not once each: the model did not call the hooked modules")
    return logits


def cross_fitted_accuracy(model: nn.Module, data: ThoughtData, folds: int = 2, **options) -> Tensor:
    """Each query answered by the bare model patched by a thought patch fitted on the *other*
    folds (queries split by index modulo ``folds``): ``(Q,)`` bool. ``options`` go to
    :func:`fit_thought_patch`; the prompted and bare scores are ``data``'s."""
    n = data.prompts.n_queries
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= n:
        raise ValueError(f"folds must be an int in [2, {n}], got {folds!r}")
    patched = torch.zeros(n, dtype=torch.bool)
    index = torch.arange(n)
    for fold in range(folds):
        held = index[index % folds == fold]
        patch = fit_thought_patch(model, data, index[index % folds != fold], **options)
        logits = thought_logits(model, patch, data.prompts.bare[held][:, :-1])
        patched[held] = answer_accuracy(logits, tuple(data.prompts.answers[i] for i in held.tolist()))
    return patched


def patched_drift(model: nn.Module, data: ThoughtData, patch: ThoughtPatch, rows: Tensor) -> Tensor:
    """How far the bare run with ``patch`` strays from the prompted run, layer by layer: ``(L − 1, R)``.

    Row ``ℓ − 1`` is ``‖z_ℓ − z^p_ℓ‖ / ‖z^p_ℓ‖`` at the last token of the query line (the aligned
    token before the teacher-forced answer), ``z_ℓ`` the output of layer ``ℓ`` (the input of layer
    ``ℓ + 1``) in the patched bare run of the queries ``rows``, ``z^p_ℓ`` the prompted run's, for
    ``ℓ = 1 … L − 1``.
    """
    if not isinstance(data, ThoughtData):
        raise TypeError(f"data must be a ThoughtData (from thought_data), got {type(data).__name__}")
    if not isinstance(patch, ThoughtPatch) or len(patch.layers) != len(data.inputs):
        raise ValueError(f"patch must be a ThoughtPatch with one layer per decoder layer ({len(data.inputs)})")
    if data.runner.lm.model is not model:
        raise ValueError("data was prepared for another model")
    rows = check_rows(rows, "rows")
    runner, column = data.runner, data.prompts.bare.shape[1] - 2
    z, drift = runner.embedded[rows], []
    for index, layer in enumerate(patch.layers[:-1]):
        z = runner.run(index, z, layer)["out"]
        target = data.inputs[index + 1][rows][:, column]
        drift.append((z[:, column] - target).norm(dim=-1) / target.norm(dim=-1))
    return torch.stack(drift)


def residual_shifts(model: nn.Module, data: ThoughtData, rows: Tensor | None = None) -> Tensor:
    """The context's residual shift ``Δb′ = h^p − h^x`` at every layer and aligned token, each layer
    fed its prompted input there (the one-shot reference of the exact patch): ``(L, Q, T, D)``.

    Its mean over queries at one token is the *mean steering vector* of a layer.
    """
    if not isinstance(data, ThoughtData):
        raise TypeError(f"data must be a ThoughtData (from thought_data), got {type(data).__name__}")
    rows = torch.arange(data.prompts.n_queries) if rows is None else check_rows(rows, "rows")
    runner = data.runner
    return torch.stack([data.residual[i][rows] - runner.run(i, data.inputs[i][rows], record={"h"})["h"]
                        for i in range(len(data.inputs))])
