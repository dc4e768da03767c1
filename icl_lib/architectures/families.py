"""``transformers`` decoder families as data: where each family's layers split at ``W_s``.

A decoder layer of a ``transformers`` causal LM is run by its model's own code (embeddings,
rotary or learned positions, grouped-query attention, sliding windows, masks, softcapping), so
the library re-implements none of it: a family only *names* the four sites of the theorem
(:mod:`icl_lib.core.architecture`) as attribute paths from a decoder layer, and
:mod:`icl_lib.architectures.causal_lm` puts hooks there:

* ``first``: the linear maps that form the MLP's first layer ``W_s`` (``H_s × D``). A gated MLP
  (SwiGLU/GeGLU: Llama, Qwen, Mistral, Gemma) reads its input through ``W_gate`` and ``W_up``
  only, so its first layer is the stack ``W_s = [W_gate; W_up]`` (``2H × D``); Phi-3 stores that
  stack as one fused ``gate_up_proj``; GPT-2 has one ``c_fc``, stored as a ``Conv1D`` (weight
  transposed, ``D × H``). A mixture of experts reads its input through its router and every
  expert's first layer (and a shared expert and its gate, in Qwen2-MoE), all linear: ``W_s``
  stacks them all, and the router takes the same rank-1 update as the experts;
* ``mlp``: the module whose input is the MLP input ``m``;
* ``residual``: the module whose input is the residual stream ``h`` the MLP output is added to,
  or ``None`` where no module reads ``h``: in a parallel-residual layer
  (``out = z + Attn(N₁ z) + MLP(N₂ z)``) ``h = z + Attn(N₁ z)`` is read as the layer's output
  minus what the ``shift`` module added;
* ``shift``: the module after whose output ``Δb′`` is added (the MLP itself, or the norm after
  it in Gemma 2/3 and OLMo2, since there ``out = h + PostNorm(MLP(m))``); ``shift_scale`` names
  a layer attribute that multiplies that output before the addition (Granite's
  ``residual_multiplier``), so ``Δb′`` is stored in the shift module's units.

A family the library does not know is added as data with :func:`register_family`; nothing else
about a family is special-cased anywhere.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from functools import reduce

import torch
from torch import Tensor, nn

__all__ = [
    "DecoderFamily",
    "FirstLayer",
    "register_family",
    "supported_families",
    "family_of",
    "is_language_model",
    "norms_in_model_dtype",
]


@dataclass(frozen=True)
class DecoderFamily:
    """How one family of ``transformers`` causal LMs is split at the MLP's first layer.

    Attributes:
        name: the family, as error messages name it.
        model_classes: class names of the causal LMs of the family (a subclass is accepted too).
        layer_classes: the class names a decoder layer may have.
        layers: attribute path from the model to its ``nn.ModuleList`` of decoder layers.
        first: attribute paths, from a layer, of the linear maps stacked into ``W_s``, in order:
            modules, or bare weights (a router's ``(E, D)``, experts' ``(E, R, D)``). With a bare
            weight the layer is patched at its MLP input instead of at the maps' outputs, which
            is the same map: ``(W + W δ aᵀ/‖a‖²) m = W (m + δ (aᵀm)/‖a‖²)`` for every ``W`` that
            reads ``m``.
        mlp: path of the module whose input is the MLP input ``m``.
        residual: path of the module whose input is the residual stream ``h``, or ``None`` to
            read ``h`` as the layer's output minus the (scaled) ``shift`` output (parallel blocks).
        shift: path of the module after whose output ``Δb′`` is added.
        transposed: the first-layer weights are stored ``(D, H)`` (GPT-2's ``Conv1D``).
        absolute_positions: the model adds a learned embedding of the position id, so the query
            alone must keep its own position id (with rotary positions a one-token sequence
            attends only to itself and the id does not matter).
        shift_scale: path of a layer attribute (a number) that multiplies the ``shift`` output
            before the residual addition, or ``None``.
        down: path of the MLP's last linear map (``W_down``), whose output is the MLP output
            (``network_update(..., steering="down")`` carries ``Δb′`` there), or ``None``.
        norm_offset: where ``shift`` is a norm without bias that scales the normalised MLP
            output, ``out = s ⊙ n`` (Gemma 2/3's and OLMo2's post-feed-forward RMSNorm), the
            number added to its ``weight`` to give ``s`` (1 for Gemma's ``1 + w``, 0 for OLMo2):
            ``steering="norm"`` carries ``Δb′`` in ``s``. ``None`` where the MLP output is added
            as it is.
    """

    name: str
    model_classes: tuple[str, ...]
    layer_classes: tuple[str, ...]
    layers: str
    first: tuple[str, ...]
    mlp: str
    residual: str | None
    shift: str
    transposed: bool = False
    absolute_positions: bool = False
    shift_scale: str | None = None
    down: str | None = None
    norm_offset: float | None = None

    def __post_init__(self) -> None:
        for name in ("name", "layers", "mlp", "shift"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise TypeError(f"DecoderFamily.{name} must be a non-empty str, got {value!r}")
        for name in ("model_classes", "layer_classes", "first"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not value or not all(isinstance(v, str) and v for v in value):
                raise TypeError(f"DecoderFamily.{name} must be a non-empty tuple of str, got {value!r}")
        for name in ("residual", "shift_scale"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"DecoderFamily.{name} must be a non-empty str or None, got {value!r}")
        for name in ("transposed", "absolute_positions"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"DecoderFamily.{name} must be a bool, got {getattr(self, name)!r}")
        if self.down is not None and (not isinstance(self.down, str) or not self.down):
            raise TypeError(f"DecoderFamily.down must be a non-empty str or None, got {self.down!r}")
        offset = self.norm_offset
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, (int, float))):
            raise TypeError(f"DecoderFamily.norm_offset must be a number or None, got {offset!r}")
        if offset is not None and self.shift == self.mlp:
            raise ValueError(f"DecoderFamily {self.name!r}: norm_offset says a norm follows the MLP, but shift is the "
                             "MLP itself")


def _llama_like(
    name: str,
    prefixes: tuple[str, ...],
    *,
    post_norms: bool = False,
    first: tuple[str, ...] = ("mlp.gate_proj", "mlp.up_proj"),
    down: str | None = "mlp.down_proj",
) -> DecoderFamily:
    """A pre-norm family: ``h = z + Attn(norm₁ z)``, ``out = h + MLP(norm₂ h)``, a gated MLP.

    Class names are ``{prefix}ForCausalLM`` and ``{prefix}DecoderLayer``. With ``post_norms``
    (Gemma 2/3) the MLP reads ``pre_feedforward_layernorm(h)`` and its output passes
    ``post_feedforward_layernorm`` before it is added to ``h``.
    """
    return DecoderFamily(
        name=name,
        model_classes=tuple(f"{p}ForCausalLM" for p in prefixes),
        layer_classes=tuple(f"{p}DecoderLayer" for p in prefixes),
        layers="model.layers",
        first=first,
        mlp="mlp",
        residual="pre_feedforward_layernorm" if post_norms else "post_attention_layernorm",
        shift="post_feedforward_layernorm" if post_norms else "mlp",
        down=None if post_norms else down,  # with post-norms the MLP output is normalised before it is added
        norm_offset=1.0 if post_norms else None,  # Gemma's RMSNorm scales by 1 + weight
    )


def _parallel(
    name: str, model_class: str, layer_class: str, layers: str, first: tuple[str, ...], down: str
) -> DecoderFamily:
    """A family whose layer adds its MLP output as it is and reads ``h`` from the layer's output
    (``residual=None``): parallel-residual layers, ``out = z + Attn(N₁ z) + MLP(N₂ z)``, and the
    sequential variants the same classes switch to by configuration."""
    return DecoderFamily(name=name, model_classes=(model_class,), layer_classes=(layer_class,), layers=layers,
                         first=first, mlp="mlp", residual=None, shift="mlp", down=down)


_FAMILIES: list[DecoderFamily] = [
    _llama_like(
        "Llama (also SmolLM2, Mistral, Qwen2, Qwen3, Gemma)",
        ("Llama", "Mistral", "Qwen2", "Qwen3", "Gemma"),
    ),
    _llama_like("Gemma 2/3 text (pre/post feed-forward norms)", ("Gemma2", "Gemma3"), post_norms=True),
    _llama_like("OLMo (non-parametric LayerNorm)", ("Olmo",)),
    _llama_like("Phi-3 (fused gate_up_proj)", ("Phi3",), first=("mlp.gate_up_proj",)),
    DecoderFamily(
        name="Granite (residual multiplier)",
        model_classes=("GraniteForCausalLM",),
        layer_classes=("GraniteDecoderLayer",),
        layers="model.layers",
        first=("mlp.gate_proj", "mlp.up_proj"),
        mlp="mlp",
        residual="post_attention_layernorm",
        shift="mlp",
        shift_scale="residual_multiplier",
        down="mlp.down_proj",
    ),
    DecoderFamily(
        name="OLMo2 (norms after each sublayer)",
        model_classes=("Olmo2ForCausalLM",),
        layer_classes=("Olmo2DecoderLayer",),
        layers="model.layers",
        first=("mlp.gate_proj", "mlp.up_proj"),
        mlp="mlp",
        residual="mlp",  # the MLP reads h itself: out = h + PostNorm(MLP(h))
        shift="post_feedforward_layernorm",
        norm_offset=0.0,
    ),
    DecoderFamily(
        name="Gemma 3 multimodal, text path",
        model_classes=("Gemma3ForConditionalGeneration",),
        layer_classes=("Gemma3DecoderLayer",),
        layers="model.language_model.layers",
        first=("mlp.gate_proj", "mlp.up_proj"),
        mlp="mlp",
        residual="pre_feedforward_layernorm",
        shift="post_feedforward_layernorm",
        norm_offset=1.0,
    ),
    # Mixtures of experts: the router and every expert read the MLP input m, through bare weights
    # (a (E, D) router, (E, 2H, D) experts), so these layers are patched at m itself.
    _llama_like("Mixtral (mixture of experts)", ("Mixtral",), first=("mlp.gate.weight", "mlp.experts.gate_up_proj"),
                down=None),
    _llama_like("OLMoE (mixture of experts)", ("Olmoe",), first=("mlp.gate.weight", "mlp.experts.gate_up_proj"),
                down=None),
    _llama_like("Qwen3-MoE (mixture of experts)", ("Qwen3Moe",), first=("mlp.gate.weight", "mlp.experts.gate_up_proj"),
                down=None),
    _llama_like(
        "Qwen2-MoE (mixture of experts with a shared expert)",
        ("Qwen2Moe",),
        first=(
            "mlp.gate.weight",
            "mlp.experts.gate_up_proj",
            "mlp.shared_expert.gate_proj",
            "mlp.shared_expert.up_proj",
            "mlp.shared_expert_gate",
        ),
        down=None,  # the experts' W_down are bare 3-D weights and the shared expert adds its own
    ),
    # Parallel-residual layers, out = z + Attn(N₁ z) + MLP(N₂ z): h is read from the output. The
    # same record runs their sequential variants (GPT-NeoX and StableLM with
    # use_parallel_residual=False, Falcon with parallel_attn=False), where h is still the output
    # minus the MLP's contribution.
    _parallel(
        "GPT-NeoX (Pythia), parallel or sequential",
        "GPTNeoXForCausalLM",
        "GPTNeoXLayer",
        "gpt_neox.layers",
        ("mlp.dense_h_to_4h",),
        "mlp.dense_4h_to_h",
    ),
    _parallel(
        "GPT-J (parallel)",
        "GPTJForCausalLM",
        "GPTJBlock",
        "transformer.h",
        ("mlp.fc_in",),
        "mlp.fc_out",
    ),
    _parallel(
        "Phi-1/1.5/2 (parallel)",
        "PhiForCausalLM",
        "PhiDecoderLayer",
        "model.layers",
        ("mlp.fc1",),
        "mlp.fc2",
    ),
    _parallel(
        "Falcon, parallel or sequential",
        "FalconForCausalLM",
        "FalconDecoderLayer",
        "transformer.h",
        ("mlp.dense_h_to_4h",),
        "mlp.dense_4h_to_h",
    ),
    _parallel(
        "Cohere (parallel)",
        "CohereForCausalLM",
        "CohereDecoderLayer",
        "model.layers",
        ("mlp.gate_proj", "mlp.up_proj"),
        "mlp.down_proj",
    ),
    _parallel(
        "StableLM, parallel or sequential",
        "StableLmForCausalLM",
        "StableLmDecoderLayer",
        "model.layers",
        ("mlp.gate_proj", "mlp.up_proj"),
        "mlp.down_proj",
    ),
    DecoderFamily(
        name="GPT-2",
        model_classes=("GPT2LMHeadModel",),
        layer_classes=("GPT2Block",),
        layers="transformer.h",
        first=("mlp.c_fc",),
        mlp="mlp",
        residual="ln_2",
        shift="mlp",
        transposed=True,
        absolute_positions=True,
        down="mlp.c_proj",
    ),
]


def register_family(family: DecoderFamily) -> DecoderFamily:
    """Teach the library a ``transformers`` family: every function of the library then runs it.

    The family is data (:class:`DecoderFamily`); nothing in the library is edited. A model is
    matched by the most specific class of its class hierarchy that a family names, so a family
    registered for a subclass of a known model (one whose layers were replaced, say) wins over
    the family of its base class. A model class can belong to one family only.

    Raises:
        TypeError: ``family`` is not a :class:`DecoderFamily`.
        ValueError: its name, or one of its model classes, is registered already.
    """
    if not isinstance(family, DecoderFamily):
        raise TypeError(f"register_family takes an icl_lib.DecoderFamily, got {type(family).__name__}")
    for known in _FAMILIES:
        if known.name == family.name:
            raise ValueError(f"a family named {family.name!r} is registered already")
        taken = set(known.model_classes) & set(family.model_classes)
        if taken:
            raise ValueError(f"model class(es) {sorted(taken)} belong to the registered family {known.name!r} already")
    _FAMILIES.append(family)
    return family


def supported_families() -> tuple[DecoderFamily, ...]:
    """The registered families, in the order ``family_of`` tries them."""
    return tuple(_FAMILIES)


def _supported() -> str:
    return "; ".join(f"{f.name}: {', '.join(f.model_classes)}" for f in _FAMILIES)


def _class_names(obj: object) -> set[str]:
    return {cls.__name__ for cls in type(obj).__mro__}


def is_language_model(model: object) -> bool:
    """Whether ``model`` is a ``transformers`` model (checked without importing ``transformers``)."""
    if "transformers" not in sys.modules:
        return False
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def family_of(model: nn.Module) -> DecoderFamily:
    """The family of a supported causal LM; ``TypeError`` naming the supported ones otherwise.

    Every decoder layer must be of the family's layer class and every first-layer module an
    ``nn.Linear`` (or GPT-2's ``Conv1D``): a model whose layers were replaced is refused.
    """
    family = next(
        (f for cls in type(model).__mro__ for f in _FAMILIES if cls.__name__ in f.model_classes), None
    )  # the family of the most specific class: a registered subclass of a known model wins
    if family is None:
        raise TypeError(
            f"unsupported language model {type(model).__name__}; supported: {_supported()}. "
            "Add its family with icl_lib.register_family(icl_lib.DecoderFamily(...))"
        )
    try:
        layers = _resolve(model, family.layers)
    except AttributeError as error:
        raise TypeError(f"the {family.name} family's layers path {family.layers!r} does not resolve on the "
                        f"{type(model).__name__}: {error}") from None
    for i, layer in enumerate(layers):
        if not _class_names(layer) & set(family.layer_classes):
            raise TypeError(
                f"layer {i} of the {type(model).__name__} is a {type(layer).__name__}, not one of "
                f"{', '.join(family.layer_classes)}: unsupported decoder layer; supported: {_supported()}. A model "
                "whose layers differ from its family's can be described with icl_lib.register_family"
            )
        paths = [*family.first, family.mlp, family.shift] + [p for p in (family.residual, family.down) if p]
        for path in paths:
            try:
                _resolve(layer, path)
            except AttributeError:
                raise TypeError(f"layer {i} ({type(layer).__name__}) has no {path!r}, a site the {family.name} "
                                "family names") from None
        width = None
        for path in family.first:
            found = _resolve(layer, path)
            if isinstance(found, Tensor):
                if found.ndim not in (2, 3):
                    raise TypeError(f"layer {i}'s {path} is a {found.ndim}-d tensor; a bare first-layer weight must "
                                    "be a (R, D) matrix or an (E, R, D) stack of expert matrices")
                in_width = found.shape[-1]
            else:
                expected = "Conv1D" if family.transposed else "Linear"
                if expected not in _class_names(found):
                    raise TypeError(f"layer {i}'s {path} is a {type(found).__name__}, expected {expected} or a weight")
                in_width = found.weight.shape[0 if family.transposed else 1]
            if width is not None and in_width != width:
                raise TypeError(f"layer {i}'s {path} reads width {in_width}, but the maps before it read {width}")
            width = in_width
        if family.shift_scale is not None:
            scale = _resolve(layer, family.shift_scale)
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale == 0:
                raise TypeError(f"layer {i}'s {family.shift_scale} is {scale!r}, not a non-zero number")
    return family


def _resolve(root: object, path: str):
    return reduce(getattr, path.split("."), root)


def decoder_layers(model: nn.Module, family: DecoderFamily) -> list[nn.Module]:
    """The model's decoder layers, in order."""
    return list(_resolve(model, family.layers))


class FirstLayer:
    """The MLP's first layer ``W_s m + b_s`` of one decoder layer, stacked over the maps that read ``m``.

    A map is a linear module (``nn.Linear``, or GPT-2's ``Conv1D`` with ``transposed``), or a
    bare weight: a router's ``(E, D)`` matrix, or a mixture of experts' ``(E, R, D)`` stack of
    expert first layers, which ``transformers`` 5 stores as 3-D parameters and multiplies in a
    grouped kernel, with no module per expert to hook. A bare weight is held as its owning module
    and attribute name and read when it is used: a module that ``accelerate`` offloads has its
    weights only during its own forward, so it is read inside ``accelerate``'s
    ``align_module_device``. ``W_s`` is never stored: calling the object evaluates each map and
    concatenates, and :attr:`weight` forms the dense ``(H_s, D)`` matrix only when asked for.

    Args:
        maps: in stacking order (``gate_proj`` then ``up_proj``; ``c_fc``; router then experts):
            modules, or ``(owner, attribute)`` pairs naming bare weights.
        transposed: module weights stored ``(D, H)`` (``Conv1D``).
    """

    def __init__(self, maps: tuple[nn.Module | tuple[nn.Module, str], ...], transposed: bool):
        self.maps, self.transposed = maps, transposed
        self.hookable = all(isinstance(m, nn.Module) for m in maps)
        self.modules = maps if self.hookable else ()
        shapes = [self._shape(m) for m in maps]
        self.in_features = shapes[0][1]
        self.out_features = sum(rows for rows, _ in shapes)
        starts = [sum(rows for rows, _ in shapes[:i]) for i in range(len(shapes))]
        self.slices = tuple(slice(s, s + rows) for s, (rows, _) in zip(starts, shapes))

    def _shape(self, m: nn.Module | tuple[nn.Module, str]) -> tuple[int, int]:
        """``(R, D)`` of one map, from its weight's shape (a meta tensor has one too)."""
        weight = m.weight if isinstance(m, nn.Module) else getattr(*m)
        if isinstance(m, nn.Module):
            return tuple(weight.shape[::-1]) if self.transposed else tuple(weight.shape)
        return (weight.numel() // weight.shape[-1], weight.shape[-1])

    @staticmethod
    def _bare(owner: nn.Module, name: str) -> Tensor:
        """A bare weight as ``(R, D)``: call inside :func:`_loaded` for an offloaded owner."""
        weight = getattr(owner, name)
        return weight.reshape(-1, weight.shape[-1])

    def _matrix(self, m: nn.Module | tuple[nn.Module, str]) -> Tensor:
        if isinstance(m, nn.Module):
            return m.weight.T if self.transposed else m.weight
        with _loaded(m[0]):
            return self._bare(*m).clone()

    def __call__(self, m: Tensor) -> Tensor:
        """``(..., D) -> (..., H_s)``: ``W_s m + b_s``."""
        outs = []
        for f in self.maps:
            if isinstance(f, nn.Module):
                outs.append(f(m))
                continue
            with _loaded(f[0]):
                weight = self._bare(*f)
                outs.append(nn.functional.linear(m.to(weight.device), weight).to(m.device))
        return torch.cat(outs, dim=-1)

    @property
    def weight(self) -> Tensor:
        """The dense ``W_s``, ``(H_s, D)`` (a new tensor on every call)."""
        return torch.cat([self._matrix(m) for m in self.maps], dim=0)

    @property
    def bias(self) -> Tensor | None:
        """``b_s (H_s,)``, or ``None`` when the maps have no bias."""
        biases = [getattr(m, "bias", None) if isinstance(m, nn.Module) else None for m in self.maps]
        return None if any(b is None for b in biases) else torch.cat(biases)


def _loaded(module: nn.Module):
    """A context in which an ``accelerate``-offloaded module holds its weights (a no-op otherwise)."""
    if getattr(module, "_hf_hook", None) is None:
        return contextlib.nullcontext()
    from accelerate.utils import align_module_device

    return align_module_device(module)


def first_layer(layer: nn.Module, family: DecoderFamily) -> FirstLayer:
    """The stacked first MLP layer of one decoder layer."""
    maps = []
    for path in family.first:
        found = _resolve(layer, path)
        if isinstance(found, nn.Module):
            maps.append(found)
        else:
            owner, _, name = path.rpartition(".")
            maps.append((_resolve(layer, owner) if owner else layer, name))
    return FirstLayer(tuple(maps), family.transposed)


def split_modules(layer: nn.Module, family: DecoderFamily) -> tuple[nn.Module, nn.Module | None, nn.Module]:
    """``(mlp, residual, shift)``: the modules a layer is split at (see :class:`DecoderFamily`);
    ``residual`` is ``None`` where the family reads ``h`` from the layer's output."""
    residual = None if family.residual is None else _resolve(layer, family.residual)
    return _resolve(layer, family.mlp), residual, _resolve(layer, family.shift)


def shift_scale(layer: nn.Module, family: DecoderFamily) -> float | None:
    """The number the layer multiplies its ``shift`` output by, or ``None`` (see :class:`DecoderFamily`)."""
    return None if family.shift_scale is None else float(_resolve(layer, family.shift_scale))


# RMSNorm classes of transformers that compute ``weight · x / √(mean x² + ε)`` after casting x to float32.
_FLOAT32_RMSNORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


class _RMSNormInDtype(nn.Module):
    """``weight · x / √(mean x² + ε)`` computed in the input's own dtype."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight, self.variance_epsilon = norm.weight, norm.variance_epsilon

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def norms_in_model_dtype(model: nn.Module) -> nn.Module:
    """A copy of a Llama-family model whose RMSNorms compute in the model's dtype.

    ``transformers``' RMSNorm of the Llama family casts its input to float32 whatever the model's
    dtype, so a float64 model normalises in float32. The copy shares the norms' weights and uses
    the same formula in the input's dtype: in float64 it is a float64 model throughout.
    """
    import copy

    family = family_of(model)
    if family.transposed or family.residual != "post_attention_layernorm":
        raise TypeError(f"norms_in_model_dtype supports the Llama family's RMSNorm, not {family.name}")
    clone = copy.deepcopy(model)
    for name, module in list(clone.named_modules()):
        for child_name, child in list(module.named_children()):
            if type(child).__name__ in _FLOAT32_RMSNORMS:
                setattr(module, child_name, _RMSNormInDtype(child))
    return clone
