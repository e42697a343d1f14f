r"""The class-conditional VAE (Sohn et al.'s CVAE, with the label as the condition): a VAE of :math:`p(x \mid y)`.

.. math:: p(x, z \mid y) = \mathcal N(z \mid 0, I)\,p(x \mid y, z), \qquad q(z \mid x, y),

with ``y`` given at every call (``model(x, y)``), as an input rather than a sample site: every tool then bounds
and estimates :math:`\log p(x \mid y)`, and :meth:`CVAE.sample` draws images of a chosen class.

Reference:
    Learning Structured Output Representation using Deep Conditional Generative Models (Sohn, Lee & Yan, 2015).

Example:
    >>> import torch
    >>> cvae = CVAE((8, 8), num_classes=10, latent_dim=4, hidden=(32,))
    >>> cvae.sample(torch.tensor([3, 3, 7])).shape
    torch.Size([3, 8, 8])
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.networks import Activation, MLPDecoder, MLPEncoder, Sizes

__all__ = ["CVAE", "one_hot_beside"]

_instances = itertools.count()


def one_hot_beside(h: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """``h`` and the one-hot code of ``y`` side by side in the last dimension, broadcast to each other's
    leading dimensions (an enumerated ``y`` of shape ``(C, 1)`` meets ``h`` of shape ``(B, d)``)."""
    code = nn.functional.one_hot(y, num_classes).to(h.dtype)
    shape = torch.broadcast_shapes(h.shape[:-1], code.shape[:-1])
    return torch.cat([h.expand(*shape, -1), code.expand(*shape, -1)], -1)


class CVAE(nn.Module):
    """An encoder :math:`q(z\\mid x, y)` and a decoder :math:`p(x\\mid y, z)`, MLPs on the one-hot label beside
    their input.

    Args:
        event_shape: the shape of one data point.
        num_classes: the number of values of ``y`` (the data's, by default).
        latent_dim: the size of ``z``.
        hidden: the encoder's hidden layers (the decoder mirrors them).
        activation: the nonlinearity between layers.
        likelihood: :math:`p(x\\mid y, z)`, a :data:`~pyro_vae.models.likelihoods.LIKELIHOODS` table.
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        num_classes: int = 10,
        latent_dim: int = 20,
        hidden: Sizes = (400,),
        activation: Activation = "relu",
        likelihood: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.event_shape, self.num_classes, self.latent_dim = tuple(event_shape), num_classes, latent_dim
        size = math.prod(self.event_shape)
        self.encoder = MLPEncoder((size + num_classes,), latent_dim, hidden, activation)
        self.decoder = MLPDecoder(self.event_shape, latent_dim + num_classes, list(reversed(hidden)), activation)
        self.likelihood = LIKELIHOODS.build(
            likelihood or {"type": "bernoulli"}, "model.likelihood", event_shape=self.event_shape
        )
        self._pyro_name = f"cvae{next(_instances)}"

    def model(self, x: Tensor, y: Tensor) -> None:
        """z from the prior, then x given y and z."""
        pyro.module(self._pyro_name, self)
        with pyro.plate("data", len(x), dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(one_hot_beside(z, y, self.num_classes))), obs=x)

    def guide(self, x: Tensor, y: Tensor) -> None:
        """z from x and y."""
        pyro.module(self._pyro_name, self)
        with pyro.plate("data", len(x), dim=-1):
            flat = x.flatten(-len(self.event_shape))
            loc, scale = self.encoder(one_hot_beside(flat, y, self.num_classes))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    @torch.no_grad()
    def sample(self, y: Tensor, z: Tensor | None = None) -> Tensor:
        """The mean of :math:`p(x\\mid y, z)` for each label of ``y``, at ``z`` (drawn from the prior if not given)."""
        if z is None:
            z = torch.randn(len(y), self.latent_dim, device=y.device)
        return self.likelihood(self.decoder(one_hot_beside(z, y, self.num_classes))).mean
