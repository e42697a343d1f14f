r"""Kingma et al.'s semi-supervised VAE (M2): a label y that is observed where it is known and summed out where not.

.. math:: p(x, y, z) = \mathrm{Cat}(y \mid \pi)\,\mathcal N(z \mid 0, I)\,p(x \mid y, z), \qquad
    q(y, z \mid x) = q(y \mid x)\,q(z \mid x, y).

On a labelled point the ELBO is that of :math:`p(x, y)`; on an unlabelled one the guide's ``y`` site is enumerated
(``infer={"enumerate": "parallel"}``), so that Pyro's ``TraceEnum_ELBO`` sums it out exactly,
:math:`\sum_y q(y \mid x)\,[\mathrm{ELBO}(x, y) - \log q(y \mid x)]`. The classifier :math:`q(y \mid x)` also
learns from the labels directly, through :meth:`SSVAE.auxiliary_loss`, :math:`-\alpha \log q(y \mid x)` a
labelled point, which the training objective adds (and no evaluation counts).

Reference:
    Semi-supervised Learning with Deep Generative Models (Kingma, Rezende, Mohamed & Welling, 2014).

Example:
    >>> import torch
    >>> m2 = SSVAE((8, 8), num_classes=10, latent_dim=4, hidden=(32,))
    >>> m2.classify(torch.rand(5, 8, 8)).shape
    torch.Size([5, 10])
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_vae.models.cvae import one_hot_beside
from pyro_vae.models.fused import enumerated_label, gaussian, label_elbo
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.networks import Activation, MLPDecoder, MLPEncoder, Sizes, _perceptron

__all__ = ["SSVAE"]

_instances = itertools.count()


class SSVAE(nn.Module):
    """M2: a classifier :math:`q(y\\mid x)`, an encoder :math:`q(z\\mid x, y)` and a decoder :math:`p(x\\mid y, z)`.

    Args:
        event_shape: the shape of one data point.
        num_classes: the number of values of ``y`` (the data's, by default).
        latent_dim: the size of ``z``.
        hidden: the hidden layers of each of the three networks (Kingma et al.: one of 500).
        activation: the nonlinearity between layers (Kingma et al.: softplus).
        alpha: the weight of :math:`-\\log q(y\\mid x)` per labelled point, beside its ELBO. Kingma et al.'s
            :math:`\\alpha = 0.1 N` multiplies the mean over the :math:`N_l` labelled points: per point
            :math:`0.1 N / N_l`: 50 for 100 labels of their 50,000 training images (60 of MNIST's 60,000). Under
            ``data.label_batches = "balanced"`` the labelled terms, this one with them, are weighted up by
            :func:`~pyro_vae.training.labels.labelled_weight`.
        likelihood: :math:`p(x\\mid y, z)`, a :data:`~pyro_vae.models.likelihoods.LIKELIHOODS` table.
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        num_classes: int = 10,
        latent_dim: int = 50,
        hidden: Sizes = (500,),
        activation: Activation = "softplus",
        alpha: float = 50.0,
        likelihood: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.event_shape, self.num_classes, self.latent_dim = tuple(event_shape), num_classes, latent_dim
        self.alpha = alpha
        size = math.prod(self.event_shape)
        self.classifier = _perceptron([size, *hidden, num_classes], activation)
        self.encoder = MLPEncoder((size + num_classes,), latent_dim, hidden, activation)
        self.decoder = MLPDecoder(self.event_shape, latent_dim + num_classes, list(reversed(hidden)), activation)
        self.likelihood = LIKELIHOODS.build(
            likelihood or {"type": "bernoulli"}, "model.likelihood", event_shape=self.event_shape
        )
        self._pyro_name = f"ssvae{next(_instances)}"

    def classify(self, x: Tensor) -> Tensor:
        """The logits of :math:`q(y\\mid x)`, shape ``(batch, num_classes)``."""
        return self.classifier(x.flatten(-len(self.event_shape)))

    def _joined(self, h: Tensor, y: Tensor) -> Tensor:
        return one_hot_beside(h, y, self.num_classes)

    def model(self, x: Tensor, y: Tensor | None = None) -> None:
        """y, then z, then x observed; y observed where given."""
        pyro.module(self._pyro_name, self)
        with pyro.plate("data", len(x), dim=-1):
            prior = dist.Categorical(logits=x.new_zeros(self.num_classes))
            y = pyro.sample("y", prior, obs=y)
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(self._joined(z, y))), obs=x)

    def guide(self, x: Tensor, y: Tensor | None = None) -> None:
        """y from the classifier where it is not given (enumerated), then z from x and y."""
        pyro.module(self._pyro_name, self)
        with pyro.plate("data", len(x), dim=-1):
            if y is None:
                q_y = dist.Categorical(logits=self.classify(x))
                y = pyro.sample("y", q_y, infer={"enumerate": "parallel"})
            loc, scale = self.encoder(self._joined(x.flatten(-len(self.event_shape)), y))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def fused_elbo(self, x: Tensor, y: Tensor | None = None, num_particles: int = 1, beta: float = 1.0) -> Tensor:
        r"""The ELBO of the batch, summed over its points and ``num_particles`` draws, as plain tensor code.

        With ``y`` given it is :math:`\log p(x, y, z) - \log q(z \mid x, y)`; where ``y`` is ``None`` every
        class is taken at once, as Pyro's enumeration takes them (the classes first, then the particles, then
        the points), and summed out: :math:`\sum_y q(y \mid x)\,[\log p(x, y, z_y) - \log q(z_y \mid x, y)
        - \log q(y \mid x)]`, the value and gradient of ``TraceEnum_ELBO`` on the same draws (the tests hold
        it there). ``beta`` weighs the latent terms, as :class:`~pyro_vae.infer.program.KLWeight` does.
        """
        particles = (num_particles,) if num_particles > 1 else ()
        log_q_y = None
        if y is None:
            log_q_y, y = enumerated_label(self.classify(x), num_particles)
        loc, scale = self.encoder(self._joined(x.flatten(-len(self.event_shape)), y))
        q_z = gaussian(loc, scale)
        q_z = q_z.expand(torch.broadcast_shapes(q_z.batch_shape, (*particles, len(x))))
        z = q_z.rsample()
        log_px = self.likelihood(self.decoder(self._joined(z, y))).log_prob(x)
        p_z = dist.Normal(torch.zeros_like(z), 1.0, validate_args=False).to_event(1)
        return label_elbo(log_px, p_z.log_prob(z) - q_z.log_prob(z), log_q_y, self.num_classes, beta)

    def auxiliary_loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """:math:`-\\alpha \\sum_n \\log q(y_n\\mid x_n)` over the labelled points of a batch (0 without labels)."""
        if y is None or not self.alpha:
            return x.new_zeros(())
        return -self.alpha * dist.Categorical(logits=self.classify(x)).log_prob(y).sum()
