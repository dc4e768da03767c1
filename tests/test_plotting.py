"""The book's schematics (icl_lib.plotting): every part drawn, labelled, inside its box, no overlaps."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
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
