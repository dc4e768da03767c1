"""bfloat16 and float16 models through the same API, with float32 factors by default.

A factor is a difference of two nearby activations (``u = W_s m_p − W_s a``, ``Δb′ = h_p − h_x``):
in half precision the model has already rounded both, and rounding their difference again
would add a second error. By default the factors are formed and stored in float32 and the
patched run adds them in float32 and rounds once. The reference is the model's own forward
pass in the same half dtype.
"""

from __future__ import annotations

import pytest
import torch
from conftest import relative_error
from tiny_lms import BUILDERS, build, prompt_ids

import icl_lib as icl

HALF = [torch.bfloat16, torch.float16]


def _half(family: str, dtype: torch.dtype, seed: int = 0):
    return build(family, "small", seed, torch.float32).to(dtype)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits[:, -1]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_half_precision_patches_reproduce_the_models_own_half_precision_logits(family, dtype):
    model = _half(family, dtype)
    ids = prompt_ids(3, 11, 1)
    updates = icl.network_update(model, ids)
    assert updates[0].u.dtype == torch.float32 and updates[0].delta_b.dtype == torch.float32
    patched = icl.forward_with_updates(model, updates, ids[:, -1:])
    assert patched.dtype == dtype
    want = _logits(model, ids)
    # measured on every family, 3 seeds: at most 2.4 units of the dtype's epsilon; the bare
    # query is far off
    assert relative_error(patched.float(), want.float()) <= 8 * torch.finfo(dtype).eps
    assert relative_error(_logits(model, ids[:, -1:]).float(), want.float()) > 0.1


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_naive_half_precision_factors_are_available_and_also_close(dtype):
    model = _half("llama", dtype, seed=2)
    ids = prompt_ids(3, 11, 2)
    naive = icl.network_update(model, ids, factor_dtype=dtype)
    assert naive[0].u.dtype == dtype
    patched = icl.forward_with_updates(model, naive, ids[:, -1:])
    assert relative_error(patched.float(), _logits(model, ids).float()) <= 16 * torch.finfo(dtype).eps


def test_half_precision_steerings_kept_tokens_and_padding():
    model = _half("qwen2", torch.bfloat16, seed=3)
    ids = prompt_ids(2, 10, 3)
    eps = torch.finfo(torch.bfloat16).eps
    want = _logits(model, ids).float()
    for kwargs, query in ((dict(steering="down"), ids[:, -1:]), (dict(kept_tokens=3), ids[:, -3:])):
        updates = icl.network_update(model, ids, **kwargs)
        assert relative_error(icl.forward_with_updates(model, updates, query).float(), want) <= 8 * eps
    gemma = _half("gemma3", torch.bfloat16, seed=3)
    updates = icl.network_update(gemma, ids, steering="norm")
    patched = icl.forward_with_updates(gemma, updates, ids[:, -1:]).float()
    assert relative_error(patched, _logits(gemma, ids).float()) <= 16 * eps


def test_factor_dtypes_narrower_than_the_model_are_refused():
    ids = prompt_ids(1, 6, 0)
    with pytest.raises(ValueError, match="factor_dtype must be one of"):
        icl.network_update(_half("llama", torch.bfloat16), ids, factor_dtype=torch.float16)
    with pytest.raises(ValueError, match="factor_dtype must be one of"):
        icl.network_update(build("llama", "small", 0, torch.float64), ids, factor_dtype=torch.float32)
    with pytest.raises(ValueError, match="factor_dtype is for transformers language models"):
        icl.network_update(icl.Transformer(4, 1, 8), torch.randn(1, 3, 4), factor_dtype=torch.float32)


def test_a_model_that_mixes_dtypes_is_refused_naming_them():
    model = build("llama", "small", 0, torch.float32)
    model.model.norm.to(torch.float64)
    with pytest.raises(ValueError, match="mix dtypes"):
        icl.network_update(model, prompt_ids(1, 6, 0))


def test_token_ids_on_another_device_are_moved_to_the_models():
    """On a machine with one device the move is a no-op; the ids are accepted, not refused."""
    model = build("llama", "small", 0, torch.float64)
    ids = prompt_ids(2, 7, 0)
    updates = icl.network_update(model, ids.to("cpu"))
    assert updates[0].u.device == next(model.parameters()).device
