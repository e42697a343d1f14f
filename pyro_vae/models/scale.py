"""A positive scale parameter, fixed exactly or learned through a softplus."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Scale"]


class Scale(nn.Module):
    r"""A positive scale :math:`\sigma` of a given shape; ``scale()`` returns it.

    Fixed, it is a buffer holding :math:`\sigma` itself, so that e.g. a unit scale is exactly 1.
    Learned, it is :math:`\operatorname{softplus}(r)` of a parameter :math:`r`, so that gradient
    steps keep it positive and it grows linearly, not exponentially, in :math:`r`.

    Example:
        >>> Scale(1.0, (3,))()
        tensor([1., 1., 1.])
        >>> len(list(Scale(0.5, (), learnable=True).parameters()))
        1
    """

    def __init__(self, init: float, shape: tuple[int, ...] = (), learnable: bool = False) -> None:
        super().__init__()
        value = torch.full(shape, float(init))
        self.learnable = learnable
        if learnable:
            self.raw = nn.Parameter(value.expm1().log())  # the inverse of softplus
        else:
            self.register_buffer("value", value)

    def forward(self) -> Tensor:
        return F.softplus(self.raw) if self.learnable else self.value
