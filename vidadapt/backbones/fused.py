"""QuickGELU (OpenAI CLIP's MLP activation) as one fused elementwise kernel on CUDA.

``x * sigmoid(1.702 * x)`` written with torch operations is three kernels forward and four
backward, each a pass over the MLP's hidden activations (the widest tensor of a ViT block,
``[tokens, 4D]``), and autograd keeps both ``x`` and the sigmoid for backward. A GPU profile
put those passes at a tenth of a ViT-B training step. :func:`quick_gelu` keeps only ``x`` and
recomputes the sigmoid in backward; on CUDA each direction is one kernel generated at first use
by PyTorch's jiterator (NVRTC), computing in fp32 whatever the input dtype. Elsewhere, and under
``torch.compile`` (which fuses the plain expression itself), :func:`quick_gelu` runs the plain
expression: on a CPU, recomputing the sigmoid in torch operations made the activation's forward
and backward 1.9x slower, more than the memory it saves is worth there.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

SCALE = 1.702  # QuickGELU's sigmoid scale

# jiterator kernels: float math whatever T is (bf16 and fp16 are widened once, rounded once).
_FORWARD = """template <typename T> T quick_gelu_forward(T x) {
    float v = static_cast<float>(x);
    return static_cast<T>(v / (1.0f + expf(-1.702f * v)));
}
"""
_BACKWARD = """template <typename T> T quick_gelu_backward(T grad, T x) {
    float v = static_cast<float>(x);
    float s = 1.0f / (1.0f + expf(-1.702f * v));
    return static_cast<T>(static_cast<float>(grad) * s * (1.0f + 1.702f * v * (1.0f - s)));
}
"""
_kernels: dict[tuple[str, torch.dtype], Callable[..., Tensor] | None] = {}  # None: unavailable


def _fused_kernel(code: str, *inputs: Tensor) -> Callable[..., Tensor] | None:
    """The jiterator kernel of ``code`` for ``inputs``' dtype, or None to use torch operations
    (not CUDA, inside ``torch.compile``, or a build where the kernel cannot be made)."""
    x = inputs[0]
    if not x.is_cuda or any(t.dtype != x.dtype for t in inputs) or torch.compiler.is_compiling():
        return None
    key = (code, x.dtype)
    if key not in _kernels:
        try:
            kernel = torch.cuda.jiterator._create_jit_fn(code)
            kernel(*(torch.ones(8, device=x.device, dtype=x.dtype) for _ in inputs))  # builds
            _kernels[key] = kernel
        except Exception as err:  # e.g. no NVRTC: the torch operations compute the same
            warnings.warn(f"fused QuickGELU unavailable ({err}); using torch operations",
                          stacklevel=2)
            _kernels[key] = None
    return _kernels[key]


def quick_gelu_reference(x: Tensor) -> Tensor:
    """The activation as torch operations (what CLIP's code computes)."""
    return x * torch.sigmoid(SCALE * x)


def quick_gelu_grad(grad: Tensor, x: Tensor) -> Tensor:
    """d quick_gelu / dx times ``grad``: s + 1.702 x s (1 - s) = s (1 + 1.702 x (1 - s))."""
    kernel = _fused_kernel(_BACKWARD, grad, x)
    if kernel is not None:
        return kernel(grad, x)
    s = torch.sigmoid(SCALE * x)
    return grad * s * (1 + SCALE * x * (1 - s))


class QuickGELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        kernel = _fused_kernel(_FORWARD, x)
        return kernel(x) if kernel is not None else quick_gelu_reference(x)

    @staticmethod
    @torch.autograd.function.once_differentiable  # the fused backward has no backward itself
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return quick_gelu_grad(grad, x)


def quick_gelu(x: Tensor) -> Tensor:
    """``x * sigmoid(1.702 x)``: the fused kernels where they exist (see the module docstring),
    else the plain expression."""
    if _fused_kernel(_FORWARD, x) is None:
        return quick_gelu_reference(x)
    return QuickGELU.apply(x)
