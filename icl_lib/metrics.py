"""The alignment of two matrices: the cosine of the angle between them as vectors.

Used to compare an explicit fine-tuning step ``ΔW_ft`` with the implicit update ``ΔW`` of a
prompt (Dherin et al., 2025, Fig. 4). Means and standard errors over tasks come from
:func:`icl_lib.mean_sem`; power-law exponents from :func:`icl_lib.power_law_fit`.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["frobenius_alignment"]


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
