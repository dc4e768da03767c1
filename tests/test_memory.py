"""icl_lib.experiments.memory: power-law fits and the influence of single context tokens on ΔW."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import icl_lib as icl
from icl_lib.experiments.memory import PowerLawFit, bootstrap_exponents, power_law_fit, token_influence


def test_power_law_fit_recovers_an_exact_power_law():
    steps = np.arange(1, 30)
    fit = power_law_fit(steps, 2.5 * steps**-0.7)
    assert isinstance(fit, PowerLawFit)
    assert abs(fit.exponent + 0.7) < 1e-12 and abs(fit.prefactor - 2.5) < 1e-12
    np.testing.assert_allclose(fit(np.array([4.0])), 2.5 * 4.0**-0.7)
    flat = power_law_fit(torch.arange(1.0, 6.0), torch.full((5,), 0.3))
    assert abs(flat.exponent) < 1e-12


def test_power_law_fit_bad_inputs():
    with pytest.raises(ValueError, match="positive"):
        power_law_fit([0.0, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        power_law_fit([1.0, 2.0], [1.0, -2.0])
    with pytest.raises(ValueError, match="same length"):
        power_law_fit([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="distinct"):
        power_law_fit([2.0, 2.0], [1.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        power_law_fit([1.0, 2.0], [1.0, np.nan])


@pytest.mark.parametrize("contextual", ["softmax", "linear", "recurrent"])
def test_token_influence_matches_dense_updates(contextual):
    torch.manual_seed(0)
    block = icl.Block(4, 10, n_heads=2 if contextual != "recurrent" else 1, contextual=contextual).double()
    tokens = torch.randn(3, 6, 4, dtype=torch.float64)
    replacements = torch.randn(3, 5, 4, dtype=torch.float64)
    influence = token_influence(block, tokens, replacements)
    assert influence.shape == (3, 5)
    base = icl.implicit_update(block, tokens).delta_W
    for j in range(5):
        edited = tokens.clone()
        edited[:, j] = replacements[:, j]
        want = (icl.implicit_update(block, edited).delta_W - base).flatten(1).norm(dim=-1)
        torch.testing.assert_close(influence[:, j], want, rtol=1e-10, atol=1e-12)
    # replacing a token by itself changes nothing, up to round-off: the edited copies go through
    # the block as one batch of B·N prompts and the reference as a batch of B, and a CPU's matrix
    # kernels may split the two batch sizes differently (IEEE arithmetic promises identical
    # results only for identical operations), so u′ and u may differ by a few roundings of u
    self_influence = token_influence(block, tokens, tokens[:, :-1])
    eps = torch.finfo(torch.float64).eps
    assert (self_influence <= 16 * eps * base.flatten(1).norm(dim=-1)[:, None]).all()


def test_softmax_attention_weighs_positions_alike_and_memoryless_rnn_sees_nothing():
    torch.manual_seed(1)
    attention = icl.Block(3, 8, n_heads=1).double()
    tokens = torch.randn(2, 5, 3, dtype=torch.float64)
    # without positional information, the query's attention output is a symmetric function of the
    # context: the same replacement token at any position moves ΔW by the same amount
    same = torch.randn(2, 1, 3, dtype=torch.float64).expand(2, 4, 3)
    influence = token_influence(attention, tokens[:, [0, 0, 0, 0, 4]], same)
    torch.testing.assert_close(influence, influence[:, :1].expand(2, 4), rtol=1e-10, atol=0.0)
    # a recurrent layer with no recurrence forgets everything before the query: ΔW = 0 in exact
    # arithmetic. In floating point A(C, x) and A(x) are the same formula, tanh(W_in x + b), but
    # computed in batches of different shapes, so δ = A(C, x) − A(x) is a few roundings of A(x)
    # at most and every ΔW = W δ aᵀ/‖a‖² is at most a few roundings times ‖W‖_F
    rnn = icl.Block(3, 8, contextual="recurrent").double()
    with torch.no_grad():
        rnn.attn.recurrent.weight.zero_()
    forgetful = token_influence(rnn, tokens, torch.randn(2, 4, 3, dtype=torch.float64))
    eps = torch.finfo(torch.float64).eps
    assert forgetful.shape == (2, 4)
    assert (forgetful <= 16 * eps * rnn.mlp.up.weight.norm()).all()


def test_token_influence_bad_inputs():
    block = icl.Block(3, 8).double()
    tokens = torch.randn(2, 5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="one token per context position"):
        token_influence(block, tokens, torch.randn(2, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch size"):
        token_influence(block, tokens, torch.randn(1, 4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype"):
        token_influence(block, tokens.float(), torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="context is empty"):
        token_influence(block, tokens[:, :1], tokens[:, :0])
    with pytest.raises(TypeError, match="unsupported block"):
        token_influence(torch.nn.Linear(3, 3), tokens, tokens[:, :-1])


def test_bootstrap_exponents():
    rng = np.random.default_rng(0)
    steps = np.arange(1, 21)
    exact = np.tile(3.0 * steps**-1.0, (50, 1))
    assert np.allclose(bootstrap_exponents(steps, exact, n_resamples=5, seed=0), -1.0)
    noisy = exact * np.exp(0.3 * rng.standard_normal(exact.shape))
    first = bootstrap_exponents(steps, noisy, n_resamples=200, seed=1)
    assert first.shape == (200,) and np.array_equal(first, bootstrap_exponents(steps, noisy, n_resamples=200, seed=1))
    assert 0 < first.std() < 0.1 and abs(first.mean() + 1.0) < 0.1
    with pytest.raises(ValueError, match="B ≥ 2"):
        bootstrap_exponents(steps, exact[:1], n_resamples=5, seed=0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_exponents(steps, exact, n_resamples=0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        bootstrap_exponents(steps, exact, n_resamples=3, seed=-1)
