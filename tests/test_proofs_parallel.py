"""The sympy checks that a parallel-residual layer needs no weight patch (parallel_steps)."""

from __future__ import annotations

import pytest
import sympy

from icl_lib import proofs

NAMES = [
    "parallel-delta",
    "parallel-patch",
    "parallel-steering",
    "parallel-output",
    "parallel-sequential",
    "parallel-delta.entries",
    "parallel-patch.entries",
    "parallel-output.entries",
]


@pytest.mark.parametrize("H,D", [(2, 2), (2, 3), (3, 2)])
def test_every_parallel_step_is_verified(H, D):
    steps = proofs.parallel_steps(H, D)
    assert [s.name for s in steps] == NAMES
    assert all(s.verified for s in steps), proofs.report(steps)
    assert {s.method for s in steps[:5]} == {proofs.GENERAL}
    assert {s.method for s in steps[5:]} == {f"explicit entries, H={H}, D={D}"}


def test_parallel_steps_are_in_all_steps_and_names_stay_unique():
    names = [s.name for s in proofs.all_steps()]
    assert set(NAMES) <= set(names) and len(names) == len(set(names))


def _layer_symbols():
    D = sympy.Symbol("D", integer=True, positive=True)
    z = sympy.MatrixSymbol("z_i", D, 1)
    A_i, A_x = sympy.MatrixSymbol("A_i", D, 1), sympy.MatrixSymbol("A_x", D, 1)
    return D, z, A_i, A_x


def test_the_sequential_mlp_input_depends_on_the_context():
    """In a sequential layer δ = N(z_i + A_i) − N(z_i + A_x) is not identically zero."""
    D, z, A_i, A_x = _layer_symbols()
    m_i = proofs._vector_function("N", z + A_i, D)
    a = proofs._vector_function("N", z + A_x, D)
    assert not proofs._verify(m_i - a, sympy.ZeroMatrix(D, 1))


def test_without_the_steering_vector_the_parallel_layer_is_not_reproduced():
    """Dropping Δb′ leaves the attention difference A_i − A_x unaccounted for."""
    D, z, A_i, A_x = _layer_symbols()
    W = sympy.MatrixSymbol("W_s", sympy.Symbol("H", integer=True, positive=True), D)
    a = proofs._vector_function("N", z, D)
    mlp = proofs._vector_function("MLP", W * a, D)
    step = proofs._step("wrong", "no steering vector", z + A_x + mlp, z + A_i + mlp,
                        proofs.GENERAL)
    assert step.verified is False


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="D must be an integer >= 1"):
        proofs.parallel_steps(2, 0)
