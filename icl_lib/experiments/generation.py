"""Greedy generation through the patches, against the model's own: token agreement and logit error.

Goldwaser, Munn, Gonzalvo & Dherin (arXiv 2511.17864) check their exact patches of modern decoder
blocks by generation: a few prompts, twenty greedy tokens each, the patches recomputed for every
new token (the context has grown by the token just generated), and the fraction of positions at
which the patched model's tokens agree with the model's own. :func:`compare_generation` runs that
protocol on a ``transformers`` causal LM, for one or more ways of carrying the steering vectors,
and also returns the logits error along the way.

Two sequences are generated, each from its own tokens:

* ``plain``: the model's greedy generation, each token the argmax of the model's next-token
  logits on the prompt and the tokens generated so far;
* ``patched``: each token the argmax of the patched model run on the last token alone, its
  patches (:func:`icl_lib.network_update`, with the chosen ``steering``) computed from the prompt
  and the tokens *this* sequence has generated so far.

At every step the patched next-token logits are compared with the model's own logits on the
same tokens (the patched sequence's prefix; while the two sequences agree that is the plain
sequence's step, and no extra forward pass is run): the largest relative error along the way
measures how exact the patches are, whether or not the two sequences part.

The prompts of the book's protocol, :data:`GENERATION_PROMPTS`, are written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..architectures.causal_lm import _check_steering, _language_model, _prompt, _trace, _updates, check_ids
from ..core.metrics import relative_error

__all__ = ["GENERATION_PROMPTS", "GenerationComparison", "compare_generation"]

# Five short prompts of different kinds (a few-shot list, a definition, a story opening, a
# factual sentence, a piece of code): the protocol asks for the next 20 tokens of each.
GENERATION_PROMPTS: tuple[str, ...] = (
    "capital of France: Paris\ncapital of Japan: Tokyo\ncapital of Spain:",
    "A prime number is a whole number greater than one that",
    "Once upon a time, in a village by the sea, there lived",
    "The three primary colours of light are",
    "def add(a, b):\n    return",
)


@dataclass(frozen=True)
class GenerationComparison:
    """The two greedy generations of one or more prompts and the logits error along the patched one.

    Attributes:
        plain: ``(B, N)`` the model's own greedy tokens.
        patched: ``(B, N)`` the tokens of the patched model, its patches recomputed every step.
        errors: ``(B, N)`` the relative error of the patched next-token logits at each step,
            against the model's own logits on the same tokens (the patched sequence's prefix).
        margins: ``(B, N)`` the gap between the two largest of those own logits: a step whose
            margin is below the logits' error could go either way.
        steering: how ``Δb′`` was carried (``network_update``'s ``steering``).
    """

    plain: Tensor
    patched: Tensor
    errors: Tensor
    margins: Tensor
    steering: str

    @property
    def n_tokens(self) -> int:
        return self.plain.shape[1]

    @property
    def agreement(self) -> Tensor:
        """``(B,)`` the fraction of the ``N`` positions at which the two sequences agree."""
        return (self.plain == self.patched).double().mean(1)

    @property
    def first_disagreement(self) -> list[int | None]:
        """Per row, the first position (0-based) at which the sequences differ, or None."""
        differ = self.plain != self.patched
        return [int(row.nonzero()[0]) if row.any() else None for row in differ]


def compare_generation(
    model: nn.Module, input_ids: Tensor, n_tokens: int = 20, steerings: Sequence[str] = ("bias",)
) -> dict[str, GenerationComparison]:
    """Greedy generation of ``n_tokens`` through patches recomputed for every new token, against
    the model's own greedy generation (the protocol of Goldwaser et al., 2025), for each steering.

    Each row of ``input_ids`` is a prompt, run on its own. At every step, for each steering, one
    hooked forward pass over the patched sequence gives both its patches
    (:func:`icl_lib.network_update` with that ``steering``) and the model's own next-token logits
    on it (the reference), and the patched model runs the last token alone
    (:func:`icl_lib.forward_with_updates`). The plain sequence's logits are those of a patched
    sequence with the same tokens where there is one, and a forward pass of their own once every
    patched sequence has parted from it. Every pass is over the whole sequence (no key/value
    cache), as in :func:`icl_lib.greedy_continuation`, whose tokens ``plain`` and (with
    ``steering="bias"``) ``patched`` are.

    Args:
        model: a ``transformers`` causal LM of a supported family.
        input_ids: the prompts, ``(B, T)`` token ids, ``T ≥ 2``, no padding.
        n_tokens: how many tokens to generate (default 20, as in the protocol).
        steerings: one or more of ``"bias"``, ``"down"``, ``"norm"``, as in
            :func:`icl_lib.network_update` (the family must be able to carry each).

    Returns:
        one :class:`GenerationComparison` per steering, keyed by it.
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive int, got {n_tokens!r}")
    if isinstance(steerings, str) or not steerings or len(set(steerings)) != len(steerings):
        raise ValueError(f"steerings must be a non-empty sequence of distinct names, got {steerings!r}")
    lm = _language_model(model)
    for steering in steerings:
        _check_steering(lm, steering)
    ids = check_ids(input_ids, "input_ids", lm)
    if ids.shape[1] < 2:
        raise ValueError(f"input_ids must hold at least 2 tokens per row, got {ids.shape[1]}")
    rows = [_compare_row(lm, ids[r : r + 1], n_tokens, tuple(steerings)) for r in range(ids.shape[0])]
    return {
        s: GenerationComparison(*(torch.cat([row[s][k] for row in rows]) for k in range(4)), steering=s)
        for s in steerings
    }


def _compare_row(lm, ids: Tensor, n_tokens: int, steerings: tuple[str, ...]) -> dict[str, tuple[Tensor, ...]]:
    """One prompt ``(1, T)``: per steering ``(plain, patched, errors, margins)``, each ``(1, N)``."""
    plain_ids, sequences = ids, dict.fromkeys(steerings, ids)
    plain, patched = [], {s: [] for s in steerings}
    errors, margins = {s: [] for s in steerings}, {s: [] for s in steerings}
    for _ in range(n_tokens):
        own_logits = {}
        for s in steerings:
            seq = sequences[s]
            prompt = _prompt(lm, seq, None, min_tokens=2)
            updates, trace = _updates(lm, prompt, seq.shape[1] - 1, logits=True, steering=s)
            logits = _trace(lm, prompt.query(), {}, patches=updates).logits
            reference = trace.logits
            own_logits[_key(seq)] = reference
            errors[s].append(relative_error(logits, reference))
            top = reference.topk(2, dim=-1).values
            margins[s].append(top[:, 0] - top[:, 1])
            patched[s].append(logits.argmax(-1, keepdim=True))
        own = own_logits.get(_key(plain_ids))
        if own is None:  # every patched sequence has parted from the plain one
            own = _trace(lm, _prompt(lm, plain_ids, None, min_tokens=2), {}).logits
        plain.append(own.argmax(-1, keepdim=True))
        plain_ids = torch.cat([plain_ids, plain[-1]], dim=1)
        for s in steerings:
            sequences[s] = torch.cat([sequences[s], patched[s][-1]], dim=1)
    plain_tokens = torch.cat(plain, 1)
    return {
        s: (plain_tokens, torch.cat(patched[s], 1), torch.stack(errors[s], 1), torch.stack(margins[s], 1))
        for s in steerings
    }


def _key(ids: Tensor) -> tuple[int, ...]:
    return tuple(ids[0].tolist())
