"""Task vectors, function vectors and mean steering vectors as one-layer interventions in a zero-shot run.

Three vectors, each computed from few-shot prompts ``[BOS, demonstrations, query line]`` and used
on the bare query ``[BOS, query line]`` at its last token, at one decoder layer ``ℓ``:

* the *task vector* of Hendel et al. (2023): the layer-``ℓ`` output at the last token of the
  few-shot prompts, averaged over prompts, *replaces* the bare run's layer-``ℓ`` output there;
* the *function vector* of Todd et al. (2024): the summed mean outputs, at the last token, of the
  ``k`` attention heads with the largest average indirect effect, *added* to the layer-``ℓ``
  output. A head's output is its slice of the attention output projection's input, mapped by its
  columns of ``W_O``; its indirect effect on a prompt whose demonstrations have shuffled answers is
  the rise of the correct answer's probability when that head's last-token input to ``W_O`` is
  replaced by its mean over the clean prompts;
* the *mean steering vector* ``Δb′`` of the exact patch at layer ``ℓ`` (the context's residual
  shift at the query, :func:`icl_lib.experiments.thought_patches.residual_shifts`), averaged
  over prompts, *added* to the layer-``ℓ`` output (at one layer, or summed over layers ``≤ ℓ``).

Every intervention acts on the last token only, and in a causal model the earlier tokens do not
see it, so the bare prefix runs once and is kept in the model's key/value cache; each
intervention then costs one token. The same holds for the head scan.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..architectures.causal_lm import _language_model, _LanguageModel, _Prompt, _trace
from .fewshot import answer_accuracy

__all__ = [
    "last_token_states",
    "head_inputs",
    "head_indirect_effects",
    "function_vector",
    "intervention_accuracy",
    "shuffled_answers",
    "SWEEP_METHODS",
    "VectorSweep",
    "vector_sweep",
]

_MODES = ("add", "replace")


def _o_proj(layer: nn.Module) -> nn.Linear:
    projection = getattr(getattr(layer, "self_attn", None), "o_proj", None)
    if not isinstance(projection, nn.Linear):
        raise TypeError(f"{type(layer).__name__} has no self_attn.o_proj linear map; function vectors need a "
                        "Llama-style attention module")
    return projection


def _check_ids(ids: object, name: str = "ids") -> Tensor:
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.dtype != torch.long or ids.shape[1] < 2:
        raise ValueError(f"{name} must be a (B, T ≥ 2) tensor of token ids (torch.long)")
    return ids


def _positions(ids: Tensor) -> Tensor:
    return torch.arange(ids.shape[1], device=ids.device).expand_as(ids)


def last_token_states(model: nn.Module, ids: Tensor) -> Tensor:
    """Every layer's output at the last token of ``ids (B, T)``: ``(L, B, D)``."""
    lm = _language_model(model)
    ids = _check_ids(ids).to(lm.device)
    trace = _trace(lm, _Prompt(ids, None, _positions(ids)), {"outputs": -1}, logits=False)
    return torch.stack(trace.outputs)


def head_inputs(model: nn.Module, ids: Tensor) -> Tensor:
    """The input of every layer's attention output map ``W_O`` at the last token: ``(L, B, H·d_head)``."""
    lm = _language_model(model)
    ids = _check_ids(ids).to(lm.device)
    seen: list[Tensor] = []
    handles = [_o_proj(layer).register_forward_pre_hook(lambda m, a: seen.append(a[0][:, -1].clone()))
               for layer in lm.layers]
    try:
        with torch.no_grad():
            lm.model.base_model(input_ids=ids, position_ids=_positions(ids), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(seen)


def _prefix_cache(lm: _LanguageModel, ids: Tensor):
    """The key/value cache of every token of ``ids`` but the last."""
    with torch.no_grad():
        out = lm.model(input_ids=ids[:, :-1], position_ids=_positions(ids)[:, :-1], use_cache=True, logits_to_keep=1)
    return out.cache


def _last_token_logits(lm: _LanguageModel, ids: Tensor, cache, repeats: int) -> Tensor:
    """Logits ``(B·repeats, V)`` of the last token of ``ids``, each row repeated ``repeats`` times
    (row-major: the copies of a row are adjacent), on a copy of ``cache``."""
    grown = copy.deepcopy(cache)
    if repeats > 1:
        grown.batch_repeat_interleave(repeats)
    last = ids[:, -1:].repeat_interleave(repeats, dim=0)
    position = torch.full_like(last, ids.shape[1] - 1)
    with torch.no_grad():
        return lm.model(input_ids=last, position_ids=position, cache=grown, use_cache=True).logits[:, -1]


def head_indirect_effects(model: nn.Module, corrupted: Tensor, answers: Tensor, mean_inputs: Tensor) -> Tensor:
    """Average indirect effect of every attention head: ``(L, H)``.

    Args:
        corrupted: ``(B, T)`` prompts whose demonstrations carry shuffled answers.
        answers: ``(B,)`` the correct first answer token of each prompt's query.
        mean_inputs: ``(L, H·d_head)`` mean last-token input of ``W_O`` over clean prompts
            (:func:`head_inputs` averaged over its batch).

    Returns:
        the mean over prompts of ``p(answer | head's input replaced by its mean) − p(answer)``.
    """
    lm = _language_model(model)
    corrupted = _check_ids(corrupted, "corrupted").to(lm.device)
    if not isinstance(answers, Tensor) or answers.shape != (corrupted.shape[0],):
        raise ValueError("answers must be a (B,) tensor with one answer token per prompt")
    n_layers = len(lm.layers)
    heads = lm.model.config.num_attention_heads
    if mean_inputs.shape[0] != n_layers or mean_inputs.shape[1] % heads:
        raise ValueError(f"mean_inputs must be (L={n_layers}, H·d_head) with H={heads}, got {tuple(mean_inputs.shape)}")
    width = mean_inputs.shape[1] // heads
    cache = _prefix_cache(lm, corrupted)
    rows = torch.arange(corrupted.shape[0], device=lm.device)
    clean = torch.softmax(_last_token_logits(lm, corrupted, cache, 1).double(), -1)[rows, answers]
    effects = torch.zeros(n_layers, heads, dtype=torch.float64)
    for layer_index, layer in enumerate(lm.layers):

        def replace(module, args, layer_index=layer_index):
            x = args[0].clone()  # (B·H, 1, H·d_head); row b·H + h has head h replaced
            for h in range(heads):
                x[h::heads, -1, h * width:(h + 1) * width] = mean_inputs[layer_index, h * width:(h + 1) * width]
            return (x, *args[1:])

        handle = _o_proj(layer).register_forward_pre_hook(replace)
        try:
            logits = _last_token_logits(lm, corrupted, cache, heads)
        finally:
            handle.remove()
        probs = torch.softmax(logits.double(), -1)[torch.arange(logits.shape[0], device=lm.device),
                                                   answers.repeat_interleave(heads)]
        effects[layer_index] = (probs.view(-1, heads) - clean[:, None]).mean(0).cpu()
    return effects


def function_vector(model: nn.Module, mean_inputs: Tensor, effects: Tensor, n_heads: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """The function vector ``Σ_{(l,h) ∈ top} W_O[l][:, h] mean_inputs[l, h]`` of the ``n_heads``
    heads with the largest effects: ``(D,)`` and the heads, largest first."""
    lm = _language_model(model)
    n_layers, heads = effects.shape
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or not 1 <= n_heads <= n_layers * heads:
        raise ValueError(f"n_heads must be an int in [1, {n_layers * heads}], got {n_heads!r}")
    width = mean_inputs.shape[1] // heads
    top = torch.topk(effects.flatten(), n_heads).indices.tolist()
    chosen = [(i // heads, i % heads) for i in top]
    vector = torch.zeros(lm.model.config.hidden_size, dtype=lm.dtype, device=lm.device)
    for layer, head in chosen:
        weight = _o_proj(lm.layers[layer]).weight  # (D, H·d_head)
        cut = slice(head * width, (head + 1) * width)
        vector += weight[:, cut] @ mean_inputs[layer, cut].to(weight.dtype)
    return vector, chosen


def shuffled_answers(prompt: Tensor, answer_columns: Sequence[int], seed: int = 0) -> Tensor:
    """``prompt (B, T)`` with the tokens at ``answer_columns`` (the demonstrations' answers)
    permuted among themselves, the same derangement for every row."""
    columns = list(answer_columns)
    if len(columns) < 2:
        raise ValueError("shuffling needs at least two demonstration answers")
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(columns), generator=generator)
        if (order != torch.arange(len(columns))).all():
            break
    out = prompt.clone()
    out[:, columns] = prompt[:, [columns[i] for i in order.tolist()]]
    return out


def intervention_accuracy(
    model: nn.Module,
    ids: Tensor,
    answers: Sequence[Sequence[int]],
    edits: Sequence[tuple[int, Tensor, str]],
    chunk: int = 16,
) -> Tensor:
    """Whether each bare query is answered right under each edit of its last token: ``(E, B)`` bool.

    Args:
        ids: ``(B, T)`` bare queries ``[BOS, query line]``.
        answers: per query, the accepted first tokens of its answer.
        edits: ``(layer, vector (D,), mode)``: ``"add"`` adds ``vector`` to that layer's output at
            the last token, ``"replace"`` puts it there. ``layer = -1`` with any vector means no edit.
        chunk: edits run together in one batched pass.
    """
    lm = _language_model(model)
    ids = _check_ids(ids).to(lm.device)
    if len(answers) != ids.shape[0]:
        raise ValueError(f"{len(answers)} answer lists for {ids.shape[0]} queries")
    for layer, vector, mode in edits:
        if mode not in _MODES or not -1 <= layer < len(lm.layers) or vector.shape != (lm.model.config.hidden_size,):
            raise ValueError(f"an edit is (layer in [-1, {len(lm.layers)}), (D,) vector, mode in {_MODES}); "
                             f"got ({layer}, {tuple(vector.shape)}, {mode!r})")
    cache = _prefix_cache(lm, ids)
    b = ids.shape[0]
    results = []
    for start in range(0, len(edits), chunk):
        group = edits[start:start + chunk]
        size = len(group)
        handles = []
        for layer_index, layer in enumerate(lm.layers):
            mine = [(k, vector, mode) for k, (at, vector, mode) in enumerate(group) if at == layer_index]
            if not mine:
                continue

            def edit(module, args, out, mine=mine, size=size):
                hidden = out[0] if isinstance(out, tuple) else out
                hidden = hidden.clone()
                for k, vector, mode in mine:  # rows b·E + k carry edit k (a query's copies are adjacent)
                    block = hidden[k::size, -1]
                    hidden[k::size, -1] = vector.to(block.dtype) if mode == "replace" else block + vector.to(block.dtype)
                return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

            handles.append(layer.register_forward_hook(edit))
        try:
            logits = _last_token_logits(lm, ids, cache, size)
        finally:
            for handle in handles:
                handle.remove()
        per_edit = logits.view(b, size, -1)
        results.append(torch.stack([answer_accuracy(per_edit[:, k], answers) for k in range(size)]))
    return torch.cat(results)


@dataclass(frozen=True)
class VectorSweep:
    """Zero-shot accuracy of the bare queries under each vector at each layer, every query held out.

    Attributes:
        methods: the names of the rows of ``correct``'s first axis.
        layers: the layers swept.
        correct: ``(M, len(layers), Q)`` bool: query ``q`` answered right with method ``m`` at
            layer ``layers[l]``, its vectors extracted from the other fold's prompts.
        bare: ``(Q,)`` bool: answered right with no edit.
        heads: per fold, the function vector's heads ``(layer, head)``, largest effect first.
        effects: per fold, the ``(L, H)`` average indirect effects of the head scan.
        vectors: per fold, ``{method: (L, D)}`` the vectors for every layer.
    """

    methods: tuple[str, ...]
    layers: tuple[int, ...]
    correct: Tensor
    bare: Tensor
    heads: tuple[list[tuple[int, int]], ...]
    effects: tuple[Tensor, ...]
    vectors: tuple[dict[str, Tensor], ...]


#: The methods of :func:`vector_sweep`, in order.
SWEEP_METHODS = ("task vector", "function vector", "mean Δb′ (layer ℓ)", "mean Δb′ (layers ≤ ℓ)",
                 "mean difference")


def vector_sweep(model: nn.Module, data, layers: Sequence[int] | None = None, n_heads: int = 10, n_scan: int = 10,
                 folds: int = 2) -> VectorSweep:
    """Extract each vector from one fold's few-shot prompts and apply it to the other fold's bare
    queries at each of ``layers`` (default all; :data:`SWEEP_METHODS`; see the module docstring).
    The last method adds the mean difference of the layer-``ℓ`` outputs at the last token, few-shot
    minus bare: the whole context effect up to layer ``ℓ``, steering vectors and MLPs together.

    Args:
        data: a task's :class:`icl_lib.experiments.thought_patches.ThoughtData` (its prompts,
            with BOS, a shared context and a teacher-forced answer token that is dropped here).
        n_heads: ``k``, the heads summed into the function vector.
        n_scan: the shuffled-answer prompts (the first of the fold) the head scan averages over.
        folds: queries split by index modulo ``folds``.
    """
    from .thought_patches import ThoughtData, residual_shifts

    if not isinstance(data, ThoughtData):
        raise TypeError(f"data must be a ThoughtData (from thought_data), got {type(data).__name__}")
    prompts = data.prompts
    n = prompts.n_queries
    if isinstance(folds, bool) or not isinstance(folds, int) or not 2 <= folds <= n:
        raise ValueError(f"folds must be an int in [2, {n}], got {folds!r}")
    lm = _language_model(model)
    layers = list(range(len(lm.layers))) if layers is None else [int(layer) for layer in layers]
    if not layers or any(not 0 <= layer < len(lm.layers) for layer in layers):
        raise ValueError(f"layers must be a non-empty list of layer indices in [0, {len(lm.layers)})")
    n_layers = len(layers)
    index = torch.arange(n)
    correct = torch.zeros(len(SWEEP_METHODS), n_layers, n, dtype=torch.bool)
    bare = torch.zeros(n, dtype=torch.bool)
    heads, scans, vectors = [], [], []
    for fold in range(folds):
        fit, held = index[index % folds != fold], index[index % folds == fold]
        few_shot = prompts.prompted[fit][:, :-1]
        states = last_token_states(model, few_shot).mean(1)  # (L, D)
        alone = last_token_states(model, prompts.bare[fit][:, :-1]).mean(1)
        means = head_inputs(model, few_shot).mean(1)  # (L, H·d_head)
        shifts = residual_shifts(model, data, fit)[:, :, -2].mean(1)  # (L, D): at the last query token
        scan = fit[:n_scan]
        corrupted = shuffled_answers(prompts.prompted[scan][:, :-1], prompts.demonstration_answers)
        effects = head_indirect_effects(model, corrupted, prompts.prompted[scan][:, -1], means)
        vector, chosen = function_vector(model, means, effects, n_heads)
        used = {SWEEP_METHODS[0]: states, SWEEP_METHODS[1]: vector.expand(len(lm.layers), -1),
                SWEEP_METHODS[2]: shifts, SWEEP_METHODS[3]: shifts.cumsum(0), SWEEP_METHODS[4]: states - alone}
        modes = ("replace", "add", "add", "add", "add")
        edits = [(-1, vector, "add")] + [(layer, used[m][layer], mode) for m, mode in zip(SWEEP_METHODS, modes)
                                         for layer in layers]
        answers = [prompts.answers[i] for i in held.tolist()]
        result = intervention_accuracy(model, prompts.bare[held][:, :-1], answers, edits)
        bare[held] = result[0]
        correct[:, :, held] = result[1:].view(len(SWEEP_METHODS), n_layers, -1)
        heads.append(chosen)
        scans.append(effects)
        vectors.append(used)
    return VectorSweep(methods=SWEEP_METHODS, layers=tuple(layers), correct=correct, bare=bare, heads=tuple(heads),
                       effects=tuple(scans), vectors=tuple(vectors))
