"""The sympy checks of the theorem for gated MLPs (icl_lib.experiments.proofs.gated_steps)."""

from __future__ import annotations

import pytest
import sympy

from icl_lib import proofs


@pytest.mark.parametrize("H,D", [(2, 2), (2, 3), (3, 2)])
def test_every_gated_step_is_verified(H, D):
    steps = proofs.gated_steps(H, D)
    assert [s.name for s in steps] == [
        "gated-blocks",
        "gated-output",
        "gated-stack.entries",
        "gated-output.entries",
        "gated-rank-one.entries",
        "gated-residual.entries",
    ]
    assert all(s.verified for s in steps), proofs.report(steps)
    assert steps[0].method == proofs.GENERAL


def test_gated_steps_are_in_all_steps_and_names_stay_unique():
    names = [s.name for s in proofs.all_steps()]
    assert "gated-output" in names and len(names) == len(set(names))


def test_a_wrong_gated_patch_is_not_verified():
    """Patching the up block with another right factor (δ instead of a) breaks the identity."""
    H, D = sympy.symbols("H D", integer=True, positive=True)
    Wg, Wu = sympy.MatrixSymbol("W_gate", H, D), sympy.MatrixSymbol("W_up", H, D)
    a, delta = sympy.MatrixSymbol("a", D, 1), sympy.MatrixSymbol("delta", D, 1)
    s = sympy.Symbol("s", positive=True)
    g = sympy.Function("g")
    wrong_up = Wu * delta * delta.T / s
    assert not proofs._verify(g((Wg + Wg * delta * a.T / s) * a, (Wu + wrong_up) * a),
                              g(Wg * (a + delta), Wu * (a + delta)), {a: s})


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="H must be an integer >= 1"):
        proofs.gated_steps(0, 2)
