"""The book's plotting helpers: schematics of the blocks, and the plots that recur across chapters.

Two pictures, drawn with matplotlib from code (the book ships no image files):

* :func:`contextual_block_schematic`: the plain contextual block ``T_W = M_W ∘ A`` of
  Dherin et al. (2025), run on the whole prompt ``[c_1, ..., c_N, x]`` and, below it, on the
  query alone with the patched weight ``W + ΔW``; both give the same output (chapters 1 and 2);
* :func:`residual_block_schematic`: the pre-LN residual block of Innocenti & Achour (2025), whose
  context becomes two patches, ``ΔW`` of the MLP's first weight and ``Δb′`` of its output bias
  (chapter 7).

Both return the :class:`matplotlib.figure.Figure` they drew on. Every box is a
``FancyBboxPatch`` whose ``gid`` is ``"box:NAME"`` and every box label a ``Text`` whose ``gid`` is
``"label:NAME"``, so tests (and readers) can find the parts of a drawing by name. The figures
keep matplotlib's white background, so they read the same in the book's light and dark modes.

Two helpers draw what several chapters plot, on an axes the chapter gives them:

* :func:`error_band`: a mean curve with its band of one standard error either side (chapters
  1, 5, 6 and 9 average over prompts or tasks this way);
* :func:`masked_diagonal_heatmap`: a square matrix of cosines between patches whose diagonal,
  1 by definition, is masked (chapters 8 and 11).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path

__all__ = [
    "contextual_block_schematic",
    "residual_block_schematic",
    "error_band",
    "masked_diagonal_heatmap",
    # --- chapters 1-5 ---
    "context_sweep_figure",
    "minimum_norm_figure",
    "conditioning_figure",
    "training_figure",
    "query_plane_figure",
    "step_decay_figure",
    # --- chapters 6-10 ---
    "gd_patch_comparison",
    "block_cosine_heatmaps",
    "precision_gaps",
    "online_protocol_curves",
    "alignment_readings",
    "static_patch_curves",
    "step_size_fits",
]

# Colours: the prompted path in blue, the query-alone path in grey, the patched parts in red.
_PROMPT = "#dbe8f6"
_ALONE = "#eeeeee"
_PATCH = "#f9d9d4"
_PATCH_EDGE = "#b2321f"
_TOKEN = "#ffffff"
_TEXT = "#1a1a1a"
_FONT = 10.5


@dataclass(frozen=True)
class _Box:
    """A box in data coordinates: centre ``(x, y)``, width ``w``, height ``h``."""

    x: float
    y: float
    w: float
    h: float

    @property
    def left(self) -> float:
        return self.x - self.w / 2

    @property
    def right(self) -> float:
        return self.x + self.w / 2

    @property
    def top(self) -> float:
        return self.y + self.h / 2

    @property
    def bottom(self) -> float:
        return self.y - self.h / 2


class _Diagram:
    """Boxes and arrows on one axes whose data coordinates are the drawing's units."""

    def __init__(self, ax: Axes, width: float, height: float):
        self.ax = ax
        self.boxes: dict[str, _Box] = {}
        ax.set_xlim(0, width)
        ax.set_ylim(0, height)
        ax.set_aspect("equal")
        ax.axis("off")

    def box(self, name: str, x: float, y: float, text: str, w: float, h: float = 0.62,
            face: str = _PROMPT, edge: str = _TEXT, size: float = _FONT, round_corners: bool = True,
            dashed: bool = False) -> _Box:
        """Draw the labelled box ``name`` centred at ``(x, y)``; names are unique."""
        if name in self.boxes:
            raise ValueError(f"the drawing already has a box named {name!r}")
        style = "round,pad=0,rounding_size=0.12" if round_corners else "square,pad=0"
        patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle=style, facecolor=face,
                               edgecolor=edge, linewidth=1.6 if edge == _PATCH_EDGE else 1.0,
                               linestyle="--" if dashed else "-", zorder=2)
        patch.set_gid(f"box:{name}")
        self.ax.add_patch(patch)
        label = self.ax.text(x, y, text, ha="center", va="center", fontsize=size, color=_TEXT,
                             zorder=3)
        label.set_gid(f"label:{name}")
        self.boxes[name] = _Box(x, y, w, h)
        return self.boxes[name]

    def arrow(self, start: tuple[float, float], end: tuple[float, float], label: str | None = None,
              label_offset: tuple[float, float] = (0.0, 0.2), color: str = _TEXT,
              connection: str = "arc3", dashed: bool = False, size: float = _FONT - 1) -> None:
        """An arrow from ``start`` to ``end`` (data coordinates), optionally labelled at its middle."""
        patch = FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11, color=color,
                                linewidth=1.0, connectionstyle=connection,
                                linestyle="--" if dashed else "-", shrinkA=0, shrinkB=0, zorder=1)
        self.ax.add_patch(patch)
        if label is not None:
            mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
            self.ax.text(mx + label_offset[0], my + label_offset[1], label, ha="center",
                         va="bottom" if label_offset[1] >= 0 else "top", fontsize=size,
                         color=color, zorder=3)

    def link(self, a: str, b: str, label: str | None = None, **kwargs) -> None:
        """A horizontal arrow from the right edge of box ``a`` to the left edge of box ``b``."""
        first, second = self.boxes[a], self.boxes[b]
        self.arrow((first.right, first.y), (second.left, second.y), label, **kwargs)

    def elbow(self, start: tuple[float, float], end: tuple[float, float], level: float) -> None:
        """An arrow from ``start`` straight to height ``level``, across, then straight to ``end``."""
        path = Path([start, (start[0], level), (end[0], level), end])
        patch = FancyArrowPatch(path=path, arrowstyle="-|>", mutation_scale=11, color=_TEXT,
                                linewidth=1.0, zorder=1)
        self.ax.add_patch(patch)
        self.ax.plot([start[0]], [start[1]], "o", color=_TEXT, markersize=3, zorder=3)

    def text(self, x: float, y: float, text: str, size: float = _FONT, **kwargs) -> None:
        kwargs.setdefault("ha", "center")
        kwargs.setdefault("va", "center")
        kwargs.setdefault("color", _TEXT)
        self.ax.text(x, y, text, fontsize=size, zorder=3, **kwargs)


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """The figure and axes to draw on: a new figure, or the one ``ax`` belongs to."""
    if ax is None:
        import matplotlib.pyplot as plt  # only here: importing icl_lib does not load pyplot

        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax.figure, ax


def _tokens(d: _Diagram, y: float, names: list[tuple[str, str]], start: float, width: float = 0.62,
            gap: float = 0.1) -> tuple[float, float]:
    """A row of token boxes from ``start``; returns the x of its left and right edges."""
    x = start + width / 2
    for name, text in names:
        d.box(name, x, y, text, w=width, face=_TOKEN, round_corners=False)
        x += width + gap
    return start, x - gap


def contextual_block_schematic(ax: Axes | None = None) -> Figure:
    """Draw the contextual block ``T_W = M_W ∘ A`` and its rank-one patch.

    Top row: the prompt ``[c_1, ..., c_N, x]`` goes through the contextual layer ``A``; the MLP
    receives ``A(C, x)``, applies its first dense layer ``W · + b`` and then the rest ``f_θ``,
    giving ``T_W(C, x)``. Bottom row: the query ``x`` alone goes through the same ``A``, giving
    ``A(x)``; the first layer's weight is ``W + ΔW`` with
    ``ΔW = W (A(C, x) − A(x)) A(x)ᵀ / ‖A(x)‖²``, and the output is ``T_{W+ΔW}(x)``, equal to the
    top row's (Dherin et al., 2025, Theorem 2.2).

    Args:
        ax: the axes to draw on; by default a new figure of 10 x 3.9 inches.

    Returns:
        The figure drawn on.

    Raises:
        TypeError: if ``ax`` is neither ``None`` nor a matplotlib ``Axes``.
    """
    fig, ax = _axes(ax, (10.0, 3.9))
    d = _Diagram(ax, 15.4, 6.0)
    top, bottom = 4.35, 1.45

    # Row labels.
    d.text(0.05, top + 0.75, "with the context", size=_FONT - 0.5, ha="left", style="italic")
    d.text(0.05, bottom + 0.75, "query alone", size=_FONT - 0.5, ha="left", style="italic")

    # The prompt: c_1, c_2, ..., c_N, x.
    names = [("c1", "$c_1$"), ("c2", "$c_2$"), ("dots", r"$\cdots$"), ("cN", "$c_N$"), ("query", "$x$")]
    _, right = _tokens(d, top, names, start=0.1)
    d.box("query alone", 0.1 + 4 * 0.72 + 0.31, bottom, "$x$", w=0.62, face=_TOKEN, round_corners=False)
    d.text((0.1 + right) / 2, top - 0.62, r"context $C$, then the query $x$", size=_FONT - 1.5)

    x_layer, x_first, x_rest, x_out = 5.4, 9.0, 11.55, 13.95
    d.box("A (prompt)", x_layer, top, "$A$", w=1.0)
    d.box("A (alone)", x_layer, bottom, "$A$", w=1.0, face=_ALONE)
    d.box("W", x_first, top, r"$W\cdot{+}\,b$", w=1.7)
    d.box("W+dW", x_first, bottom, r"$(W + \Delta W)\cdot{+}\,b$", w=2.6, face=_PATCH,
          edge=_PATCH_EDGE)
    d.box("f (prompt)", x_rest, top, r"$f_\theta$", w=1.0)
    d.box("f (alone)", x_rest, bottom, r"$f_\theta$", w=1.0, face=_ALONE)
    d.box("out (prompt)", x_out, top, "$T_W(C, x)$", w=2.0, face=_TOKEN)
    d.box("out (alone)", x_out, bottom, r"$T_{W+\Delta W}(x)$", w=2.0, face=_TOKEN)

    d.arrow((right + 0.05, top), (d.boxes["A (prompt)"].left, top))
    d.link("query alone", "A (alone)")
    d.link("A (prompt)", "W", "$A(C, x)$")
    d.link("A (alone)", "W+dW", "$A(x)$")
    d.link("W", "f (prompt)")
    d.link("W+dW", "f (alone)")
    d.link("f (prompt)", "out (prompt)")
    d.link("f (alone)", "out (alone)")

    # The two outputs are equal.
    d.text(x_out, (top + bottom) / 2, "$=$", size=_FONT + 6)
    # The patch, computed from the two vectors A reads at the query.
    d.text((x_layer + x_first) / 2 + 0.35, (top + bottom) / 2 + 0.05,
           r"$\Delta W = \dfrac{W\,(A(C, x) - A(x))\,A(x)^\top}{\Vert A(x)\Vert^2}$",
           size=_FONT, color=_PATCH_EDGE)
    d.text(x_first + 0.05, bottom - 0.7, "rank one, from two passes of $A$: with $C$ and without",
           size=_FONT - 1.5, color=_PATCH_EDGE)
    d.text((x_first + x_rest) / 2 + 0.1, top - 0.72, r"$M_W(z) = f_\theta(W z + b)$, the MLP",
           size=_FONT - 1.5)
    return fig


def residual_block_schematic(ax: Axes | None = None) -> Figure:
    """Draw the pre-LN residual block and its two patches ``ΔW`` and ``Δb′``.

    Top row: at the query's position ``T`` of the prompt, the residual stream is
    ``h_T = z_T + A(LN₁ z)_T``; the MLP ``W_out φ(W · + b) + b′`` reads ``LN₂ h_T`` and its output
    is added to ``h_T``, giving ``out_T``. Bottom row: the query ``x`` alone, with residual stream
    ``h_x`` and MLP input ``m_x = LN₂ h_x``, through the block with ``W + ΔW`` and ``b′ + Δb′``:
    ``ΔW = W (LN₂ h_T − m_x) m_xᵀ / ‖m_x‖²`` and ``Δb′ = h_T − h_x``. The output is ``out_T``
    again (Innocenti & Achour, 2025).

    Args:
        ax: the axes to draw on; by default a new figure of 10 x 4.3 inches.

    Returns:
        The figure drawn on.

    Raises:
        TypeError: if ``ax`` is neither ``None`` nor a matplotlib ``Axes``.
    """
    fig, ax = _axes(ax, (10.0, 4.3))
    d = _Diagram(ax, 16.4, 6.9)
    top, bottom = 4.55, 1.55
    xs = {"in": 0.75, "ln1": 2.3, "A": 3.75, "add1": 5.15, "ln2": 6.8, "W": 8.7, "phi": 10.35,
          "Wout": 12.25, "add2": 14.0, "out": 15.3}
    small = _FONT - 1.5

    d.text(0.05, top + 1.45, "prompt, read at the query's position $T$", size=_FONT - 0.5,
           ha="left", style="italic")
    d.text(0.05, bottom - 1.3, "query alone", size=_FONT - 0.5, ha="left", style="italic")

    rows = (("prompt", top, "$z_{1..T}$", _PROMPT, "W", r"$W\cdot{+}\,b$", 1.45, "Wout",
             r"$W_{\mathrm{out}}\cdot{+}\,b'$", 1.95, _PROMPT, "$\\mathrm{out}_T$"),
            ("alone", bottom, "$x$", _ALONE, "W+dW", r"$(W{+}\Delta W)\cdot{+}\,b$", 2.3,
             "Wout+db", r"$W_{\mathrm{out}}\cdot{+}\,(b'{+}\Delta b')$", 2.7, _PATCH,
             "$\\mathrm{out}_T$"))
    for row, y, token, face, w_name, w_text, w_width, o_name, o_text, o_width, o_face, out in rows:
        patched = row == "alone"
        shift = 0.25 if patched else 0.0  # the patched boxes are wider: move the tail right
        d.box(f"in ({row})", xs["in"], y, token, w=1.15 if not patched else 0.62, face=_TOKEN,
              round_corners=False)
        d.box(f"LN1 ({row})", xs["ln1"], y, r"$\mathrm{LN}_1$", w=0.95, face=face)
        d.box(f"A ({row})", xs["A"], y, "$A$", w=0.8, face=face)
        d.box(f"add1 ({row})", xs["add1"], y, "$+$", w=0.5, h=0.5, face=_TOKEN)
        d.box(f"LN2 ({row})", xs["ln2"], y, r"$\mathrm{LN}_2$", w=0.95, face=face)
        d.box(w_name, xs["W"] + shift, y, w_text, w=w_width, face=_PATCH if patched else face,
              edge=_PATCH_EDGE if patched else _TEXT, size=_FONT - 1)
        d.box(f"phi ({row})", xs["phi"] + shift, y, r"$\varphi$", w=0.6, face=face)
        d.box(o_name, xs["Wout"] + shift, y, o_text, w=o_width, face=o_face,
              edge=_PATCH_EDGE if patched else _TEXT, size=_FONT - 1)
        d.box(f"add2 ({row})", xs["add2"] + shift, y, "$+$", w=0.5, h=0.5, face=_TOKEN)
        d.box(f"out ({row})", xs["out"] + shift, y, out, w=0.95, face=_TOKEN, round_corners=False)
        chain = [f"in ({row})", f"LN1 ({row})", f"A ({row})", f"add1 ({row})", f"LN2 ({row})",
                 w_name, f"phi ({row})", o_name, f"add2 ({row})", f"out ({row})"]
        for a, b in zip(chain, chain[1:]):
            d.link(a, b)
        # The two residual connections: over the prompt's row, under the query's.
        sign = 1 if not patched else -1
        add1, add2 = d.boxes[f"add1 ({row})"], d.boxes[f"add2 ({row})"]
        branch1 = (d.boxes[f"in ({row})"].right + 0.18, y)
        branch2 = ((add1.right + d.boxes[f"LN2 ({row})"].left) / 2, y)
        d.elbow(branch1, (add1.x, y + sign * add1.h / 2), y + sign * 0.8)
        d.elbow(branch2, (add2.x, y + sign * add2.h / 2), y + sign * 0.8)
        d.text(branch2[0], y - sign * 0.45, "$h_T$" if not patched else "$h_x$", size=small)
        mlp_in = (d.boxes[f"LN2 ({row})"].right + d.boxes[w_name].left) / 2
        d.text(mlp_in, y - sign * 0.45, r"$\mathrm{LN}_2 h_T$" if not patched else "$m_x$",
               size=small)

    # Where the residual arcs run, to keep labels off them.
    d.text((xs["ln1"] + xs["A"]) / 2, top + 1.05, "residual", size=small, color="0.35")
    d.text((xs["W"] + xs["Wout"]) / 2, top + 1.05, "residual (around the MLP)", size=small,
           color="0.35")
    d.text((xs["in"] + xs["A"]) / 2 + 0.4, (top + bottom) / 2 + 0.32,
           "the same $\\mathrm{LN}_1$, $A$, $\\mathrm{LN}_2$, $\\varphi$", size=small, color="0.35")
    d.text((xs["in"] + xs["A"]) / 2 + 0.4, (top + bottom) / 2 - 0.18, "in both rows", size=small,
           color="0.35")
    d.text(xs["W"] + 1.15, (top + bottom) / 2 + 0.28,
           r"$\Delta W = \dfrac{W\,(\mathrm{LN}_2 h_T - m_x)\,m_x^\top}{\Vert m_x\Vert^2}$",
           size=_FONT - 0.5, color=_PATCH_EDGE)
    d.text(xs["Wout"] + 1.35, (top + bottom) / 2 - 0.3, r"$\Delta b' = h_T - h_x$",
           size=_FONT - 0.5, color=_PATCH_EDGE)
    d.text(xs["out"] - 0.2, (top + bottom) / 2 + 0.1, "$=$", size=_FONT + 6)
    return fig


def _numpy(values: object) -> np.ndarray:
    """A tensor, array or sequence as a NumPy array (on the CPU, no gradient)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _vector(values: object, name: str) -> np.ndarray:
    """``values`` (a tensor, array or sequence) as a 1-d NumPy array of its own dtype."""
    array = _numpy(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def error_band(ax: Axes, x: Sequence[float] | np.ndarray, mean: object, sem: object, *,
               color: str, label: str | None = None, band_label: str | None = None,
               alpha: float = 0.25, edges: bool = False,
               **line_kwargs: object) -> tuple[Line2D, PolyCollection]:
    """Draw a mean curve and the band ``mean ± sem`` around it.

    The curve is ``ax.plot(x, mean)`` and the band ``ax.fill_between(x, mean - sem,
    mean + sem)``, both in ``color``; typically ``mean, sem = icl.mean_sem(values)`` for
    ``values`` of shape ``(samples, n)``.

    Args:
        ax: the axes to draw on.
        x: ``(n,)`` abscissae.
        mean, sem: ``(n,)`` each (tensors or arrays): the curve and the band's half-width.
        color: the colour of the curve and of the band.
        label: the curve's legend entry (``None``: no entry).
        band_label: the band's legend entry (``None``: no entry).
        alpha: the band's opacity.
        edges: draw the band's outline (matplotlib's default patch line width, in
            ``color`` with ``alpha``); by default the band has no outline.
        **line_kwargs: further keyword arguments of the curve's ``ax.plot`` (``lw``,
            ``ls``, ``marker``, ``ms``, ...).

    Returns:
        ``(line, band)``: the curve's ``Line2D`` and the band's ``PolyCollection``.

    Raises:
        TypeError: if ``ax`` is not a matplotlib ``Axes``.
        ValueError: if ``x``, ``mean`` and ``sem`` are not one-dimensional of one length,
            or ``sem`` has a negative entry.
    """
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
    x, mean, sem = _vector(x, "x"), _vector(mean, "mean"), _vector(sem, "sem")
    if not len(x) == len(mean) == len(sem):
        raise ValueError(f"x, mean and sem must have one length, got {len(x)}, {len(mean)} "
                         f"and {len(sem)}")
    if (sem < 0).any():
        raise ValueError("sem must be non-negative (it is a standard error)")
    (line,) = ax.plot(x, mean, color=color, label=label, **line_kwargs)
    outline = {} if edges else {"lw": 0}
    band = ax.fill_between(x, mean - sem, mean + sem, color=color, alpha=alpha,
                           label=band_label, **outline)
    return line, band


def masked_diagonal_heatmap(ax: Axes, matrix: object, *, cmap: str | Colormap, vmin: float,
                            vmax: float, bad: str | None = None) -> AxesImage:
    """Draw a square matrix as an image with its diagonal masked.

    For matrices of cosines between patches (of positions, blocks or prompts), whose diagonal
    is 1 by definition: the diagonal is set to NaN, which the colour map draws in its "bad"
    colour. The matrix is copied, never changed, and keeps its dtype.

    Args:
        ax: the axes to draw on.
        matrix: ``(n, n)`` floating-point values (a tensor or an array).
        cmap: the colour map (a name or a ``Colormap``).
        vmin, vmax: the values at the two ends of the colour map.
        bad: the colour of the masked diagonal (``None``: the colour map's own, transparent
            for matplotlib's maps, so the axes' background shows).

    Returns:
        the ``AxesImage`` (for a colour bar).

    Raises:
        TypeError: if ``ax`` is not a matplotlib ``Axes`` or ``matrix`` is not floating-point.
        ValueError: if ``matrix`` is not square or ``vmin >= vmax``.
    """
    if not isinstance(ax, Axes):
        raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().numpy()
    values = np.array(matrix, copy=True)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"matrix must be square, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.floating):
        raise TypeError(f"matrix must be floating-point (NaN marks the diagonal), got "
                        f"{values.dtype}")
    if not vmin < vmax:
        raise ValueError(f"vmin must be below vmax, got {vmin} and {vmax}")
    np.fill_diagonal(values, np.nan)
    if bad is not None:
        import matplotlib

        colormap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
        cmap = colormap.with_extremes(bad=bad)
    return ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax)


# --- chapters 1-5 ---
# The figures of chapters 1, 2, 4 and 5, each drawn from arrays the chapter computed. Every helper
# makes its own figure (pyplot is imported only when one is drawn) and returns it.


def _band(pair: object, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A ``(mean, sem)`` pair as two 1-d arrays of one length."""
    try:
        mean, sem = pair  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (mean, sem) pair") from None
    mean, sem = _vector(mean, f"{name} mean"), _vector(sem, f"{name} sem")
    if len(mean) != len(sem):
        raise ValueError(f"{name}: mean and sem have lengths {len(mean)} and {len(sem)}")
    return mean, sem


def _figure(mosaic: list[list[str]], figsize: tuple[float, float], **kwargs: object) -> tuple[Figure, dict]:
    import matplotlib.pyplot as plt  # only here: importing icl_lib does not load pyplot

    return plt.subplot_mosaic(mosaic, figsize=figsize, **kwargs)


def context_sweep_figure(weights: object, lengths: object, distance: dict, change: dict) -> Figure:
    """Chapter 1: how far the context moves a layer's output at the query, and how fast.

    Three panels: the query's softmax attention weights over one prompt (its last bar, the query's
    own weight, in red, beside the uniform weight); the distance ``‖A(c_1..c_n, x) − A(x)‖``
    against the context length ``n``; and the change made by one more token,
    ``‖A(c_1..c_n, x) − A(c_1..c_(n−1), x)‖``, with a ``1/n`` line through the first layer's
    first point.

    Args:
        weights: ``(T,)`` attention weights of the query over a prompt of ``T`` tokens, the query
            last.
        lengths: ``(n,)`` context lengths, positive.
        distance, change: ``{layer name: (mean, sem)}``, each an ``(n,)`` pair over prompts, in
            the order to draw (colours C0, C1, ...); the same names in both.

    Returns:
        The figure; its axes are ``fig.axes = [weights, distance, change]``.

    Raises:
        ValueError: if the shapes disagree, the layer names differ or a length is not positive.
    """
    weights, lengths = _vector(weights, "weights"), _vector(lengths, "lengths").astype(float)
    if list(distance) != list(change) or not distance:
        raise ValueError("distance and change must name the same layers, in the same order")
    if (lengths <= 0).any():
        raise ValueError("context lengths must be positive (the axes are logarithmic)")
    bands = {key: [_band(d[key], key) for d in (distance, change)] for key in distance}
    if any(len(m) != len(lengths) for pair in bands.values() for m, _ in pair):
        raise ValueError(f"every curve needs {len(lengths)} points, one per context length")
    fig, axes = _figure([["weights", "weights"], ["distance", "change"]], (9, 6.6),
                        height_ratios=[0.8, 1])
    n_tokens = len(weights)
    position = np.arange(1, n_tokens + 1)
    ax = axes["weights"]
    ax.bar(position, weights, color=["C0"] * (n_tokens - 1) + ["C3"])
    ax.axhline(1 / n_tokens, color="k", lw=0.8, ls="--", label=f"uniform, 1/{n_tokens}")
    ax.set(xlabel=f"position in the prompt ({n_tokens} = the query)",
           ylabel=r"attention weight $\alpha$", title="Softmax attention of the query")
    ax.set_xticks(position)
    ax.legend(frameon=False, loc="upper left")
    for k, (name, pairs) in enumerate(bands.items()):
        for panel, (mean, sem) in zip(("distance", "change"), pairs):
            error_band(axes[panel], lengths, mean, sem, color=f"C{k}", label=name, edges=True)
    axes["distance"].set(xscale="log", xlabel="context length n",
                         ylabel=r"$\|A(c_1..c_n, x) - A(x)\|$",
                         title="Distance from the output without context")
    axes["distance"].set_ylim(bottom=0)
    first = next(iter(bands.values()))[1][0]
    ax = axes["change"]
    ax.plot(lengths, first[0] * lengths[0] / lengths, "k--", lw=0.8, label=r"$\propto 1/n$")
    ax.set(xscale="log", yscale="log", xlabel="context length n",
           ylabel=r"$\|A(c_1..c_n, x) - A(c_1..c_{n-1}, x)\|$", title="Change from one more token")
    ticks = [0.02, 0.05, 0.1, 0.2, 0.5]
    ax.set_yticks(ticks, labels=[f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def minimum_norm_figure(size: object, norm: object, null_error: object, generic_error: object, *,
                        floor: float = 1e-17) -> Figure:
    """Chapter 2: the patches ``ΔW + E`` with ``E a = 0`` against generic perturbations ``P``.

    Left, ``‖ΔW + E‖_F / ‖ΔW‖_F`` against ``s = ‖E‖_F / ‖ΔW‖_F`` on the Pythagoras curve
    ``√(1 + s²)``; right, the relative error at the query with ``W + ΔW + E`` and with
    ``W + ΔW + P`` (``‖P‖_F = ‖E‖_F``), an error of exactly 0 drawn at ``floor``.

    Args:
        size: ``(K,)`` ratios ``s``, positive.
        norm: ``(K,)`` ratios ``‖ΔW + E‖_F / ‖ΔW‖_F``.
        null_error, generic_error: ``(K,)`` relative errors with ``E`` and with ``P``.
        floor: where exact zeros are drawn on the logarithmic axis.

    Returns:
        The figure, with the two axes ``fig.axes = [left, right]``.

    Raises:
        ValueError: if the four arrays do not have one length or a ratio ``s`` is not positive.
    """
    arrays = [_vector(v, name) for v, name in ((size, "size"), (norm, "norm"),
                                               (null_error, "null_error"), (generic_error, "generic_error"))]
    if len({len(a) for a in arrays}) != 1:
        raise ValueError(f"the four arrays must have one length, got {[len(a) for a in arrays]}")
    size, norm, null_error, generic_error = arrays
    if (size <= 0).any():
        raise ValueError("the ratios s must be positive (the axes are logarithmic)")
    fig, axes = _figure([["left", "right"]], (10, 4.2))
    left, right = axes["left"], axes["right"]
    s = np.logspace(-1.6, 1.6, 100)
    left.plot(s, np.sqrt(1 + s**2), color="0.6", lw=2, label=r"$\sqrt{1 + s^2}$ (Pythagoras)")
    left.scatter(size, norm, s=18, color="C0", zorder=3, label=r"random $E$ with $Ea = 0$")
    left.axhline(1, color="k", lw=0.8, ls="--", label=r"$\|\Delta W\|_F$ (the minimum)")
    left.set(xscale="log", yscale="log", xlabel=r"$s = \|E\|_F / \|\Delta W\|_F$",
             ylabel=r"$\|\Delta W + E\|_F / \|\Delta W\|_F$", title="(a) every other patch is larger")
    left.legend(loc="upper left", fontsize=9)
    right.scatter(size, np.maximum(null_error, floor), s=18, color="C0",
                  label=r"$W + \Delta W + E$, $Ea = 0$")
    right.scatter(size, generic_error, s=18, color="C3", marker="s",
                  label=r"$W + \Delta W + P$, $P$ generic")
    right.axhline(np.finfo(np.float64).eps, color="0.5", lw=0.8, ls=":", label="float64 machine epsilon")
    right.set(xscale="log", yscale="log", ylim=(floor / 3, 30),
              xlabel=r"$\|E\|_F / \|\Delta W\|_F$ (or $\|P\|_F$)", ylabel="relative error at the query",
              title="(b) only null directions are free")
    right.legend(loc="center right", fontsize=9)
    fig.suptitle(f"Non-uniqueness and minimum norm, {len(size)} prompts, float64 "
                 f"(errors of exactly 0 drawn at {floor:.0e})", fontsize=10)
    fig.tight_layout()
    return fig


def conditioning_figure(errors: dict, norms_a: object, norms_a32: object, curves: dict,
                        norms_dW: object, *, floor: float = 1e-17) -> Figure:
    """Chapter 2: the identity in float32 and float64, and what happens as ``a → 0``.

    (a) histograms of the relative identity error over random prompts, one per precision, with
    its machine epsilon; (b) the identity's worst error in float64 and float32 and the median
    error of a float64 patch run in float32, against ``‖a‖`` (an error of exactly 0 is an open
    circle at ``floor``, named in the legend); (c) ``‖ΔW‖_F`` against ``‖a‖`` beside ``1/‖a‖``.

    Args:
        errors: ``{"float32": (P,), "float64": (P,)}`` relative errors over ``P`` prompts.
        norms_a: ``(S,)`` the scales ``‖a‖`` of the sweep (float64), positive.
        norms_a32: ``(S,)`` float32's own ``‖a‖`` at each scale, positive.
        curves: ``{"float64": (S,), "float32": (S,), "deployed": (S,)}`` errors along the sweep.
        norms_dW: ``(S,)`` median ``‖ΔW‖_F`` along the sweep.
        floor: where exact zeros are drawn in panel (b).

    Returns:
        The figure; its axes are ``fig.axes = [a, b, c]``.

    Raises:
        ValueError: if a key is missing, the sweep's arrays differ in length or a norm is not
            positive.
    """
    if set(errors) != {"float32", "float64"} or set(curves) != {"float64", "float32", "deployed"}:
        raise ValueError("errors needs the keys float32, float64; curves float64, float32, deployed")
    norms_a, norms_a32, norms_dW = (_vector(v, n) for v, n in ((norms_a, "norms_a"),
                                                                 (norms_a32, "norms_a32"), (norms_dW, "norms_dW")))
    curves = {key: _vector(value, key) for key, value in curves.items()}
    if len({len(norms_a), len(norms_a32), len(norms_dW), *map(len, curves.values())}) != 1:
        raise ValueError("the sweep's arrays (norms and curves) must have one length")
    if (norms_a <= 0).any() or (norms_a32 <= 0).any() or (norms_dW <= 0).any():
        raise ValueError("the norms must be positive (the axes are logarithmic)")
    fig, axes = _figure([["a", "a"], ["b", "c"]], (9.5, 7.6))
    ax = axes["a"]
    for name, color in (("float32", "C0"), ("float64", "C1")):
        err = _vector(errors[name], name)
        nonzero = err[err > 0]
        if nonzero.size:
            bins = np.logspace(np.log10(nonzero.min()) - 0.1, np.log10(nonzero.max()) + 0.1, 25)
            ax.hist(nonzero, bins=bins, color=color, alpha=0.8,
                    label=f"{name} ({(err == 0).sum()} exact zeros not shown)")
        ax.axvline(np.finfo(name).eps, color=color, ls=":", lw=1.5)
    ax.plot([], [], color="0.3", ls=":", label="machine epsilon")
    ax.set(xscale="log", ylabel="prompts", title=f"(a) {len(_vector(errors['float64'], 'float64'))} random prompts",
           xlabel=r"relative error $\|T_{W+\Delta W}(x) - T_W(C,x)\| \,/\, \|T_W(C,x)\|$")
    ax.set_ylim(0, 1.3 * ax.get_ylim()[1])
    ax.legend(fontsize=9, loc="upper center")
    ax = axes["b"]
    for name, at, color, label in (("float64", norms_a, "C1", "identity, float64 (max)"),
                                   ("float32", norms_a32, "C0",
                                    "identity, float32 (max),\nat float32's own $\\|a\\|$")):
        zero = curves[name] == 0
        ax.plot(at[~zero], curves[name][~zero], "o-", color=color, label=label)
        if zero.any():
            ax.plot(at[zero], np.full(zero.sum(), floor), "o", color=color, mfc="white",
                    label=f"{name}: exactly 0")
    ax.plot(norms_a, curves["deployed"], "s--", color="C3", label="float64 patch run\nin float32 (median)")
    ax.set(xscale="log", yscale="log", xlabel=r"$\|a\| = \|A(x_0)\|$", ylabel="relative error at the query",
           ylim=(floor / 3, 1e10), title=r"(b) as $a \to 0$")
    ax.invert_xaxis()
    ax.legend(fontsize=8, loc="upper left")
    ax = axes["c"]
    ax.plot(norms_a, norms_dW[0] * norms_a[0] / norms_a, color="0.75", lw=6, label=r"$\propto 1/\|a\|$")
    ax.plot(norms_a, norms_dW, "o-", color="C2", label=r"$\|\Delta W\|_F$ (median)")
    ax.set(xscale="log", yscale="log", xlabel=r"$\|a\| = \|A(x_0)\|$", ylabel=r"$\|\Delta W\|_F$",
           title=r"(c) the patch grows like $1/\|a\|$")
    ax.invert_xaxis()
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def training_figure(history: object, zero_loss: float, *, n_val: int, window: int = 100, close_from: int = 1000,
                    eps: float = float(np.finfo(np.float32).eps)) -> Figure:
    """Chapter 4 (v1's Fig. 1): training, and the two validation losses that coincide.

    Top, the training loss of each minibatch and its centred ``window``-step mean, the validation
    loss with the context (line) and through ``W + ΔW`` on the query alone (crosses), and the
    zero predictor's loss; bottom left, a close-up of the two validation losses from step
    ``close_from``; bottom right, the largest gap between the two predictions at each checkpoint.

    Args:
        history: a :class:`icl_lib.TrainingHistory`: ``train_loss`` ``(steps,)``, and
            ``eval_steps``, ``val_loss``, ``val_loss_implicit``, ``val_max_gap``, each ``(E,)``.
        zero_loss: the zero predictor's loss, ``d/2``.
        n_val: the number of validation prompts (for the title).
        window: the width of the moving mean, at most the number of steps.
        close_from: the first training step of the close-up.
        eps: the machine epsilon drawn in the gap panel (float32's by default).

    Returns:
        The figure; its axes are ``fig.axes = [train, close, gap]``.

    Raises:
        ValueError: if ``window`` is not in ``[1, steps]`` or no checkpoint is at or after
            ``close_from``.
    """
    train = _vector(history.train_loss, "train_loss")
    eval_steps = _vector(history.eval_steps, "eval_steps")
    if not 1 <= window <= len(train):
        raise ValueError(f"window must be in [1, {len(train)}], got {window}")
    late = eval_steps >= close_from
    if not late.any():
        raise ValueError(f"no checkpoint at or after step {close_from}")
    val, implicit = _vector(history.val_loss, "val_loss"), _vector(history.val_loss_implicit, "val_loss_implicit")
    smooth = np.convolve(train, np.ones(window) / window, mode="valid")
    steps = np.arange(len(train))
    fig, axes = _figure([["train", "train"], ["close", "gap"]], (9.5, 7.6))
    ax = axes["train"]
    ax.plot(steps, train, color="0.82", lw=0.6, label="training loss (each minibatch)")
    ax.plot(steps[window // 2: window // 2 + smooth.size], smooth, color="0.25", lw=1.2,
            label=f"training loss (centred {window}-step mean)")
    ax.plot(eval_steps, val, color="C0", lw=2, label="validation, with the context")
    ax.plot(eval_steps, implicit, "x", color="C3", ms=6, mew=1.5,
            label=r"validation, query alone with $W + \Delta W$")
    ax.axhline(zero_loss, color="k", ls="--", lw=1, label="zero predictor, $d/2$")
    ax.set(yscale="log", xlabel="training step", ylabel="loss", title="Training")
    ax.legend(fontsize=9)
    ax = axes["close"]
    ax.plot(eval_steps[late], val[late], "-", color="C0", lw=3, label="with the context")
    ax.plot(eval_steps[late], implicit[late], "x", color="C3", ms=8, mew=1.5, label=r"query alone, $W + \Delta W$")
    ax.set(xlabel="training step", ylabel="validation loss", title="Close-up of the two validation losses")
    ax.legend(fontsize=9)
    ax = axes["gap"]
    ax.semilogy(eval_steps, _vector(history.val_max_gap, "val_max_gap"), "o-", color="C2", ms=3)
    ax.axhline(eps, color="k", ls=":", lw=1, label="float32 machine epsilon")
    ax.set(xlabel="training step", ylabel=r"max $|\hat y_{\mathrm{context}} - \hat y_{W+\Delta W}|$",
           title=f"Largest gap over the {n_val} validation prompts",
           ylim=(1e-9, 1e-4))
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def query_plane_figure(with_context: object, implicit: object, truth: object, transported: object,
                       anchor: Sequence[float], *, extent: tuple[float, float, float, float] = (-3, 3, -3, 3)) -> Figure:
    """Chapter 4: one task's predictions over a grid of queries, with and without its context.

    Six panels: (a) the prompted prediction ``T_W(C, x_q)``, (b) the query alone through its own
    patch, (c) the task's ``⟨w, x_q⟩``, (d) ``log10 |(a) − (b)|`` (exact zeros at −9),
    (e) one patch, computed at the query ``anchor`` (a star), used at every query, and
    (f) ``|(e) − (a)|``.

    Args:
        with_context, implicit, truth, transported: ``(G, G)`` grids over the query plane, row
            ``k`` at the ``k``-th value of ``x_2`` (``origin="lower"``).
        anchor: the ``(x_1, x_2)`` of the one patch's query.
        extent: ``(left, right, bottom, top)`` of the grid.

    Returns:
        The figure (six image axes and their colour bars).

    Raises:
        ValueError: if the grids are not square of one shape.
    """
    grids = [np.asarray(g.detach().cpu().numpy() if hasattr(g, "detach") else g, dtype=float)
             for g in (with_context, implicit, truth, transported)]
    if len({g.shape for g in grids}) != 1 or grids[0].ndim != 2 or grids[0].shape[0] != grids[0].shape[1]:
        raise ValueError(f"the four grids must be square of one shape, got {[g.shape for g in grids]}")
    with_context, implicit, truth, transported = grids
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(10, 6.8), layout="constrained")
    limit = np.abs(truth).max()
    surface = dict(origin="lower", extent=extent, cmap="RdBu_r", vmin=-limit, vmax=limit)
    for ax, values, title in ((axes[0, 0], with_context, r"(a) with the context, $T_W(C, x_q)$"),
                              (axes[0, 1], implicit, r"(b) alone, $T_{W + \Delta W(C, x_q)}(x_q)$"),
                              (axes[0, 2], truth, r"(c) the task, $\langle w, x_q \rangle$"),
                              (axes[1, 1], transported, r"(e) one patch, $T_{W + \Delta W(C, x^*)}(x_q)$")):
        image = ax.imshow(values, **surface)
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=axes[0, :], shrink=0.9, label="prediction")
    fig.colorbar(image, ax=axes[1, 1], shrink=0.9)
    gap = np.abs(with_context - implicit)
    gap_image = axes[1, 0].imshow(np.log10(np.maximum(gap, 1e-9)), origin="lower", extent=extent,
                                  cmap="viridis", vmin=-9, vmax=-6)
    axes[1, 0].set_title("(d) $\\log_{10}$ |(a) − (b)|, float32\n(exact zeros at −9)", fontsize=10)
    miss_image = axes[1, 2].imshow(np.abs(transported - with_context), origin="lower", extent=extent,
                                   cmap="magma")
    axes[1, 2].set_title("(f) |(e) − (a)|", fontsize=10)
    fig.colorbar(gap_image, ax=axes[1, 0], shrink=0.9)
    fig.colorbar(miss_image, ax=axes[1, 2], shrink=0.9)
    for ax in (axes[1, 1], axes[1, 2]):
        ax.plot(*anchor, "k*", ms=11, mfc="yellow")
    ticks = [extent[0], 0, extent[1]]
    for ax in axes.flat:
        ax.set(xticks=ticks, yticks=ticks)
    for ax in axes[1]:
        ax.set_xlabel("$x_1$ (query)")
    for ax in axes[:, 0]:
        ax.set_ylabel("$x_2$ (query)")
    return fig


def step_decay_figure(index: object, steps: object, rescaled: object, fit: object, *,
                      training_length: int, n_tasks: int) -> Figure:
    """Chapter 5 (v1's Fig. 2): the implicit steps against the context length, and rescaled.

    Left, the mean step ``‖ΔW_(i+1) − ΔW_i‖`` with its band of one standard error, the power-law
    fit over its own range, the training length, and the steps ``i ≤ 2`` that v1's figure leaves
    out shaded; right, the steps rescaled by ``i + 2``.

    Args:
        index: ``(n,)`` the steps' ``i`` (tokens absorbed before the step), from 1.
        steps, rescaled: ``(mean, sem)`` pairs of ``(n,)`` arrays over tasks.
        fit: a :class:`icl_lib.PowerLawFit` of the steps (its ``steps`` are the fitted ``i``).
        training_length: the context length ``N`` the block was trained on.
        n_tasks: the number of tasks averaged (for the legend).

    Returns:
        The figure, with the two axes ``fig.axes = [steps, rescaled]``.

    Raises:
        ValueError: if the arrays disagree in length or an ``i`` is not positive.
    """
    index = _vector(index, "index").astype(float)
    (mean, sem), (s_mean, s_sem) = _band(steps, "steps"), _band(rescaled, "rescaled")
    if not len(index) == len(mean) == len(s_mean):
        raise ValueError(f"index, steps and rescaled need one length, got {len(index)}, {len(mean)}, {len(s_mean)}")
    if (index <= 0).any():
        raise ValueError("the steps' i must be positive (the axes are logarithmic)")
    fit_i = np.asarray(fit.steps, dtype=float)
    fig, axes = _figure([["steps", "rescaled"]], (10, 4.2))
    ax = axes["steps"]
    error_band(ax, index, mean, sem, color="C0", lw=1.5, band_label=f"mean ± s.e. ({n_tasks} tasks)",
               alpha=0.3, edges=True)
    ax.plot(fit_i, fit(fit_i), "--", color="C3", lw=1.5,
            label=f"fit on ${fit_i.min():.0f} \\leq i \\leq {fit_i.max():.0f}$: $i^{{{fit.exponent:.2f}}}$")
    ax.axvline(training_length, color="0.5", ls=":", lw=1)
    ax.text(training_length * 1.05, mean[0] * 0.9, "training length", color="0.4", fontsize=9)
    ax.axvspan(0.9, 2.5, color="0.92", lw=0, zorder=0, label="$i \\leq 2$: not in v1's Fig. 2")
    ax.set(xscale="log", yscale="log", xlabel="context length $i$", xlim=(0.9, 1.1 * index.max()),
           ylabel=r"$\|\Delta W_{i+1} - \Delta W_i\|_2 = \|\cdot\|_F$", title="Step sizes of the implicit dynamics")
    ax.legend(fontsize=9, loc="lower left")
    ax = axes["rescaled"]
    error_band(ax, index, s_mean, s_sem, color="C2", lw=1.5, band_label="mean ± s.e.", alpha=0.3, edges=True)
    ax.set(xscale="log", xlabel="context length $i$", ylabel=r"$(i + 2)\, \|\Delta W_{i+1} - \Delta W_i\|_F$",
           title="Steps rescaled by the number of averaged tokens", ylim=(0, None))
    ax.legend(fontsize=9, loc="lower right")
    fig.tight_layout()
    return fig


# --- chapters 6-10 ---


def gd_patch_comparison(axes: Sequence[Axes], angle: object, cosine: object, steps: object,
                        increments: dict[str, object], colors: dict[str, str]) -> None:
    """Chapter 9: the implicit update of the gradient-step attention against the GD patch.

    Left: one point per task, the cosine of ``ΔW`` and ``ΔW_GD`` against the angle between the
    query and the GD step, with the curve ``|cos θ|`` the proposition predicts. Right: the mean
    implicit step ``‖W_{i+1} − W_i‖_F`` (± one standard error over tasks) of each block in
    ``increments``, against ``i`` on log–log axes.

    Args:
        axes: two matplotlib ``Axes``.
        angle: ``(B,)`` angles in degrees; cosine: ``(B,)`` cosines.
        steps: ``(N,)`` the step indices ``i``; increments: name -> ``(tasks, N)`` step sizes.
        colors: name -> matplotlib colour, one per entry of ``increments``.
    """
    left, right = axes
    if not isinstance(left, Axes) or not isinstance(right, Axes):
        raise TypeError("axes must be two matplotlib Axes")
    theta = _vector(angle, "angle")
    grid = np.linspace(0, 180, 181)
    left.plot(grid, np.abs(np.cos(np.radians(grid))), color="k", lw=3, alpha=0.3,
              label=r"$|\cos\theta|$ (proposition)")
    left.scatter(theta, _vector(cosine, "cosine"), s=5, color="C4", zorder=3,
                 label="one task")
    left.set(xlabel=r"angle $\theta$ between $x_q$ and $\Delta w$ (degrees)",
             ylabel=r"$\cos(\Delta W, \Delta W_{\mathrm{GD}})$", xticks=range(0, 181, 45),
             title="(a) implicit update vs GD patch")
    left.legend(fontsize=9, loc="upper center")
    i = _vector(steps, "steps")
    shown = i >= 1  # i = 0 is off the log axis
    for name, values in increments.items():
        values = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
        mean = values.mean(0)
        sem = values.std(0, ddof=1) / np.sqrt(len(values))
        error_band(right, i[shown], mean[shown], sem[shown], color=colors[name], marker="o",
                   ms=3, lw=1.2, label=name)
    right.set(xscale="log", yscale="log", xlabel="context tokens absorbed before the step, $i$",
              ylabel=r"$\|W_{i+1} - W_i\|_F$", title="(b) implicit steps (mean ± s.e.)")
    ticks = [1, 2, 5, 10, 19]
    right.set_xticks(ticks, [str(t) for t in ticks])
    right.minorticks_off()
    right.legend(fontsize=9, loc="lower left")


def block_cosine_heatmaps(axes: Sequence[Axes], matrices: Sequence[object], titles: Sequence[str], *,
                          label: str) -> None:
    """Chapter 8: square matrices of cosines between blocks, one per axes, values written in.

    Each matrix ``(L, L)`` is drawn by
    :func:`icl_lib.experiments.plotting.masked_diagonal_heatmap` on the scale ``[-1, 1]`` (its
    diagonal, a block with itself, masked in grey), every off-diagonal entry is written in its
    cell with a sign and two decimals, the ticks count blocks from 1, and one colour bar labelled
    ``label`` serves all panels.

    Args:
        axes: one matplotlib ``Axes`` per matrix, all on one figure.
        matrices: ``(L, L)`` tensors or arrays.
        titles: one title per matrix.
        label: the colour bar's label.
    """
    if not len(axes) == len(matrices) == len(titles) or len(axes) == 0:
        raise ValueError("axes, matrices and titles must be non-empty and of one length")
    image = None
    for ax, matrix, title in zip(axes, matrices, titles):
        values = np.asarray(matrix.detach().cpu() if hasattr(matrix, "detach") else matrix, dtype=float)
        image = masked_diagonal_heatmap(ax, values, cmap="RdBu_r", vmin=-1, vmax=1, bad="0.85")
        depth = values.shape[0]
        for a in range(depth):
            for b in range(depth):
                if a != b:
                    ax.text(b, a, f"{values[a, b]:+.2f}", ha="center", va="center", fontsize=9,
                            color="white" if abs(values[a, b]) > 0.6 else "black")
        ticks = [str(i + 1) for i in range(depth)]
        ax.set(title=title, xticks=range(depth), xticklabels=ticks, yticks=range(depth),
               yticklabels=ticks, xlabel="block")
    axes[0].set_ylabel("block")
    axes[0].figure.colorbar(image, ax=list(axes), shrink=0.8, label=label)


def precision_gaps(axes: Sequence[Axes], per_block: dict[str, object], network: dict[str, object],
                   title: str, *, unit: str = "block", network_label: str = "read-out (3 coordinates)") -> None:
    """Chapter 7: gaps between prompted and patched outputs, per block and for the whole network.

    Mean ± standard error over tasks, for each precision in ``per_block`` (``"float32"`` and/or
    ``"float64"``), with that precision's machine epsilon as a dotted line: the per-block gaps on
    ``axes[0]`` and the whole-network gap on ``axes[1]`` (different vectors, so separate axes).

    Args:
        axes: two matplotlib ``Axes``.
        per_block: precision name -> ``(tasks, depth)`` gaps.
        network: precision name -> ``(tasks,)`` gaps of the network's output.
        title: of ``axes[0]``.
        unit: what a block is called on the axis ("block", "layer").
        network_label: what the network gap measures, for ``axes[1]``'s label.
    """
    styles = {"float32": ("o", "C0", -0.1), "float64": ("s", "C1", 0.1)}
    unknown = set(per_block) - set(styles)
    if unknown or set(per_block) != set(network):
        raise ValueError(f"per_block and network need the same keys among {sorted(styles)}")
    depth = None
    for name in per_block:
        marker, color, offset = styles[name]
        values_block = np.asarray(per_block[name], dtype=float)
        depth = values_block.shape[1]
        panels = ((axes[0], values_block, np.arange(depth)),
                  (axes[1], np.asarray(network[name], dtype=float)[:, None], np.array([0])))
        for ax, values, at in panels:
            mean = values.mean(0)
            sem = values.std(0, ddof=1) / np.sqrt(len(values))
            ax.errorbar(at + offset, mean, yerr=sem, fmt=marker, color=color, capsize=4, label=name)
            ax.axhline(float(np.finfo(name).eps), color=color, ls=":", lw=1)
    axes[0].set_xticks(range(depth), [f"{unit} {i + 1}" for i in range(depth)])
    axes[1].set_xticks([0], ["network"])
    axes[1].set_xlim(-0.6, 0.6)
    for ax in axes:
        ax.set(yscale="log", ylim=(1e-17, 1e-4))
        ax.grid(axis="y", which="major", color="0.9")
    axes[0].set(title=title, ylabel=f"{unit} output (residual stream)\n‖with context − patched‖")
    axes[1].set(title="whole network", ylabel=f"{network_label}\n‖with context − patched‖")


def online_protocol_curves(axes: Sequence[Axes], curves: dict[str, object], styles: dict[str, tuple[str, str]],
                           labels: dict[str, str], *, n_train: int) -> None:
    """Chapter 6: test loss against the number of examples ``i``, in context and by online SGD.

    Left, the mean ± standard error over tasks (v1's statistic); right, the median and the
    interquartile range. Log scale, ``i = 0..N``, with a dotted line at the training length.

    Args:
        axes: two matplotlib ``Axes`` (sharing their y axis).
        curves: name -> ``(tasks, N + 1)`` test losses.
        styles: name -> ``(colour, line style)``; labels: name -> legend text.
        n_train: the context length the block was trained at.
    """
    left, right = axes
    for name, loss in curves.items():
        values = _numpy(loss).astype(float)
        x = np.arange(values.shape[1])
        color, ls = styles[name]
        mean, sem = values.mean(0), values.std(0, ddof=1) / np.sqrt(len(values))
        error_band(left, x, mean, sem, color=color, ls=ls, label=labels[name], alpha=0.2)
        low, mid, high = np.quantile(values, [0.25, 0.5, 0.75], axis=0)
        right.plot(x, mid, color=color, ls=ls, label=labels[name])
        right.fill_between(x, low, high, color=color, alpha=0.15, lw=0)
    for ax in (left, right):
        ax.axvline(n_train, color="0.6", ls=":", lw=1)
        ax.set(yscale="log", xlabel="GD steps / context length $i$", xlim=(0, x[-1]))
    left.text(n_train + 1, 0.9, "training\nlength", color="0.4", fontsize=9, va="top")
    left.set(ylabel=r"test loss $\frac{1}{2}(\hat y - y_q)^2$",
             title=f"(a) mean ± s.e. over {len(values)} tasks (v1's statistic)")
    right.set(title="(b) median and interquartile range")
    left.legend(fontsize=9, loc="lower left")


def alignment_readings(axes: Sequence[Axes], cosines: dict[str, tuple[object, object]],
                       factors: dict[str, tuple[object, object]], colors: dict[str, str],
                       labels: dict[str, str], *, n_marked: int) -> None:
    """Chapter 6: the readings of the alignment, and the two factors of the first four.

    Left, each reading's ``cos_F`` (mean ± s.e. over tasks) against ``i``; right, for the readings
    in ``factors``, the cosine at the query (solid) and the share along ``a`` (dotted). A reading
    measured at ``n_marked`` values of ``i`` gets markers; one figure legend below the panels.

    Args:
        axes: two matplotlib ``Axes`` on one figure.
        cosines: name -> ``(i values (n,), cosines (tasks, n))``.
        factors: name -> ``(cosine at the query, share)``, each ``(tasks, n)``.
        colors, labels: name -> colour and legend text.
        n_marked: the number of ``i`` values that marks a reading measured at a few ``i``.
    """
    left, right = axes
    for name, (at, values) in cosines.items():
        at, values = _numpy(at), _numpy(values).astype(float)
        marker = "o" if len(at) == n_marked else None
        sem = values.std(0, ddof=1) / np.sqrt(len(values))
        error_band(left, at, values.mean(0), sem, color=colors[name], marker=marker, ms=4,
                   label=labels[name], alpha=0.2)
        if name in factors:
            cosine, share = (_numpy(f).astype(float) for f in factors[name])
            right.plot(at, cosine.mean(0), color=colors[name], marker=marker, ms=4)
            right.plot(at, share.mean(0), color=colors[name], ls=":", lw=1.5)
    n_tasks = len(values)
    for ax in (left, right):
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xscale="log", xlabel="examples $i$", ylim=(-0.3, 1.05))
    left.set(ylabel=rf"$\cos_F$ (mean ± s.e., {n_tasks} tasks)",
             title=f"(a) {len(cosines)} readings of the alignment")
    right.plot([], [], color="0.3", label=r"cosine at the query, $\cos(Fa, u)$")
    right.plot([], [], color="0.3", ls=":", label=r"share along $a$, $\|F\hat a\| / \|F\|_F$")
    right.set(ylabel=f"mean over {n_tasks} tasks",
              title=rf"(b) readings 1–{len(factors)}: the factors of $\cos_F(F, \Delta W_i)$")
    right.legend(fontsize=8, loc="lower right")
    left.figure.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=9)


def static_patch_curves(axes: Sequence[Axes], sizes: Sequence[int], static: dict[str, object],
                        references: dict[str, float], styles: dict[str, dict[str, str]], *,
                        token_width: int) -> None:
    """Chapter 10: the static patch's test loss and singular values against ``Q``.

    Left, the median test loss per context (line) and its interquartile range (band) against
    the number of calibration queries ``Q``, with horizontal lines for the ``references``
    (medians) and a mark at ``Q = D``; right, the mean ``σ₂/σ₁`` and ``σ₃/σ₁`` of the patches.

    Args:
        axes: two matplotlib ``Axes``.
        sizes: the values of ``Q``.
        static: ``"median"``, ``"q25"``, ``"q75"``, ``"sigma2"``, ``"sigma3"``: one value per ``Q``.
        references: name -> a median test loss drawn as a horizontal line.
        styles: name -> keyword arguments of those lines (``color``, ``ls``).
        token_width: ``D``, where the rank saturates.
    """
    left, right = axes
    left.fill_between(sizes, static["q25"], static["q75"], color="C2", alpha=0.2, lw=0,
                      label="interquartile range over contexts")
    left.plot(sizes, static["median"], color="C2", marker="o", ms=4, lw=1.5,
              label=r"static patch $\Delta W_{\mathrm{LS}}$ (median)")
    for name, value in references.items():
        left.axhline(value, lw=1.2, label=f"{name} (median)", **styles[name])
    left.axvline(token_width, color="0.6", lw=0.8)
    left.text(token_width * 1.05, 2.0, f"Q = D = {token_width}", color="0.4", fontsize=9)
    left.set(xscale="log", yscale="log", xlabel="calibration queries Q",
             ylabel="test loss per context, 200 contexts", ylim=(0.005, 40),
             title="(a) one patch per context, fitted on Q queries")
    left.legend(fontsize=8, loc="upper right", framealpha=0.95)
    for key, ls in (("sigma2", "--"), ("sigma3", ":")):
        k = key[-1]
        right.plot(sizes, static[key], color="C7", ls=ls, lw=1.5, marker="o", ms=3,
                   label=rf"$\sigma_{k}/\sigma_1$")
    right.set(xscale="log", xlabel="calibration queries Q",
              ylabel="singular-value ratio (mean over contexts)", ylim=(0, 0.55),
              title=rf"(b) singular values of $\Delta W_{{\mathrm{{LS}}}}$, rank min(Q, {token_width})")
    right.legend(fontsize=9, loc="center right")
    for axis in (left, right):
        axis.set_xticks([1, 3, 10, 30, 100, 500], ["1", "3", "10", "30", "100", "500"])


def step_size_fits(ax: Axes, steps: object, increments: dict[str, object], fits: dict[str, object],
                   spreads: dict[str, float], colors: dict[str, str], *, fit_from: int) -> None:
    """Chapter 9: the implicit step sizes of several blocks, their power-law fits and ``1/i``.

    Mean ± s.e. over tasks of ``‖W_{i+1} − W_i‖_F`` against ``i ≥ 1`` on log–log axes, each
    block's fitted power law (dashed, from ``fit_from`` on, exponent ± bootstrap s.e. in the
    legend), and a dotted ``1/i`` line through the first block's mean at ``fit_from``.

    Args:
        ax: the axes.
        steps: ``(N,)`` step indices ``i``.
        increments: name -> ``(tasks, N)`` step sizes.
        fits: name -> a fit with ``.exponent`` that is callable on ``i`` (:class:`icl_lib.PowerLawFit`).
        spreads: name -> the exponent's standard error; colors: name -> colour.
        fit_from: the first ``i`` of the fits.
    """
    i = _numpy(steps)
    shown = i >= 1  # i = 0 is off the log axis
    for name, inc in increments.items():
        values = _numpy(inc).astype(float)
        mean, sem = values.mean(0), values.std(0, ddof=1) / np.sqrt(len(values))
        exponent = f"$\\kappa = {fits[name].exponent:.2f} \\pm {spreads[name]:.2f}$"
        error_band(ax, i[shown], mean[shown], sem[shown], color=colors[name], marker="o", ms=3,
                   lw=1.2, label=f"{name}: {exponent}")
        fitted = i[i >= fit_from]
        ax.plot(fitted, fits[name](fitted), color=colors[name], ls="--", lw=1)
    first = _numpy(next(iter(increments.values()))).astype(float).mean(0)
    ax.plot(i[shown], first[fit_from] * fit_from / i[shown], color="k", ls=":", lw=1.2, label=r"$\propto 1/i$")
    ax.set(xscale="log", yscale="log", xlabel="context tokens absorbed before the step, $i$",
           ylabel=r"$\|W_{i+1} - W_i\|_F$",
           title=f"Size of each implicit step ({len(_numpy(next(iter(increments.values()))))} "
                 "tasks, mean ± s.e.; dashed: fits)")
    ticks = [1, 2, 3, 5, 10, 19]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_yticks([0.2, 0.5, 1, 2], ["0.2", "0.5", "1", "2"])
    ax.minorticks_off()
    ax.legend(fontsize=9, loc="lower left")
