r"""Priors :math:`p(z)` over the latent code.

A prior is a small :class:`torch.nn.Module` whose ``forward()`` returns a distribution with
``event_shape == (latent_dim,)``. Register a new one with ``@PRIORS.register("name")``; its
constructor receives ``latent_dim`` and the parameters named in the config.

Example:
    >>> prior = PRIORS.build({"type": "standard_normal"}, latent_dim=2)
    >>> prior().event_shape
    torch.Size([2])
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.registry import Registry

__all__ = ["PRIORS", "Prior", "StandardNormal"]

PRIORS: Registry = Registry("prior", context=("latent_dim",))


class Prior(nn.Module):
    """Base class: a module whose ``forward()`` returns :math:`p(z)` with event shape ``(latent_dim,)``."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


@PRIORS.register("standard_normal")
class StandardNormal(Prior):
    r""":math:`p(z) = \mathcal N(0, I)`, the prior of the original VAE.

    Reference:
        Auto-Encoding Variational Bayes (Kingma & Welling, 2014).
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        # Buffers, not constants: they follow the module to the GPU and into checkpoints.
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
