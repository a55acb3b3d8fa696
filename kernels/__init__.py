"""Triton kernels for fastmine, each beside its eager PyTorch reference (imported as
``fastmine_kernels``). They know nothing about GANs.

Every public function takes ``impl="auto" | "triton" | "torch"``; see :func:`resolve_impl`.
On machines without a GPU the kernels run in Triton's interpreter when TRITON_INTERPRET=1
is set before this package (or triton) is imported.
"""
from ._impl import IMPLS, resolve_impl
from .gradient_penalty import gradient_penalty_from_grad, gradient_penalty_from_grad_reference
from .interpolate import interpolate, interpolate_reference
from .supersample_select import SelectResult, supersample_select, supersample_select_reference

__all__ = [
    "IMPLS",
    "SelectResult",
    "gradient_penalty_from_grad",
    "gradient_penalty_from_grad_reference",
    "interpolate",
    "interpolate_reference",
    "resolve_impl",
    "supersample_select",
    "supersample_select_reference",
]
