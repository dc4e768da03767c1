"""Tests of icl_lib.experiments.proofs: every symbolic step verifies, and the checker can also say no."""

from __future__ import annotations

import pytest
import sympy

from icl_lib import proofs

# The identities of the theorem and of the implicit dynamics (chapters 2 and 3); a step's base
# id drops the ".entries" suffix and the "[i...]" index.
REQUIRED = {
    "patched-preactivation",  # (W + ΔW) a = W (a + δ)
    "patched-output",  # T_(W+ΔW)(C∖Y, x) = T_W(C, x)
    "rank-one",  # all 2x2 minors vanish
    "rank-one-nonzero",  # ΔW is not identically zero
    "frobenius-norm",  # ‖ΔW‖_F² = ‖Wδ‖²/‖a‖²
    "null-direction",  # E a = 0
    "non-uniqueness",  # (W + ΔW + E) a = W A(C, x)
    "minimum-norm-orthogonal",  # trace(ΔWᵀ E) = 0
    "minimum-norm-pythagoras",  # ‖ΔW + E‖² = ‖ΔW‖² + ‖E‖²
    "corollary-full-context",  # Y = C
    "bias-alternative",  # Δb = W δ
    "compose-sum",  # increments share the right factor
    "compose-patch",  # (W + ΔW₁ + ΔW₂) a = W (a + δ₁ + δ₂)
    "loss-gradient",  # ∇ trace(Δ_iᵀ W) = Δ_i
    "gradient-step",  # W_{i+1} = W_i − η ∇L_i(W_i)
    "implicit-equivalence",  # T_{W_i}(x) = T_W(c_1..c_i, x)
    "telescoping-sum",  # W_N − W_0 = −η Σ Δ_i
    "cos-inner",  # ⟨F, ΔW⟩_F = uᵀ F a / ‖a‖²
    "cos-norm",  # ‖ΔW‖_F² = ‖u‖²/‖a‖²
    "cos-share-pythagoras",  # ‖F‖_F² = ‖F â‖² + ‖F (I − â âᵀ)‖_F²
    "cos-share-rank-one",  # F = g aᵀ has share 1
    "cos-factorisation",  # cos_F(F, ΔW) = cos(F a, u) ‖F â‖ / ‖F‖_F
}


def base_id(name: str) -> str:
    return name.split("[")[0].split(".")[0]


@pytest.fixture(scope="module")
def steps() -> list[proofs.ProofStep]:
    return proofs.all_steps()


def test_every_step_is_verified(steps):
    failed = [s.name for s in steps if not s.verified]
    assert not failed, proofs.report(steps)


def test_names_are_unique_and_cover_the_list(steps):
    names = [s.name for s in steps]
    assert len(names) == len(set(names))
    assert REQUIRED <= {base_id(name) for name in names}


def test_general_dimension_and_entries_witnesses(steps):
    general = {base_id(s.name) for s in steps if s.method == proofs.GENERAL}
    assert {"patched-preactivation", "patched-output", "non-uniqueness", "corollary-full-context"} <= general
    assert all(s.method.startswith("explicit entries") for s in steps if s.name.endswith(".entries"))


def test_dynamics_has_one_step_per_token():
    names = [s.name for s in proofs.dynamics_steps(H=2, D=1, tokens=4)]
    assert sum(name.startswith("gradient-step[i=") for name in names) == 4
    assert sum(name.startswith("implicit-equivalence[i=") for name in names) == 5


@pytest.mark.parametrize(("H", "D"), [(1, 1), (3, 2), (1, 3)])
def test_theorem_entries_at_other_sizes(H, D):
    result = proofs.theorem_entries(H=H, D=D)
    assert all(s.verified for s in result), proofs.report(result)
    assert all(s.method == f"explicit entries, H={H}, D={D}" for s in result)


@pytest.mark.parametrize(("H", "D"), [(1, 1), (3, 2), (2, 3)])
def test_alignment_identity_at_other_sizes(H, D):
    result = proofs.alignment_steps(H=H, D=D)
    assert all(s.verified for s in result), proofs.report(result)
    assert [s.method for s in result] == [f"explicit entries, H={H}, D={D}"] * 4 + [proofs.SCALARS]


def test_wrong_alignment_identities_are_not_verified():
    F, u, a = proofs._matrix("F", 2, 3), proofs._vector("u", 2), proofs._vector("a", 3)
    s = proofs._squared_norm(a)
    dW = u * a.T / s
    inner = sum(F.multiply_elementwise(dW), sympy.Integer(0))
    assert proofs._verify(inner, (u.T * F * a)[0, 0] / s)
    assert not proofs._verify(inner, (u.T * F * a)[0, 0] / s**2)  # ΔW without its 1/‖a‖²
    # the share of a generic F along a is not 1 (only rank-1 F = g aᵀ have that)
    assert not proofs._verify(proofs._squared_norm(F * a) / s, proofs._squared_norm(F))


def test_dynamics_at_other_size():
    result = proofs.dynamics_steps(H=1, D=1, tokens=1)
    assert all(s.verified for s in result), proofs.report(result)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_sizes_raise(bad):
    with pytest.raises(ValueError):
        proofs.theorem_entries(D=bad)
    with pytest.raises(ValueError):
        proofs.theorem_entries(H=bad)
    with pytest.raises(ValueError):
        proofs.alignment_steps(H=bad)
    with pytest.raises(ValueError):
        proofs.dynamics_steps(tokens=bad)


def test_wrong_update_is_not_verified_general_dimension():
    g = proofs._general_symbols()
    W, a, delta, s = g["W"], g["a"], g["delta"], g["s"]
    right = proofs._patched_preactivation_general(W * delta * a.T / s)
    wrong = proofs._patched_preactivation_general(W * delta * delta.T / s)  # aᵀ -> δᵀ
    unnormalised = proofs._patched_preactivation_general(W * delta * a.T)  # no 1/‖a‖²
    assert right.verified
    assert not wrong.verified
    assert not unnormalised.verified


def test_wrong_identities_are_not_verified_explicit_entries():
    W, a, delta = proofs._matrix("w", 2, 3), proofs._vector("a", 3), proofs._vector("d", 3)
    s = proofs._squared_norm(a)
    assert proofs._verify((W + W * delta * a.T / s) * a, W * (a + delta))
    assert not proofs._verify((W + W * delta * delta.T / s) * a, W * (a + delta))
    dW = W * delta * a.T / s
    assert not proofs._verify(proofs._squared_norm(dW), proofs._squared_norm(W * delta) / s**2)
    f = sympy.Function("f")
    assert not proofs._verify(f(a[0] + a[1]), f(a[0] + a[2]))


def test_wrong_gradient_is_not_verified():
    H, D = sympy.symbols("H D", integer=True, positive=True)
    W0, V = sympy.MatrixSymbol("W_0", H, D), sympy.MatrixSymbol("V", H, D)
    A0, A1 = sympy.MatrixSymbol("A_0", D, 1), sympy.MatrixSymbol("A_1", D, 1)
    Delta = W0 * (A0 - A1) * A0.T
    gradient = sympy.Derivative(sympy.Trace(Delta.T * V), V, evaluate=False)
    assert proofs._verify(gradient, Delta)
    assert not proofs._verify(gradient, -Delta)
    eta = sympy.Symbol("eta", positive=True)
    patched = (W0 + W0 * (A1 - A0) * A0.T * eta) * A0
    assert proofs._verify(patched, W0 * A1, {A0: 1 / eta})
    assert not proofs._verify(patched, W0 * A1, {A0: eta})  # wrong learning rate


def test_latex_and_report(steps):
    first = steps[0]
    assert first.latex() == f"{sympy.latex(first.lhs)} = {sympy.latex(first.rhs)}"
    table = proofs.report(steps)
    assert all(s.name in table for s in steps)
    assert f"{len(steps)}/{len(steps)} steps verified" in table


def test_claims_are_plain_text(steps):
    """Chapters show the claims as Markdown prose: no TeX syntax that would appear literally."""
    more = proofs.dynamics_steps(H=1, D=1, tokens=12) + proofs.theorem_entries(H=1, D=1)
    for step in steps + more:
        for tex in ("\\", "_{", "^{", "$"):
            assert tex not in step.claim, f"{step.name}: {tex!r} in {step.claim!r}"
    claims = {s.name: s.claim for s in more}
    assert "W₁₂ = W₁₁ − η ∇L₁₁(W₁₁)" in claims["gradient-step[i=11]"]
    assert claims["implicit-equivalence[i=0]"].startswith("T_(W₀)(x) = T_W(x):")
    assert "T_W(c₁..c₁₂, x)" in claims["implicit-equivalence[i=12]"]


def test_markdown_shows_the_claim_and_the_checked_identity():
    x, y = sympy.symbols("x y")
    step = proofs.ProofStep(
        name="square", claim="The square of a sum.", lhs=(x + y) ** 2, rhs=x**2 + 2 * x * y + y**2,
        verified=True, method=proofs.GENERAL,
    )
    header = f"**square** ({proofs.GENERAL}, verified): The square of a sum."
    assert step.markdown(identity=False) == header
    one_line = step.markdown()
    assert one_line == f"{header}\n\n$$\n{step.latex()}\n$$"
    assert one_line.endswith("$$\n\\left(x + y\\right)^{2} = x^{2} + 2 x y + y^{2}\n$$")
    split = step.markdown(split=True)
    assert split == (
        f"{header}\n\n$$\n\\begin{{aligned}} &\\left(x + y\\right)^{{2}} \\\\ "
        "&\\quad = x^{2} + 2 x y + y^{2} \\end{aligned}\n$$"
    )
    # the claim paragraph carries no TeX; all the maths sits between the two $$ lines
    assert "$" not in split.split("\n\n")[0] and split.count("$$") == 2


def test_markdown_says_when_a_step_is_not_verified_and_rejects_bad_options(steps):
    wrong = proofs.ProofStep(
        name="wrong", claim="Not an identity.", lhs=sympy.Symbol("x"), rhs=sympy.Integer(1),
        verified=False, method=proofs.GENERAL,
    )
    assert wrong.markdown(identity=False) == f"**wrong** ({proofs.GENERAL}, NOT verified): Not an identity."
    for step in steps:
        assert step.markdown().startswith(f"**{step.name}** ({step.method}, verified): {step.claim}\n\n$$\n")
    with pytest.raises(ValueError, match="identity=False"):
        wrong.markdown(split=True, identity=False)
    with pytest.raises(TypeError, match="bools"):
        wrong.markdown(split="yes")


@pytest.mark.parametrize(("H", "D"), [(1, 1), (2, 2), (3, 2), (2, 3)])
def test_the_converses_of_the_null_direction_are_verified(H, D):
    """Every E with E a = 0 is G (I − a aᵀ/‖a‖²), and every solution of Γ a = W δ is ΔW + E."""
    steps = proofs.converse_steps(H=H, D=D)
    assert [s.name for s in steps] == [
        "null-converse.entries", "solutions-converse.entries", "solutions-converse-form.entries"]
    assert all(s.verified for s in steps), proofs.report(steps)


def test_the_converse_needs_the_constraint():
    """Without E a = 0 the converse identity is false, and the checker says so."""
    E, a = proofs._matrix("e", 2, 2), proofs._vector("a", 2)
    projector = sympy.eye(2) - a * a.T / proofs._squared_norm(a)
    assert not proofs._step("free E", "", E * projector, E, "explicit entries, H=2, D=2").verified
    assert proofs._step("free E projected", "", E * projector * projector, E * projector,
                        "explicit entries, H=2, D=2").verified


def test_rearrangements_are_told_apart_from_steps_that_need_the_norm_rule():
    general = {s.name: s for s in proofs.theorem_general()}
    rearranged = sorted(name for name, s in general.items() if proofs.is_rearrangement(s))
    assert rearranged == ["bias-alternative", "compose-sum"]
    with pytest.raises(ValueError, match="general dimension"):
        proofs.is_rearrangement(proofs.theorem_entries(H=1, D=1)[0])
