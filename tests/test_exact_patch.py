"""icl_lib.experiments.proofs.exact_patch: the theorem's arithmetic in exact fractions (chapter 2's worked example)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import sympy
from sympy import Rational

from icl_lib import proofs

W = [[1, 2], [-1, 1]]
A_X = [1, 2]        # A(x)
A_CX = [1, 1]       # A(C, x)


def test_the_worked_example_of_chapter_2():
    patch = proofs.exact_patch(W, A_X, A_CX)
    assert patch.delta == sympy.Matrix([0, -1])
    assert patch.W_delta == sympy.Matrix([-2, -1])
    assert patch.norm_sq == 5
    assert patch.delta_W == sympy.Matrix([[Rational(-2, 5), Rational(-4, 5)], [Rational(-1, 5), Rational(-2, 5)]])
    assert patch.patched_preactivation == patch.prompted_preactivation == sympy.Matrix([3, 0])
    # rank one, Frobenius norm ‖W δ‖ / ‖a‖ = 1
    assert patch.delta_W.rank() == 1
    assert sum(e**2 for e in patch.delta_W) == 1


@pytest.mark.parametrize("seed", range(5))
def test_patched_equals_prompted_exactly_for_random_fractions(seed):
    import random

    r = random.Random(seed)
    frac = lambda: Fraction(r.randint(-9, 9), r.randint(1, 7))  # noqa: E731
    H, D = r.randint(1, 4), r.randint(1, 4)
    w = [[frac() for _ in range(D)] for _ in range(H)]
    a = [frac() for _ in range(D)]
    a[0] = a[0] or Fraction(1, 3)  # not zero
    full = [frac() for _ in range(D)]
    patch = proofs.exact_patch(w, a, full)
    assert patch.delta_W.shape == (H, D)
    assert patch.patched_preactivation == patch.prompted_preactivation
    assert patch.delta_W.rank() <= 1
    # the rows of ΔW are multiples of aᵀ: ΔW (I − a aᵀ/‖a‖²) = 0
    a_col = sympy.Matrix(a)
    projector = sympy.eye(D) - a_col * a_col.T / patch.norm_sq
    assert patch.delta_W * projector == sympy.zeros(H, D)


def test_accepts_rows_columns_and_sympy_matrices():
    by_lists = proofs.exact_patch(W, A_X, A_CX)
    by_matrices = proofs.exact_patch(sympy.Matrix(W), sympy.Matrix([A_X]), sympy.Matrix(A_CX))
    assert by_lists.delta_W == by_matrices.delta_W


def test_zero_a_is_an_error():
    with pytest.raises(ValueError, match="is zero"):
        proofs.exact_patch(W, [0, 0], A_CX)


def test_floats_are_refused():
    with pytest.raises(TypeError, match=r"W\[0, 1\] = 0.5.*sympy.Rational\(1, 2\)"):
        proofs.exact_patch([[1, 0.5], [0, 1]], A_X, A_CX)
    with pytest.raises(TypeError, match="not an integer or a fraction"):
        proofs.exact_patch(W, [1, sympy.Symbol("t")], A_CX)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="same length"):
        proofs.exact_patch(W, A_X, [1, 1, 1])
    with pytest.raises(ValueError, match="H x D"):
        proofs.exact_patch([[1, 2, 3]], A_X, A_CX)
    with pytest.raises(ValueError, match="must be a vector"):
        proofs.exact_patch(W, [[1, 2], [3, 4]], A_CX)
