"""Symbolic checks, with sympy, of the exact results of Dherin et al. (2025) the book uses.

The first is their theorem that a context acts on a contextual block as a rank-one update of
the first MLP weight (chapter 2 of the book, "The theorem and its proof"); the second, their
proposition that absorbing the context one token at a time is a sequence of gradient steps
(chapter 3, "Implicit learning dynamics"). The third is the book's own: the matrix cosine of
any ``F`` with a rank-one update factors into a cosine at one vector and a share of ``F``
(chapter 6, "Fine-tuning versus the implicit update"). Chapter 11 adds three for modern decoder
layers: the theorem for gated MLPs (:func:`gated_steps`); that a parallel-residual layer needs no
weight patch, its context being a steering vector (:func:`parallel_steps`); and two weight patches
that carry a steering vector where the MLP has no output bias (:func:`output_side_steps`).

Every result of this module is a list of :class:`ProofStep`. A step holds two sympy
expressions ``lhs`` and ``rhs`` and a flag ``verified`` that is ``True`` only when sympy
reduced ``lhs - rhs`` to exactly zero. Nothing is marked verified by hand.

Notation (as in the book's chapters)
------------------------------------
* ``W`` (H x D) and ``b`` (H x 1): weight and bias of the MLP's first dense layer.
* ``f``: the rest of the block, ``f_θ``, an undefined sympy function.
* ``a = A(C∖Y, x)`` (D x 1), the layer output without the part ``Y`` of the context,
  assumed non-zero; ``s = ‖a‖² = aᵀa``.
* ``δ = A(C, x) − A(C∖Y, x)`` (D x 1), so that ``A(C, x) = a + δ``.
* ``ΔW = (W δ) aᵀ / ‖a‖²`` (H x D), the rank-1 update of the theorem.
* ``E = G (I − a aᵀ/‖a‖²)`` (H x D, for a free H x D matrix ``G``): a matrix with ``E a = 0``.
* Dynamics: ``A_i = A(c_1..c_i, x)`` (D x 1), ``A_0 = A(x)``, ``η = 1/‖A_0‖²``,
  ``W_i = W_0 + W_0 (A_i − A_0) A_0ᵀ η``, ``Δ_i = W_0 (A_i − A_{i+1}) A_0ᵀ``,
  ``L_i(W) = trace(Δ_iᵀ W)``.
* Alignment: any ``F`` (H x D), a rank-1 ``ΔW = u aᵀ/‖a‖²`` and ``â = a/‖a‖``.

Kinds of witness
----------------
* ``"matrix symbols, general dimension"``: ``W``, ``a``, ``δ`` ... are sympy ``MatrixSymbol``
  of symbolic sizes ``H`` and ``D``. Sympy expands the matrix expression; the only extra
  rule is that a product ``vᵀ v`` of a vector with itself (a 1 x 1 matrix) is the scalar
  ``‖v‖²`` (``s`` for ``a``, ``1/η`` for ``A_0``). That rule is applied by
  :func:`_contract_squares` to the factors of every matrix product after expansion.
  Here ``f`` is an opaque function of the whole vector, not necessarily elementwise.
* ``"explicit entries, H=.., D=.."``: every entry of every matrix and vector is its own real
  symbol and ``f`` is applied entry by entry. All quantities are then rational functions of
  the entries (with opaque ``f(...)`` terms), so ``sympy.cancel`` decides exactly whether a
  difference is identically zero.
* ``"scalar symbols for the norms, general dimension"``: the last step of the alignment
  identity, where positive scalar symbols stand for the norms whose entry identities the
  previous steps verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from numbers import Integral
from typing import Iterable, Mapping, Sequence

import sympy
from sympy.core.function import AppliedUndef

__all__ = [
    "ProofStep",
    "theorem_general",
    "theorem_entries",
    "converse_steps",
    "dynamics_steps",
    "gated_steps",
    "parallel_steps",
    "output_side_steps",
    "alignment_steps",
    "all_steps",
    "report",
    "is_rearrangement",
    "GENERAL",
    "SCALARS",
    "ExactPatch",
    "exact_patch",
]

#: The ``method`` of steps checked with MatrixSymbols of symbolic size.
GENERAL = "matrix symbols, general dimension"

#: The ``method`` of steps about norms and inner products, with positive scalar symbols standing
#: for the norms (valid in every dimension once the entry identities they rest on hold).
SCALARS = "scalar symbols for the norms, general dimension"


@dataclass(frozen=True)
class ProofStep:
    """One checked identity ``lhs = rhs``.

    Attributes:
        name: short unique id, e.g. ``"patched-preactivation"``.
        claim: one sentence in plain English saying what is shown.
        lhs, rhs: the two sides that sympy compared (``rhs`` is ``0`` or a zero matrix when
            the step shows that an expression vanishes).
        verified: ``True`` iff sympy reduced ``lhs - rhs`` to exactly zero.
        method: :data:`GENERAL`, :data:`SCALARS` or ``"explicit entries, H=.., D=.."``.
    """

    name: str
    claim: str
    lhs: sympy.Basic
    rhs: sympy.Basic
    verified: bool
    method: str

    def latex(self) -> str:
        """Return ``r"lhs = rhs"`` in LaTeX, for display."""
        return f"{sympy.latex(self.lhs)} = {sympy.latex(self.rhs)}"

    def markdown(self, split: bool = False, identity: bool = True) -> str:
        """Return the step as Markdown, the way the book's chapters display it.

        The first paragraph is ``**name** (method, verified): claim`` (``NOT verified`` for a
        step sympy could not reduce); then, with ``identity``, the identity sympy compared, as
        display maths between ``$$`` lines.

        Args:
            split: put ``= rhs`` on a second line (an ``aligned`` environment), for formulas
                too long for one line.
            identity: ``False`` gives the first paragraph alone, without the formula
                (``split`` must then be ``False``).
        """
        if not isinstance(split, bool) or not isinstance(identity, bool):
            raise TypeError(f"split and identity must be bools, got {split!r} and {identity!r}")
        if split and not identity:
            raise ValueError("split=True splits the displayed identity, but identity=False hides it")
        verdict = "verified" if self.verified else "NOT verified"
        text = f"**{self.name}** ({self.method}, {verdict}): {self.claim}"
        if not identity:
            return text
        if split:
            lhs, rhs = sympy.latex(self.lhs), sympy.latex(self.rhs)
            formula = rf"\begin{{aligned}} &{lhs} \\ &\quad = {rhs} \end{{aligned}}"
        else:
            formula = self.latex()
        return f"{text}\n\n$$\n{formula}\n$$"


# ---------------------------------------------------------------------------
# The verification machinery
# ---------------------------------------------------------------------------


def _contract_squares(
    product: sympy.MatMul, squares: Mapping[sympy.MatrixSymbol, sympy.Expr]
) -> sympy.Basic:
    """Replace every adjacent pair ``vᵀ v`` in a matrix product by the scalar ``squares[v]``.

    ``product`` is a ``MatMul`` (scalar coefficient, then matrix factors in order); ``v`` is
    an (k x 1) ``MatrixSymbol`` key of ``squares``. A stack is used so that contractions
    created by an earlier one (``vᵀ (v vᵀ) v``) are found too. A product that contracts
    completely is a 1 x 1 matrix and is returned as ``scalar * Identity(1)``.
    """
    coefficient: sympy.Expr = sympy.Integer(1)
    stack: list[sympy.Basic] = []
    for factor in product.args:
        if not getattr(factor, "is_Matrix", False):
            coefficient *= factor
            continue
        top = stack[-1] if stack else None
        if isinstance(top, sympy.Transpose) and top.arg == factor and factor in squares:
            stack.pop()
            coefficient *= squares[factor]
        else:
            stack.append(factor)
    if not stack:
        return coefficient * sympy.Identity(1)
    return sympy.MatMul(coefficient, *stack)


def _canonical_matrix_expr(
    expr: sympy.Basic, squares: Mapping[sympy.MatrixSymbol, sympy.Expr]
) -> sympy.Basic:
    """Expand a matrix expression, contract the squares ``vᵀv`` and collect terms.

    Arguments of undefined functions (``f(W a + b)``) are brought to the same canonical form
    first, so that ``f(u) - f(v)`` cancels exactly when ``u`` and ``v`` agree.
    """

    def canonical(e: sympy.Basic) -> sympy.Basic:
        e = sympy.expand(e)
        e = e.replace(
            lambda x: isinstance(x, sympy.MatMul), lambda x: _contract_squares(x, squares)
        )
        return sympy.expand(e.doit())

    expr = expr.replace(
        lambda x: isinstance(x, AppliedUndef),
        lambda x: x.func(*[canonical(arg) for arg in x.args]),
    )
    return canonical(expr)


def _canonical_explicit(expr: sympy.Basic) -> sympy.Basic:
    """Cancel an explicit scalar or matrix (and the arguments of undefined functions in it)."""
    expr = expr.replace(
        lambda x: isinstance(x, AppliedUndef),
        lambda x: x.func(*[sympy.cancel(arg) for arg in x.args]),
    )
    if isinstance(expr, sympy.MatrixBase):
        return expr.applyfunc(sympy.cancel)
    return sympy.cancel(expr)


def _evaluate_derivatives(expr: sympy.Basic) -> sympy.Basic:
    """Carry out every unevaluated ``Derivative`` in ``expr`` with sympy's ``diff``.

    Steps keep a gradient unevaluated in ``lhs`` so that it displays as ``∂L/∂V``; sympy's
    (matrix) differentiation computes it here, at verification time.
    """
    return expr.replace(
        lambda x: isinstance(x, sympy.Derivative),
        lambda x: x.expr.diff(*x.variable_count),
    )


def _is_exact_zero(expr: sympy.Basic) -> bool:
    """True iff ``expr`` is literally the number 0, a ``ZeroMatrix`` or an all-zero matrix."""
    if isinstance(expr, sympy.ZeroMatrix):
        return True
    if isinstance(expr, sympy.MatrixBase):
        return all(entry == 0 for entry in expr)
    return expr == 0


def _verify(
    lhs: sympy.Basic,
    rhs: sympy.Basic,
    squares: Mapping[sympy.MatrixSymbol, sympy.Expr] | None = None,
) -> bool:
    """Return True iff sympy reduces ``lhs - rhs`` to exactly zero.

    Unevaluated derivatives are computed first (:func:`_evaluate_derivatives`).
    Expressions that contain ``MatrixSymbol`` are handled as matrix expressions of general
    dimension (expand, contract ``vᵀv -> squares[v]``, ``doit``); all others are explicit
    and each entry is put over a common denominator with ``sympy.cancel``.
    """
    difference = _evaluate_derivatives(lhs) - _evaluate_derivatives(rhs)
    if difference.atoms(sympy.MatrixSymbol):
        reduced = _canonical_matrix_expr(difference, squares or {})
        if not _is_exact_zero(reduced):
            reduced = sympy.simplify(reduced)
    else:
        reduced = _canonical_explicit(difference)
    return _is_exact_zero(reduced)


def _step(
    name: str,
    claim: str,
    lhs: sympy.Basic,
    rhs: sympy.Basic,
    method: str,
    squares: Mapping[sympy.MatrixSymbol, sympy.Expr] | None = None,
) -> ProofStep:
    """Build a :class:`ProofStep` whose ``verified`` flag comes from :func:`_verify`."""
    return ProofStep(name, claim, lhs, rhs, _verify(lhs, rhs, squares), method)


def _check_size(**sizes: int) -> None:
    """Raise ValueError unless every given size is an integer >= 1."""
    for label, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise ValueError(f"{label} must be an integer >= 1, got {value!r}")


def _entries_method(H: int, D: int) -> str:
    return f"explicit entries, H={H}, D={D}"


def _matrix(name: str, rows: int, cols: int) -> sympy.Matrix:
    """A (rows x cols) matrix whose entry (i, j) is the real symbol ``name_{i,j}`` (1-based)."""
    return sympy.Matrix(rows, cols, lambda i, j: sympy.Symbol(f"{name}_{{{i + 1},{j + 1}}}", real=True))


def _vector(name: str, size: int) -> sympy.Matrix:
    """A (size x 1) column whose entry i is the real symbol ``name_{i}`` (1-based)."""
    return sympy.Matrix(size, 1, lambda i, _: sympy.Symbol(f"{name}_{{{i + 1}}}", real=True))


def _squared_norm(v: sympy.Matrix) -> sympy.Expr:
    """``‖v‖² = vᵀv`` of an explicit column (or the squared Frobenius norm of a matrix)."""
    return sum((entry**2 for entry in v), sympy.Integer(0))


# ---------------------------------------------------------------------------
# Theorem, general dimension
# ---------------------------------------------------------------------------


def _general_symbols() -> dict[str, sympy.Basic]:
    """MatrixSymbols of symbolic sizes: W (H x D), a, δ, δ₁, δ₂ (D x 1), b (H x 1), G (H x D)."""
    H, D = sympy.symbols("H D", integer=True, positive=True)
    return {
        "W": sympy.MatrixSymbol("W", H, D),
        "G": sympy.MatrixSymbol("G", H, D),
        "a": sympy.MatrixSymbol("a", D, 1),
        "delta": sympy.MatrixSymbol("delta", D, 1),
        "delta1": sympy.MatrixSymbol("delta_1", D, 1),
        "delta2": sympy.MatrixSymbol("delta_2", D, 1),
        "b": sympy.MatrixSymbol("b", H, 1),
        "s": sympy.Symbol(r"\|a\|^{2}", positive=True),
        "D": D,
    }


def _patched_preactivation_general(update: sympy.MatrixExpr) -> ProofStep:
    """Check ``(W + update) a = W (a + δ)`` in general dimension, with ``aᵀa = ‖a‖²``.

    ``update`` is an (H x D) matrix expression in the symbols of :func:`_general_symbols`.
    With the theorem's ``ΔW = W δ aᵀ / ‖a‖²`` the step is verified; a wrong update is not.
    """
    g = _general_symbols()
    W, a, delta, s = g["W"], g["a"], g["delta"], g["s"]
    return _step(
        "patched-preactivation",
        "The patched weight maps the reduced input a = A(C∖Y, x) to the same pre-activation "
        "as W maps the full input A(C, x) = a + δ, because aᵀa = ‖a‖².",
        (W + update) * a,
        W * (a + delta),
        GENERAL,
        {a: s},
    )


def theorem_general() -> list[ProofStep]:
    """Steps of the theorem (chapter 2) with MatrixSymbols of general size.

    Shapes: ``W`` (H x D), ``a``, ``δ``, ``δ₁``, ``δ₂`` (D x 1), ``b`` (H x 1), ``G`` (H x D),
    ``‖a‖²`` a positive scalar symbol standing for the 1 x 1 product ``aᵀa``; ``f`` is an
    undefined function of the whole H-vector.

    Returns the steps ``patched-preactivation``, ``patched-output``, ``null-direction``,
    ``non-uniqueness``, ``corollary-full-context``, ``bias-alternative``, ``compose-sum`` and
    ``compose-patch``. Rank, norm and minimum-norm facts are in :func:`theorem_entries`.
    """
    g = _general_symbols()
    W, G, a, delta, b, s, D = g["W"], g["G"], g["a"], g["delta"], g["b"], g["s"], g["D"]
    delta1, delta2 = g["delta1"], g["delta2"]
    f = sympy.Function("f")
    squares = {a: s}
    dW = W * delta * a.T / s
    null = G * (sympy.Identity(D) - a * a.T / s)

    steps = [_patched_preactivation_general(dW)]
    steps.append(
        _step(
            "patched-output",
            "Applying f(· + b) to both sides: the block with weight W + ΔW on the reduced "
            "context gives the block with weight W on the full context, "
            "T_(W+ΔW)(C∖Y, x) = f(W A(C, x) + b) = T_W(C, x), for any function f.",
            f((W + dW) * a + b),
            f(W * (a + delta) + b),
            GENERAL,
            squares,
        )
    )
    steps.append(
        _step(
            "null-direction",
            "E = G (I − a aᵀ/‖a‖²) annihilates a for every H x D matrix G (the converse, that "
            "every E with E a = 0 has this form, is checked by converse_steps).",
            null * a,
            sympy.ZeroMatrix(W.shape[0], 1),
            GENERAL,
            squares,
        )
    )
    steps.append(
        _step(
            "non-uniqueness",
            "Adding any such E to ΔW gives another patch: (W + ΔW + E) a = W A(C, x), so the "
            "update is not unique.",
            (W + dW + null) * a,
            W * (a + delta),
            GENERAL,
            squares,
        )
    )

    # Corollary Y = C: the reference input is A(x), the full one A(C, x).
    A_x = sympy.MatrixSymbol("A(x)", *a.shape)
    A_Cx = sympy.MatrixSymbol("A(C, x)", *a.shape)
    s_x = sympy.Symbol(r"\|A(x)\|^{2}", positive=True)
    dW_full = W * (A_Cx - A_x) * A_x.T / s_x
    steps.append(
        _step(
            "corollary-full-context",
            "With Y = C the whole context is absorbed: T_(W+ΔW)(x) = T_W(C, x) for "
            "ΔW = W (A(C, x) − A(x)) A(x)ᵀ / ‖A(x)‖².",
            f((W + dW_full) * A_x + b),
            f(W * A_Cx + b),
            GENERAL,
            {A_x: s_x},
        )
    )
    steps.append(
        _step(
            "bias-alternative",
            "The same effect is a shift of the first bias by Δb = W δ: f(W a + (b + W δ)) = "
            "f(W A(C, x) + b).",
            f(W * a + (b + W * delta)),
            f(W * (a + delta) + b),
            GENERAL,
            squares,
        )
    )

    # Composition: A(C, x) = a + δ₁ + δ₂, where δ₁ comes from Y₁ and δ₂ from Y₂.
    dW1 = W * delta1 * a.T / s
    dW2 = W * delta2 * a.T / s
    steps.append(
        _step(
            "compose-sum",
            "For Y = Y₁ ∪ Y₂ with A(C, x) = a + δ₁ + δ₂, the update is the sum of the two "
            "increments W δ₁ aᵀ/‖a‖² and W δ₂ aᵀ/‖a‖², which share the right factor "
            "aᵀ/‖a‖² (so the sum still has rank at most 1).",
            dW1 + dW2,
            W * (delta1 + delta2) * a.T / s,
            GENERAL,
            squares,
        )
    )
    steps.append(
        _step(
            "compose-patch",
            "Absorbing Y₁ and then Y₂ by adding both increments to W reproduces the full "
            "context: (W + ΔW₁ + ΔW₂) a = W (a + δ₁ + δ₂).",
            (W + dW1 + dW2) * a,
            W * (a + delta1 + delta2),
            GENERAL,
            squares,
        )
    )
    return steps


# ---------------------------------------------------------------------------
# Theorem, explicit entries
# ---------------------------------------------------------------------------


def theorem_entries(H: int = 2, D: int = 2) -> list[ProofStep]:
    """Steps of the theorem (chapter 2) with every entry its own real symbol.

    Shapes: ``W``, ``G`` (H x D); ``a``, ``δ``, ``δ₁``, ``δ₂`` (D x 1); ``b`` (H x 1);
    ``‖a‖² = Σ_j a_j²`` written out; ``f`` applied entry by entry.

    Covers the same identities as :func:`theorem_general` (names ending in ``.entries``)
    plus the facts that need entries: ``rank-one``, ``rank-one-nonzero``,
    ``frobenius-norm``, ``minimum-norm-orthogonal`` and ``minimum-norm-pythagoras``.

    Raises:
        ValueError: if ``H`` or ``D`` is not an integer >= 1.
    """
    _check_size(H=H, D=D)
    method = _entries_method(H, D)
    W, G = _matrix("w", H, D), _matrix("g", H, D)
    a, delta, b = _vector("a", D), _vector(r"\delta", D), _vector("b", H)
    delta1, delta2 = _vector(r"\delta^{(1)}", D), _vector(r"\delta^{(2)}", D)
    f = sympy.Function("f")
    s = _squared_norm(a)
    dW = W * delta * a.T / s
    null = G * (sympy.eye(D) - a * a.T / s)

    def T(weight: sympy.Matrix, inp: sympy.Matrix, bias: sympy.Matrix = b) -> sympy.Matrix:
        return (weight * inp + bias).applyfunc(f)

    steps = [
        _step(
            "patched-preactivation.entries",
            "Entry by entry, (W + ΔW) a = W (a + δ).",
            (W + dW) * a,
            W * (a + delta),
            method,
        ),
        _step(
            "patched-output.entries",
            "Entry by entry, with f applied elementwise, T_(W+ΔW)(C∖Y, x) = T_W(C, x).",
            T(W + dW, a),
            T(W, a + delta),
            method,
        ),
    ]

    minors = [
        dW.extract([r1, r2], [c1, c2]).det()
        for r1, r2 in combinations(range(H), 2)
        for c1, c2 in combinations(range(D), 2)
    ]
    steps.append(
        _step(
            "rank-one.entries",
            "Every 2 x 2 minor of ΔW vanishes, so ΔW has rank at most 1"
            + (" (here min(H, D) = 1: there are no 2 x 2 minors)." if not minors else "."),
            sympy.Matrix(len(minors), 1, minors),
            sympy.zeros(len(minors), 1),
            method,
        )
    )
    point = {W[i, j]: sympy.Integer(1 if i == j else 0) for i in range(H) for j in range(D)}
    point.update({a[j]: sympy.Integer(1 if j == 0 else 0) for j in range(D)})
    point.update({delta[j]: sympy.Integer(1 if j == 0 else 0) for j in range(D)})
    e11 = sympy.zeros(H, D)
    e11[0, 0] = 1
    steps.append(
        _step(
            "rank-one-nonzero.entries",
            "At W = I (H x D), a = δ = e₁ the update is the non-zero matrix E₁₁, so ΔW is "
            "not identically zero and has rank exactly 1 for generic W, a, δ (whenever W δ ≠ 0, "
            "since ΔW a = W δ).",
            dW.subs(point),
            e11,
            method,
        )
    )
    steps.append(
        _step(
            "frobenius-norm.entries",
            "‖ΔW‖_F² = ‖W δ‖² / ‖a‖².",
            _squared_norm(dW),
            _squared_norm(W * delta) / s,
            method,
        )
    )
    steps.append(
        _step(
            "null-direction.entries",
            "E = G (I − a aᵀ/‖a‖²) satisfies E a = 0 for every G.",
            null * a,
            sympy.zeros(H, 1),
            method,
        )
    )
    steps.append(
        _step(
            "non-uniqueness.entries",
            "(W + ΔW + E) a = W (a + δ): adding E gives another valid patch.",
            (W + dW + null) * a,
            W * (a + delta),
            method,
        )
    )
    steps.append(
        _step(
            "minimum-norm-orthogonal.entries",
            "ΔW is orthogonal to every such E in the Frobenius inner product: trace(ΔWᵀ E) = 0.",
            (dW.T * null).trace(),
            sympy.Integer(0),
            method,
        )
    )
    steps.append(
        _step(
            "minimum-norm-pythagoras.entries",
            "Hence ‖ΔW + E‖_F² = ‖ΔW‖_F² + ‖E‖_F²: among all solutions Γ = ΔW + E of "
            "Γ a = W δ, ΔW has the smallest Frobenius norm.",
            _squared_norm(dW + null),
            _squared_norm(dW) + _squared_norm(null),
            method,
        )
    )

    A_x, A_Cx = _vector("A(x)", D), _vector("A(C,x)", D)
    dW_full = W * (A_Cx - A_x) * A_x.T / _squared_norm(A_x)
    steps.append(
        _step(
            "corollary-full-context.entries",
            "With Y = C: T_(W+ΔW)(x) = T_W(C, x), ΔW = W (A(C,x) − A(x)) A(x)ᵀ / ‖A(x)‖².",
            T(W + dW_full, A_x),
            T(W, A_Cx),
            method,
        )
    )
    steps.append(
        _step(
            "bias-alternative.entries",
            "Shifting the bias by Δb = W δ instead: f(W a + b + W δ) = f(W (a + δ) + b).",
            T(W, a, b + W * delta),
            T(W, a + delta),
            method,
        )
    )
    dW1, dW2 = W * delta1 * a.T / s, W * delta2 * a.T / s
    steps.append(
        _step(
            "compose-sum.entries",
            "W δ₁ aᵀ/‖a‖² + W δ₂ aᵀ/‖a‖² = W (δ₁ + δ₂) aᵀ/‖a‖².",
            dW1 + dW2,
            W * (delta1 + delta2) * a.T / s,
            method,
        )
    )
    steps.append(
        _step(
            "compose-patch.entries",
            "(W + ΔW₁ + ΔW₂) a = W (a + δ₁ + δ₂).",
            (W + dW1 + dW2) * a,
            W * (a + delta1 + delta2),
            method,
        )
    )
    return steps


def converse_steps(H: int = 2, D: int = 2) -> list[ProofStep]:
    """The converses of ``null-direction`` and ``non-uniqueness`` (chapter 2), with explicit entries.

    A matrix symbol cannot carry the constraint ``E a = 0``, so these steps solve it: with
    ``a_D ≠ 0`` (true of some coordinate of any ``a ≠ 0``, after relabelling the coordinates),
    ``E a = 0`` holds exactly when the last column of ``E`` is
    ``e_{r,D} = −Σ_{k<D} e_{r,k} a_k / a_D``, its other entries free; likewise ``Γ a = W δ``
    exactly when ``γ_{r,D} = ((W δ)_r − Σ_{k<D} γ_{r,k} a_k) / a_D``. Substituting these
    general solutions, sympy checks:

    * ``null-converse.entries``: every ``E`` with ``E a = 0`` equals ``G (I − a aᵀ/‖a‖²)`` with
      ``G = E``;
    * ``solutions-converse.entries``: every ``Γ`` with ``Γ a = W δ`` is ``ΔW + E`` with
      ``E = Γ − ΔW``, ``E a = 0``;
    * ``solutions-converse-form.entries``: and that ``E`` has the form of ``null-direction``.

    Together with ``null-direction`` and ``non-uniqueness``: the patches are exactly
    ``ΔW + G (I − a aᵀ/‖a‖²)``, ``G`` any ``H x D`` matrix, at the sizes checked.

    Raises:
        ValueError: if ``H`` or ``D`` is not an integer >= 1.
    """
    _check_size(H=H, D=D)
    method = _entries_method(H, D)
    W, a, delta = _matrix("w", H, D), _vector("a", D), _vector(r"\delta", D)
    s = _squared_norm(a)
    projector = sympy.eye(D) - a * a.T / s
    dW = W * delta * a.T / s

    def solved(name: str, target: sympy.Matrix) -> sympy.Matrix:
        """The general (H x D) solution X of X a = target: last column solved for."""
        X = _matrix(name, H, D)
        for r in range(H):
            rest = sum((X[r, k] * a[k] for k in range(D - 1)), sympy.Integer(0))
            X[r, D - 1] = (target[r] - rest) / a[D - 1]
        return X

    E = solved("e", sympy.zeros(H, 1))
    Gamma = solved(r"\gamma", W * delta)
    return [
        _step(
            "null-converse.entries",
            "Every E with E a = 0 (solved for its last column, a_D ≠ 0) satisfies "
            "E (I − a aᵀ/‖a‖²) = E: it has the form G (I − a aᵀ/‖a‖²), with G = E.",
            E * projector,
            E,
            method,
        ),
        _step(
            "solutions-converse.entries",
            "Every Γ with Γ a = W δ (solved for its last column, a_D ≠ 0) differs from ΔW "
            "by a matrix that annihilates a: (Γ − ΔW) a = 0.",
            (Gamma - dW) * a,
            sympy.zeros(H, 1),
            method,
        ),
        _step(
            "solutions-converse-form.entries",
            "... and Γ − ΔW = (Γ − ΔW)(I − a aᵀ/‖a‖²): every patch is ΔW + G (I − a aᵀ/‖a‖²) "
            "for some G.",
            (Gamma - dW) * projector,
            Gamma - dW,
            method,
        ),
    ]


# ---------------------------------------------------------------------------
# Implicit dynamics (chapter 3)
# ---------------------------------------------------------------------------


_SUBSCRIPTS = str.maketrans("0123456789+−i", "₀₁₂₃₄₅₆₇₈₉₊₋ᵢ")


def _sub(index: int | str) -> str:
    """``index`` in Unicode subscript characters, for plain-text claims (``_sub(12) == "₁₂"``)."""
    return str(index).translate(_SUBSCRIPTS)


def _equivalence_claim(i: int) -> str:
    """The plain-text claim of ``implicit-equivalence[i=..]`` for the token index ``i``."""
    prompt = {0: "x", 1: "c₁, x"}.get(i, f"c₁..c{_sub(i)}, x")
    return (f"T_(W{_sub(i)})(x) = T_W({prompt}): "
            f"f(W{_sub(i)} A₀ + b) = f(W₀ A{_sub(i)} + b).")


def _gradient(loss: sympy.Expr, variable: sympy.Matrix) -> sympy.Matrix:
    """Matrix of partial derivatives ``∂loss/∂variable[r, c]`` (same shape as ``variable``)."""
    return variable.applyfunc(lambda entry: sympy.diff(loss, entry))


def _dynamics_general() -> list[ProofStep]:
    """The three per-token identities of the dynamics for a generic index i, in general dimension.

    Shapes: ``W_0``, ``V`` (H x D); ``A_0``, ``A_i``, ``A_{i+1}`` (D x 1); ``b`` (H x 1);
    ``η`` a positive scalar with ``A_0ᵀ A_0 = 1/η``. The gradient is sympy's matrix derivative.
    """
    H, D = sympy.symbols("H D", integer=True, positive=True)
    W0, V = sympy.MatrixSymbol("W_0", H, D), sympy.MatrixSymbol("V", H, D)
    A0 = sympy.MatrixSymbol("A_0", D, 1)
    Ai, Aj = sympy.MatrixSymbol("A_i", D, 1), sympy.MatrixSymbol("A_{i+1}", D, 1)
    b = sympy.MatrixSymbol("b", H, 1)
    eta = sympy.Symbol("eta", positive=True)
    f = sympy.Function("f")

    def W(A: sympy.MatrixSymbol) -> sympy.MatrixExpr:
        return W0 + W0 * (A - A0) * A0.T * eta

    Delta_i = W0 * (Ai - Aj) * A0.T
    loss = sympy.Trace(Delta_i.T * V)
    grad = loss.diff(V)
    return [
        _step(
            "loss-gradient[i]",
            "The gradient of the linear loss Lᵢ(V) = trace(Δᵢᵀ V) with respect to V is Δᵢ.",
            sympy.Derivative(loss, V, evaluate=False),
            Delta_i,
            GENERAL,
        ),
        _step(
            "gradient-step[i]",
            "Wᵢ₊₁ = Wᵢ − η ∇Lᵢ(Wᵢ): absorbing token i+1 is one gradient step with "
            "learning rate η = 1/‖A(x)‖².",
            W(Aj),
            W(Ai) - eta * grad.subs(V, W(Ai)),
            GENERAL,
        ),
        _step(
            "implicit-equivalence[i]",
            "T_(Wᵢ)(x) = T_W(c₁..cᵢ, x): f(Wᵢ A₀ + b) = f(W₀ Aᵢ + b), using A₀ᵀA₀ = 1/η.",
            f(W(Ai) * A0 + b),
            f(W0 * Ai + b),
            GENERAL,
            {A0: 1 / eta},
        ),
    ]


def dynamics_steps(H: int = 2, D: int = 2, tokens: int = 3) -> list[ProofStep]:
    """Steps of the implicit dynamics (chapter 3).

    First the three per-token identities for a generic index ``i`` in general dimension
    (names ending in ``[i]``), then, with explicit entries: ``W_0`` (H x D), ``A_0 .. A_tokens``
    (D x 1, ``A_0 = A(x)``, entry k of ``A_i`` named ``A_{i,k}``), ``b`` (H x 1),
    ``η = 1/Σ_j A_{0,j}²``, a free matrix ``V`` (H x D) for the gradient, and ``f`` elementwise:

    * ``loss-gradient[i=k]`` for k < tokens: ``∂ trace(Δ_kᵀ V) / ∂V = Δ_k``, entry by entry;
    * ``gradient-step[i=k]`` for k < tokens: ``W_{k+1} = W_k − η ∇L_k(W_k)``;
    * ``implicit-equivalence[i=k]`` for k <= tokens: ``f(W_k A_0 + b) = f(W_0 A_k + b)``;
    * ``telescoping-sum``: ``W_tokens − W_0 = −η Σ_k Δ_k``.

    Raises:
        ValueError: if ``H``, ``D`` or ``tokens`` is not an integer >= 1.
    """
    _check_size(H=H, D=D, tokens=tokens)
    method = _entries_method(H, D) + f", tokens={tokens}"
    W0, V, b = _matrix("w", H, D), _matrix("v", H, D), _vector("b", H)
    A = [
        sympy.Matrix(D, 1, lambda k, _, i=i: sympy.Symbol(f"A_{{{i},{k + 1}}}", real=True))
        for i in range(tokens + 1)
    ]
    A0 = A[0]
    eta = 1 / _squared_norm(A0)
    f = sympy.Function("f")
    Ws = [W0 + W0 * (Ai - A0) * A0.T * eta for Ai in A]
    Deltas = [W0 * (A[i] - A[i + 1]) * A0.T for i in range(tokens)]

    steps = _dynamics_general()
    for i, Delta in enumerate(Deltas):
        loss = (Delta.T * V).trace()
        grad = _gradient(loss, V)
        steps.append(
            _step(
                f"loss-gradient[i={i}]",
                f"∇_V trace(Δ{_sub(i)}ᵀ V) = Δ{_sub(i)}, differentiating entry by entry.",
                V.applyfunc(lambda entry: sympy.Derivative(loss, entry, evaluate=False)),
                Delta,
                method,
            )
        )
        grad_at_Wi = grad.subs({V[r, c]: Ws[i][r, c] for r in range(H) for c in range(D)})
        steps.append(
            _step(
                f"gradient-step[i={i}]",
                f"W{_sub(i + 1)} = W{_sub(i)} − η ∇L{_sub(i)}(W{_sub(i)}), η = 1/‖A(x)‖².",
                Ws[i + 1],
                Ws[i] - eta * grad_at_Wi,
                method,
            )
        )
    for i, Wi in enumerate(Ws):
        steps.append(
            _step(
                f"implicit-equivalence[i={i}]",
                _equivalence_claim(i),
                (Wi * A0 + b).applyfunc(f),
                (W0 * A[i] + b).applyfunc(f),
                method,
            )
        )
    steps.append(
        _step(
            "telescoping-sum",
            f"The whole context is the sum of the gradient steps: W{_sub(tokens)} − W₀ = "
            "−η Σᵢ Δᵢ.",
            Ws[tokens] - W0,
            -eta * sum(Deltas, sympy.zeros(H, D)),
            method,
        )
    )
    return steps


# ---------------------------------------------------------------------------
# Gated MLPs (SwiGLU, GeGLU): the first layer is the stack [W_gate; W_up]
# ---------------------------------------------------------------------------


def gated_steps(H: int = 2, D: int = 2) -> list[ProofStep]:
    """The theorem for a gated MLP ``g(W_gate m, W_up m)`` (chapter 11), checked two ways.

    A gated MLP reads its input ``m`` only through ``W_gate`` and ``W_up`` (each ``H x D``): its
    first layer is the stacked map ``W_s = [W_gate; W_up]``. With the reference
    ``a`` and ``δ = m − a``, each block is patched with the *same* right factor,
    ``ΔW_gate = W_gate δ aᵀ/‖a‖²`` and ``ΔW_up = W_up δ aᵀ/‖a‖²``, i.e.
    ``ΔW_s = (W_s δ) aᵀ/‖a‖²``, which has rank one.

    General dimension (MatrixSymbols of symbolic sizes; ``g`` an undefined function of the two
    pre-activation vectors, so any gating ``W_down (φ(p) ⊙ q)`` is covered): ``gated-blocks``,
    ``gated-output``. Explicit entries (sizes ``H``, ``D``; ``φ`` applied entry by entry,
    ``⊙`` the entrywise product): ``gated-stack.entries``, ``gated-output.entries``,
    ``gated-rank-one.entries`` (every 2 x 2 minor of the stacked ``2H x D`` update
    vanishes) and ``gated-residual.entries`` (with the steering vector ``Δb′ = h_i − h_x`` the
    residual layer's output is reproduced).

    Raises:
        ValueError: if a size is not an integer >= 1.
    """
    _check_size(H=H, D=D)
    rows, cols = sympy.symbols("H D", integer=True, positive=True)
    Wg, Wu = sympy.MatrixSymbol("W_gate", rows, cols), sympy.MatrixSymbol("W_up", rows, cols)
    a, delta = sympy.MatrixSymbol("a", cols, 1), sympy.MatrixSymbol("delta", cols, 1)
    s = sympy.Symbol(r"\|a\|^{2}", positive=True)
    g = sympy.Function("g")
    squares = {a: s}
    dWg, dWu = Wg * delta * a.T / s, Wu * delta * a.T / s
    steps = [
        _step(
            "gated-blocks",
            "Both blocks of the stacked first layer, patched with the shared right factor aᵀ/‖a‖², map "
            "a to what they map a + δ to: (W_gate + ΔW_gate) a = W_gate (a + δ), and the same for W_up "
            "(shown here for the gate; the up block is the same identity with W_up).",
            (Wg + dWg) * a,
            Wg * (a + delta),
            GENERAL,
            squares,
        ),
        _step(
            "gated-output",
            "So the gated MLP, any function g of its two pre-activations, gives the same output: "
            "g((W_gate + ΔW_gate) a, (W_up + ΔW_up) a) = g(W_gate (a + δ), W_up (a + δ)).",
            g((Wg + dWg) * a, (Wu + dWu) * a),
            g(Wg * (a + delta), Wu * (a + delta)),
            GENERAL,
            squares,
        ),
    ]
    method = _entries_method(H, D)
    Wg_e, Wu_e, Wd_e = _matrix("g", H, D), _matrix("u", H, D), _matrix("d", D, H)
    a_e, delta_e = _vector("a", D), _vector(r"\delta", D)
    h_i, h_x = _vector("h", D), _vector(r"h^{x}", D)
    phi = sympy.Function(r"\varphi")
    s_e = _squared_norm(a_e)
    stacked = Wg_e.col_join(Wu_e)
    dWs = stacked * delta_e * a_e.T / s_e

    def mlp(gate: sympy.Matrix, up: sympy.Matrix, m: sympy.Matrix) -> sympy.Matrix:
        return Wd_e * (gate * m).applyfunc(phi).multiply_elementwise(up * m)

    patched_gate, patched_up = Wg_e + dWs[:H, :], Wu_e + dWs[H:, :]
    minors = [
        dWs.extract([r1, r2], [c1, c2]).det()
        for r1, r2 in combinations(range(2 * H), 2)
        for c1, c2 in combinations(range(D), 2)
    ]
    steps += [
        _step(
            "gated-stack.entries",
            "Entry by entry, the stacked update (W_s δ) aᵀ/‖a‖² is the gate update above the up update.",
            dWs,
            (Wg_e * delta_e * a_e.T / s_e).col_join(Wu_e * delta_e * a_e.T / s_e),
            method,
        ),
        _step(
            "gated-output.entries",
            "Entry by entry, W_down (φ(W_gate m) ⊙ (W_up m)) with the patched blocks at a equals the "
            "unpatched MLP at a + δ.",
            mlp(patched_gate, patched_up, a_e),
            mlp(Wg_e, Wu_e, a_e + delta_e),
            method,
        ),
        _step(
            "gated-rank-one.entries",
            "Every 2 x 2 minor of the stacked update vanishes: [ΔW_gate; ΔW_up] has rank at most 1.",
            sympy.Matrix(minors) if minors else sympy.zeros(1, 1),
            sympy.zeros(max(len(minors), 1), 1),
            method,
        ),
        _step(
            "gated-residual.entries",
            "With the steering vector Δb′ = h_i − h_x added after the MLP, the residual layer run on the "
            "query alone, h_x + MLP_patched(a) + Δb′, equals the prompted h_i + MLP(a + δ).",
            h_x + mlp(patched_gate, patched_up, a_e) + (h_i - h_x),
            h_i + mlp(Wg_e, Wu_e, a_e + delta_e),
            method,
        ),
    ]
    return steps


# ---------------------------------------------------------------------------
# The matrix cosine of a rank-1 update (chapter 6)
# ---------------------------------------------------------------------------


def alignment_steps(H: int = 2, D: int = 2) -> list[ProofStep]:
    """Steps of the identity ``cos_F(F, ΔW) = cos(F a, u) · ‖F â‖ / ‖F‖_F`` (chapter 6).

    For any ``F`` (H x D) and a rank-1 ``ΔW = u aᵀ / ‖a‖²`` (``u``: H x 1, ``a``: D x 1,
    ``â = a/‖a‖``), the cosine of the two matrices in the Frobenius inner product is the cosine,
    at the vector ``a``, of what they do to it (``F a`` against ``ΔW a = u``), times the share
    ``‖F â‖ / ‖F‖_F ≤ 1`` of ``F`` that acts along ``a``. Explicit entries (``F``, ``g``: H x D
    and H x 1; ``u``: H x 1; ``a``: D x 1):

    * ``cos-inner.entries``: ``⟨F, ΔW⟩_F = uᵀ (F a) / ‖a‖²``;
    * ``cos-norm.entries``: ``‖ΔW‖_F² = ‖u‖² / ‖a‖²``;
    * ``cos-share-pythagoras.entries``: ``‖F‖_F² = ‖F a‖²/‖a‖² + ‖F (I − a aᵀ/‖a‖²)‖_F²``, so
      the share is at most 1;
    * ``cos-share-rank-one.entries``: for ``F = g aᵀ`` (rows along ``a``) the share is 1;

    and, with positive scalar symbols for the four norms and a real symbol ``p = uᵀ (F a)``,
    ``cos-factorisation``: ``⟨F, ΔW⟩_F / (‖F‖_F ‖ΔW‖_F) = [p/(‖u‖ ‖F a‖)] · [‖F a‖/(‖a‖ ‖F‖_F)]``
    once the two entry identities are substituted (valid in every dimension).

    Raises:
        ValueError: if ``H`` or ``D`` is not an integer >= 1.
    """
    _check_size(H=H, D=D)
    method = _entries_method(H, D)
    F, u, a, g = _matrix("F", H, D), _vector("u", H), _vector("a", D), _vector("g", H)
    s = _squared_norm(a)
    dW = u * a.T / s
    steps = [
        _step(
            "cos-inner.entries",
            "The Frobenius inner product of any F with ΔW = u aᵀ/‖a‖² only sees what F does "
            "to a: ⟨F, ΔW⟩_F = uᵀ (F a) / ‖a‖².",
            sum(F.multiply_elementwise(dW), sympy.Integer(0)),
            (u.T * F * a)[0, 0] / s,
            method,
        ),
        _step(
            "cos-norm.entries",
            "‖ΔW‖_F² = ‖u‖² / ‖a‖².",
            _squared_norm(dW),
            _squared_norm(u) / s,
            method,
        ),
        _step(
            "cos-share-pythagoras.entries",
            "‖F‖_F² = ‖F â‖² + ‖F (I − â âᵀ)‖_F² with â = a/‖a‖: the share ‖F â‖/‖F‖_F of F "
            "along a is at most 1.",
            _squared_norm(F),
            _squared_norm(F * a) / s + _squared_norm(F * (sympy.eye(D) - a * a.T / s)),
            method,
        ),
        _step(
            "cos-share-rank-one.entries",
            "For F = g aᵀ, whose rows all lie along a, ‖F â‖ = ‖F‖_F: the share is 1 and "
            "cos_F(F, ΔW) = cos(g, u).",
            _squared_norm(g * a.T * a) / s,
            _squared_norm(g * a.T),
            method,
        ),
    ]
    p = sympy.Symbol("p", real=True)  # uᵀ (F a)
    norm_F = sympy.Symbol(r"\|F\|_F", positive=True)
    norm_u = sympy.Symbol(r"\|u\|", positive=True)
    norm_a = sympy.Symbol(r"\|a\|", positive=True)
    norm_Fa = sympy.Symbol(r"\|F a\|", positive=True)
    # Unevaluated products, so that the display keeps the two sides' structure.
    inner = p / norm_a**2  # cos-inner
    norm_dW = sympy.Mul(norm_u, sympy.Pow(norm_a, -1), evaluate=False)  # cos-norm
    cosine_at_a = p / (norm_u * norm_Fa)
    share = norm_Fa / (norm_a * norm_F)
    steps.append(
        _step(
            "cos-factorisation",
            "Hence cos_F(F, ΔW) = ⟨F, ΔW⟩_F / (‖F‖_F ‖ΔW‖_F) = cos(F a, u) · ‖F â‖ / ‖F‖_F, "
            "with p = uᵀ (F a): the cosine at a times the share of F along a.",
            sympy.Mul(inner, sympy.Pow(sympy.Mul(norm_F, norm_dW, evaluate=False), -1), evaluate=False),
            sympy.Mul(cosine_at_a, share, evaluate=False),
            SCALARS,
        )
    )
    return steps


# ---------------------------------------------------------------------------
# Parallel-residual blocks (GPT-J, GPT-NeoX/Pythia, Phi, Falcon, Cohere): no weight patch
# ---------------------------------------------------------------------------


def _vector_function(name: str, argument: sympy.Basic, size: sympy.Expr) -> sympy.MatrixExpr:
    """An opaque vector-valued function of a vector, in general dimension.

    The result is the (size x 1) matrix expression whose entry ``j`` is ``name(j, argument)``:
    an undefined sympy function of the index and of the whole argument, so nothing is assumed
    about it (not elementwise, not linear). Two calls with equal arguments give equal matrices.
    """
    j, k = sympy.symbols("j k", integer=True)
    f = sympy.Function(name)
    return sympy.FunctionMatrix(size, 1, sympy.Lambda((j, k), f(j, argument)))


def _rms_norm(v: sympy.Matrix, scale: sympy.Matrix, eps: sympy.Symbol) -> sympy.Matrix:
    """Explicit RMSNorm ``scale ⊙ v / sqrt(ε + ‖v‖²/len(v))`` of a column of symbols."""
    rms = sympy.sqrt(eps + _squared_norm(v) / v.rows)
    return scale.multiply_elementwise(v) / rms


def parallel_steps(H: int = 2, D: int = 2) -> list[ProofStep]:
    """A parallel-residual layer needs no weight patch: the context is a steering vector.

    GPT-J, GPT-NeoX/Pythia (``use_parallel_residual=True``), Phi-1/1.5/2, Falcon, Cohere and
    StableLM's parallel variant compute, for a layer input ``z`` (tokens ``z_1..z_T``),
    ``out_i = z_i + Attn(N₁ z)_i + MLP(N₂ z_i)`` (``N₁`` and ``N₂`` may be one norm; the MLP
    may be gated or not, with first layer ``W_s``, stacked for a gated MLP). The MLP reads the
    layer's own input token, ``m_i = N₂(z_i)``, not the attention output. Run on the query
    alone with its prompted input ``z_i`` (as the library's references are), the layer's MLP
    input is ``a = N₂(z_i) = m_i``: ``δ = m_i − a = 0`` and ``ΔW_s = W_s δ aᵀ/‖a‖² = 0``. The
    whole effect of the context at that layer is the steering vector ``Δb′ = h_i − h_x`` (``h``:
    what is added to the MLP output, ``z + Attn``), that is ``Attn(N₁ z)_i − A_x`` with ``A_x``
    the attention output of the query alone; with it the layer returns ``out_i`` exactly.

    General dimension (``N`` and the MLP opaque vector-valued functions, the MLP any function
    of its first layer's pre-activation ``W_s m``; attention outputs ``A_i``, ``A_x`` as
    symbols): ``parallel-delta``, ``parallel-patch``, ``parallel-steering``,
    ``parallel-output``; and, for contrast, ``parallel-sequential``: in the sequential layout
    (``use_parallel_residual=False``, Llama) ``m_i = N₂(h_i)`` depends on the context through
    ``h_i``, ``δ ≠ 0`` in general, and the rank-one patch of :func:`gated_steps` does the work.
    Explicit entries (sizes ``H``, ``D``; ``N`` an explicit RMSNorm, a SiLU-type gated MLP
    ``W_down (φ(W_gate m) ⊙ W_up m)`` with ``φ`` entry by entry, attention outputs as symbol
    vectors): ``parallel-delta.entries``, ``parallel-patch.entries``,
    ``parallel-output.entries``.

    Raises:
        ValueError: if a size is not an integer >= 1.
    """
    _check_size(H=H, D=D)
    rows, cols = sympy.symbols("H D", integer=True, positive=True)
    z = sympy.MatrixSymbol("z_i", cols, 1)
    A_i, A_x = sympy.MatrixSymbol("A_i", cols, 1), sympy.MatrixSymbol("A_x", cols, 1)
    W = sympy.MatrixSymbol("W_s", rows, cols)
    s = sympy.Symbol(r"\|a\|^{2}", positive=True)
    m_par = _vector_function("N", z, cols)  # the prompted MLP input N₂(z_i)
    a_par = _vector_function("N", z, cols)  # the query-alone MLP input N₂(z_i)
    squares = {a_par: s}

    def mlp(first: sympy.MatrixExpr, m: sympy.MatrixExpr) -> sympy.MatrixExpr:
        return _vector_function("MLP", first * m, cols)

    delta = sympy.MatAdd(m_par, -a_par, evaluate=False)
    dW = W * (m_par - a_par) * a_par.T / s
    steer = sympy.MatAdd(z + A_i, -(z + A_x), evaluate=False)
    h_i, h_x = z + A_i, z + A_x
    m_seq, a_seq = _vector_function("N", h_i, cols), _vector_function("N", h_x, cols)
    dW_seq = W * (m_seq - a_seq) * a_seq.T / s
    steps = [
        _step(
            "parallel-delta",
            "The MLP reads N(z_i) in the prompted layer and in the layer run on the query "
            "alone with its prompted input: δ = m_i − a = N(z_i) − N(z_i) = 0.",
            delta,
            sympy.ZeroMatrix(cols, 1),
            GENERAL,
        ),
        _step(
            "parallel-patch",
            "So the update of the first layer vanishes: ΔW_s = W_s δ aᵀ/‖a‖² = 0, for any "
            "first layer W_s (a stacked [W_gate; W_up] included).",
            dW,
            sympy.ZeroMatrix(rows, cols),
            GENERAL,
            squares,
        ),
        _step(
            "parallel-steering",
            "The steering vector Δb′ = h_i − h_x, with h = z + Attn, is the attention "
            "difference alone: Δb′ = A_i − A_x.",
            steer,
            A_i - A_x,
            GENERAL,
        ),
        _step(
            "parallel-output",
            "The layer on the query alone, with the zero patch and Δb′ added after the MLP, "
            "returns the prompted out_i = z_i + A_i + MLP(W_s m_i).",
            h_x + mlp(W + dW, a_par) + steer,
            h_i + mlp(W, m_par),
            GENERAL,
            squares,
        ),
        _step(
            "parallel-sequential",
            "Contrast: in a sequential layer m_i = N(h_i) and a = N(h_x) differ, and the "
            "rank-one patch is needed: (W_s + W_s (m_i − a) aᵀ/‖a‖²) a = W_s m_i.",
            (W + dW_seq) * a_seq,
            W * m_seq,
            GENERAL,
            {a_seq: s},
        ),
    ]
    method = _entries_method(H, D)
    Wg, Wu, Wd = _matrix("g", H, D), _matrix("u", H, D), _matrix("d", D, H)
    z_e, gamma = _vector("z", D), _vector(r"\gamma", D)
    A_i_e, A_x_e = _vector("A", D), _vector("A^{x}", D)
    eps = sympy.Symbol(r"\epsilon", positive=True)
    phi = sympy.Function(r"\varphi")
    stacked = Wg.col_join(Wu)
    m_e = _rms_norm(z_e, gamma, eps)  # prompted MLP input
    a_e = _rms_norm(z_e, gamma, eps)  # query-alone MLP input
    dWs = stacked * (m_e - a_e) * a_e.T / _squared_norm(a_e)

    def gated(first: sympy.Matrix, m: sympy.Matrix) -> sympy.Matrix:
        p = first * m
        return Wd * p[:H, :].applyfunc(phi).multiply_elementwise(p[H:, :])

    steer_e = (z_e + A_i_e) - (z_e + A_x_e)
    steps += [
        _step(
            "parallel-delta.entries",
            "Entry by entry, with N = RMSNorm(γ, ε): δ = N(z_i) − N(z_i) = 0.",
            m_e - a_e,
            sympy.zeros(D, 1),
            method,
        ),
        _step(
            "parallel-patch.entries",
            "The stacked update of the gated MLP, [W_gate; W_up] δ aᵀ/‖a‖², is the zero "
            "2H x D matrix.",
            dWs,
            sympy.zeros(2 * H, D),
            method,
        ),
        _step(
            "parallel-output.entries",
            "z_i + A_x + W_down(φ(W_gate a) ⊙ W_up a) + Δb′ with Δb′ = A_i − A_x equals "
            "the prompted z_i + A_i + W_down(φ(W_gate m_i) ⊙ W_up m_i).",
            z_e + A_x_e + gated(stacked + dWs, a_e) + steer_e,
            z_e + A_i_e + gated(stacked, m_e),
            method,
        ),
    ]
    return steps


# ---------------------------------------------------------------------------
# The steering vector without an MLP output bias: W_down or the post-MLP norm scale
# ---------------------------------------------------------------------------


def output_side_steps(H: int = 2, D: int = 2) -> list[ProofStep]:
    """Two weight patches that carry a steering vector ``d`` where the MLP has no output bias.

    The theorem's ``Δb′ = d`` is added after the MLP. A model without an MLP output bias
    (Llama, Gemma) can take it instead (Goldwaser et al. 2025, arXiv 2511.17864):

    * (a) as a rank-1 update of the MLP's last weight, ``ΔW_down = d uᵀ/‖u‖²``, with ``u`` the
      MLP's hidden activation at the query (the input of ``W_down``; with the first layer
      patched it is the prompted hidden activation): ``(W_down + ΔW_down) u = W_down u + d``.
      Needs ``u ≠ 0``.
    * (b) where a norm scales the MLP output (Gemma 2/3's post-feed-forward RMSNorm,
      ``out = s ⊙ n``, ``n = y/rms(y)`` the normalised MLP output, ``s`` the effective scale,
      ``1 + weight`` for Gemma), as a patch of that scale, ``Δs = d ⊘ n`` (entrywise
      division): ``(s + Δs) ⊙ n = s ⊙ n + d``. Needs every entry ``n_j ≠ 0``.

    (The hidden activation is written ``u`` because ``h_i``, ``h_x`` denote residual streams.)
    Both are exact at the query only (one token): at another input ``v`` the patched
    ``W_down`` adds ``d (uᵀv)/‖u‖²`` and the patched scale adds ``d ⊙ n′ ⊘ n``, not ``d``.

    General dimension: ``out-down`` and ``out-down-elsewhere`` (MatrixSymbols, ``uᵀu = ‖u‖²``);
    ``out-scale`` (``s ⊙ n = diag(n) s``, with ``diag(n)`` invertible exactly when every
    ``n_j ≠ 0``). Explicit entries (sizes ``H``, ``D``): ``out-hidden.entries`` (the gated
    hidden activation with the patched first layer is the prompted one),
    ``out-down.entries``, ``out-down-rank-one.entries``, ``out-down-layer.entries`` (the
    residual layer, with ``d = h_i − h_x``), ``out-scale.entries``, ``out-scale-rms.entries``
    (``n`` an explicit RMS normalisation of the MLP output ``y``), ``out-scale-layer.entries``
    and ``out-scale-elsewhere.entries``.

    Raises:
        ValueError: if a size is not an integer >= 1.
    """
    _check_size(H=H, D=D)
    rows, cols = sympy.symbols("H D", integer=True, positive=True)
    Wd = sympy.MatrixSymbol("W_down", cols, rows)
    u, v = sympy.MatrixSymbol("u", rows, 1), sympy.MatrixSymbol("v", rows, 1)
    d, s = sympy.MatrixSymbol("d", cols, 1), sympy.MatrixSymbol("s", cols, 1)
    diag_n = sympy.MatrixSymbol(r"\operatorname{diag}(n)", cols, cols)
    t = sympy.Symbol(r"\|u\|^{2}", positive=True)
    dWd = d * u.T / t
    steps = [
        _step(
            "out-down",
            "The rank-1 update ΔW_down = d uᵀ/‖u‖² adds d at the hidden activation u: "
            "(W_down + ΔW_down) u = W_down u + d.",
            (Wd + dWd) * u,
            Wd * u + d,
            GENERAL,
            {u: t},
        ),
        _step(
            "out-down-elsewhere",
            "At another hidden activation v it adds d (uᵀv)/‖u‖², not d: the patch is "
            "exact at the query only.",
            (Wd + dWd) * v,
            Wd * v + d * (u.T * v) / t,
            GENERAL,
            {u: t},
        ),
        _step(
            "out-scale",
            "With s ⊙ n = diag(n) s, the scale patch Δs = diag(n)⁻¹ d = d ⊘ n adds d: "
            "diag(n) (s + Δs) = diag(n) s + d.",
            diag_n * (s + diag_n.I * d),
            diag_n * s + d,
            GENERAL,
        ),
    ]
    method = _entries_method(H, D)
    Wg, Wu, Wd_e = _matrix("g", H, D), _matrix("w", H, D), _matrix(r"\omega", D, H)
    a_e, delta_e = _vector("a", D), _vector(r"\delta", D)
    phi = sympy.Function(r"\varphi")
    stacked = Wg.col_join(Wu)
    dWs = stacked * delta_e * a_e.T / _squared_norm(a_e)

    def hidden(first: sympy.Matrix, m: sympy.Matrix) -> sympy.Matrix:
        p = first * m
        return p[:H, :].applyfunc(phi).multiply_elementwise(p[H:, :])

    u_e, d_e = _vector("u", H), _vector("d", D)
    dWd_e = d_e * u_e.T / _squared_norm(u_e)
    minors = [
        dWd_e.extract([r1, r2], [c1, c2]).det()
        for r1, r2 in combinations(range(D), 2)
        for c1, c2 in combinations(range(H), 2)
    ]
    r_i, r_x = _vector("h", D), _vector("h^{x}", D)  # residual streams
    u_i = hidden(stacked, a_e + delta_e)  # the prompted hidden activation
    dWd_layer = (r_i - r_x) * u_i.T / _squared_norm(u_i)
    steps += [
        _step(
            "out-hidden.entries",
            "With the first layer patched, the gated hidden activation at a is the prompted "
            "one: φ(W_gate′ a) ⊙ W_up′ a = φ(W_gate m) ⊙ W_up m, m = a + δ.",
            hidden(stacked + dWs, a_e),
            u_i,
            method,
        ),
        _step(
            "out-down.entries",
            "Entry by entry: (W_down + d uᵀ/‖u‖²) u = W_down u + d.",
            (Wd_e + dWd_e) * u_e,
            Wd_e * u_e + d_e,
            method,
        ),
        _step(
            "out-down-rank-one.entries",
            "Every 2 x 2 minor of d uᵀ/‖u‖² vanishes: ΔW_down has rank at most 1.",
            sympy.Matrix(minors) if minors else sympy.zeros(1, 1),
            sympy.zeros(max(len(minors), 1), 1),
            method,
        ),
        _step(
            "out-down-layer.entries",
            "With d = h_i − h_x and u the prompted hidden activation, the layer on the "
            "query alone, h_x + (W_down + d uᵀ/‖u‖²) u, returns h_i + W_down u.",
            r_x + (Wd_e + dWd_layer) * u_i,
            r_i + Wd_e * u_i,
            method,
        ),
    ]
    n_e, n2_e, s_e = _vector("n", D), _vector("n'", D), _vector("s", D)
    y_e = _vector("y", D)
    eps = sympy.Symbol(r"\epsilon", positive=True)
    ones = sympy.ones(D, 1)
    ny = _rms_norm(y_e, ones, eps)  # y / rms(y)

    def divide(x: sympy.Matrix, y: sympy.Matrix) -> sympy.Matrix:
        return sympy.Matrix(x.rows, 1, lambda k, _: x[k] / y[k])

    steps += [
        _step(
            "out-scale.entries",
            "Entry by entry: (s + d ⊘ n) ⊙ n = s ⊙ n + d, where every n_j ≠ 0.",
            (s_e + divide(d_e, n_e)).multiply_elementwise(n_e),
            s_e.multiply_elementwise(n_e) + d_e,
            method,
        ),
        _step(
            "out-scale-rms.entries",
            "The same with n = y/sqrt(ε + ‖y‖²/D) the RMS-normalised MLP output y.",
            (s_e + divide(d_e, ny)).multiply_elementwise(ny),
            s_e.multiply_elementwise(ny) + d_e,
            method,
        ),
        _step(
            "out-scale-layer.entries",
            "With d = h_i − h_x, the layer on the query alone with the patched scale, "
            "h_x + (s + Δs) ⊙ n, returns the prompted h_i + s ⊙ n.",
            r_x + (s_e + divide(r_i - r_x, ny)).multiply_elementwise(ny),
            r_i + s_e.multiply_elementwise(ny),
            method,
        ),
        _step(
            "out-scale-elsewhere.entries",
            "At another normalised output n′ the patched scale adds d ⊙ n′ ⊘ n, not d.",
            (s_e + divide(d_e, n_e)).multiply_elementwise(n2_e),
            s_e.multiply_elementwise(n2_e) + divide(d_e.multiply_elementwise(n2_e), n_e),
            method,
        ),
    ]
    return steps


# ---------------------------------------------------------------------------
# Collection and display
# ---------------------------------------------------------------------------


def all_steps() -> list[ProofStep]:
    """Every step: :func:`theorem_general`, :func:`theorem_entries`, :func:`converse_steps`,
    :func:`dynamics_steps`, :func:`alignment_steps`, :func:`gated_steps`, :func:`parallel_steps`
    and :func:`output_side_steps` at their default sizes. Step names are unique."""
    return (
        theorem_general()
        + theorem_entries()
        + converse_steps()
        + dynamics_steps()
        + alignment_steps()
        + gated_steps()
        + parallel_steps()
        + output_side_steps()
    )


def is_rearrangement(step: ProofStep) -> bool:
    """True for a general-dimension step that sympy verifies without the rule ``vᵀv = ‖v‖²``.

    Such a step is a rearrangement: expanding and regrouping sums and products of matrices of
    any size turns one side into the other (an unevaluated derivative is carried out first, as
    in every check). A step that needs the rule (``False``) uses the cancellation
    ``aᵀa / ‖a‖² = 1``. Steps of other methods raise ``ValueError``.
    """
    if step.method != GENERAL:
        raise ValueError(f"{step.name} is checked with {step.method}, not in general dimension")
    return _verify(step.lhs, step.rhs, {})


def report(steps: Iterable[ProofStep]) -> str:
    """A compact text table with one row per step: name, method, verified."""
    rows: Sequence[ProofStep] = list(steps)
    header = ("step", "method", "verified")
    body = [(s.name, s.method, "yes" if s.verified else "NO") for s in rows]
    widths = [max(len(row[k]) for row in [header, *body]) for k in range(3)]
    line = "  ".join("-" * w for w in widths)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*header), line, *(fmt.format(*row) for row in body)]
    out.append(f"{sum(s.verified for s in rows)}/{len(rows)} steps verified by sympy")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# Exact arithmetic on numbers: the worked example (chapter 2)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExactPatch:
    """The theorem's quantities for given numbers, in exact rational arithmetic.

    Shapes (sympy matrices): ``W`` (H x D), ``a``, ``full``, ``delta`` (D x 1), ``W_delta``,
    ``patched_preactivation``, ``prompted_preactivation`` (H x 1), ``delta_W`` (H x D);
    ``norm_sq`` is a positive sympy ``Rational``.

    Attributes:
        W: the first MLP weight.
        a: the layer's output at the query without the absorbed tokens, ``A(C∖Y, x)``
            (``A(x)`` when the whole context is absorbed).
        full: the layer's output at the query with the whole context, ``A(C, x)``.
        delta: ``δ = full − a``.
        W_delta: ``W δ``, the change of the pre-activation (also the bias patch ``Δb``).
        norm_sq: ``‖a‖² = aᵀa``.
        delta_W: ``ΔW = (W δ) aᵀ / ‖a‖²``.
        patched_preactivation: ``(W + ΔW) a`` (without the bias ``b``).
        prompted_preactivation: ``W full`` (without ``b``); equal to the previous one.
    """

    W: sympy.Matrix
    a: sympy.Matrix
    full: sympy.Matrix
    delta: sympy.Matrix
    W_delta: sympy.Matrix
    norm_sq: sympy.Rational
    delta_W: sympy.Matrix
    patched_preactivation: sympy.Matrix
    prompted_preactivation: sympy.Matrix


def _exact_matrix(name: str, value, column: bool) -> sympy.Matrix:
    """``value`` as a sympy Matrix of Rationals (a column if ``column``); floats are refused."""
    matrix = sympy.Matrix(value)
    if column and matrix.shape[1] != 1:
        if matrix.shape[0] == 1:
            matrix = matrix.T
        else:
            raise ValueError(f"{name} must be a vector, got a matrix of shape {matrix.shape}")
    if 0 in matrix.shape:
        raise ValueError(f"{name} is empty")
    for index, entry in enumerate(matrix):
        if not (entry.is_Rational or entry.is_Integer):
            row, col = divmod(index, matrix.shape[1])
            raise TypeError(
                f"{name}[{row}, {col}] = {entry!r} is not an integer or a fraction: exact arithmetic "
                "needs ints, fractions.Fraction or sympy.Rational (write sympy.Rational(1, 2), not 0.5)")
    return matrix


def exact_patch(W, a, full) -> ExactPatch:
    """Compute the theorem's patch ``ΔW = (W δ) aᵀ / ‖a‖²`` exactly, for given numbers.

    The worked example at the start of chapter 2 runs the theorem on a block small enough to
    follow with pencil and paper; this function does the same arithmetic in sympy Rationals, so
    every quantity is an exact fraction and ``(W + ΔW) a = W (a + δ)`` holds with no round-off.

    Args:
        W: the first MLP weight, ``H x D``: a sympy Matrix or nested lists of ints, fractions or
            sympy Rationals.
        a: ``A(C∖Y, x)``, a length-``D`` vector (list, row or column), not zero.
        full: ``A(C, x)``, a length-``D`` vector.

    Returns:
        An :class:`ExactPatch` holding every intermediate quantity.

    Raises:
        TypeError: if an entry is not an integer or a fraction (a float would not be exact).
        ValueError: if the shapes do not fit (``W`` must be ``H x D`` for vectors of length
            ``D``) or if ``a`` is zero (the patch divides by ``‖a‖²``).
    """
    W = _exact_matrix("W", W, column=False)
    a = _exact_matrix("a", a, column=True)
    full = _exact_matrix("full", full, column=True)
    if a.shape != full.shape:
        raise ValueError(f"a and full must have the same length, got {a.shape[0]} and {full.shape[0]}")
    if W.shape[1] != a.shape[0]:
        raise ValueError(f"W is {W.shape[0]} x {W.shape[1]} (H x D) but the vectors have length "
                         f"D = {a.shape[0]}")
    norm_sq = (a.T * a)[0, 0]
    if norm_sq == 0:
        raise ValueError("a = A(C∖Y, x) is zero: ΔW = W δ aᵀ/‖a‖² is undefined")
    delta = full - a
    W_delta = W * delta
    delta_W = W_delta * a.T / norm_sq
    return ExactPatch(
        W=W, a=a, full=full, delta=delta, W_delta=W_delta, norm_sq=sympy.Rational(norm_sq),
        delta_W=delta_W, patched_preactivation=(W + delta_W) * a, prompted_preactivation=W * full,
    )
