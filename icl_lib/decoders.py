"""Hugging Face ``transformers`` decoders seen through the theorem: where each family splits at ``W``.

The library's own blocks expose ``stream`` (everything up to the MLP input) and ``finish``
(everything after the first MLP layer) as methods (``icl_lib.views``). A decoder layer of a
``transformers`` causal LM is run by its model's own code instead (embeddings, rotary or learned
positions, grouped-query attention, sliding windows, masks, softcapping), so its adapter does not
re-implement any of it: it only *names* the modules at which the layer is split. Four names
describe a family:

* ``first``: the linear maps that form the MLP's first layer ``W_s`` (``H_s × D``). A gated MLP
  (SwiGLU/GeGLU: Llama, Qwen, Mistral, Gemma) reads its input through ``W_gate`` and ``W_up``
  only, so its first layer is the stack ``W_s = [W_gate; W_up]`` (``2H × D``). GPT-2 has one,
  ``c_fc``, stored as a ``Conv1D`` (weight transposed, ``D × H``);
* ``mlp``: the module whose input is the MLP input ``m`` (``stream`` ends there);
* ``residual``: the norm whose input is the residual stream ``h`` the MLP's output is added to;
* ``shift``: the module after whose output ``Δb′`` is added (the MLP itself, or Gemma's norm
  after the MLP, since there ``out = h + PostNorm(MLP(PreNorm h))``).

``icl_lib.language_models`` runs the model's own forward with hooks at these modules: it
reads ``W_s m + b_s`` and ``h`` there, and adds ``u (vᵀ m)/‖v‖²`` and ``Δb′`` there (``finish``
is the model's own code after the hook). Nothing about a family is special-cased elsewhere.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import reduce

import torch
from torch import Tensor, nn

__all__ = [
    "DecoderFamily",
    "FAMILIES",
    "FirstLayer",
    "SUPPORTED_LANGUAGE_MODELS",
    "family_of",
    "is_language_model",
    "norms_in_model_dtype",
]


@dataclass(frozen=True)
class DecoderFamily:
    """How one family of ``transformers`` causal LMs is split at the MLP's first layer.

    Attributes:
        name: the family, as error messages name it.
        model_classes: class names of the supported causal LMs (a subclass is accepted too).
        layer_class: the class names a decoder layer may have.
        layers: attribute path from the model to its ``nn.ModuleList`` of decoder layers.
        first: attribute paths, from a layer, of the linear maps stacked into ``W_s``.
        transposed: the first-layer weights are stored ``(D, H)`` (GPT-2's ``Conv1D``).
        mlp: path of the module whose input is the MLP input ``m``.
        residual: path of the norm whose input is the residual stream ``h``.
        shift: path of the module after whose output ``Δb′`` is added.
        absolute_positions: the model adds a learned embedding of the position id, so the query
            alone must keep its own position id (with rotary positions a one-token sequence
            attends only to itself and the id does not matter).
    """

    name: str
    model_classes: tuple[str, ...]
    layer_class: tuple[str, ...]
    layers: str
    first: tuple[str, ...]
    transposed: bool
    mlp: str
    residual: str
    shift: str
    absolute_positions: bool


def _gated(name: str, model_classes: tuple[str, ...], layer_class: tuple[str, ...], post_norms: bool) -> DecoderFamily:
    """A Llama-style family: ``h = z + Attn(norm₁ z)``, ``out = h + MLP(norm₂ h)``, gated MLP.

    With ``post_norms`` (Gemma 2/3) the MLP reads ``pre_feedforward_layernorm(h)`` and its output
    passes ``post_feedforward_layernorm`` before it is added to ``h``.
    """
    return DecoderFamily(
        name=name,
        model_classes=model_classes,
        layer_class=layer_class,
        layers="model.layers",
        first=("mlp.gate_proj", "mlp.up_proj"),
        transposed=False,
        mlp="mlp",
        residual="pre_feedforward_layernorm" if post_norms else "post_attention_layernorm",
        shift="post_feedforward_layernorm" if post_norms else "mlp",
        absolute_positions=False,
    )


#: The supported families, in the order :func:`family_of` tries them.
FAMILIES: tuple[DecoderFamily, ...] = (
    _gated(
        "Llama (also SmolLM2, Mistral, Qwen2, Qwen3, Gemma)",
        ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM"),
        ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer", "GemmaDecoderLayer"),
        post_norms=False,
    ),
    _gated(
        "Gemma 2/3 text (pre/post feed-forward norms)",
        ("Gemma2ForCausalLM", "Gemma3ForCausalLM"),
        ("Gemma2DecoderLayer", "Gemma3DecoderLayer"),
        post_norms=True,
    ),
    DecoderFamily(
        name="GPT-2",
        model_classes=("GPT2LMHeadModel",),
        layer_class=("GPT2Block",),
        layers="transformer.h",
        first=("mlp.c_fc",),
        transposed=True,
        mlp="mlp",
        residual="ln_2",
        shift="mlp",
        absolute_positions=True,
    ),
)

#: The supported causal LM classes, by family, as error messages name them.
SUPPORTED_LANGUAGE_MODELS = (
    "transformers causal LMs: "
    + "; ".join(f"{f.name}: {', '.join(f.model_classes)}" for f in FAMILIES)
)


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
    names = _class_names(model)
    for family in FAMILIES:
        if names & set(family.model_classes):
            break
    else:
        raise TypeError(f"unsupported language model {type(model).__name__}; supported: {SUPPORTED_LANGUAGE_MODELS}")
    for i, layer in enumerate(_resolve(model, family.layers)):
        if not _class_names(layer) & set(family.layer_class):
            raise TypeError(
                f"layer {i} of the {type(model).__name__} is a {type(layer).__name__}, not one of "
                f"{', '.join(family.layer_class)}: unsupported decoder layer; supported: {SUPPORTED_LANGUAGE_MODELS}"
            )
        for path in family.first:
            module = _resolve(layer, path)
            expected = "Conv1D" if family.transposed else "Linear"
            if expected not in _class_names(module):
                raise TypeError(f"layer {i}'s {path} is a {type(module).__name__}, expected {expected}")
    return family


def _resolve(root: nn.Module, path: str) -> nn.Module:
    return reduce(getattr, path.split("."), root)


def decoder_layers(model: nn.Module, family: DecoderFamily) -> list[nn.Module]:
    """The model's decoder layers, in order."""
    return list(_resolve(model, family.layers))


class FirstLayer:
    """The MLP's first layer ``W_s m + b_s`` of one decoder layer, stacked over its linear maps.

    ``W_s`` is never stored: calling the object evaluates each map and concatenates, and
    :attr:`weight` forms the dense ``(H_s, D)`` matrix only when asked for.

    Args:
        modules: the maps in stacking order (``gate_proj`` then ``up_proj``, or ``c_fc``).
        transposed: weights stored ``(D, H)`` (``Conv1D``).
    """

    def __init__(self, modules: tuple[nn.Module, ...], transposed: bool):
        self.modules, self.transposed = modules, transposed
        widths = [(m.weight.shape[1] if transposed else m.weight.shape[0]) for m in modules]
        self.in_features = modules[0].weight.shape[0 if transposed else 1]
        self.out_features = sum(widths)
        starts = [sum(widths[:i]) for i in range(len(widths))]
        self.slices = tuple(slice(s, s + w) for s, w in zip(starts, widths))

    def __call__(self, m: Tensor) -> Tensor:
        """``(..., D) -> (..., H_s)``: ``W_s m + b_s``."""
        return torch.cat([module(m) for module in self.modules], dim=-1)

    @property
    def weight(self) -> Tensor:
        """The dense ``W_s``, ``(H_s, D)`` (a new tensor on every call)."""
        return torch.cat([m.weight.T if self.transposed else m.weight for m in self.modules], dim=0)

    @property
    def bias(self) -> Tensor | None:
        """``b_s (H_s,)``, or ``None`` when the maps have no bias."""
        biases = [m.bias for m in self.modules]
        return None if any(b is None for b in biases) else torch.cat(biases)


def first_layer(layer: nn.Module, family: DecoderFamily) -> FirstLayer:
    """The stacked first MLP layer of one decoder layer."""
    return FirstLayer(tuple(_resolve(layer, path) for path in family.first), family.transposed)


def split_modules(layer: nn.Module, family: DecoderFamily) -> tuple[nn.Module, nn.Module, nn.Module]:
    """``(mlp, residual, shift)``: the modules a layer is split at (see :class:`DecoderFamily`)."""
    return _resolve(layer, family.mlp), _resolve(layer, family.residual), _resolve(layer, family.shift)


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
