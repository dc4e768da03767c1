"""Least squares and the zero predictor."""

from __future__ import annotations

import pytest
import torch

import icl_lib as icl


@pytest.mark.parametrize("dim, n", [(2, 2), (2, 5), (4, 4), (4, 9)])
def test_least_squares_is_exact_once_n_reaches_d(dim, n):
    tasks = icl.sample_regression(50, n, dim, generator=torch.Generator().manual_seed(dim * 10 + n), dtype=torch.float64)
    pred = icl.least_squares_predict(tasks.x_context, tasks.y_context, tasks.x_query)
    assert (pred - tasks.targets).abs().max().item() < 1e-9


def test_least_squares_below_d_is_a_projection():
    tasks = icl.sample_regression(20000, 1, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pred = icl.least_squares_predict(tasks.x_context, tasks.y_context, tasks.x_query)
    loss = icl.regression_loss(pred, tasks.targets).item()
    assert abs(loss - icl.least_squares_expected_loss(3, 1)) < 0.05  # (d − N)/2 = 1
    # the prediction uses ŵ that interpolates the single example
    w_hat_dot_x1 = icl.least_squares_predict(tasks.x_context, tasks.y_context, tasks.x_context[:, 0])
    assert torch.allclose(w_hat_dot_x1, tasks.y_context[:, 0], atol=1e-10)


def test_empty_context_predicts_zero():
    x_q = torch.randn(4, 2)
    pred = icl.least_squares_predict(torch.zeros(4, 0, 2), torch.zeros(4, 0), x_q)
    assert torch.equal(pred, torch.zeros(4))


def test_expected_losses():
    assert icl.zero_predictor_loss(2) == 1.0
    assert icl.least_squares_expected_loss(2, 0) == 1.0
    assert icl.least_squares_expected_loss(5, 2) == 1.5
    assert icl.least_squares_expected_loss(2, 7) == 0.0
    with pytest.raises(ValueError, match="dim"):
        icl.zero_predictor_loss(0)
    with pytest.raises(ValueError, match="n_context"):
        icl.least_squares_expected_loss(2, -1)
    with pytest.raises(ValueError, match="x_query"):
        icl.least_squares_predict(torch.randn(2, 3, 2), torch.randn(2, 3), torch.randn(3, 2))
