"""The book's schematics (icl_lib.experiments.plotting): every part drawn, labelled, inside its box, no overlaps."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from icl_lib import plotting  # noqa: E402

SCHEMATICS = {
    "contextual": plotting.contextual_block_schematic,
    "residual": plotting.residual_block_schematic,
}
# Labels each drawing must show (mathtext source strings), by what they stand for.
REQUIRED = {
    "contextual": [r"$A(C, x)$", r"$A(x)$", r"$f_\theta$", "$T_W(C, x)$", r"$T_{W+\Delta W}(x)$",
                   r"$(W + \Delta W)\cdot{+}\,b$", r"$\Delta W = "],
    "residual": [r"$\mathrm{LN}_1$", r"$\mathrm{LN}_2$", "$h_T$", "$h_x$", "$m_x$",
                 r"$(W{+}\Delta W)\cdot{+}\,b$", r"$W_{\mathrm{out}}\cdot{+}\,(b'{+}\Delta b')$",
                 r"$\Delta b' = h_T - h_x$", r"$\Delta W = "],
}


@pytest.fixture(params=list(SCHEMATICS), ids=list(SCHEMATICS))
def drawn(request):
    fig = SCHEMATICS[request.param]()
    fig.canvas.draw()  # lays out the text: window extents are final after this
    yield request.param, fig
    plt.close(fig)


def boxes(fig) -> dict[str, FancyBboxPatch]:
    found = {p.get_gid()[4:]: p for p in fig.findobj(FancyBboxPatch) if (p.get_gid() or "").startswith("box:")}
    assert found, "no named boxes"
    return found


def labels(fig) -> dict[str, Text]:
    return {t.get_gid()[6:]: t for t in fig.findobj(Text) if (t.get_gid() or "").startswith("label:")}


def test_returns_one_figure_with_one_bare_axes(drawn):
    _, fig = drawn
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 1 and not fig.axes[0].axison


def test_required_labels_are_drawn(drawn):
    name, fig = drawn
    texts = [t.get_text() for t in fig.findobj(Text)]
    missing = [want for want in REQUIRED[name] if not any(text.startswith(want) for text in texts)]
    assert not missing, missing


def test_every_box_has_its_label_inside_it(drawn):
    _, fig = drawn
    renderer = fig.canvas.get_renderer()
    named_boxes, named_labels = boxes(fig), labels(fig)
    assert set(named_boxes) == set(named_labels)
    for name, patch in named_boxes.items():
        outer = patch.get_window_extent(renderer)
        inner = named_labels[name].get_window_extent(renderer)
        assert (outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0
                and inner.y1 <= outer.y1), f"the label of box {name!r} sticks out of it"


def test_boxes_do_not_overlap(drawn):
    _, fig = drawn
    renderer = fig.canvas.get_renderer()
    extents = {name: p.get_window_extent(renderer) for name, p in boxes(fig).items()}
    for (a, ea), (b, eb) in itertools.combinations(extents.items(), 2):
        overlap_x = min(ea.x1, eb.x1) - max(ea.x0, eb.x0)
        overlap_y = min(ea.y1, eb.y1) - max(ea.y0, eb.y0)
        assert overlap_x <= 0 or overlap_y <= 0, f"boxes {a!r} and {b!r} overlap"


def test_every_text_lies_inside_the_axes(drawn):
    _, fig = drawn
    renderer = fig.canvas.get_renderer()
    frame = fig.axes[0].get_window_extent(renderer)
    for text in fig.axes[0].texts:
        extent = text.get_window_extent(renderer)
        assert (frame.x0 <= extent.x0 and extent.x1 <= frame.x1 and frame.y0 <= extent.y0
                and extent.y1 <= frame.y1), f"{text.get_text()!r} is cut off by the axes"


def test_free_texts_do_not_overlap_each_other(drawn):
    _, fig = drawn
    renderer = fig.canvas.get_renderer()
    free = [t for t in fig.axes[0].texts if not (t.get_gid() or "").startswith("label:")]
    for a, b in itertools.combinations(free, 2):
        ea, eb = a.get_window_extent(renderer), b.get_window_extent(renderer)
        overlap_x = min(ea.x1, eb.x1) - max(ea.x0, eb.x0)
        overlap_y = min(ea.y1, eb.y1) - max(ea.y0, eb.y0)
        assert overlap_x <= 0 or overlap_y <= 0, f"{a.get_text()!r} and {b.get_text()!r} overlap"


def test_the_two_rows_are_joined_by_arrows(drawn):
    name, fig = drawn
    arrows = fig.findobj(FancyArrowPatch)
    # contextual: 4 links per row; residual: 9 links and 2 residual connections per row
    assert len(arrows) == {"contextual": 8, "residual": 22}[name]


def test_draws_into_a_given_axes():
    fig, (left, right) = plt.subplots(1, 2)
    try:
        assert plotting.contextual_block_schematic(ax=left) is fig
        assert plotting.residual_block_schematic(ax=right) is fig
        assert left.patches and right.patches
    finally:
        plt.close(fig)


@pytest.mark.parametrize("draw", list(SCHEMATICS.values()), ids=list(SCHEMATICS))
def test_bad_axes_is_a_type_error(draw):
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        draw(ax="left")


# The plots that recur across chapters: error_band and masked_diagonal_heatmap.


@pytest.fixture
def axes():
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


def test_error_band_draws_the_mean_and_the_band_between_mean_minus_and_plus_sem(axes):
    import numpy as np
    import torch

    values = torch.tensor([[1.0, 2.0, 4.0], [3.0, 2.0, 8.0], [2.0, 5.0, 6.0]])
    mean, sem = values.mean(0), values.std(0) / 3**0.5
    line, band = plotting.error_band(axes, [1, 2, 3], mean, sem, color="C2",
                                     label="curve", lw=1.5, marker="o")
    assert list(axes.lines) == [line] and list(axes.collections) == [band]
    np.testing.assert_array_equal(line.get_ydata(), mean.numpy())
    assert line.get_marker() == "o" and line.get_linewidth() == 1.5
    # the band's outline runs along mean + sem and back along mean - sem
    vertices = band.get_paths()[0].vertices
    assert np.isclose(vertices[:, 1].max(), (mean + sem).max())
    assert np.isclose(vertices[:, 1].min(), (mean - sem).min())
    assert band.get_alpha() == 0.25 and band.get_linewidth()[0] == 0
    handles, labels = axes.get_legend_handles_labels()
    assert labels == ["curve"] and handles == [line]


def test_error_band_labels_the_band_and_draws_its_edges_on_request(axes):
    line, band = plotting.error_band(axes, [1, 2], [1.0, 2.0], [0.1, 0.2], color="C0",
                                     band_label="mean ± s.e.", alpha=0.3, edges=True)
    assert band.get_linewidth()[0] > 0 and band.get_alpha() == 0.3
    assert axes.get_legend_handles_labels()[1] == ["mean ± s.e."]
    assert line.get_label().startswith("_")  # no legend entry for the curve


def test_error_band_rejects_bad_input(axes):
    with pytest.raises(ValueError, match="one length"):
        plotting.error_band(axes, [1, 2, 3], [1.0, 2.0], [0.1, 0.2], color="C0")
    with pytest.raises(ValueError, match="one-dimensional"):
        plotting.error_band(axes, [[1, 2]], [[1.0, 2.0]], [[0.1, 0.2]], color="C0")
    with pytest.raises(ValueError, match="non-negative"):
        plotting.error_band(axes, [1, 2], [1.0, 2.0], [0.1, -0.2], color="C0")
    with pytest.raises(TypeError, match="matplotlib Axes"):
        plotting.error_band("left", [1, 2], [1.0, 2.0], [0.1, 0.2], color="C0")


def test_masked_diagonal_heatmap_masks_only_the_diagonal_and_keeps_the_input(axes):
    import numpy as np
    import torch

    matrix = torch.arange(9, dtype=torch.float32).view(3, 3) / 10
    before = matrix.clone()
    image = plotting.masked_diagonal_heatmap(axes, matrix, cmap="viridis", vmin=0, vmax=1,
                                             bad="white")
    shown = np.ma.getdata(image.get_array())
    assert shown.dtype == np.float32
    assert np.isnan(np.diag(shown)).all()
    off = ~np.eye(3, dtype=bool)
    np.testing.assert_array_equal(shown[off], matrix.numpy()[off])
    assert torch.equal(matrix, before)  # the caller's matrix is not changed
    assert image.get_clim() == (0, 1)
    assert image.get_cmap().get_bad().tolist() == [1.0, 1.0, 1.0, 1.0]


def test_masked_diagonal_heatmap_keeps_the_colour_maps_own_bad_colour_by_default(axes):
    import numpy as np

    image = plotting.masked_diagonal_heatmap(axes, np.zeros((2, 2)), cmap="RdBu_r",
                                             vmin=-1, vmax=1)
    assert image.get_cmap().name == "RdBu_r"
    assert image.get_cmap().get_bad()[3] == 0  # transparent


def test_masked_diagonal_heatmap_rejects_bad_input(axes):
    import numpy as np

    with pytest.raises(ValueError, match="square"):
        plotting.masked_diagonal_heatmap(axes, np.zeros((2, 3)), cmap="viridis", vmin=0, vmax=1)
    with pytest.raises(TypeError, match="floating-point"):
        plotting.masked_diagonal_heatmap(axes, np.zeros((2, 2), dtype=int), cmap="viridis",
                                         vmin=0, vmax=1)
    with pytest.raises(ValueError, match="vmin must be below vmax"):
        plotting.masked_diagonal_heatmap(axes, np.zeros((2, 2)), cmap="viridis", vmin=1, vmax=0)


# --- chapters 6-10 ---


def test_gd_patch_comparison_draws_both_panels():


    fig, axes = plt.subplots(1, 2)
    steps = np.arange(5)
    plotting.gd_patch_comparison(axes, np.array([0.0, 90.0, 180.0]), np.array([1.0, 0.0, 1.0]), steps,
                                     {"a": np.ones((4, 5)), "b": 2 * np.ones((4, 5))}, {"a": "C0", "b": "C1"})
    assert len(axes[0].collections) == 1 and len(axes[1].get_lines()) == 2
    with pytest.raises(TypeError):
        plotting.gd_patch_comparison([None, None], [0.0], [1.0], steps, {}, {})
    plt.close(fig)


def test_block_cosine_heatmaps_writes_every_off_diagonal_value():


    fig, axes = plt.subplots(1, 2)
    m = np.array([[1.0, 0.25, -0.5], [0.25, 1.0, 0.0], [-0.5, 0.0, 1.0]])
    plotting.block_cosine_heatmaps(axes, (m, m), ("x", "y"), label="cos")
    texts = sorted(t.get_text() for t in axes[0].texts)
    assert texts == sorted(["+0.25", "-0.50", "+0.25", "+0.00", "-0.50", "+0.00"])
    with pytest.raises(ValueError):
        plotting.block_cosine_heatmaps(axes, (m,), ("x", "y"), label="cos")
    plt.close(fig)


def test_precision_gaps_marks_each_epsilon():


    fig, axes = plt.subplots(1, 2)
    gaps = {"float32": np.full((4, 3), 1e-7), "float64": np.full((4, 3), 1e-16)}
    plotting.precision_gaps(axes, gaps, {k: v[:, 0] for k, v in gaps.items()}, "t")
    levels = sorted(line.get_ydata()[0] for line in axes[0].get_lines() if line.get_linestyle() == ":")
    assert levels == [np.finfo(np.float64).eps, np.finfo(np.float32).eps]
    with pytest.raises(ValueError):
        plotting.precision_gaps(axes, {"float16": gaps["float32"]}, {"float16": gaps["float32"][:, 0]}, "t")
    plt.close(fig)


def test_chapter_figure_helpers_draw_what_they_are_given():
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, 2)
    curves = {"a": rng.random((5, 11)), "b": rng.random((5, 11))}
    plotting.online_protocol_curves(axes, curves, {"a": ("C0", "-"), "b": ("C1", "--")},
                                    {"a": "A", "b": "B"}, n_train=5)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["A", "B"]
    plt.close(fig)

    fig, axes = plt.subplots(1, 2)
    at = np.array([1, 2, 5])
    cosines = {"x": (at, rng.random((4, 3))), "y": (np.arange(1, 11), rng.random((4, 10)))}
    plotting.alignment_readings(axes, cosines, {"x": (rng.random((4, 3)), rng.random((4, 3)))},
                                {"x": "C0", "y": "C1"}, {"x": "X", "y": "Y"}, n_marked=3)
    assert len(axes[1].get_lines()) == 2 + 2 + 1  # two factors, two legend keys, the zero line
    plt.close(fig)

    fig, axes = plt.subplots(1, 2)
    static = {k: rng.random(4) for k in ("median", "q25", "q75", "sigma2", "sigma3")}
    plotting.static_patch_curves(axes, [1, 2, 3, 4], static, {"ref": 0.5}, {"ref": {"color": "k"}},
                                 token_width=3)
    assert any(t.get_text() == "Q = D = 3" for t in axes[0].texts)
    plt.close(fig)

    class Fit:
        exponent = -1.0

        def __call__(self, i):
            return 1 / i

    fig, ax = plt.subplots()
    steps = np.arange(6)
    plotting.step_size_fits(ax, steps, {"s": rng.random((3, 6)) + 0.5}, {"s": Fit()}, {"s": 0.1},
                            {"s": "C0"}, fit_from=2)
    assert "-1.00" in ax.get_legend().get_texts()[0].get_text()
    plt.close(fig)
