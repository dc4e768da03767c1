"""The figure helpers of chapters 1-5 (icl_lib.experiments.plotting): what they draw, and bad input."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import icl_lib as icl  # noqa: E402
from icl_lib import plotting  # noqa: E402

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_context_sweep_draws_the_weights_and_one_band_per_layer():
    lengths = np.arange(1, 9)
    bands = {name: (torch.rand(8) + 0.1, torch.rand(8) * 0.01) for name in ("soft", "rec")}
    weights = np.full(5, 0.2)
    fig = plotting.context_sweep_figure(weights, lengths, bands, bands)
    bars, distance, change = fig.axes
    assert len(bars.patches) == 5
    assert bars.patches[-1].get_facecolor() != bars.patches[0].get_facecolor()  # the query in red
    assert [line.get_label() for line in distance.get_lines()] == ["soft", "rec"]
    # the 1/n line goes through the first layer's first point and falls like 1/n
    reference = [line for line in change.get_lines() if line.get_label() == r"$\propto 1/n$"][0]
    x, y = reference.get_data()
    assert y[0] == pytest.approx(bands["soft"][0][0].item())
    assert np.allclose(y * x, y[0] * x[0])
    with pytest.raises(ValueError, match="same layers"):
        plotting.context_sweep_figure(weights, lengths, bands, {"soft": bands["soft"]})
    with pytest.raises(ValueError, match="4 points"):
        plotting.context_sweep_figure(weights, lengths[:4], bands, bands)
    with pytest.raises(ValueError, match="positive"):
        plotting.context_sweep_figure(weights, lengths - 1, bands, bands)


def test_minimum_norm_figure_draws_exact_zeros_at_the_floor():
    size = 10 ** RNG.uniform(-1.5, 1.5, 6)
    errors = np.array([0.0, 1e-16, 2e-16, 0.0, 3e-16, 1e-16])
    fig = plotting.minimum_norm_figure(size, np.sqrt(1 + size**2), errors, size / 10)
    left, right = fig.axes
    null_points = right.collections[0].get_offsets()
    assert np.allclose(null_points[:, 1], np.maximum(errors, 1e-17))
    assert "6 prompts" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="one length"):
        plotting.minimum_norm_figure(size, size, errors[:3], size)
    with pytest.raises(ValueError, match="positive"):
        plotting.minimum_norm_figure(-size, size, errors, size)


def test_conditioning_figure_marks_exact_zeros_in_the_legend():
    scales = 10.0 ** -np.arange(5)
    curves = {"float64": np.array([0.0, 1e-16, 1e-16, 2e-16, 1e-16]),
              "float32": np.full(5, 5e-8), "deployed": 1e-7 / scales}
    errors = {"float32": np.r_[0.0, RNG.uniform(1e-8, 1e-7, 50)], "float64": RNG.uniform(1e-17, 1e-16, 51)}
    fig = plotting.conditioning_figure(errors, scales, scales, curves, 0.4 / scales)
    hist, sweep, patch = fig.axes
    labels = [line.get_label() for line in sweep.get_lines()]
    assert "float64: exactly 0" in labels and "float32: exactly 0" not in labels
    assert "1 exact zeros not shown" in hist.get_legend_handles_labels()[1][0]
    assert sweep.xaxis_inverted() and patch.xaxis_inverted()
    with pytest.raises(ValueError, match="keys"):
        plotting.conditioning_figure({"float32": errors["float32"]}, scales, scales, curves, scales)
    with pytest.raises(ValueError, match="one length"):
        plotting.conditioning_figure(errors, scales[:3], scales, curves, scales)
    with pytest.raises(ValueError, match="positive"):
        plotting.conditioning_figure(errors, scales, scales, curves, 0 * scales)


def test_training_figure_from_a_real_history():
    config = icl.TrainingConfig(n_context=4, hidden=8, n_heads=1, steps=40, batch=8, eval_every=10, n_val=16)
    _, history = icl.train_block(config)
    fig = plotting.training_figure(history, 1.0, n_val=16, window=10, close_from=20)
    train, close, gap = fig.axes
    assert titles(fig) == ["Training", "Close-up of the two validation losses",
                           "Largest gap over the 16 validation prompts"]
    assert len(close.get_lines()[0].get_xdata()) == 3  # checkpoints 20, 30, 40
    assert np.array_equal(gap.get_lines()[0].get_ydata(), history.val_max_gap)
    with pytest.raises(ValueError, match="window"):
        plotting.training_figure(history, 1.0, n_val=16, window=41)
    with pytest.raises(ValueError, match="checkpoint"):
        plotting.training_figure(history, 1.0, n_val=16, window=10, close_from=50)


def test_query_plane_figure_has_six_panels_and_the_star():
    grid = RNG.standard_normal((3, 5, 5))
    fig = plotting.query_plane_figure(grid[0], grid[0] + 1e-8, grid[1], grid[2], (0.5, -1.0))
    images = [ax for ax in fig.axes if ax.get_title()]
    assert len(images) == 6
    stars = [line for ax in fig.axes for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(stars) == 2 and stars[0].get_xydata().tolist() == [[0.5, -1.0]]
    with pytest.raises(ValueError, match="square"):
        plotting.query_plane_figure(grid[0][:4], grid[0], grid[1], grid[2], (0, 0))


def test_step_decay_figure_draws_the_fit_on_its_range():
    index = np.arange(1, 51)
    values = torch.from_numpy(1.0 / (index[None] + 2) * RNG.uniform(0.5, 1.5, (20, 50)))
    mean, sem = (v.numpy() for v in icl.mean_sem(values))
    fit = icl.power_law_fit(index[9:], mean[9:])
    fig = plotting.step_decay_figure(index, (mean, sem), ((index + 2) * mean, (index + 2) * sem), fit,
                                     training_length=20, n_tasks=20)
    steps, rescaled = fig.axes
    fitted = [line for line in steps.get_lines() if line.get_label().startswith("fit")][0]
    assert fitted.get_xdata().min() == 10 and fitted.get_xdata().max() == 50
    assert f"i^{{{fit.exponent:.2f}}}" in fitted.get_label()
    with pytest.raises(ValueError, match="one length"):
        plotting.step_decay_figure(index[:10], (mean, sem), (mean, sem), fit, training_length=20, n_tasks=20)
    with pytest.raises(ValueError, match="positive"):
        plotting.step_decay_figure(index - 1, (mean, sem), (mean, sem), fit, training_length=20, n_tasks=20)
    with pytest.raises(ValueError, match="pair"):
        plotting.step_decay_figure(index, mean, (mean, sem), fit, training_length=20, n_tasks=20)
