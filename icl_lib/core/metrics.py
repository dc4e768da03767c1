"""Comparisons of tensors: the relative error of a batch, the alignment of two matrices.

The relative error measures how closely a patched block reproduces the prompted one, prompt by
prompt (chapters 2 and 3 of the book). The alignment, the cosine of the angle between two
matrices as vectors, compares an explicit fine-tuning update ``ΔW_ft`` with the implicit update
``ΔW`` of a prompt (chapter 6); for a rank-1 ``ΔW = u aᵀ/‖a‖²`` it factors into the cosine at
the vector ``a`` and the share of ``ΔW_ft`` along ``a`` (:func:`alignment_factors`). Means and
standard errors over tasks come from :func:`icl_lib.mean_sem`; power-law exponents from
:func:`icl_lib.power_law_fit`.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["relative_error", "frobenius_alignment", "alignment_factors"]


def relative_error(got: Tensor, want: Tensor) -> Tensor:
    """``‖got − want‖ / ‖want‖`` for each example of a batch.

    The norms are Euclidean over every axis after the first (the Frobenius norm for a batch of
    matrices), so each example is compared as a whole.

    Args:
        got: ``(B, ...)``, the computed values.
        want: ``(B, ...)``, the reference, with the same shape, dtype and device; no example of
            it may be exactly zero (its relative error would be undefined).

    Returns:
        ``(B,)``, non-negative.
    """
    if not isinstance(got, Tensor) or not isinstance(want, Tensor):
        raise TypeError(f"got and want must be torch.Tensors, got {type(got).__name__} and {type(want).__name__}")
    if got.shape != want.shape:
        raise ValueError(f"got and want must have the same shape, got {tuple(got.shape)} and {tuple(want.shape)}")
    if got.ndim < 1:
        raise ValueError("got and want need a batch axis (B, ...), got 0-d tensors")
    if got.dtype != want.dtype or got.device != want.device:
        raise TypeError(f"got is {got.dtype} on {got.device} but want is {want.dtype} on {want.device}")
    if not got.is_floating_point():
        raise TypeError(f"got and want must be floating point, got {got.dtype}")

    def per_example(t: Tensor) -> Tensor:  # (B, ...) -> (B, K)
        return t.flatten(1) if t.ndim > 1 else t[:, None]

    reference = per_example(want).norm(dim=1)
    zero = (reference == 0).nonzero().flatten().tolist()
    if zero:
        raise ValueError(f"want is exactly zero for batch element(s) {zero}: the relative error is undefined")
    return per_example(got - want).norm(dim=1) / reference


def frobenius_alignment(a: Tensor, b: Tensor) -> Tensor:
    """``⟨A, B⟩_F / (‖A‖_F ‖B‖_F)``, the cosine between two matrices, batched.

    Args:
        a, b: ``(..., m, n)`` with the same shape, dtype and device.

    Returns:
        ``(...)``, values in ``[−1, 1]``. A zero matrix has no direction: it raises ``ValueError``.
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"a and b must be torch.Tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.ndim < 2 or a.shape != b.shape:
        raise ValueError(f"a and b must share a shape (..., m, n); got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise TypeError(f"a is {a.dtype} on {a.device} but b is {b.dtype} on {b.device}")
    if not a.is_floating_point():
        raise TypeError(f"a and b must be floating point, got {a.dtype}")
    norm_a = a.flatten(-2).norm(dim=-1)
    norm_b = b.flatten(-2).norm(dim=-1)
    if (norm_a == 0).any() or (norm_b == 0).any():
        raise ValueError("a zero matrix has no direction: its alignment is undefined")
    return (a * b).sum(dim=(-2, -1)) / (norm_a * norm_b)


def alignment_factors(F: Tensor, u: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """The two factors of ``cos_F(F, ΔW)`` for a rank-1 ``ΔW = u aᵀ / ‖a‖²``, batched.

    ``cos_F(F, ΔW) = cos(F a, u) · ‖F â‖ / ‖F‖_F`` with ``â = a/‖a‖`` (checked symbolically by
    :func:`icl_lib.experiments.proofs.alignment_steps`): the cosine between what ``F`` and ``ΔW`` do to the
    vector ``a`` (``ΔW a = u``), times the share of ``F`` that acts along ``a`` (at most 1, and 1
    exactly when every row of ``F`` lies along ``a``).

    Args:
        F: ``(..., H, D)``, any matrices (for example fine-tuning updates).
        u: ``(..., H)``, the left factors of the rank-1 matrices.
        a: ``(..., D)``, their right factors, non-zero.

    Returns:
        ``(cosine, share)``, two ``(...)`` tensors: ``cos(F a, u)`` in ``[−1, 1]`` and
        ``‖F â‖ / ‖F‖_F`` in ``[0, 1]``. Their product equals
        ``frobenius_alignment(F, u aᵀ / ‖a‖²)``.

    Raises:
        ValueError: on mismatched shapes, or when ``F``, ``u``, ``a`` or ``F a`` is zero for some
            element (the cosine has no direction there).
    """
    for name, t in (("F", F), ("u", u), ("a", a)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
        if t.dtype != F.dtype or t.device != F.device:
            raise TypeError(f"F, u and a must share dtype and device; {name} is {t.dtype} on {t.device}")
    if F.ndim < 2 or u.shape != F.shape[:-1] or a.shape != F.shape[:-2] + F.shape[-1:]:
        raise ValueError(
            f"F (..., H, D), u (..., H) and a (..., D) do not fit: got {tuple(F.shape)}, {tuple(u.shape)}, {tuple(a.shape)}"
        )
    image = (F @ a[..., None])[..., 0]  # F a, (..., H)
    norms = {"F": F.flatten(-2).norm(dim=-1), "u": u.norm(dim=-1), "a": a.norm(dim=-1), "F a": image.norm(dim=-1)}
    for name, norm in norms.items():
        if (norm == 0).any():
            raise ValueError(f"{name} is zero for some element: the cosine at a is undefined")
    cosine = (image * u).sum(-1) / (norms["F a"] * norms["u"])
    share = norms["F a"] / (norms["a"] * norms["F"])
    return cosine, share
