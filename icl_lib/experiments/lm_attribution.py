"""Which patches of a real language model do what: causal tests, the reference, intervals.

The exact patches of :func:`icl_lib.network_update` turn a prompt ``[C, x]`` into one rank-1
weight patch ``ΔW_s`` and one steering vector ``Δb′`` per decoder layer, against the reference
"``x`` alone". This module asks what each of them does, by intervention rather than by size:

* :func:`icl_lib.ablation_scores` runs the patched model with chosen parts removed (the weight patch or
  the steering vector of chosen layers set to zero), many choices in one batched pass, and
  scores each run against the prompted model (KL divergence, greedy token);
* :func:`icl_lib.reference_update` computes the patches against another reference: the first ``P``
  tokens of the prompt are kept in the reference run, so the patches carry what the rest of the
  context ``C`` does relative to ``[P, x]`` (a BOS token, a neutral line), not relative to
  ``x`` alone; the theorem's own form ``a = A(C \\ Y, x)`` with ``C \\ Y`` the prefix;
* :func:`icl_lib.part_effects` splits a layer's prompted-minus-alone output at the query into the
  change the weight patch makes to the MLP output and the steering vector, as vectors;
* :func:`icl_lib.wilson_interval` and :func:`icl_lib.bootstrap_interval`: the intervals the chapters print.

Shapes: ``B`` prompts, ``L`` decoder layers, ``S`` ablation settings, ``D`` the model width,
``V`` the vocabulary, ``P`` prefix tokens and ``K`` kept tokens at the end of each prompt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..architectures.causal_lm import (
    _assemble,
    _check_kept,
    _language_model,
    _Prompt,
    _prompt,
    _prompted_record,
    _trace,
    lm_forward_with_updates,
)
from ..core.update import ImplicitUpdate
from ..core.metrics import relative_error
from .fewshot import TaskPrompts, answer_accuracy
from .lm_compression import LanguageStaticPatch, apply_lm_static_patch, fit_lm_static_patch, next_token_kl

__all__ = [
    "ReferenceUpdate",
    "reference_update",
    "PartEffects",
    "part_effects",
    "static_patch_errors",
    "alignment_by_kind",
    "Ablation",
    "ablation_scores",
    "wilson_interval",
    "format_proportion",
    "bootstrap_interval",
    "prefixed",
    "Score",
    "scorer",
    "print_static_results",
    "steering_controls",
    "reference_study",
    "WHOLE_NETWORK",
    "ablation_settings",
]


@dataclass(frozen=True)
class ReferenceUpdate:
    """Patches against the reference ``[P, x]`` (see :func:`icl_lib.reference_update`).

    Attributes:
        updates: one :class:`icl_lib.ImplicitUpdate` per decoder layer, one patch per token of
            the reference: ``u (B, P + K, H_s)``, ``v (B, P + K, D)``, ``delta_b (B, P + K, D)``.
            The prefix's own patches are round-off: a causal model computes the prefix the same
            way with or without ``C``.
        tokens: ``(B, P + K)``, the reference's tokens (the prefix, then the kept tokens), to run
            with :func:`icl_lib.forward_with_updates`.
        prefix_tokens: ``P``.
    """

    updates: list[ImplicitUpdate]
    tokens: Tensor
    prefix_tokens: int


def _check_count(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _reference_pass(model: nn.Module, input_ids: Tensor, prefix_tokens: int, kept_tokens: int, logits: bool = False):
    """The prompted pass, the reference tokens and the updates: ``(lm, trace, alone, updates)``."""
    lm = _language_model(model)
    kept = _check_kept(kept_tokens, -1)
    prefix = _check_count(prefix_tokens, "prefix_tokens", 0)
    prompt = _prompt(lm, input_ids, None, min_tokens=prefix + kept + 1)
    t = prompt.ids.shape[1]
    keep = torch.cat([torch.arange(prefix), torch.arange(t - kept, t)]).to(prompt.ids.device)
    alone = _Prompt(prompt.ids[:, keep], None, prompt.positions[:, keep])
    if prefix + kept == 1:  # the query alone: one patch, recorded at the last position (network_update's path)
        trace = _trace(lm, prompt, _prompted_record(lm, slice(-1, None), t - 1, "bias"), logits=logits)
        return lm, trace, alone, _assemble(lm, trace, alone, t - 1, 1, t, alone.positions[:, -1])
    trace = _trace(lm, prompt, _prompted_record(lm, keep, keep, "bias"), logits=logits)
    updates = _assemble(lm, trace, alone, None, prefix + kept, t, alone.positions)
    return lm, trace, alone, updates


def reference_update(model: nn.Module, input_ids: Tensor, prefix_tokens: int, kept_tokens: int = 1) -> ReferenceUpdate:
    """The patches of the prompt ``[P, C, x]`` against the reference ``[P, x]``.

    ``P`` is the first ``prefix_tokens`` tokens of every prompt, ``x`` the last ``kept_tokens``,
    ``C`` the tokens between. Every layer of the reference run reads its prompted input at the
    tokens of ``[P, x]``; the patched model run on ``[P, x]`` (at their prompt positions) then
    reproduces the prompted logits. With ``prefix_tokens = 0`` this is
    ``network_update(..., kept_tokens=K)``.

    Args:
        model: a ``transformers`` causal LM of a supported family.
        input_ids: ``(B, T)`` prompts of one layout (no padding), ``T > P + K``.
        prefix_tokens: ``P ≥ 0``.
        kept_tokens: ``K ≥ 1``.

    Raises:
        ValueError: for a bad count, or a prompt with no token between the prefix and the kept ones.
    """
    _, _, alone, updates = _reference_pass(model, input_ids, prefix_tokens, kept_tokens)
    return ReferenceUpdate(updates=updates, tokens=alone.ids, prefix_tokens=prefix_tokens)


@dataclass(frozen=True)
class PartEffects:
    """A layer's prompted-minus-unpatched output at the last token, split in two (see :func:`icl_lib.part_effects`).

    Attributes:
        change: ``(B, L, D)``, ``MLP_{W+ΔW}(a) − MLP_W(a)``, what the weight patch does.
        steering: ``(B, L, D)``, ``Δb′``.
        reference: the patches and the reference's tokens (:class:`icl_lib.ReferenceUpdate`).
        logits: ``(B, V)``, the prompted model's logits at the last token.
    """

    change: Tensor
    steering: Tensor
    reference: ReferenceUpdate
    logits: Tensor

    def share(self) -> Tensor:
        """``(B, L)``: ``‖Δb′‖ / (‖Δb′‖ + ‖MLP change‖)``, the steering vector's share by norm."""
        s, c = self.steering.norm(dim=-1), self.change.norm(dim=-1)
        return s / (s + c)

    def cosine(self) -> Tensor:
        """``(B, L)``: the cosine of the MLP change and the steering vector."""
        return torch.nn.functional.cosine_similarity(self.change, self.steering, dim=-1)


def part_effects(model: nn.Module, input_ids: Tensor, prefix_tokens: int = 0, kept_tokens: int = 1) -> PartEffects:
    """The two parts of each layer's patch, as what they do to the layer's output at the last token.

    For layer ``ℓ`` run on its prompted inputs at the reference's tokens (see
    :func:`icl_lib.reference_update`), the prompted output at the last token minus the unpatched one is
    ``[MLP_{W+ΔW}(a) − MLP_W(a)] + Δb′``. Four passes: the prompt, the reference, and the
    reference's tokens with every layer fed its prompted input, unpatched and patched.
    """
    lm, trace, alone, updates = _reference_pass(model, input_ids, prefix_tokens, kept_tokens, logits=True)
    plain = _trace(lm, alone, {"mlp_out": -1}, inputs=trace.inputs, logits=False).mlp_out
    patched = _trace(lm, alone, {"mlp_out": -1}, inputs=trace.inputs, patches=updates, logits=False).mlp_out
    change = torch.stack([p - q for p, q in zip(patched, plain)], dim=1)
    last = [u.delta_b if u.delta_b.ndim == 2 else u.delta_b[:, -1] for u in updates]
    steering = torch.stack(last, dim=1).to(change.dtype)
    reference = ReferenceUpdate(updates=updates, tokens=alone.ids, prefix_tokens=prefix_tokens)
    return PartEffects(change=change, steering=steering, reference=reference, logits=trace.logits)


@dataclass(frozen=True)
class Ablation:
    """Scores of patched runs with parts removed (see :func:`icl_lib.ablation_scores`).

    Attributes:
        kl: ``(S, B)``, ``KL(prompted ‖ ablated)`` of the next-token distributions, in nats.
        tokens: ``(S, B)``, each run's greedy next token.
    """

    kl: Tensor
    tokens: Tensor

    def hits(self, answers: Sequence[Sequence[int]]) -> Tensor:
        """``(S, B)`` bool: whether each run's greedy token is an accepted first answer token
        (``answers[b]``, as in :class:`icl_lib.experiments.fewshot.TaskPrompts`)."""
        if len(answers) != self.tokens.shape[1]:
            raise ValueError(f"{len(answers)} answers for {self.tokens.shape[1]} prompts")
        return torch.tensor([[g in accepted for g, accepted in zip(row, answers)] for row in self.tokens.tolist()])


def _check_masks(weight: object, steering: object, n_layers: int) -> tuple[Tensor, Tensor]:
    masks = []
    for name, mask in (("weight", weight), ("steering", steering)):
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or mask.ndim != 2 or mask.shape[1] != n_layers:
            raise ValueError(f"{name} must be a bool tensor (S, {n_layers}): which layers keep that part, per setting")
        masks.append(mask)
    if masks[0].shape != masks[1].shape:
        raise ValueError(f"weight {tuple(masks[0].shape)} and steering {tuple(masks[1].shape)} differ in shape")
    return masks[0], masks[1]


def _tiled(x: Tensor, n: int) -> Tensor:
    """``(B, ...)`` -> ``(n·B, ...)``, row ``k·B + b`` a copy of row ``b``."""
    return x.repeat(n, *[1] * (x.ndim - 1))


def _masked(x: Tensor, keep: Tensor) -> Tensor:
    """``(B, ...)`` and ``keep (n,)`` -> ``(n·B, ...)``: copy ``k`` of ``x``, or zeros where ``keep[k]`` is False."""
    shape = (keep.shape[0],) + (1,) * x.ndim
    return (x[None] * keep.to(x.device, x.dtype).view(shape)).reshape(-1, *x.shape[1:])


def ablation_scores(
    model: nn.Module,
    updates: Sequence[ImplicitUpdate],
    tokens: Tensor,
    prompted: Tensor,
    weight: Tensor,
    steering: Tensor,
    rows_per_pass: int = 480,
) -> Ablation:
    """The patched model with chosen parts of the patches removed, scored against the prompt.

    Setting ``s`` keeps layer ``ℓ``'s weight patch where ``weight[s, ℓ]`` and its steering
    vector where ``steering[s, ℓ]``, and sets the other parts to zero (a zero ``u`` is a zero
    ``ΔW_s``). All settings run as one batch of ``S · B`` rows, split into passes of at most
    ``rows_per_pass`` rows; a row's result does not depend on the rows beside it beyond
    round-off.

    Args:
        model: the language model the updates were computed for.
        updates: from :func:`icl_lib.network_update` (``steering="bias"``) or
            :func:`icl_lib.reference_update`, batch ``B``.
        tokens: ``(B, K)``, what the patched model runs (the query, or the reference tokens).
        prompted: ``(B, V)``, the prompted model's logits.
        weight, steering: ``(S, L)`` bool.
        rows_per_pass: the largest batch of one pass.
    """
    updates = list(updates)
    weight, steering = _check_masks(weight, steering, len(updates))
    if any(u.steering != "bias" or u.delta_b is None for u in updates):
        raise ValueError("ablation_scores needs updates with steering='bias' and a Δb′ in every layer")
    b = tokens.shape[0]
    if prompted.ndim != 2 or prompted.shape[0] != b:
        raise ValueError(f"prompted must be (B, V) logits for the {b} prompts, got {tuple(prompted.shape)}")
    per_pass = max(1, _check_count(rows_per_pass, "rows_per_pass", 1) // b)
    kl, chosen = [], []
    for start in range(0, weight.shape[0], per_pass):
        w, s = weight[start:start + per_pass], steering[start:start + per_pass]
        n = w.shape[0]
        batch = [
            replace(update, u=_masked(update.u, w[:, layer]), v=_tiled(update.v, n),
                    delta_b=_masked(update.delta_b, s[:, layer]), position_ids=_tiled(update.position_ids, n))
            for layer, update in enumerate(updates)
        ]
        logits = lm_forward_with_updates(model, batch, tokens.repeat(n, 1))
        kl.append(next_token_kl(prompted.repeat(n, 1), logits).view(n, b))
        chosen.append(logits.argmax(-1).view(n, b))
    return Ablation(kl=torch.cat(kl), tokens=torch.cat(chosen))


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % for the default ``z``).

    Args:
        successes: ``k``, with ``0 ≤ k ≤ n``.
        n: trials, ``≥ 1``.
        z: the normal quantile.

    Returns:
        ``(low, high)`` within ``[0, 1]``.
    """
    n = _check_count(int(n) if hasattr(n, "item") else n, "n", 1)
    k = int(successes.item() if hasattr(successes, "item") else successes)
    if not 0 <= k <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {k}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def format_proportion(successes: int, n: int) -> str:
    """``"0.95 0.83-0.99"``: the proportion ``successes / n`` and its 95 % Wilson interval, two
    decimals each (14 characters, for a table column)."""
    low, high = wilson_interval(successes, n)
    return f"{int(successes) / n:.2f} {low:.2f}-{high:.2f}"


def bootstrap_interval(
    values: Tensor, statistic: str = "median", n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap interval of the median or the mean of ``values (n,)``.

    The resamples come from a generator seeded with ``seed``, so the interval is reproducible;
    it is computed in float64.
    """
    if not isinstance(values, Tensor) or values.ndim != 1 or values.numel() < 2:
        raise ValueError("values must be a 1-d tensor of at least two numbers")
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    n_resamples = _check_count(n_resamples, "n_resamples", 1)
    generator = torch.Generator().manual_seed(seed)
    x = values.detach().cpu().double()
    index = torch.randint(0, x.numel(), (n_resamples, x.numel()), generator=generator)
    sample = x[index]
    # the median of an even sample is the mean of its two middle values (not torch's lower one)
    stats = sample.mean(1) if statistic == "mean" else sample.sort(1).values[:, [(x.numel() - 1) // 2, x.numel() // 2]].mean(1)
    low, high = torch.quantile(stats, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return low, high


def static_patch_errors(patch: LanguageStaticPatch, updates: Sequence[ImplicitUpdate], rows: Tensor) -> tuple[Tensor, Tensor]:
    """How far a static patch is from the exact patches at the last kept token: ``(weight, steering)``, each ``(L,)``.

    For each layer, the mean over ``rows`` of ``‖Γ a_q − u_q‖ / ‖u_q‖`` (the weight part: ``Γ``
    the patch's weight, :func:`icl_lib.fit_lm_static_patch`, and ``a_q``, ``u_q`` the exact
    reference and left factor of prompt ``q``) and of ``‖Δb′ − Δb′_q‖ / ‖Δb′_q‖`` (the steering
    part: the patch's mean steering vector against the exact one). ``updates`` are kept-token
    updates, as for the fit. The weight error is near 0 on the calibration rows; on held-out rows
    both say how much of the exact patch the static one misses.
    """
    if not isinstance(patch, LanguageStaticPatch):
        raise TypeError(f"patch must be a LanguageStaticPatch, got {type(patch).__name__}")
    if len(updates) != len(patch.layers):
        raise ValueError(f"{len(updates)} updates for a patch of {len(patch.layers)} layers")
    weight, steering = [], []
    for layer, update in zip(patch.layers, updates):
        if update.v.ndim != 3:
            raise ValueError("updates must be kept-token updates, u (B, K, H), v (B, K, D)")
        a, u, b = update.v[rows, -1], update.u[rows, -1], update.delta_b[rows, -1]  # (R, D), (R, H), (R, D)
        fitted = (a @ layer.right[-1]) @ layer.left[-1].T  # (R, Q) then (R, H)
        weight.append(((fitted - u).norm(dim=-1) / u.norm(dim=-1)).mean())
        steering.append(((layer.delta_b[-1] - b).norm(dim=-1) / b.norm(dim=-1)).mean())
    return torch.stack(weight), torch.stack(steering)


#: The kinds of pairs :func:`icl_lib.alignment_by_kind` averages over, in order.
PAIR_KINDS = ("same demonstrations, other query", "other demonstrations, same query",
              "other demonstrations, other query", "other task")


def alignment_by_kind(
    patch_cosine: Tensor, hidden: Tensor, task: Sequence[str], demonstrations: Sequence[str], query: Sequence[int]
) -> dict[str, tuple[float, float]]:
    """Mean cosines of the patches, and of the raw hidden states, over kinds of pairs of prompts.

    Args:
        patch_cosine: ``(n, n)``, the Frobenius cosines of the ``n`` prompts' patches at one layer
            (:func:`icl_lib.patch_cosines`).
        hidden: ``(n, D)``, a hidden state of each prompt at the same layer (the baseline).
        task, demonstrations, query: per prompt, its task's name, a name of its demonstrations,
            and its query's index within the task.

    Returns:
        ``{kind: (mean patch cosine, mean hidden-state cosine)}`` for the kinds of
        :data:`icl_lib.experiments.lm_attribution.PAIR_KINDS` that occur (each pair of distinct prompts counted in both orders).
    """
    n = patch_cosine.shape[0]
    if patch_cosine.shape != (n, n) or hidden.shape[0] != n or not len(task) == len(demonstrations) == len(query) == n:
        raise ValueError("patch_cosine (n, n), hidden (n, D) and the three labels must describe the same n prompts")
    def codes(labels: Sequence) -> Tensor:  # each distinct label as one integer
        index = {label: i for i, label in enumerate(dict.fromkeys(labels))}
        return torch.tensor([index[label] for label in labels])

    t, d, q = (codes(labels) for labels in (task, demonstrations, query))
    same_t, same_d, same_q = (x[:, None] == x[None] for x in (t, d, q))
    distinct = ~torch.eye(n, dtype=torch.bool)
    masks = {
        PAIR_KINDS[0]: same_t & same_d & ~same_q,
        PAIR_KINDS[1]: same_t & ~same_d & same_q,
        PAIR_KINDS[2]: same_t & ~same_d & ~same_q,
        PAIR_KINDS[3]: ~same_t,
    }
    unit = torch.nn.functional.normalize(hidden.double(), dim=-1)
    hidden_cosine = unit @ unit.T
    return {
        kind: (patch_cosine.double()[mask & distinct].mean().item(), hidden_cosine[mask & distinct].mean().item())
        for kind, mask in masks.items()
        if (mask & distinct).any()
    }


def prefixed(input_ids: Tensor, prefix: Sequence[int]) -> Tensor:
    """``(B, T)`` prompts with the token ids ``prefix`` put before each: ``(B, P + T)``."""
    if not isinstance(input_ids, Tensor) or input_ids.ndim != 2:
        raise ValueError("input_ids must be a (B, T) tensor of token ids")
    head = torch.tensor(list(prefix), dtype=input_ids.dtype, device=input_ids.device)
    return torch.cat([head.expand(input_ids.shape[0], -1), input_ids], dim=1)


@dataclass(frozen=True)
class Score:
    """Right answers and the KL divergence from the prompted model, over ``n`` prompts."""

    right: int
    n: int
    kl: float
    kl_interval: tuple[float, float]

    def __getitem__(self, key: str) -> float:  # row["accuracy"], row["kl"] in a chapter's plots
        return {"accuracy": self.right / self.n, "kl": self.kl}[key]


def scorer(prompted: Tensor, prompts: TaskPrompts):
    """A function ``logits (B, V) -> Score`` against the prompted logits ``(B, V)`` of ``prompts``:
    right first answer tokens, and the median KL with its bootstrap interval."""
    def score(logits: Tensor) -> Score:
        kl = next_token_kl(prompted, logits)
        right = int(answer_accuracy(logits, prompts).sum())
        return Score(right, len(prompts.answers), kl.median().item(), bootstrap_interval(kl))

    return score


def print_static_results(name: str, row: dict, sizes: Sequence[int]) -> None:
    """Print a task's static-patch results: right answers and median KL (one decimal: the fits are
    ill-conditioned and their KL moves in the fourth digit between instruction sets)."""
    n = row["prompt"].n
    print(f"{name}: right answers of {n} held-out queries / median KL (nats)")
    for key in ("prompt", "query line alone", "transported (one query)"):
        print(f"  {key:24} {row[key].right:2} / {row[key].kl:4.1f}")
    for q in sizes:
        s, o = row[("static", q)], row[("oracle", q)]
        print(f"  static Q = {q:2}            {s.right:2} / {s.kl:4.1f}    "
              f"with exact steering {o.right:2} / {o.kl:4.1f}")


def steering_controls(
    model: nn.Module,
    updates: Sequence[ImplicitUpdate],
    patch: LanguageStaticPatch,
    rows: Tensor,
    prompted: Tensor,
    prompts: TaskPrompts,
) -> dict[str, tuple[int, float]]:
    """The query lines ``rows`` alone with the weight part and the steering part of the patches
    taken from different sources: ``{run: (right answers, median KL from the prompt)}``.

    Weight part: the static ``Γ`` of ``patch``, the exact ``ΔW_s`` of each query, or none;
    steering part: the mean ``Δb′`` of ``patch`` or each query's exact ``Δb′``. ``updates`` are
    the kept-token updates of all the prompts (as for the fit), ``prompted (B, V)`` their logits.
    """
    lines = prompts.input_ids[rows, -prompts.kept_tokens:]
    own = [u.rows(rows) for u in updates]
    mean_b = [replace(u, delta_b=layer.delta_b.expand_as(u.delta_b)) for u, layer in zip(own, patch.layers)]
    no_w = [replace(u, u=torch.zeros_like(u.u)) for u in own]
    no_w_mean = [replace(u, u=torch.zeros_like(u.u)) for u in mean_b]
    with torch.no_grad():
        bare = model(lines).logits[:, -1]
    runs = {
        "static ΔW, mean Δb′": apply_lm_static_patch(model, patch, lines),
        "static ΔW, exact Δb′": apply_lm_static_patch(model, patch, lines, exact_steering=own),
        "exact ΔW, mean Δb′": lm_forward_with_updates(model, mean_b, lines),
        "no ΔW, exact Δb′": lm_forward_with_updates(model, no_w, lines),
        "no ΔW, mean Δb′": lm_forward_with_updates(model, no_w_mean, lines),
        "bare query line": bare,
    }
    score = scorer(prompted[rows], prompts.rows(rows))
    return {name: (s.right, s.kl) for name, s in ((name, score(logits)) for name, logits in runs.items())}


def reference_study(
    model: nn.Module, prompts: TaskPrompts, prefix: Sequence[int], calibration: Tensor, held_out: Tensor
) -> dict[str, object]:
    """The patches of a task's prompts against the reference ``[prefix, query line]``.

    The prompts become ``[prefix, C, x]`` (``x`` the query line, ``prompts.kept_tokens`` tokens),
    and :func:`icl_lib.part_effects` computes their patches against ``[prefix, x]``. Returns a dict:
    ``prompt_right`` (right answers of the prompted model), ``reference_right`` and
    ``reference_kl`` (the reference run unpatched, against the prompt), ``error`` (the patched
    run's largest relative logit error), ``weight_norm`` and ``steering_norm`` (``‖ΔW_s‖_F`` and
    ``‖Δb′‖`` at the last token, mean over layers and prompts), ``share`` and ``cosine`` (the
    mean of :meth:`icl_lib.PartEffects.share` and :meth:`icl_lib.PartEffects.cosine` over layers 2..L),
    ``static_right`` and ``static_kl`` (a static patch fitted on ``calibration`` and scored on
    ``held_out``), and ``updates``.
    """
    ids = prefixed(prompts.input_ids, prefix)
    effects = part_effects(model, ids, len(prefix), prompts.kept_tokens)
    updates, tokens, logits = effects.reference.updates, effects.reference.tokens, effects.logits
    layers = len(updates)
    off = torch.zeros(1, layers, dtype=torch.bool)
    bare = ablation_scores(model, updates, tokens, logits, off, off)
    patched = lm_forward_with_updates(model, updates, tokens)
    static = fit_lm_static_patch(updates, calibration)
    score = scorer(logits[held_out], prompts.rows(held_out))(apply_lm_static_patch(model, static, tokens[held_out]))
    return {
        "prompt_right": int(answer_accuracy(logits, prompts).sum()),
        "reference_right": int(bare.hits(prompts.answers).sum()),
        "reference_kl": bare.kl.median().item(),
        "error": relative_error(patched, logits).max().item(),
        "weight_norm": torch.stack([(u.u[:, -1].norm(dim=-1) / u.v[:, -1].norm(dim=-1)).mean() for u in updates]).mean().item(),
        "steering_norm": effects.steering.norm(dim=-1).mean().item(),
        "share": effects.share()[:, 1:].mean().item(),
        "cosine": effects.cosine()[:, 1:].mean().item(),
        "static_right": score.right,
        "static_kl": score.kl,
        "updates": updates,
    }


#: The whole-network settings of :func:`ablation_settings`, after the per-layer ones.
WHOLE_NETWORK = ("all patches", "no patch", "weight patches only", "steering vectors only",
                 "layers 2 on only", "layer 1 only")


def ablation_settings(n_layers: int, grid: Sequence[int]) -> tuple[Tensor, Tensor, list[str]]:
    """The settings the chapters run through :func:`icl_lib.ablation_scores`: ``(weight, steering, names)``.

    For each layer ``ℓ`` of ``grid`` (1-based), in three blocks of ``len(grid)`` rows: every
    patch of layers ``≤ ℓ`` and none above (``"≤ ℓ"``); all patches but the weight patch of layer
    ``ℓ`` (``"no ΔW_s ℓ"``); all but its steering vector (``"no Δb′ ℓ"``). Then the six settings
    of :data:`icl_lib.experiments.lm_attribution.WHOLE_NETWORK`. ``weight`` and ``steering`` are ``(3·len(grid) + 6, n_layers)`` bool.
    """
    n_layers = _check_count(n_layers, "n_layers", 1)
    if not grid or any(isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= n_layers for g in grid):
        raise ValueError(f"grid must be a non-empty sequence of layers in [1, {n_layers}], got {grid!r}")
    index = torch.tensor(list(grid)) - 1
    eye = torch.eye(n_layers, dtype=torch.bool)
    below = torch.tril(torch.ones(n_layers, n_layers, dtype=torch.bool))[index]
    drop, every = ~eye[index], torch.ones(len(grid), n_layers, dtype=torch.bool)
    on, off, first = torch.ones(n_layers, dtype=torch.bool), torch.zeros(n_layers, dtype=torch.bool), eye[0]
    whole = [(on, on), (off, off), (on, off), (off, on), (~first, ~first), (first, first)]
    weight = torch.cat([below, drop, every, torch.stack([w for w, _ in whole])])
    steering = torch.cat([below, every, drop, torch.stack([s for _, s in whole])])
    names = ([f"≤ {g}" for g in grid] + [f"no ΔW_s {g}" for g in grid] + [f"no Δb′ {g}" for g in grid]
             + list(WHOLE_NETWORK))
    return weight, steering, names
