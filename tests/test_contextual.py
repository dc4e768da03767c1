"""The contextual layers' fast evaluations against their defining formulas.

Softmax attention runs on PyTorch's fused kernel, linear attention on chunked running sums, the
recurrent layer on a loop without module calls. Each is compared here, in float64, with a direct
evaluation of the formula in its docstring (masked ``T × T`` matrices, an explicit loop), on
sequences longer than one linear-attention chunk, with and without absent tokens.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from icl_lib.architectures.contextual import LINEAR_ATTENTION_CHUNK, LinearAttention, RecurrentLayer, SelfAttention

LENGTHS = [1, 2, 9, LINEAR_ATTENTION_CHUNK, LINEAR_ATTENTION_CHUNK + 1, 3 * LINEAR_ATTENTION_CHUNK - 5]


def heads_of(layer, tokens):
    b, t, d = tokens.shape
    split = lambda x: x.view(b, t, layer.n_heads, d // layer.n_heads).transpose(1, 2)  # noqa: E731
    return split(layer.query(tokens)), split(layer.key(tokens)), split(layer.value(tokens))


def merge(layer, mixed):
    b, h, t, dh = mixed.shape
    return layer.out(mixed.transpose(1, 2).reshape(b, t, h * dh))


def pairs(t: int, causal: bool, keep: torch.Tensor | None) -> torch.Tensor:
    """(B or 1, 1, T, T): s ≤ t when causal; a kept position sees kept ones, every position itself."""
    allowed = torch.ones(t, t, dtype=torch.bool)
    if causal:
        allowed = allowed.tril()
    allowed = allowed[None, None]
    if keep is not None:
        allowed = allowed & (keep[:, None, None, :] | torch.eye(t, dtype=torch.bool))
    return allowed


def softmax_reference(layer: SelfAttention, tokens, keep=None):
    q, k, v = heads_of(layer, tokens)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~pairs(tokens.shape[1], layer.causal, keep), float("-inf"))
    return merge(layer, torch.softmax(scores, -1) @ v)


def linear_reference(layer: LinearAttention, tokens, keep=None):
    q, k, v = heads_of(layer, tokens)
    q, k = F.elu(q) + 1, F.elu(k) + 1
    weights = (q @ k.transpose(-1, -2)) * pairs(tokens.shape[1], True, keep).to(q.dtype)
    return merge(layer, (weights @ v) / weights.sum(-1, keepdim=True))


def recurrent_reference(layer: RecurrentLayer, tokens, keep=None):
    s = tokens.new_zeros(tokens.shape[0], layer.state)
    states = []
    for i in range(tokens.shape[1]):
        new = torch.tanh(layer.input(tokens[:, i]) + layer.recurrent(s))
        states.append(new)
        s = new if keep is None else torch.where(keep[:, i, None], new, s)
    return layer.out(torch.stack(states, 1))


def random_keep(b: int, t: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(b, t, generator=generator) < 0.6
    keep[:, -1] = True
    keep[0, :-1] = False  # a prompt whose context is entirely absent
    return keep


LAYERS = {
    "softmax causal": (lambda: SelfAttention(6, n_heads=2, causal=True), softmax_reference),
    "softmax bidirectional": (lambda: SelfAttention(6, n_heads=3, causal=False), softmax_reference),
    "linear": (lambda: LinearAttention(6, n_heads=2), linear_reference),
    "recurrent": (lambda: RecurrentLayer(6, state=5), recurrent_reference),
}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_equal_their_formulas(name: str, length: int, masked: bool):
    build, reference = LAYERS[name]
    torch.manual_seed(length)
    layer = build().double()
    tokens = torch.randn(3, length, 6, dtype=torch.float64)
    keep = random_keep(3, length, seed=length) if masked else None
    with torch.no_grad():
        got, want = layer(tokens, keep), reference(layer, tokens, keep)
    assert got.shape == want.shape == tokens.shape
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_absent_tokens_are_removed_on_long_sequences(name: str):
    """Kept positions of a masked sequence see what the shortened sequence shows, past one chunk."""
    build, _ = LAYERS[name]
    torch.manual_seed(7)
    layer = build().double()
    length = 2 * LINEAR_ATTENTION_CHUNK + 11
    tokens = torch.randn(3, length, 6, dtype=torch.float64)
    keep = random_keep(3, length, seed=8)
    with torch.no_grad():
        masked = layer(tokens, keep)
        for b in range(3):
            alone = layer(tokens[b : b + 1, keep[b]])
            torch.testing.assert_close(masked[b, keep[b]], alone[0], rtol=1e-12, atol=1e-12)


def test_softmax_attention_on_one_token_is_the_value_projection_exactly():
    """The one-token shortcut returns what the kernel returns for a single key, bit for bit."""
    torch.manual_seed(2)
    for dtype in (torch.float32, torch.float64):
        layer = SelfAttention(6, n_heads=2).to(dtype)
        x = torch.randn(5, 1, 6, dtype=dtype)
        with torch.no_grad():
            q, k, v = heads_of(layer, x)
            kernel = merge(layer, F.scaled_dot_product_attention(q, k, v))
            assert torch.equal(layer(x), kernel)
            assert torch.equal(layer(x), layer.out(layer.value(x)))


def test_linear_attention_trains_through_the_chunked_sums():
    """Gradients through the running sums equal those of the quadratic formula."""
    torch.manual_seed(3)
    layer = LinearAttention(4, n_heads=2).double()
    tokens = torch.randn(2, LINEAR_ATTENTION_CHUNK + 20, 4, dtype=torch.float64)
    keep = random_keep(2, tokens.shape[1], seed=4)
    grads = []
    for fn in (lambda: layer(tokens, keep), lambda: linear_reference(layer, tokens, keep)):
        layer.zero_grad()
        fn()[keep].square().sum().backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

