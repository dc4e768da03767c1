"""The theorem on ``transformers`` causal LMs: a prompt becomes one rank-1 patch per decoder layer.

For decoder layer ``ℓ`` with input tokens ``z`` (the previous layer's outputs on the prompt),
MLP input ``m_i`` and residual stream ``h_i`` at position ``i``, and the same quantities
``a = m_x``, ``h_x`` for the layer run on its input at the query *alone*,

    ΔW_s = (W_s (m_i − a)) aᵀ / ‖a‖²,     Δb′ = h_i − h_x,

where ``W_s`` is the MLP's first layer (``[W_gate; W_up]`` for a gated MLP,
:mod:`icl_lib.architectures.families`). Patching every layer and running the model on the last token alone
gives the prompted final hidden state at the query, hence the same logits (Dherin et al., 2025,
for one block; Innocenti & Achour, 2025, for residual stacks; Goldwaser et al., 2025, for gated
MLPs and extra norms).

Everything runs through the model's own ``forward`` (embeddings, rotary or learned positions,
grouped-query attention, sliding windows, masks, final norm, softcapping): hooks at the modules
:mod:`icl_lib.architectures.families` names read ``W_s m + b_s``, ``m`` and ``h`` there, replace a layer's input
(to run a layer on its prompted input at the query alone), and add ``u (vᵀ m)/‖v‖²`` to the
first-layer outputs and ``Δb′`` after the MLP. Three passes at most: the prompt, the query alone
for the references ``a`` (every layer fed its prompted input at the query), and the patched
query alone.

Token ids are ``(B, T)`` ``torch.long``; an optional ``attention_mask (B, T)`` (1 = token,
0 = padding) batches prompts of different lengths by left padding. Position ids are counted
over the real tokens only (``cumsum − 1``), so a padded row gives what its prompt alone gives,
up to round-off.

These functions are reached through the library's public API (:func:`icl_lib.network_update`,
:func:`icl_lib.forward_with_updates`, :func:`icl_lib.block_inputs`, :func:`icl_lib.block_gaps`,
:func:`icl_lib.network_gap`, :func:`icl_lib.implicit_trajectory`), which dispatch here when given
a ``transformers`` model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import reduce

import torch
from torch import Tensor, nn

from ..core.architecture import Architecture, register_architecture
from ..core.checks import all_finite, check_position
from ..core.update import ImplicitUpdate, LowRankPatch, Patch, check_reference
from ..core.trajectory import NetworkTrajectory
from .families import (
    DecoderFamily,
    FirstLayer,
    decoder_layers,
    family_of,
    first_layer,
    is_language_model,
    shift_scale,
    split_modules,
)

__all__ = [
    "patch_contributions",
    "Continuation",
    "greedy_continuation",
    "lm_network_update",
    "lm_forward_with_updates",
    "lm_block_inputs",
    "lm_block_gaps",
    "lm_network_gap",
    "lm_trajectory",
]


@dataclass(frozen=True)
class _Sites:
    """Where one decoder layer is read and patched (see :class:`~icl_lib.architectures.families.DecoderFamily`).

    ``scale`` multiplies the ``shift`` output before the residual addition (or is ``None``);
    ``down`` is the MLP's last linear map, or ``None``.
    """

    layer: nn.Module
    first: FirstLayer
    mlp: nn.Module
    residual: nn.Module | None
    shift: nn.Module
    scale: float | None
    down: nn.Module | None
    norm_offset: float | None


def _sites(layer: nn.Module, family: DecoderFamily) -> _Sites:
    mlp, residual, shift = split_modules(layer, family)
    down = None if family.down is None else reduce(getattr, family.down.split("."), layer)
    if family.norm_offset is not None and getattr(shift, "bias", None) is not None:
        raise TypeError(f"the {family.name} family's {family.shift} has a bias: its output is not s ⊙ n, so "
                        "norm_offset cannot hold")
    return _Sites(layer, first_layer(layer, family), mlp, residual, shift, shift_scale(layer, family), down,
                  family.norm_offset)


def _unit_norm(shift: nn.Module, offset: float, x: Tensor) -> Tensor:
    """The normalised MLP output ``n`` of ``x``: the ``shift`` norm's own code run with the weight
    that makes its scale one (``1 − offset`` in every entry), so ``out = s ⊙ n`` rounds once.

    Unlike ``out ⊘ s`` it is defined where an entry of ``s`` is zero (Gemma 3 270M has such
    entries). The norm's ``forward`` is called directly, so no hook runs; call it without
    autograd (the traces do). A norm whose weights ``accelerate`` offloads is refused: its hook
    would load the stored weights over the unit scale.
    """
    hook = getattr(shift, "_hf_hook", None)
    if hook is not None and getattr(hook, "offload", False):
        raise ValueError("steering='norm' reads the normalised MLP output by running the post-MLP norm with scale "
                         "one, which an offloaded norm cannot do: keep those layers on a device, or use the default "
                         "steering")
    weight = shift.weight
    saved = weight.data
    try:
        weight.data = torch.full(saved.shape, 1.0 - offset, dtype=saved.dtype, device=saved.device)
        return shift.forward(x)
    finally:
        weight.data = saved


@dataclass(frozen=True)
class _LanguageModel:
    """A checked causal LM and the sites of each of its layers."""

    model: nn.Module
    family: DecoderFamily
    sites: list[_Sites]
    dtype: torch.dtype
    device: torch.device
    vocab: int

    @property
    def layers(self) -> list[nn.Module]:
        return [site.layer for site in self.sites]

    @property
    def firsts(self) -> list[FirstLayer]:
        return [site.first for site in self.sites]

    def factor_dtype(self, requested: object = None) -> torch.dtype:
        """The dtype the factors are formed and stored in: by default float32 for a half-precision
        model (its pre-activations' differences are cancellations that half precision would round
        again), the model's dtype otherwise; a requested dtype must be the model's or wider."""
        if requested is None:
            return torch.float32 if self.dtype in _HALF else self.dtype
        allowed = {self.dtype, torch.float32, torch.float64} - ({torch.float32} if self.dtype == torch.float64 else set())
        if requested not in allowed:
            raise ValueError(f"factor_dtype must be one of {sorted(map(str, allowed))} for a {self.dtype} model, "
                             f"got {requested!r}")
        return requested


#: The parameter dtypes a language model may have.
MODEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_HALF = (torch.bfloat16, torch.float16)


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The one floating dtype of the model's parameters; ``ValueError`` if they mix or it is not supported."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) != 1:
        raise ValueError(f"the {type(model).__name__}'s parameters mix dtypes {sorted(map(str, dtypes))}; "
                         "cast the model to one dtype")
    (dtype,) = dtypes
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"the model's parameters are {dtype}; supported: {', '.join(map(str, MODEL_DTYPES))}")
    return dtype


def _input_device(model: nn.Module) -> torch.device:
    """Where the model takes its token ids: the embedding's device, or, for a model dispatched by
    ``accelerate`` (``device_map``), the device its hook runs the embedding on."""
    embed = model.get_input_embeddings()
    device = getattr(getattr(embed, "_hf_hook", None), "execution_device", None)
    if device is None:
        return embed.weight.device
    return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)


def _language_model(model: nn.Module) -> _LanguageModel:
    family = family_of(model)
    if model.training:
        raise ValueError(f"the {type(model).__name__} is in training mode (dropout is on); call .eval() first")
    dtype, device = _model_dtype(model), _input_device(model)
    layers = decoder_layers(model, family)
    return _LanguageModel(
        model=model,
        family=family,
        sites=[_sites(layer, family) for layer in layers],
        dtype=dtype,
        device=device,
        vocab=model.get_input_embeddings().num_embeddings,
    )


@dataclass(frozen=True)
class _Prompt:
    """Checked token ids ``(B, T)``, the mask handed to the model (or None) and position ids ``(B, T)``."""

    ids: Tensor
    mask: Tensor | None
    positions: Tensor

    def query(self) -> _Prompt:
        """The last token alone, at its own position id."""
        return _Prompt(self.ids[:, -1:], None, self.positions[:, -1:])


def check_ids(ids: object, name: str, lm: _LanguageModel) -> Tensor:
    """Validate token ids: a ``(B, T)`` ``torch.long`` tensor on the model's device, in the vocabulary."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.ndim != 2:
        raise ValueError(f"{name} must have shape (B, T) (token ids), got shape {tuple(ids.shape)}")
    if ids.dtype != torch.long:
        raise TypeError(f"{name} must hold token ids as torch.long, got {ids.dtype}")
    b, t = ids.shape
    if b == 0:
        raise ValueError(f"{name} has an empty batch (B=0)")
    if t == 0:
        raise ValueError(f"{name} is an empty prompt (T=0)")
    ids = ids.to(lm.device)  # the model's input device; results come back there too
    bad = (ids < 0) | (ids >= lm.vocab)
    if bad.any():
        row, col = bad.nonzero()[0].tolist()
        raise ValueError(
            f"{name}[{row}, {col}] = {ids[row, col].item()} is out of the vocabulary (ids must lie in [0, {lm.vocab}))"
        )
    return ids


def _check_mask(mask: object, ids: Tensor, min_tokens: int) -> Tensor:
    """Validate an attention mask ``(B, T)`` of 0/1 (or bool); returns it as bool."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor of 0/1 or bool, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but input_ids has {tuple(ids.shape)}")
    mask = mask.to(ids.device)
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"attention_mask must be bool or an integer tensor of 0/1, got {mask.dtype}")
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError("attention_mask may hold only 0 (absent) and 1 (present)")
        mask = mask == 1
    counts = mask.sum(-1)
    if (counts == 0).any():
        raise ValueError(f"attention_mask row {(counts == 0).nonzero()[0].item()} is all padding: that prompt is empty")
    if not mask[:, -1].all():
        row = (~mask[:, -1]).nonzero()[0].item()
        raise ValueError(
            f"the last token of row {row} is padding: the query must be the last token of every row (pad on the left)"
        )
    holes = mask[:, 1:].long() < mask[:, :-1].long()  # a present token followed by an absent one
    if holes.any():
        row = holes.any(-1).nonzero()[0].item()
        raise ValueError(
            f"attention_mask row {row} is not left padding (0s, then 1s): absent tokens inside a prompt would shift "
            "sliding windows and positions; pad on the left only"
        )
    if (counts < min_tokens).any():
        row = (counts < min_tokens).nonzero()[0].item()
        what = "its query" if min_tokens == 2 else f"{counts[row].item()} token(s), not more than the {min_tokens - 1} kept"
        raise ValueError(f"row {row} holds only {what}: the context is empty; need at least one context token")
    return mask


def _prompt(lm: _LanguageModel, ids: object, attention_mask: object, min_tokens: int, name: str = "input_ids") -> _Prompt:
    ids = check_ids(ids, name, lm)
    b, t = ids.shape
    if attention_mask is None:
        if t < min_tokens:
            raise ValueError(
                f"{name} holds {t} token(s), {min_tokens - 1} of them kept: the context is empty; need at least "
                "one context token"
            )
        positions = torch.arange(t, device=ids.device).expand(b, t)
        return _Prompt(ids, None, positions)
    keep = _check_mask(attention_mask, ids, min_tokens)
    positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
    return _Prompt(ids, keep.long(), positions)


# ---------------------------------------------------------------------------------------------
# One pass of the model's own forward, with hooks at the split modules.


def _first_input(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


@dataclass
class _Trace:
    """What one hooked pass recorded, per layer (positions as selected), and the last logits ``(B, V)``."""

    inputs: list[Tensor] = field(default_factory=list)
    pre: list[Tensor] = field(default_factory=list)
    mlp_in: list[Tensor] = field(default_factory=list)
    residual: list[Tensor] = field(default_factory=list)
    mlp_out: list[Tensor] = field(default_factory=list)
    mlp_n: list[Tensor] = field(default_factory=list)
    down_in: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    logits: Tensor | None = None
    cache: object | None = None


def _select(x: Tensor, at: int | slice | None) -> Tensor:
    """``(B, T, ·)`` at one position (``(B, ·)``), at a slice of positions, or at every position (``None``).

    A part is copied: a view would keep the whole ``(B, T, ·)`` activation alive until the pass
    ends (30 layers × a few such tensors for SmolLM2), and the allocator would then take fresh,
    not yet touched memory for the next layer's activations instead of reusing it.
    """
    if at is None:
        return x
    return x[:, at] if isinstance(at, Tensor) else x[:, at].clone()  # indexing by a tensor copies already


def _added(out: Tensor, x: Tensor) -> Tensor:
    """``out + x`` in ``x``'s dtype (the factors' precision), rounded once to ``out``'s dtype, on ``out``'s device."""
    x = x.to(out.device)
    if x.dtype == out.dtype:
        return out + x
    return (out.to(x.dtype) + x).to(out.dtype)


def _pre_shift(patch: Patch, m: Tensor) -> Tensor:
    """``ΔW_s m`` for MLP inputs ``m (R, T, D)``: ``(R, T, H_s)``.

    For an :class:`ImplicitUpdate` (rank 1, one per row): ``u (vᵀ m)/‖v‖²``, with one ``(u, v)``
    per row (``T = 1``) or per row and kept position (``v (R, T, D)``).
    """
    if isinstance(patch, LowRankPatch):
        right, left = patch.right.to(m.device), patch.left.to(m.device)
        return torch.einsum("rtd,tdk,thk->rth", m.to(right.dtype), right, left)
    u, v, rate = patch.u.to(m.device), patch.v.to(m.device), patch.learning_rate.to(m.device)
    if v.ndim == 2:  # one token per row
        u, v, rate = u[:, None], v[:, None], rate[:, None]
    return u * ((m.to(v.dtype) * v).sum(-1) * rate)[..., None]


def _input_shift(patch: ImplicitUpdate, m: Tensor) -> Tensor:
    """``m + δ (vᵀ m)/‖v‖²`` for MLP inputs ``m (R, T, D)``: the patch applied at the MLP input.

    For every map ``W`` that reads ``m``, ``W (m + δ (vᵀm)/‖v‖²) = (W + W δ vᵀ/‖v‖²) m``, so this is
    ``W_s + ΔW_s`` for a first layer whose maps cannot be hooked one by one (bare expert weights).
    """
    delta, v, rate = patch.delta.to(m.device), patch.v.to(m.device), patch.learning_rate.to(m.device)
    if v.ndim == 2:  # one token per row
        delta, v, rate = delta[:, None], v[:, None], rate[:, None]
    wide = m.to(v.dtype)
    return torch.addcmul(wide, delta, ((wide * v).sum(-1) * rate)[..., None]).to(m.dtype)


def _broadcast_like_shift(patch: ImplicitUpdate, x: Tensor) -> Tensor:
    """A per-update tensor ``(R, ·)`` or ``(R, K, ·)`` shaped to broadcast against ``(R, T, ·)``."""
    return x[:, None] if patch.v.ndim == 2 else x


def _out_shift(patch: Patch) -> Tensor | None:
    """``Δb′`` broadcastable to ``(R, T, D)``, or ``None``."""
    if patch.delta_b is None:
        return None
    if isinstance(patch, LowRankPatch):
        return patch.delta_b[None] if patch.delta_b.ndim == 2 else patch.delta_b
    return patch.delta_b[:, None] if patch.v.ndim == 2 else patch.delta_b


@contextmanager
def _hooks(registrations: list[tuple[nn.Module, str, Callable]], calls: list[int]) -> Iterator[None]:
    """Install forward (``"post"``) and pre-forward (``"pre"``, with kwargs) hooks; remove them on exit.

    ``calls[k]`` counts the calls of hook ``k``: a pass must call each exactly once, or the
    patch was not applied where the adapter says (a fused kernel, a changed model).
    """
    handles = []

    def counted(k: int, fn: Callable) -> Callable:
        def hook(*args):
            calls[k] += 1
            return fn(*args)

        return hook

    try:
        for k, (module, kind, fn) in enumerate(registrations):
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(counted(k, fn), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(counted(k, fn)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _trace(
    lm: _LanguageModel,
    prompt: _Prompt,
    record: dict[str, int | slice | None],
    inputs: Sequence[Tensor] | None = None,
    patches: Sequence[Patch] | None = None,
    logits: bool | Tensor = True,
    cache: object | None = None,
) -> _Trace:
    """Run the model once with hooks.

    Args:
        record: which quantities to keep, each at one position, a slice, or every position
            (``None``): keys among ``inputs`` (layer inputs ``z``), ``pre`` (``W_s m + b_s``),
            ``mlp_in`` (``m``), ``residual`` (``h``), ``mlp_out`` (the output of the module
            ``Δb′`` is added after, before it is), ``mlp_n`` (the normalised MLP output ``n`` of a
            norm after the MLP, :func:`_unit_norm`), ``outputs`` (layer outputs).
        inputs: optional replacement input ``(R, T, D)`` for every layer: each layer then runs
            on the given tokens instead of its predecessor's output.
        patches: optional patch per layer: adds ``ΔW_s m`` to the first-layer outputs and
            ``Δb′`` after the MLP (see :func:`_pre_shift`).
        logits: also compute the logits at the last position, or at the columns a 1-d index
            tensor names (``logits (B, P, V)`` then); without them the model's base (the decoder
            without its language-model head) runs, and ``logits`` stays ``None``.
        cache: run incrementally: the prompt's tokens follow those whose keys and values the
            cache holds (``True`` starts one), and ``trace.cache`` is the grown cache.
    """
    trace = _Trace()
    registrations: list[tuple[nn.Module, str, Callable]] = []
    for index, sites in enumerate(lm.sites):
        registrations += _layer_hooks(index, sites, trace, record, inputs, patches)
    calls = [0] * len(registrations)
    gaps = None if cache is not None else _gap_mask(lm, prompt)
    arguments = dict(input_ids=prompt.ids, attention_mask=prompt.mask if gaps is None else gaps,
                     position_ids=prompt.positions, use_cache=cache is not None)
    if cache is not None and cache is not True:
        arguments["cache"] = cache
    with torch.no_grad(), _hooks(registrations, calls):
        if isinstance(logits, Tensor):
            out = lm.model(**arguments, logits_to_keep=logits)
        else:
            out = lm.model(**arguments, logits_to_keep=1) if logits else lm.model.base_model(**arguments)
    if any(c != 1 for c in calls):
        raise RuntimeError(
            f"the {type(lm.model).__name__} did not call every module the {lm.family.name} adapter hooks exactly once "
            f"(calls: {calls}); the patches would not be applied where the theorem puts them"
        )
    trace.cache = out.cache if cache is not None else None
    if isinstance(logits, Tensor):
        trace.logits = out.logits.to(lm.device)
    else:
        trace.logits = out.logits[:, -1].to(lm.device) if logits else None
    return trace


def _layer_hooks(index, sites, trace, record, inputs, patches):
    """The hooks of one layer for :func:`_trace` (see there).

    Without a ``residual`` module (a parallel-residual layer), ``h`` is read as the layer's
    output minus what the ``shift`` module's output (times ``scale``) added to it.
    """
    layer, first, mlp, residual, shift, scale = (
        sites.layer, sites.first, sites.mlp, sites.residual, sites.shift, sites.scale
    )
    hooks: list[tuple[nn.Module, str, Callable]] = []
    if inputs is not None:
        replacement = inputs[index]

        def replace_input(module, args, kwargs):
            given = replacement.to(_first_input(args, kwargs).device)
            if args:
                return (given, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": given}

        hooks.append((layer, "pre", replace_input))
    if "inputs" in record:
        hooks.append((layer, "pre", lambda m, a, k: trace.inputs.append(_select(_first_input(a, k), record["inputs"]))))
    state: dict[str, Tensor] = {}
    if "residual" in record and residual is not None:
        hooks.append(
            (residual, "pre", lambda m, a, k: trace.residual.append(_select(_first_input(a, k), record["residual"])))
        )
    patch = None if patches is None else patches[index]
    if not first.hookable and isinstance(patch, LowRankPatch):
        raise TypeError(
            f"layer {index}'s first MLP layer is bare weights (a mixture of experts), which is patched at its "
            "input through δ; a fitted LowRankPatch carries no δ"
        )
    if "mlp_in" in record or patch is not None or ("pre" in record and not first.hookable):

        def read_mlp_input(module, args, kwargs):
            m = _first_input(args, kwargs)
            if patch is not None and not first.hookable:  # the patch goes into the MLP input itself
                m = _input_shift(patch, m)
            if "mlp_in" in record:
                trace.mlp_in.append(_select(m, record["mlp_in"]))
            if "pre" in record and not first.hookable:
                trace.pre.append(first(_select(m, record["pre"])))
            if patch is not None and first.hookable:
                state["pre_shift"] = _pre_shift(patch, m)
            if patch is not None and not first.hookable:
                if args:
                    return (m, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": m}
            return None

        hooks.append((mlp, "pre", read_mlp_input))
    pieces: list[Tensor] = []
    for part, (module, cut) in enumerate(zip(first.modules, first.slices)):

        def first_output(module, args, out, cut=cut, last=part == len(first.modules) - 1):
            if patch is not None:
                out = _added(out, state["pre_shift"][..., cut])
            if "pre" in record:
                pieces.append(_select(out, record["pre"]))
                if last:
                    trace.pre.append(torch.cat(pieces, dim=-1))
            return out

        hooks.append((module, "post", first_output))
    if "down_in" in record:
        hooks.append((sites.down, "pre", lambda m, a, k: trace.down_in.append(_select(_first_input(a, k), record["down_in"]))))
    if "mlp_out" in record:
        hooks.append((shift, "post", lambda m, a, out: trace.mlp_out.append(_select(out, record["mlp_out"]))))
    offset = sites.norm_offset
    if "mlp_n" in record:
        hooks.append((shift, "pre", lambda m, a, k: trace.mlp_n.append(
            _unit_norm(shift, offset, _select(_first_input(a, k), record["mlp_n"])))))
    steering = "bias" if patch is None or isinstance(patch, LowRankPatch) else patch.steering
    shift_b = None if patch is None else _out_shift(patch)
    if shift_b is not None and steering == "bias":
        hooks.append((shift, "post", lambda m, a, out: _added(out, shift_b)))
    if shift_b is not None and steering == "down":  # W_down + Δb′ cᵀ/‖c‖², applied to the map's input x

        def read_hidden(module, args, kwargs):
            state["hidden"] = _first_input(args, kwargs)

        carrier = _broadcast_like_shift(patch, patch.carrier)
        norm2 = (carrier * carrier).sum(-1, keepdim=True)

        def down_output(module, args, out):
            hidden = state.pop("hidden").to(carrier.device, carrier.dtype)
            return _added(out, shift_b * ((hidden * carrier).sum(-1, keepdim=True) / norm2))

        hooks.append((sites.down, "pre", read_hidden))
        hooks.append((sites.down, "post", down_output))
    if shift_b is not None and steering == "norm":  # s + Δs, Δs = Δb′ ⊘ n_p, adds Δs ⊙ n at the norm's input

        def read_norm_input(module, args, kwargs):
            state["normalised"] = _unit_norm(shift, offset, _first_input(args, kwargs))

        ratio = shift_b / _broadcast_like_shift(patch, patch.carrier)
        hooks.append((shift, "pre", read_norm_input))
        hooks.append((shift, "post", lambda m, a, out: _added(out, state.pop("normalised").to(
            ratio.device, ratio.dtype) * ratio)))
    if "residual" in record and residual is None:

        def keep_added(module, args, out):  # a copy: the layer may add to this tensor in place (Falcon)
            state["added"] = _select(out, record["residual"]).clone()

        def residual_from_output(module, args, out):
            added = state.pop("added")
            out = _select(_layer_output(out), record["residual"])
            trace.residual.append(out - (added if scale is None else scale * added))

        hooks.append((shift, "post", keep_added))
        hooks.append((layer, "post", residual_from_output))
    if "outputs" in record:
        hooks.append((layer, "post", lambda m, a, out: trace.outputs.append(_select(_layer_output(out), record["outputs"]))))
    return hooks


def _layer_output(out: Tensor | tuple) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


# ---------------------------------------------------------------------------------------------
# Updates, patched runs, gaps.


def _updates(
    lm: _LanguageModel,
    prompt: _Prompt,
    position: int | None,
    outputs: bool = False,
    kept: int = 1,
    logits: bool = False,
    steering: str = "bias",
    factor_dtype: torch.dtype | None = None,
) -> tuple[list[ImplicitUpdate], _Trace]:
    """One update per layer from the prompt pass and the reference pass.

    With ``steering="down"`` or ``"norm"`` the prompt pass also records the carrier of ``Δb′``
    at the reproduced positions (see :class:`icl_lib.ImplicitUpdate`).

    The reference pass runs the last ``kept`` tokens alone (the query, by default), every layer
    fed its prompted input there. With ``kept = 1`` the update reproduces ``position`` (an index,
    or ``None`` for every position); with ``kept > 1`` it has one patch per kept token, each with
    its own reference: ``u (B, K, H_s)``, ``v (B, K, D)``, ``delta_b (B, K, D)``.
    """
    tail = slice(-kept, None)
    at = tail if kept > 1 else position
    record = _prompted_record(lm, tail, at, steering)
    if outputs:
        record["outputs"] = at
    trace = _trace(lm, prompt, record, logits=logits)
    alone = _Prompt(prompt.ids[:, tail], None, prompt.positions[:, tail])
    position_ids = prompt.positions[:, -1] if kept == 1 else prompt.positions[:, tail]
    updates = _assemble(lm, trace, alone, position, kept, prompt.ids.shape[1], position_ids, steering, factor_dtype)
    return updates, trace


def _prompted_record(lm: _LanguageModel, inputs: object, at: object, steering: str) -> dict[str, object]:
    """What a prompted pass records for the updates: the layer inputs at the kept tokens, and at
    the reproduced positions ``W_s m + b_s``, ``h``, ``m`` where a layer is patched at its input
    (δ), and the carrier of a bias-free steering."""
    record = {"inputs": inputs, "pre": at, "residual": at}
    if any(not first.hookable for first in lm.firsts):  # those layers keep δ = m_p − a (ImplicitUpdate.delta)
        record["mlp_in"] = at
    if steering == "down":
        record["down_in"] = at
    if steering == "norm":
        record["mlp_n"] = at
    return record


def _assemble(
    lm: _LanguageModel,
    trace: _Trace,
    alone: _Prompt,
    position: int | None,
    kept: int,
    n_tokens: int,
    position_ids: Tensor,
    steering: str = "bias",
    factor_dtype: torch.dtype | None = None,
) -> list[ImplicitUpdate]:
    """The updates from a prompted pass's records and a reference pass on ``alone`` (the kept
    tokens, every layer fed its prompted input ``trace.inputs (R, K, D)`` there)."""
    input_patched = [not first.hookable for first in lm.firsts]
    carriers = _carriers(lm, trace, steering)
    prompted_m = trace.mlp_in if any(input_patched) else [None] * len(lm.layers)
    _check_finite(lm, trace.inputs + trace.pre + trace.residual, "the layer inputs, MLP pre-activations or residual stream")
    reference = _trace(lm, alone, {"mlp_in": None, "pre": None, "residual": None}, inputs=trace.inputs, logits=False)
    t = n_tokens
    updates = []
    scales = [site.scale for site in lm.sites]
    layers = zip(trace.pre, trace.residual, reference.mlp_in, reference.pre, reference.residual, scales,
                 prompted_m, input_patched, carriers)
    wide = lm.factor_dtype(factor_dtype)
    gather = lm.device

    def factor(x: Tensor) -> Tensor:  # in the factors' dtype, on the model's input device
        return x.to(gather, wide)

    for pre, h, a, pre_a, h_a, scale, m, keep_delta, carrier in layers:
        pre, h, a, pre_a, h_a = (factor(x) for x in (pre, h, a, pre_a, h_a))
        m = None if m is None else factor(m)
        carrier = None if carrier is None else factor(carrier)
        delta = None
        if kept == 1:
            a, pre_a, h_a = a[:, 0], pre_a[:, 0], h_a[:, 0]
            if keep_delta:
                delta = m - (a[:, None] if position is None else a)
            if position is None:  # every position against the query alone
                pre_a, h_a = pre_a[:, None], h_a[:, None]
        elif keep_delta:
            delta = m - a
        for k in range(a.shape[1] if kept > 1 else 0):
            check_reference(a[:, k])
        if kept == 1:
            check_reference(a)
        updates.append(
            ImplicitUpdate(
                u=pre.sub_(pre_a),  # pre is this function's own tensor (a concatenation or a cast): no copy
                v=a,
                delta_b=h - h_a if scale is None else (h - h_a) / scale,  # in the shift output's units
                position=position if kept == 1 else None,
                n_tokens=t,
                position_ids=position_ids,
                delta=delta,
                steering=steering,
                carrier=carrier,
            )
        )
    return updates


STEERINGS = ("bias", "down", "norm")


def _check_steering(lm: _LanguageModel, steering: object) -> str:
    """Refuse a ``steering`` the model's family cannot carry, naming why."""
    if steering not in STEERINGS:
        raise ValueError(f"steering must be one of {STEERINGS}, got {steering!r}")
    family = lm.family
    if steering == "down" and (family.down is None or family.shift != family.mlp):
        why = ("its MLP output passes a norm before it is added (use steering='norm')" if family.shift != family.mlp
               else "it names no single last MLP map (DecoderFamily.down)")
        raise ValueError(f"steering='down' needs Δb′ to be added to the output of W_down; the {family.name} family "
                         f"cannot: {why}")
    if steering == "norm" and family.norm_offset is None:
        raise ValueError(f"steering='norm' patches the scale of a norm after the MLP; the {family.name} family adds "
                         "the MLP output as it is (use steering='down')")
    return steering


def _carriers(lm: _LanguageModel, trace: _Trace, steering: str) -> list[Tensor | None]:
    """The carrier of ``Δb′`` per layer: ``W_down``'s input, or the normalised MLP output ``n``."""
    if steering == "bias":
        return [None] * len(lm.sites)
    if steering == "down":
        for i, c in enumerate(trace.down_in):
            if not bool(((c * c).sum(-1) > 0).all()):
                raise ValueError(f"layer {i}'s MLP hidden activation is zero at a reproduced position: "
                                 "ΔW_down = Δb′ cᵀ/‖c‖² is undefined there")
        return trace.down_in
    for i, c in enumerate(trace.mlp_n):
        if not bool((c != 0).all()):
            raise ValueError(f"layer {i}'s normalised MLP output has a zero entry at a reproduced position: "
                             "Δs = Δb′ ⊘ n is undefined there")
    return trace.mlp_n


def _check_finite(lm: _LanguageModel, tensors: list[Tensor], what: str) -> None:
    for x in tensors:
        if not all_finite(x):
            raise ValueError(
                f"the {type(lm.model).__name__}'s own forward pass gave non-finite values in {what}; "
                "with left padding this happens in transformers' eager attention in float64, where a fully "
                "padded row's softmax is NaN and reaches the real tokens: run those prompts one by one"
            )


def _check_kept(kept_tokens: object, position: int | str) -> int:
    if isinstance(kept_tokens, bool) or not isinstance(kept_tokens, int) or kept_tokens < 1:
        raise ValueError(f"kept_tokens must be a positive int, got {kept_tokens!r}")
    if kept_tokens > 1 and position != -1:
        raise ValueError("with kept_tokens > 1 every kept token gets its own patch: leave position at -1")
    return kept_tokens


def lm_network_update(
    model: nn.Module,
    input_ids: Tensor,
    position: int | str = -1,
    attention_mask: Tensor | None = None,
    kept_tokens: int = 1,
    steering: str = "bias",
    factor_dtype: torch.dtype | None = None,
) -> list[ImplicitUpdate]:
    """One update per decoder layer (see :func:`icl_lib.network_update`)."""
    lm = _language_model(model)
    kept = _check_kept(kept_tokens, position)
    steering = _check_steering(lm, steering)
    lm.factor_dtype(factor_dtype)  # refuse a bad one before any pass
    prompt = _prompt(lm, input_ids, attention_mask, min_tokens=kept + 1)
    position = check_position(position, prompt.ids.shape[1])
    return _updates(lm, prompt, position, kept=kept, steering=steering, factor_dtype=factor_dtype)[0]


def _check_updates(lm: _LanguageModel, updates: object, batch: int, kept: int) -> list[ImplicitUpdate]:
    if not isinstance(updates, Sequence) or len(updates) != len(lm.layers):
        got = len(updates) if isinstance(updates, Sequence) else type(updates).__name__
        raise ValueError(f"updates must be a sequence of one ImplicitUpdate per decoder layer ({len(lm.layers)}), got {got}")
    for i, (update, first) in enumerate(zip(updates, lm.firsts)):
        if not isinstance(update, ImplicitUpdate):
            raise TypeError(f"updates[{i}] must be an icl_lib.ImplicitUpdate, got {type(update).__name__}")
        if update.u.shape[-1] != first.out_features or update.v.shape[-1] != first.in_features:
            raise ValueError(
                f"updates[{i}] has factors u (..., {update.u.shape[-1]}), v (..., {update.v.shape[-1]}) but layer {i}'s "
                f"first MLP layer is ({first.out_features}, {first.in_features}): computed for another model"
            )
        lm.factor_dtype(update.u.dtype)  # the model's dtype or a wider one
        if any(x is not None and x.dtype != update.u.dtype for x in (update.v, update.delta_b, update.carrier)):
            raise ValueError(f"updates[{i}]'s factors mix dtypes: compute it with icl_lib.network_update")
        if update.v.shape[0] != batch:
            raise ValueError(f"the query has batch size {batch} but updates[{i}] has {update.v.shape[0]}")
        if update.position_ids is None:
            raise ValueError(f"updates[{i}] carries no position ids: compute it with icl_lib.network_update on this model")
        if update.steering not in STEERINGS or (update.steering != "bias") != (update.carrier is not None):
            raise ValueError(f"updates[{i}] has steering {update.steering!r} with carrier "
                             f"{'None' if update.carrier is None else 'set'}: compute it with icl_lib.network_update")
        if not first.hookable and update.delta is None:
            raise ValueError(f"updates[{i}] carries no δ, which layer {i} (a mixture of experts) is patched with: "
                             "compute it with icl_lib.network_update on this model")
        per_token = update.v.shape[1] if update.v.ndim == 3 else 1
        if kept == 1 and (update.stacked or update.position != update.n_tokens - 1):
            raise ValueError(
                f"updates[{i}] reproduces position {update.position} of a {update.n_tokens}-token prompt, not the "
                "query: a patched model runs the query alone, so it needs network_update(..., position=-1)"
            )
        if per_token != kept:
            raise ValueError(
                f"updates[{i}] patches {per_token} kept token(s) but {kept} were given: pass the same last tokens "
                "that network_update(..., kept_tokens=K) kept"
            )
    return list(updates)


def lm_forward_with_updates(model: nn.Module, updates: Sequence[ImplicitUpdate], query: Tensor) -> Tensor:
    """The kept tokens alone (the query, by default) through the patched model: logits ``(B, vocab)`` at
    the last one (see :func:`icl_lib.forward_with_updates`)."""
    lm = _language_model(model)
    query = check_ids(query, "query", lm)
    kept = query.shape[1]
    updates = _check_updates(lm, updates, query.shape[0], kept)
    positions = updates[0].position_ids
    positions = positions[:, None] if positions.ndim == 1 else positions
    return _trace(lm, _Prompt(query, None, positions), {}, patches=updates).logits


def lm_block_inputs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> list[Tensor]:
    """The input hidden states of every decoder layer, ``L`` tensors ``(B, T, D)``."""
    lm = _language_model(model)
    prompt = _prompt(lm, input_ids, attention_mask, min_tokens=1)
    return _trace(lm, prompt, {"inputs": None}, logits=False).inputs


def _flatten_stacked(update: ImplicitUpdate) -> ImplicitUpdate:
    """A stacked update ``u (B, P, H)`` as ``B·P`` single updates (row ``b·P + p``), ``v`` repeated."""
    b, p, _ = update.u.shape
    v = update.v[:, None].expand(b, p, -1).reshape(b * p, -1)
    shift = None if update.delta_b is None else update.delta_b.reshape(b * p, -1)
    ids = None if update.position_ids is None else update.position_ids.repeat_interleave(p)
    delta = None if update.delta is None else update.delta.reshape(b * p, -1)
    carrier = None if update.carrier is None else update.carrier.reshape(b * p, -1)
    return ImplicitUpdate(u=update.u.reshape(b * p, -1), v=v, delta_b=shift, position=None, n_tokens=update.n_tokens,
                          position_ids=ids, delta=delta, steering=update.steering, carrier=carrier)


def lm_block_gaps(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    position: int | str = -1,
    relative: bool = False,
) -> Tensor:
    """Per layer, ‖prompted layer output − patched layer on its input at the query alone‖ (see
    :func:`icl_lib.block_gaps`): ``(B, L)``, or ``(B, L, T)`` for ``position="all"``."""
    lm = _language_model(model)
    prompt = _prompt(lm, input_ids, attention_mask, min_tokens=2)
    b, t = prompt.ids.shape
    pos = check_position(position, t)
    updates, trace = _updates(lm, prompt, pos, outputs=True)
    query, inputs = prompt.query(), trace.inputs
    if pos is None:
        query = _Prompt(query.ids.repeat_interleave(t, 0), None, query.positions.repeat_interleave(t, 0))
        inputs = [z.repeat_interleave(t, 0) for z in inputs]
        updates = [_flatten_stacked(u) for u in updates]
    patched = _trace(lm, query, {"outputs": -1}, inputs=inputs, patches=updates, logits=False).outputs
    gaps = []
    for prompted, out in zip(trace.outputs, patched):
        gap = (prompted - out.view(prompted.shape)).norm(dim=-1)
        gaps.append(gap / prompted.norm(dim=-1) if relative else gap)
    return torch.stack(gaps, dim=1)


def lm_network_gap(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """``‖prompted logits − patched query-alone logits‖₂`` per prompt, ``(B,)``."""
    lm = _language_model(model)
    prompt = _prompt(lm, input_ids, attention_mask, min_tokens=2)
    updates, trace = _updates(lm, prompt, prompt.ids.shape[1] - 1, logits=True)
    patched = _trace(lm, prompt.query(), {}, patches=updates).logits
    return (trace.logits - patched).norm(dim=-1)


def patch_contributions(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """How the prompt's effect on each layer's output at the query splits between the two patches.

    For layer ``ℓ`` run on its prompted input at the query alone, the prompted output minus the
    unpatched output is ``[MLP_{W+ΔW}(a) − MLP_W(a)] + Δb′``: the change the weight patch makes
    to the MLP's output, and the steering vector. Returns their norms, each ``(B, L)``.
    """
    lm = _language_model(model)
    prompt = _prompt(lm, input_ids, attention_mask, min_tokens=2)
    updates, trace = _updates(lm, prompt, prompt.ids.shape[1] - 1)
    query = prompt.query()
    plain = _trace(lm, query, {"mlp_out": -1}, inputs=trace.inputs, logits=False).mlp_out
    patched = _trace(lm, query, {"mlp_out": -1}, inputs=trace.inputs, patches=updates, logits=False).mlp_out
    weight = torch.stack([(p - q).norm(dim=-1) for p, q in zip(patched, plain)], dim=1)
    steering = torch.stack([u.delta_b.norm(dim=-1) for u in updates], dim=1)
    return weight, steering


@dataclass(frozen=True)
class Continuation:
    """Greedy decoding of ``n`` tokens (see :func:`greedy_continuation`).

    Attributes:
        tokens: the chosen tokens, ``(B, n)``.
        logits: the logits each token was chosen from, ``(B, n, V)``: the patched model's on the
            last token alone, or the model's own.
        model_logits: the model's own logits on the same prompts (the original one, then grown
            by the chosen tokens), ``(B, n, V)``; equal to ``logits`` without patches.
    """

    tokens: Tensor
    logits: Tensor
    model_logits: Tensor


def greedy_continuation(
    model: nn.Module,
    input_ids: Tensor,
    n_tokens: int,
    through_patches: bool,
    *,
    attention_mask: Tensor | None = None,
    steering: str = "bias",
    factor_dtype: torch.dtype | None = None,
) -> Continuation:
    """Greedy decoding of ``n_tokens`` tokens, with or without the patches.

    With ``through_patches`` every new token comes from the patched model on the last token alone,
    the patches recomputed from the grown prompt at each step (the context grew by one token), as
    Goldwaser et al.'s (2025) algorithm does; otherwise from the model's own forward pass. Either
    way the prompt's keys and values are cached: a step runs the new token once with the cache
    (which also gives the model's own logits), and, through the patches, once alone for the
    references and once alone patched. ``steering`` and ``factor_dtype`` are those of
    :func:`icl_lib.network_update`; ``attention_mask (B, T)`` runs prompts of different lengths
    as one batch, padded on the left (each row's positions count its own tokens only).
    """
    lm = _language_model(model)
    ids = check_ids(input_ids, "input_ids", lm)
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive int, got {n_tokens!r}")
    if not isinstance(through_patches, bool):
        raise TypeError(f"through_patches must be a bool, got {through_patches!r}")
    steering = _check_steering(lm, steering)
    lm.factor_dtype(factor_dtype)
    prompt = _prompt(lm, ids, attention_mask, min_tokens=2)
    b, t = prompt.ids.shape
    step, cache, mask = prompt, True, prompt.mask
    after = prompt.positions[:, -1:] + 1  # (B, 1): each row's position id of the first new token
    tokens, chosen_logits, own_logits = [], [], []
    for n in range(n_tokens):
        record = _prompted_record(lm, slice(-1, None), -1, steering) if through_patches else {}
        trace = _trace(lm, step, record, logits=True, cache=cache)
        cache = trace.cache
        logits = trace.logits
        if through_patches:
            query = step.query()
            updates = _assemble(lm, trace, query, t + n - 1, 1, t + n, query.positions[:, -1], steering, factor_dtype)
            logits = _trace(lm, query, {}, patches=updates).logits
        own_logits.append(trace.logits)
        chosen_logits.append(logits)
        tokens.append(logits.argmax(-1, keepdim=True))
        if mask is not None:  # the cached keys and values stay masked where the prompt was padded
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step = _Prompt(tokens[-1], mask, after + n)
    return Continuation(torch.cat(tokens, dim=1), torch.stack(chosen_logits, 1), torch.stack(own_logits, 1))


def lm_trajectory(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    context_lengths: Sequence[int] | None = None,
    kept_tokens: int = 1,
    logits: bool = True,
) -> tuple[list[list[ImplicitUpdate]], tuple[int, ...], Tensor | None]:
    """The updates of every layer for the truncated prompts ``[c_1..c_i, x]``.

    ``x`` is the last ``kept_tokens`` tokens (the query, by default), the context ``c`` the real
    tokens before them. Every truncated prompt runs as it would alone (see
    :func:`_one_pass_trajectory`). Returns ``(updates, lengths, logits)``: ``updates[s][ℓ]`` is
    layer ``ℓ``'s update (batch ``B``) for context length ``lengths[s]``, and ``logits (B, S, V)``
    the model's own logits at the last token of every truncated prompt (``None`` when ``logits``
    is false: the language-model head is then not run).
    """
    if not isinstance(logits, bool):
        raise TypeError(f"logits must be True or False, got {logits!r}")
    lm = _language_model(model)
    kept = _check_kept(kept_tokens, -1)
    prompt = _prompt(lm, input_ids, attention_mask, min_tokens=kept + 1)
    b, t = prompt.ids.shape
    counts = torch.full((b,), t, device=prompt.ids.device) if prompt.mask is None else prompt.mask.sum(-1)
    n_context = int(counts.min()) - kept
    if context_lengths is None:
        lengths = tuple(range(n_context + 1))
    else:
        lengths = tuple(context_lengths)
        if not lengths or any(isinstance(i, bool) or not isinstance(i, int) for i in lengths):
            raise TypeError(f"context_lengths must be a non-empty sequence of ints, got {context_lengths!r}")
        if any(not 0 <= i <= n_context for i in lengths):
            raise ValueError(f"context_lengths must lie in [0, {n_context}] (the shortest prompt's context), got {lengths}")
    return _one_pass_trajectory(lm, prompt, counts, lengths, kept, logits)


#: The attention implementations whose masks the library writes (the one-pass trajectory, runs whose
#: position ids skip): a boolean mask (True: attend) for PyTorch's scaled_dot_product_attention, an
#: additive one for eager attention.
_MASK_FORMATS = ("sdpa", "eager")


def _layer_windows(lm: _LanguageModel) -> dict[str, int | None]:
    """The attention windows the model's layers use, by layer type: ``{type: window or None}``.

    A config with ``layer_types`` (Gemma 2/3, Qwen2/3) mixes full and sliding layers; a config
    with only ``sliding_window`` (Mistral, Mixtral, Phi-3) slides in every layer.
    """
    config = lm.model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None) or None
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    types = getattr(config, "layer_types", None)
    if types:
        return {kind: (window if kind == "sliding_attention" else None) for kind in set(types)}
    return {"full_attention" if window is None else "sliding_attention": window}


def _check_mask_format(lm: _LanguageModel, caller: str) -> None:
    """Refuse a model whose attention reads masks in a format :func:`_explicit_masks` does not write."""
    implementation = getattr(lm.model.config, "_attn_implementation", None)
    if implementation not in _MASK_FORMATS:
        raise ValueError(
            f"{caller} writes its own attention masks for attn_implementation in {_MASK_FORMATS}; the "
            f"{type(lm.model).__name__} uses {implementation!r}: load it with attn_implementation='sdpa'"
        )
    if getattr(lm.model.config, "alibi", False):
        raise ValueError(f"{caller} does not support ALiBi position biases (they are computed from the attention "
                         "mask, which it replaces)")


def _explicit_masks(lm: _LanguageModel, allowed: Tensor, positions: Tensor) -> Tensor | dict[str, Tensor]:
    """The model's attention masks ``(B, 1, Q, KV)`` from ``allowed (B, Q, KV)`` (True: query may read key),
    narrowed to each sliding layer's window counted in position ids ``(B, T)``; one mask, or one per
    layer type when the layers differ, in the format the attention implementation reads."""
    eager = getattr(lm.model.config, "_attn_implementation", None) == "eager"
    masks = {}
    for kind, window in _layer_windows(lm).items():
        mask = allowed if window is None else allowed & (positions[:, :, None] - positions[:, None, :] < window)
        if eager:
            mask = torch.zeros(mask.shape, dtype=lm.dtype, device=mask.device).masked_fill_(~mask, torch.finfo(lm.dtype).min)
        masks[kind] = mask[:, None]
    return masks if len(masks) > 1 else next(iter(masks.values()))


def _gap_mask(lm: _LanguageModel, prompt: _Prompt) -> Tensor | dict[str, Tensor] | None:
    """An explicit causal mask for a prompt without one whose position ids skip (a reference that keeps a
    prefix and the query at their prompt positions), else None.

    Given position ids and no mask, ``transformers`` reads every jump in the ids as the border of
    two *packed* sequences and blocks attention across it, so the query would not see the prefix.
    """
    positions = prompt.positions
    if prompt.mask is not None or positions.shape[1] < 2:
        return None
    steps = positions.diff(dim=-1)
    if bool((steps == 1).all()):
        return None
    if bool((steps < 1).any()):
        raise ValueError("position ids must increase along each prompt")
    _check_mask_format(lm, "a run whose position ids skip")
    return _explicit_masks(lm, positions[:, None, :] <= positions[:, :, None], positions)


def _one_pass_trajectory(
    lm: _LanguageModel, prompt: _Prompt, counts: Tensor, lengths: tuple[int, ...], kept: int, logits: bool
) -> tuple[list[list[ImplicitUpdate]], tuple[int, ...], Tensor | None]:
    """Every truncated prompt ``[c_1..c_i, x]`` in one pass of the model, and one reference pass.

    In a causal model the keys and values of ``c_1..c_i`` in the truncated prompt equal those of
    the full prompt: the context is computed once. The sequence run is the prompt's context
    followed by one copy of the ``K`` kept tokens per step ``i``, at position ids ``i..i+K−1``,
    with a mask that lets copy ``i`` see the first ``i`` context tokens and itself (causally,
    and within the window of a sliding layer, counted in position ids). Each copy then computes
    exactly what the truncated prompt computes at its last ``K`` tokens. The per-layer references
    run all steps' kept tokens alone in one batch.
    """
    _check_mask_format(lm, "implicit_trajectory")
    b, t = prompt.ids.shape
    n_steps, device = len(lengths), prompt.ids.device
    width = t - kept  # prompt columns before the kept tokens (left padding included)
    first = (t - counts)[:, None]  # (B, 1): each row's first real column
    steps_i = torch.tensor(lengths, device=device)  # (S,)
    # the sequence: context columns, then S copies of the kept tokens
    ids = torch.cat([prompt.ids[:, :width], prompt.ids[:, width:].repeat(1, n_steps)], dim=1)
    columns = torch.arange(width, device=device)
    context_pos = (columns[None] - first).clamp(min=0)  # (B, width), position ids of the context
    k = torch.arange(kept, device=device)
    copy_pos = (steps_i[:, None] + k[None]).reshape(-1).expand(b, -1)  # (B, S·K)
    positions = torch.cat([context_pos, copy_pos], dim=1)
    real = torch.cat([columns[None] >= first, torch.ones(b, n_steps * kept, dtype=torch.bool, device=device)], 1)
    segment = torch.cat([torch.full((width,), -1, device=device),
                         torch.arange(n_steps, device=device).repeat_interleave(kept)])  # -1: context; s: step s
    seen = torch.cat([torch.zeros(width, dtype=torch.long, device=device),
                      steps_i.repeat_interleave(kept)])  # how many context tokens a copy's column sees
    q_seg, kv_seg = segment[:, None], segment[None, :]  # (Q, 1), (1, KV)
    causal = positions[:, None, :] <= positions[:, :, None]  # (B, Q, KV): kv at or before q
    within_context = (q_seg < 0) & (kv_seg < 0) & causal
    within_copy = (q_seg >= 0) & (kv_seg == q_seg) & causal
    prefix = (q_seg >= 0) & (kv_seg < 0) & (positions[:, None, :] < seen[None, :, None])
    allowed = real[:, None, :] & (within_context | within_copy | prefix)
    eye = torch.eye(ids.shape[1], dtype=torch.bool, device=device)
    allowed = allowed | (eye[None] & ~real[:, :, None])  # a padding column attends to itself: no empty row
    mask = _explicit_masks(lm, allowed, positions)
    copies = width + torch.arange(n_steps * kept, device=device)  # the copies' columns
    last = width + torch.arange(n_steps, device=device) * kept + kept - 1  # each copy's last column
    at = copies if kept > 1 else last
    record = _prompted_record(lm, copies, at, "bias")
    trace = _trace(lm, _Prompt(ids, mask, positions), record, logits=last if logits else False)

    def by_step(x: Tensor) -> Tensor:  # (B, S, ·) -> (B·S, ·), or (B, S·K, ·) -> (B·S, K, ·): row b·S + s
        return x.reshape(b * n_steps, *x.shape[2:]) if kept == 1 else x.reshape(b * n_steps, kept, -1)

    stepped = _Trace(
        inputs=[z.reshape(b * n_steps, kept, -1) for z in trace.inputs],  # every copy's K tokens
        pre=[by_step(x) for x in trace.pre],
        mlp_in=[by_step(x) for x in trace.mlp_in],
        residual=[by_step(x) for x in trace.residual],
    )
    alone_ids = prompt.ids[:, width:].repeat_interleave(n_steps, dim=0)  # (B·S, K), row b·S + s
    alone_pos = copy_pos.reshape(b, n_steps, kept).reshape(b * n_steps, kept)
    alone = _Prompt(alone_ids, None, alone_pos)
    position_ids = alone_pos[:, -1] if kept == 1 else alone_pos
    flat = _assemble(lm, stepped, alone, 0, kept, 0, position_ids)

    def per_step(x: Tensor | None) -> Tensor | None:  # rows b·S + s -> (B, S, ...): step s is a view [:, s]
        return None if x is None else x.view(b, n_steps, *x.shape[1:])

    fields = ("u", "v", "delta_b", "position_ids", "delta", "carrier")
    layers = [{name: per_step(getattr(u, name)) for name in fields} for u in flat]
    steps = []
    for s, i in enumerate(lengths):
        position = i + kept - 1 if kept == 1 else None
        steps.append([
            replace(u, position=position, n_tokens=i + kept,
                    **{name: None if x is None else x[:, s] for name, x in views.items()})
            for u, views in zip(flat, layers)
        ])
    return steps, lengths, trace.logits


class CausalLMNetwork:
    """A ``transformers`` causal LM as a :class:`icl_lib.core.architecture.Network`."""

    def __init__(self, model: nn.Module):
        family_of(model)  # refuse an unsupported family before anything runs
        self.model = model

    def network_update(self, tokens, position, attention_mask, kept_tokens, steering, factor_dtype):
        return lm_network_update(self.model, tokens, position, attention_mask, kept_tokens, steering, factor_dtype)

    def forward_with_updates(self, updates, query):
        return lm_forward_with_updates(self.model, updates, query)

    def block_inputs(self, tokens, attention_mask):
        return lm_block_inputs(self.model, tokens, attention_mask)

    def block_gaps(self, tokens, attention_mask, position, relative):
        return lm_block_gaps(self.model, tokens, attention_mask, position, relative)

    def network_gap(self, tokens, attention_mask):
        return lm_network_gap(self.model, tokens, attention_mask)

    def trajectory(self, tokens, attention_mask, context_lengths, kept_tokens, logits) -> NetworkTrajectory:
        steps, lengths, logits = lm_trajectory(self.model, tokens, attention_mask, context_lengths, kept_tokens,
                                               logits)
        return NetworkTrajectory(updates=tuple(tuple(step) for step in steps), context_lengths=lengths, logits=logits)


def _layer_view(module: nn.Module) -> None:
    """A decoder layer of a ``transformers`` model cannot run alone: refuse it with the reason."""
    if type(module).__module__.startswith("transformers.") and not is_language_model(module):
        raise TypeError(
            f"a transformers {type(module).__name__} is not a standalone block: its layers need the model's "
            "positions and masks. Pass the whole causal LM to network_update, forward_with_updates, block_inputs, "
            "block_gaps, network_gap or implicit_trajectory"
        )
    return None


register_architecture(
    Architecture(
        name="transformers causal LMs of a registered family (icl_lib.supported_families())",
        view=_layer_view,
        network=lambda model: CausalLMNetwork(model) if is_language_model(model) else None,
    )
)
