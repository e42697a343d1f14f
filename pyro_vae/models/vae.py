r"""The variational autoencoder as a Pyro model/guide pair.

The **model** (decoder) is the generative program

.. math:: z_n \sim p(z), \qquad x_n \mid z_n \sim p_\theta(x \mid z_n), \qquad n = 1..N,

and the **guide** (encoder) is the amortised variational posterior
:math:`q_\phi(z_n \mid x_n) = \mathcal N(\mu_\phi(x_n), \operatorname{diag}\sigma_\phi(x_n)^2)`.
Neither computes a loss: the ELBO estimators in :mod:`pyro_vae.infer.objectives` do.

Reference:
    Auto-Encoding Variational Bayes (Kingma & Welling, 2014).

Example:
    >>> import torch
    >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [32]})
    >>> vae.encode(torch.rand(5, 8, 8)).batch_shape, vae.prior().event_shape
    (torch.Size([5]), torch.Size([2]))
"""

from __future__ import annotations

import contextlib
import itertools
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor, nn

from pyro_vae.models.fused import Draw, gaussian
from pyro_vae.models.likelihoods import LIKELIHOODS, Likelihood
from pyro_vae.models.networks import NETWORKS
from pyro_vae.models.priors import PRIORS, Prior

__all__ = ["VAE", "make_vae", "kl_weight"]

_instances = itertools.count()


def kl_weight(beta: float) -> AbstractContextManager[Any]:
    r"""Weight the latent sites by ``beta`` in both model and guide, so the ELBO's KL term is scaled.

    .. math:: \mathcal L_\beta = \mathbb E_q[\log p(x\mid z)] - \beta\,\mathrm{KL}(q(z\mid x)\,\|\,p(z))

    Pyro's ``scale`` refuses 0, while ``mask(False)`` drops the site's log-densities exactly,
    which is what beta = 0 (an autoencoder with a noisy code and no KL) means.

    Reference:
        beta-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework
        (Higgins et al., 2017).
    """
    if beta == 1.0:
        return contextlib.nullcontext()
    if beta == 0.0:
        return poutine.mask(mask=False)
    return poutine.scale(scale=beta)


class VAE(nn.Module):
    r"""A VAE made of an encoder, a decoder, a prior and a likelihood.

    The model (:meth:`model`) and the guide (:meth:`guide`) are the Pyro program

    .. math:: p_\theta(x, z) = p(z)\,p_\theta(x \mid z), \qquad
        q_\phi(z \mid x) = \mathcal N\big(\mu_\phi(x), \operatorname{diag}\sigma_\phi(x)^2\big),

    with sample sites ``"z"`` and ``"x"``; :func:`make_vae` builds one from registry tables.

    Args:
        encoder: module mapping ``x`` to the guide's ``(loc, scale)``.
        decoder: module mapping ``z`` to the likelihood's input, shape ``(..., *event_shape)``.
        prior: module whose ``forward()`` returns :math:`p(z)`.
        likelihood: module mapping decoder output to :math:`p(x \mid z)`.

    Reference:
        Auto-Encoding Variational Bayes (Kingma & Welling, 2014).

    Example:
        >>> from pyro_vae.models.likelihoods import Bernoulli
        >>> from pyro_vae.models.networks import mlp
        >>> from pyro_vae.models.priors import StandardNormal
        >>> encoder, decoder = mlp((8, 8), latent_dim=2, hidden=[16])
        >>> vae = VAE(encoder, decoder, StandardNormal(2), Bernoulli((8, 8)))
        >>> vae.latent_dim, vae.event_shape, vae.sample(3).shape
        (2, (8, 8), torch.Size([3, 8, 8]))
    """

    #: The names of its latent and observed sites.
    latent_site: ClassVar[str] = "z"
    observed_site: ClassVar[str] = "x"

    def __init__(self, encoder: nn.Module, decoder: nn.Module, prior: Prior, likelihood: Likelihood) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood
        # One param-store namespace per instance, so two VAEs in a process never share parameters.
        self._pyro_name = f"vae{next(_instances)}"

    @property
    def latent_dim(self) -> int:
        return self.prior.latent_dim

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.likelihood.event_shape

    def encode(self, x: Tensor) -> dist.TorchDistribution:
        r"""The guide's distribution :math:`q(z \mid x)`, a diagonal Normal with event shape ``(latent_dim,)``."""
        return self.posterior(*self.encoder(x))

    @staticmethod
    def posterior(loc: Tensor, scale: Tensor) -> dist.TorchDistribution:
        """The guide's diagonal Normal with the encoder's ``loc`` and ``scale``."""
        # unvalidated: checking every call costs two device synchronisations per step
        return gaussian(loc, scale)

    def decode(self, z: Tensor) -> dist.TorchDistribution:
        r"""The likelihood :math:`p(x \mid z)`, with its event over all data dimensions."""
        return self.likelihood(self.decoder(z))

    def _plate(self, x: Tensor, num_data: int | None) -> pyro.plate:
        batch = x.shape[0]
        if num_data is None or num_data == batch:
            return pyro.plate("data", batch, dim=-1)
        # Minibatch: the plate scales every log-density by num_data / batch, giving an unbiased
        # estimate of the full-data ELBO. Passing the subsample avoids a randperm(num_data) per step.
        return pyro.plate("data", num_data, subsample=torch.arange(batch, device=x.device), dim=-1)

    def model(self, x: Tensor, num_data: int | None = None, beta: float = 1.0) -> Tensor:
        r"""The generative model :math:`p(z)\,p(x \mid z)` with sample sites ``"z"`` and ``"x"``.

        Args:
            x: a batch of data, shape ``(batch, *event_shape)``; observed at site ``"x"``.
            num_data: size of the full data set when ``x`` is a minibatch (default ``len(x)``).
            beta: weight of the latent site, hence of the KL term (see :func:`kl_weight`).
        """
        pyro.module(self._pyro_name, self)
        with self._plate(x, num_data):
            with kl_weight(beta):
                z = pyro.sample(self.latent_site, self.prior())
            pyro.sample(self.observed_site, self.decode(z), obs=x)
        return z

    def guide(self, x: Tensor, num_data: int | None = None, beta: float = 1.0) -> Tensor:
        r"""The variational posterior :math:`q(z \mid x)` with sample site ``"z"``; same arguments as :meth:`model`."""
        pyro.module(self._pyro_name, self)
        with self._plate(x, num_data):
            with kl_weight(beta):
                return pyro.sample(self.latent_site, self.encode(x))

    #: For each latent site of the fused form (:mod:`pyro_vae.models.fused`), whether its closed-form KL is exact;
    #: ``z``'s is.
    fused_exact: ClassVar[tuple[bool, ...]] = (True,)

    def fused_guide(self, x: Tensor, num_particles: int) -> list[Draw]:
        """The guide's draw of ``z`` as plain tensor code (:mod:`pyro_vae.models.fused`)."""
        loc, scale = self.encoder(x)
        z = gaussian(loc, scale).rsample((num_particles,) if num_particles > 1 else ())
        return [Draw(loc, scale, z)]

    def fused_model(self, zs: list[Tensor]) -> tuple[list[dist.TorchDistribution], Tensor]:
        """The prior of ``z`` and the likelihood's input at ``zs = [z]`` (:mod:`pyro_vae.models.fused`)."""
        return [self.prior()], self.decoder(zs[0])

    def fused_held_guide(self, x: Tensor, draws: list[Draw], zs: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """The guide's parameters held fixed: q(z|x) depends on x alone, so they are the draw's, detached."""
        return [(draw.loc.detach(), draw.scale.detach()) for draw in draws]

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean of :math:`p(x \\mid z)` at the posterior mean :math:`z = \\mu(x)`."""
        return self.decode(self.encode(x).mean).mean

    @torch.no_grad()
    def sample(self, num_samples: int) -> Tensor:
        """Means of :math:`p(x \\mid z)` for ``num_samples`` codes drawn from the prior."""
        z = self.prior().sample((num_samples,))
        return self.decode(z).mean


def make_vae(
    event_shape: tuple[int, ...],
    latent_dim: int = 10,
    network: dict[str, Any] | None = None,
    prior: dict[str, Any] | None = None,
    likelihood: dict[str, Any] | None = None,
) -> VAE:
    r"""The VAE program: a diagonal-Normal guide q(z | x) and the model p(z) p(x | z), from registry tables.

    Each table is ``{"type": name, **parameters}``, checked against the registered constructor's
    signature (a :class:`~pyro_vae.ConfigError` names the key), the same tables as a configuration's ``[model]``.

    .. math:: z \sim p(z), \qquad x \mid z \sim p_\theta(x \mid z), \qquad
        q_\phi(z \mid x) = \mathcal N\big(\mu_\phi(x), \operatorname{diag}\sigma_\phi(x)^2\big)

    Args:
        event_shape: shape of one data point, e.g. ``(28, 28)``.
        latent_dim: size of the latent code.
        network: encoder/decoder pair from :data:`~pyro_vae.models.networks.NETWORKS` (default ``mlp``).
        prior: from :data:`~pyro_vae.models.priors.PRIORS` (default ``standard_normal``).
        likelihood: from :data:`~pyro_vae.models.likelihoods.LIKELIHOODS` (default ``bernoulli``).

    Returns:
        The untrained :class:`VAE`.

    Reference:
        Auto-Encoding Variational Bayes (Kingma & Welling, 2014).

    Example:
        >>> import torch
        >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [16]}, prior={"type": "laplace"})
        >>> vae.encode(torch.rand(5, 8, 8)).batch_shape, vae.prior().event_shape
        (torch.Size([5]), torch.Size([2]))
        >>> vae.reconstruct(torch.rand(5, 8, 8)).shape
        torch.Size([5, 8, 8])
    """
    event_shape = tuple(event_shape)
    encoder, decoder = NETWORKS.build(
        network or {"type": "mlp"}, "model.network", event_shape=event_shape, latent_dim=latent_dim
    )
    return VAE(
        encoder,
        decoder,
        PRIORS.build(
            prior or {"type": "standard_normal"},
            "model.prior",
            latent_dim=latent_dim,
            encoder=encoder,
            event_shape=event_shape,
        ),
        LIKELIHOODS.build(likelihood or {"type": "bernoulli"}, "model.likelihood", event_shape=event_shape),
    )
