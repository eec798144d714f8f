"""`DepthwiseConv`: one small kernel per channel on an image-shaped latent (a style operator).

The operator acts on flat latents `[B, C*H*W]`, reshaped to `[B, C, H, W]` (row-major, as
`torch.flatten` does). Zero padding keeps the spatial size ('same'); for an even kernel size k
it pads `(k-1)//2` before and `k//2` after, as TensorFlow's 'same' does. The transpose is the
exact adjoint: a transposed convolution of the same kernel, cropped by the same padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .algebra import as_scalar, check_same_shape, is_fixed
from .base import LinearOperator, check_batch, is_scalar


class DepthwiseConv(LinearOperator):
    """A depthwise `k x k` convolution with zero 'same' padding, initialised to the identity.

    Args:
        shape: the latent image shape `(C, H, W)`.
        kernel_size: k (C * k * k numbers in all).
        trainable: hold the kernel as a parameter (True) or a buffer (False).

    Example:
        >>> A = DepthwiseConv((3, 32, 32), kernel_size=4)
        >>> z = torch.randn(2, 3 * 32 * 32)
        >>> torch.equal(A.apply(z), z)            # delta kernels at initialisation
        True
        >>> mix = 0.7 * A1 + 0.3 * A2             # fixed kernels: a DepthwiseConv again
    """

    def __init__(self, shape: tuple[int, int, int], kernel_size: int = 4, trainable: bool = True):
        super().__init__()
        if not (isinstance(shape, (tuple, list)) and len(shape) == 3
                and all(isinstance(s, int) and s > 0 for s in shape)):
            raise ValueError(f"DepthwiseConv expects an image shape (C, H, W) of positive ints, got {shape!r}")
        if not (isinstance(kernel_size, int) and kernel_size > 0):
            raise ValueError(f"DepthwiseConv expects a positive int kernel_size, got {kernel_size!r}")
        self.image_shape = tuple(shape)
        self.kernel_size = kernel_size
        C, k = shape[0], kernel_size
        before = (k - 1) // 2
        self.padding = (before, k - 1 - before)
        kernel = torch.zeros(C, 1, k, k)
        kernel[:, 0, before, before] = 1.0  # output pixel (i, j) reads input (i, j): the identity
        if trainable:
            self.kernel = nn.Parameter(kernel)
        else:
            self.register_buffer("kernel", kernel)

    @classmethod
    def from_kernel(cls, shape: tuple[int, int, int], kernel: Tensor, trainable: bool = False) -> "DepthwiseConv":
        """A DepthwiseConv with the given kernel `[C, 1, k, k]` (kept as given: gradients flow to it)."""
        C = shape[0] if isinstance(shape, (tuple, list)) and shape else None
        if not isinstance(kernel, Tensor) or kernel.dim() != 4 or kernel.shape[0] != C or kernel.shape[1] != 1 \
                or kernel.shape[2] != kernel.shape[3]:
            raise ValueError(f"expected a kernel of shape [C={C}, 1, k, k], got "
                             f"{tuple(kernel.shape) if isinstance(kernel, Tensor) else type(kernel).__name__}")
        op = cls(shape, kernel.shape[-1], trainable=trainable)
        op.kernel = nn.Parameter(kernel) if trainable else kernel
        return op

    @property
    def shape(self) -> tuple[int, int]:
        n = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        return (n, n)

    def _conv(self, x: Tensor, transpose: bool) -> Tensor:
        C, H, W = self.image_shape
        before, after = self.padding
        image = x.reshape(-1, C, H, W)
        if transpose:
            # adjoint of (pad, then correlate): transposed convolution, then crop the padding away
            full = F.conv_transpose2d(image, self.kernel, groups=C)
            out = full[:, :, before:before + H, before:before + W]
        else:
            out = F.conv2d(F.pad(image, (before, after, before, after)), self.kernel, groups=C)
        return out.reshape(x.shape[0], -1)

    def apply(self, z: Tensor) -> Tensor:
        check_batch(z, self.shape[1], self, dtype=self.kernel.dtype)
        return self._conv(z, transpose=False)

    def apply_transpose(self, y: Tensor) -> Tensor:
        check_batch(y, self.shape[0], self, "transpose input", self.kernel.dtype)
        return self._conv(y, transpose=True)

    # Fixed kernels (see algebra.py): sums and multiples are convolutions with the summed or
    # scaled kernel. Products stay lazy: with zero padding, the composition of two 'same'
    # convolutions is not a 'same' convolution with the composed kernel near the border.

    def _same_layout(self, other: LinearOperator) -> bool:
        return (isinstance(other, DepthwiseConv) and other.image_shape == self.image_shape
                and other.kernel_size == self.kernel_size)

    def __add__(self, other: LinearOperator) -> LinearOperator:
        if isinstance(other, LinearOperator):
            check_same_shape(self, other)
        if self._same_layout(other) and is_fixed(self, other):
            return DepthwiseConv.from_kernel(self.image_shape, self.kernel + other.kernel)
        return super().__add__(other)

    def __mul__(self, scalar: float | Tensor) -> LinearOperator:
        if not is_scalar(scalar) or not is_fixed(self):
            return super().__mul__(scalar)
        return DepthwiseConv.from_kernel(self.image_shape, as_scalar(scalar, self.kernel) * self.kernel)

    def extra_repr(self) -> str:
        m, n = self.shape
        return f"shape=({m}, {n}), image={self.image_shape}, kernel_size={self.kernel_size}"
