"""Greedy generation through the patches, against the model's own: token agreement and logit error.

Goldwaser, Munn, Gonzalvo & Dherin (arXiv 2511.17864) check their exact patches of modern decoder
blocks by generation: a few prompts, twenty greedy tokens each, the patches recomputed for every
new token (the context has grown by the token just generated), and the fraction of positions at
which the patched model's tokens agree with the model's own. :func:`compare_generation` runs that
protocol on a ``transformers`` causal LM, for one or more ways of carrying the steering vectors,
and also returns the logits error along the way.

Two sequences are generated, each from its own tokens (both with :func:`icl_lib.greedy_continuation`):

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

from ..architectures.causal_lm import greedy_continuation
from ..core.metrics import relative_error

__all__ = ["GENERATION_PROMPTS", "GenerationComparison", "compare_generation", "left_padded"]

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
    model: nn.Module,
    input_ids: Tensor,
    n_tokens: int = 20,
    steerings: Sequence[str] = ("bias",),
    factor_dtype: torch.dtype | None = None,
    attention_mask: Tensor | None = None,
) -> dict[str, GenerationComparison]:
    """Greedy generation of ``n_tokens`` through patches recomputed for every new token, against
    the model's own greedy generation (the protocol of Goldwaser et al., 2025), for each steering.

    Both generations are :func:`icl_lib.greedy_continuation` (the prompt's keys and values
    cached): once without patches, and once through the patches per steering, whose
    :class:`~icl_lib.Continuation` also holds the model's own logits on the patched sequence's
    prefixes, the reference of ``errors`` and ``margins``.

    Args:
        model: a ``transformers`` causal LM of a supported family.
        input_ids: the prompts, ``(B, T)`` token ids, ``T ≥ 2``.
        n_tokens: how many tokens to generate (default 20, as in the protocol).
        steerings: one or more of ``"bias"``, ``"down"``, ``"norm"``, as in
            :func:`icl_lib.network_update` (the family must be able to carry each).
        factor_dtype: as in :func:`icl_lib.network_update` (a half-precision model's factors
            are float32 by default; its own dtype gives the naive variant).
        attention_mask: ``(B, T)``, 0 where a row is padded on the left: prompts of different
            lengths in one batch (one-token passes cost about as much for five rows as for one).

    Returns:
        one :class:`GenerationComparison` per steering, keyed by it.
    """
    if isinstance(steerings, str) or not steerings or len(set(steerings)) != len(steerings):
        raise ValueError(f"steerings must be a non-empty sequence of distinct names, got {steerings!r}")
    plain = greedy_continuation(model, input_ids, n_tokens, through_patches=False, attention_mask=attention_mask)
    results = {}
    for steering in steerings:
        via = greedy_continuation(model, input_ids, n_tokens, through_patches=True, steering=steering,
                                  factor_dtype=factor_dtype, attention_mask=attention_mask)
        own = via.model_logits.float()
        errors = torch.stack([relative_error(via.logits[:, n].float(), own[:, n]) for n in range(n_tokens)], 1)
        top = own.topk(2, dim=-1).values
        results[steering] = GenerationComparison(plain.tokens, via.tokens, errors, top[..., 0] - top[..., 1], steering)
    return results


def left_padded(tokenizer, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Encode ``texts`` as one batch padded on the left, the layout the library's
    ``attention_mask`` arguments take: ``(ids (B, T), mask (B, T))``, ``T`` the longest text's
    token count, 0 in the mask where a row is padded (its ids there are 0, never read).

    The tokenizer's own padding is not used: some tokenizers have no pad token, and the side
    they pad on is a setting of theirs.
    """
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise ValueError(f"texts must be a non-empty sequence of non-empty strings, got {texts!r}")
    rows = [tokenizer(text, return_tensors="pt").input_ids[0] for text in texts]
    width = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for k, row in enumerate(rows):
        ids[k, width - len(row):] = row
        mask[k, width - len(row):] = 1
    return ids, mask
