"""Predictions with and without the context, over query sets and context lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import icl_lib as icl


def setup(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    block = icl.Block(3, 10, n_heads=3).to(dtype)
    tasks = icl.sample_regression(5, 6, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return block, tasks


def test_predictions_over_queries_match_a_direct_loop_and_ignore_chunking():
    block, tasks = setup()
    queries = torch.randn(7, 2, dtype=torch.float64)
    with_context, implicit = icl.predictions_over_queries(block, tasks, queries)
    assert with_context.shape == implicit.shape == (5, 7)
    for b in (0, 4):
        for k in (0, 6):
            tokens = icl.regression_tokens(tasks.x_context[b : b + 1], tasks.y_context[b : b + 1], queries[k : k + 1])
            assert torch.allclose(with_context[b, k], block(tokens)[0, -1, -1], atol=1e-14)
    small = icl.predictions_over_queries(block, tasks, queries, chunk=3)
    assert torch.allclose(small[0], with_context, atol=1e-14) and torch.allclose(small[1], implicit, atol=1e-14)
    assert (with_context - implicit).abs().max().item() < 1e-12  # the theorem


def test_predict_implicit_differs_from_the_query_alone():
    block, tasks = setup(1)
    with torch.no_grad():
        alone = icl.predict(block, tasks.truncated(0).tokens)
        implicit = icl.predict_implicit(block, tasks.tokens)
        full = icl.predict(block, tasks.tokens)
    assert torch.allclose(implicit, full, atol=1e-12)
    assert (implicit - alone).abs().max() > 1e-3  # the update does something


def test_context_length_curve():
    block, tasks = setup(2)
    curve = icl.context_length_curve(block, tasks, [0, 1, 2, 6])
    assert curve.lengths.tolist() == [0, 1, 2, 6]
    assert np.allclose(curve.model, curve.model_implicit, rtol=1e-10, atol=0)
    assert curve.least_squares[2] < 1e-20 and curve.least_squares[3] < 1e-20  # exact once n ≥ d = 2
    assert curve.least_squares[0] == pytest.approx(curve.zero)
    assert curve.zero == pytest.approx(0.5 * tasks.targets.pow(2).mean().item())
    with torch.no_grad():
        direct = icl.regression_loss(icl.predict(block, tasks.truncated(1).tokens), tasks.targets).item()
    assert curve.model[1] == pytest.approx(direct)


def test_bad_inputs():
    block, tasks = setup()
    with pytest.raises(ValueError, match="x_queries"):
        icl.predictions_over_queries(block, tasks, torch.randn(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="chunk"):
        icl.predictions_over_queries(block, tasks, torch.randn(4, 2, dtype=torch.float64), chunk=0)
    with pytest.raises(ValueError, match="no context"):
        icl.predictions_over_queries(block, tasks.truncated(0), torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="RegressionBatch"):
        icl.context_length_curve(block, tasks.tokens, [1])
    with pytest.raises(TypeError, match="float32"):
        icl.context_length_curve(block.float(), tasks, [1])
    block.double()
    with pytest.raises(ValueError, match="n must be"):
        icl.context_length_curve(block, tasks, [7])
    with pytest.raises(TypeError, match="lengths"):
        icl.context_length_curve(block, tasks, [])
