"""The sympy checks of the output-side patches W_down and the norm scale (output_side_steps)."""

from __future__ import annotations

import pytest
import sympy

from icl_lib import proofs

NAMES = [
    "out-down",
    "out-down-elsewhere",
    "out-scale",
    "out-hidden.entries",
    "out-down.entries",
    "out-down-rank-one.entries",
    "out-down-layer.entries",
    "out-scale.entries",
    "out-scale-rms.entries",
    "out-scale-layer.entries",
    "out-scale-elsewhere.entries",
]


@pytest.mark.parametrize("H,D", [(2, 2), (2, 3), (3, 2)])
def test_every_output_side_step_is_verified(H, D):
    steps = proofs.output_side_steps(H, D)
    assert [s.name for s in steps] == NAMES
    assert all(s.verified for s in steps), proofs.report(steps)
    assert {s.method for s in steps[:3]} == {proofs.GENERAL}
    assert {s.method for s in steps[3:]} == {f"explicit entries, H={H}, D={D}"}


def test_output_side_steps_are_in_all_steps_and_names_stay_unique():
    names = [s.name for s in proofs.all_steps()]
    assert set(NAMES) <= set(names) and len(names) == len(set(names))


def test_report_lines_fit_the_book_column():
    for H, D in [(2, 3)]:
        text = proofs.report(proofs.output_side_steps(H, D) + proofs.parallel_steps(H, D))
        assert max(len(line.rstrip()) for line in text.splitlines()) <= 74


def test_a_wrong_down_patch_is_not_verified():
    """The right factor must be hᵀ/‖h‖²: with ‖h‖ in place of ‖h‖² the identity fails."""
    H, D = sympy.symbols("H D", integer=True, positive=True)
    Wd, h = sympy.MatrixSymbol("W_down", D, H), sympy.MatrixSymbol("h", H, 1)
    d = sympy.MatrixSymbol("d", D, 1)
    t = sympy.Symbol("t", positive=True)  # ‖h‖²
    step = proofs._step("wrong", "norm not squared", (Wd + d * h.T / sympy.sqrt(t)) * h,
                        Wd * h + d, proofs.GENERAL, {h: t})
    assert step.verified is False


def test_the_patches_do_not_add_d_at_another_input():
    """Exact at the query only: at another input neither patch adds exactly d."""
    Wd, h, v = proofs._matrix("W", 2, 2), proofs._vector("h", 2), proofs._vector("v", 2)
    d = proofs._vector("d", 2)
    down = (Wd + d * h.T / proofs._squared_norm(h)) * v
    assert not proofs._verify(down, Wd * v + d)
    s, n, n2 = proofs._vector("s", 2), proofs._vector("n", 2), proofs._vector("m", 2)
    scale = (s + sympy.Matrix([d[k] / n[k] for k in range(2)])).multiply_elementwise(n2)
    assert not proofs._verify(scale, s.multiply_elementwise(n2) + d)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="H must be an integer >= 1"):
        proofs.output_side_steps(0, 2)
