"""Bad input gets a clear error that names the problem, before any arithmetic.

One table: each row is a call that must fail, the exception type, and a fragment the message
must contain.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import icl_lib as icl

D, H, B, T = 4, 8, 2, 5


def block64() -> icl.Block:
    torch.manual_seed(0)
    return icl.Block(D, H, n_heads=2).double()


def residual64() -> icl.Block:
    torch.manual_seed(0)
    return icl.Block(D, H, residual=True, layer_norm=True).double()


def tokens64(b: int = B, t: int = T, d: int = D) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(b, t, d, dtype=torch.float64)


def with_value(value: float) -> torch.Tensor:
    tokens = tokens64()
    tokens[1, 2, 3] = value
    return tokens


def silent_attention_block() -> icl.Block:
    """A block whose attention output is identically zero: A(x) = 0."""
    block = block64()
    with torch.no_grad():
        block.attn.out.weight.zero_()
        block.attn.out.bias.zero_()
    return block


def tiny_attention_block() -> icl.Block:
    """A block whose A(x) is non-zero but so small that ‖A(x)‖² underflows in float32."""
    block = icl.Block(D, H).float()
    with torch.no_grad():
        block.attn.out.weight.zero_()
        block.attn.out.bias.fill_(1e-25)
    return block


def encoder(train: bool = False, batch_first: bool = True) -> nn.TransformerEncoderLayer:
    layer = nn.TransformerEncoderLayer(D, 2, H, batch_first=batch_first).double()
    return layer.train(train)


def update64(**kwargs) -> icl.ImplicitUpdate:
    return icl.implicit_update(block64(), tokens64(), **kwargs)


def stack64() -> icl.Transformer:
    torch.manual_seed(0)
    return icl.Transformer(D, 2, H).double()


CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # which block
    ("unsupported block", lambda: icl.implicit_update(nn.Linear(D, D), tokens64()), TypeError, "unsupported block type Linear"),
    ("encoder in training mode", lambda: icl.implicit_update(encoder(train=True), tokens64()), ValueError, ".eval()"),
    ("encoder not batch_first", lambda: icl.implicit_update(encoder(batch_first=False), tokens64()), ValueError, "batch_first=True"),
    # tokens
    ("tokens not a tensor", lambda: icl.implicit_update(block64(), tokens64().tolist()), TypeError, "tokens must be a torch.Tensor"),
    ("tokens 2-d", lambda: icl.implicit_update(block64(), tokens64()[0]), ValueError, "shape (B, T, D)"),
    ("tokens 4-d", lambda: icl.implicit_update(block64(), tokens64()[None]), ValueError, "shape (B, T, D)"),
    ("wrong token width", lambda: icl.implicit_update(block64(), tokens64(d=D + 1)), ValueError, "token width D=5"),
    ("empty batch", lambda: icl.implicit_update(block64(), tokens64(b=0)), ValueError, "empty batch"),
    ("empty context", lambda: icl.implicit_update(block64(), tokens64(t=1)), ValueError, "the context is empty"),
    ("integer tokens", lambda: icl.implicit_update(block64(), tokens64().long()), TypeError, "torch.float32 or torch.float64"),
    ("dtype mismatch", lambda: icl.implicit_update(block64(), tokens64().float()), TypeError, "parameters are torch.float64"),
    ("device mismatch", lambda: icl.implicit_update(block64(), tokens64().to("meta")), ValueError, "device meta"),
    ("NaN token", lambda: icl.implicit_update(block64(), with_value(float("nan"))), ValueError, "non-finite"),
    ("inf token", lambda: icl.implicit_update(block64(), with_value(float("inf"))), ValueError, "non-finite"),
    # the theorem's denominator
    ("zero A(x)", lambda: icl.implicit_update(silent_attention_block(), tokens64()), ValueError, "exactly zero for batch element(s) [0, 1]"),
    ("zero A(x), trajectory", lambda: icl.implicit_trajectory(silent_attention_block(), tokens64()), ValueError, "A(x), is exactly zero"),
    ("underflowing ‖A(x)‖²", lambda: icl.implicit_update(tiny_attention_block(), tokens64().float()), ValueError, "underflows or overflows in torch.float32"),
    # absorb masks
    ("absorb not a tensor", lambda: icl.implicit_update(block64(), tokens64(), absorb=[True] * 4), TypeError, "absorb must be a boolean"),
    ("absorb float", lambda: icl.implicit_update(block64(), tokens64(), absorb=torch.ones(B, T - 1)), TypeError, "torch.bool"),
    ("absorb covers the query", lambda: icl.implicit_update(block64(), tokens64(), absorb=torch.ones(B, T, dtype=torch.bool)), ValueError, "(B, T-1) = (2, 4)"),
    ("absorb wrong batch", lambda: icl.implicit_update(block64(), tokens64(), absorb=torch.ones(1, T - 1, dtype=torch.bool)), ValueError, "got (1, 4)"),
    ("absent wrong shape", lambda: icl.forward_with_update(block64(), update64(), tokens64(), absent=torch.ones(B, 2, dtype=torch.bool)), ValueError, "absent must have shape"),
    # positions
    ("position too large", lambda: icl.implicit_update(block64(), tokens64(), position=T), ValueError, "position 5 is out of range"),
    ("position too small", lambda: icl.implicit_update(block64(), tokens64(), position=-T - 1), ValueError, "out of range"),
    ("position unknown word", lambda: icl.implicit_update(block64(), tokens64(), position="last"), ValueError, "'last'"),
    ("position float", lambda: icl.implicit_update(block64(), tokens64(), position=1.0), TypeError, "position must be an int"),
    ("position bool", lambda: icl.implicit_update(block64(), tokens64(), position=True), TypeError, "position must be an int"),
    # applying updates
    ("not an update", lambda: icl.forward_with_update(block64(), "delta", tokens64()[:, -1:]), TypeError, "ImplicitUpdate"),
    ("update of another block", lambda: icl.forward_with_update(icl.Block(D, H + 1).double(), update64(), tokens64()[:, -1:]), ValueError, "another block"),
    ("update batch mismatch", lambda: icl.forward_with_update(block64(), update64(), tokens64(b=3)[:, -1:]), ValueError, "batch size 3"),
    ("update dtype mismatch", lambda: icl.forward_with_update(block64().float(), update64(), tokens64().float()[:, -1:]), TypeError, "update has dtype torch.float64"),
    # stacks
    ("unsupported stack", lambda: icl.network_update(nn.Linear(D, D), tokens64()), TypeError, "unsupported model type Linear"),
    ("stack with a foreign layer", lambda: icl.network_update(nn.Sequential(block64(), nn.ReLU()), tokens64()), TypeError, "stack element 1 is a ReLU"),
    ("empty stack", lambda: icl.network_update(nn.Sequential(), tokens64()), ValueError, "the stack is empty"),
    ("stack, empty context", lambda: icl.network_update(stack64(), tokens64(t=1)), ValueError, "the context is empty"),
    ("wrong number of updates", lambda: icl.forward_with_updates(stack64(), icl.network_update(stack64(), tokens64())[:1], tokens64()[:, -1]), ValueError, "one ImplicitUpdate per block (2)"),
    ("every-position updates in a chain", lambda: icl.forward_with_updates(stack64(), icl.network_update(stack64(), tokens64(), position="all"), tokens64()[:, -1]), ValueError, "not the query"),
    ("query of two tokens", lambda: icl.forward_with_updates(stack64(), icl.network_update(stack64(), tokens64()), tokens64()[:, -2:]), ValueError, "query must be one token"),
    # trajectories
    ("trajectory, empty context", lambda: icl.implicit_trajectory(residual64(), tokens64(t=1)), ValueError, "the context is empty"),
    ("trajectory step out of range", lambda: icl.implicit_trajectory(block64(), tokens64()).weights(T), ValueError, "step index must be an int in [0, 4]"),
    ("trajectory logits of a block", lambda: icl.implicit_trajectory(block64(), tokens64(), logits=False), ValueError, "logits are for transformers language models only"),
    ("trajectory gradient past the end", lambda: icl.implicit_trajectory(block64(), tokens64()).gradient(T - 1), ValueError, "in [0, 3]"),
    # constructors and seeding
    ("layer_norm without residual", lambda: icl.Block(D, H, layer_norm=True), ValueError, "requires residual=True"),
    ("heads do not divide dim", lambda: icl.Block(D, H, n_heads=3), ValueError, "not divisible by n_heads=3"),
    ("unknown activation", lambda: icl.Block(D, H, activation="swish"), ValueError, "unknown activation 'swish'"),
    ("unknown contextual layer", lambda: icl.Block(D, H, contextual="mamba"), ValueError, "unknown contextual layer 'mamba'"),
    ("non-causal linear attention", lambda: icl.Block(D, H, contextual="linear", causal=False), ValueError, "causal only"),
    ("zero depth", lambda: icl.Transformer(D, 0, H), ValueError, "depth must be at least 1"),
    ("negative seed", lambda: icl.seed_everything(-1), ValueError, "non-negative int"),
    ("zero threads", lambda: icl.seed_everything(0, threads=0), ValueError, "positive int"),
]


@pytest.mark.parametrize("call, error, fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_refused_with_a_clear_message(call, error, fragment):
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value), str(info.value)


def test_the_table_has_no_duplicate_names():
    names = [case[0] for case in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_finite_agrees_with_the_entrywise_test(dtype):
    """The one-reduction finiteness test behind the checks: a finite sum proves every entry
    finite; a non-finite sum (NaN, ±inf, or finite entries that overflow when added) falls back
    to the entrywise test, so large finite values are not refused."""
    from icl_lib.core.checks import all_finite

    big = torch.finfo(dtype).max
    cases = {
        "ordinary": torch.randn(3, 5, dtype=dtype),
        "empty": torch.empty(0, 4, dtype=dtype),
        "sum overflows": torch.full((4,), big, dtype=dtype),
        "opposite overflows": torch.tensor([big, big, -big, -big], dtype=dtype),
        "nan": torch.tensor([1.0, float("nan"), 2.0], dtype=dtype),
        "inf": torch.tensor([1.0, float("inf")], dtype=dtype),
        "inf and -inf": torch.tensor([float("inf"), float("-inf")], dtype=dtype),
        "nan among huge": torch.tensor([big, float("nan"), big], dtype=dtype),
    }
    for name, x in cases.items():
        assert all_finite(x) == bool(torch.isfinite(x).all()), name
    assert all_finite(cases["sum overflows"]) and not all_finite(cases["inf and -inf"])
