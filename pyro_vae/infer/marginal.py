r"""The marginal likelihood :math:`\log p(x)` by importance sampling, and the IWAE bound.

With the guide as proposal, :math:`z_k \sim q(z \mid x)`, the importance weights
:math:`w_k = p(x \mid z_k)\,p(z_k) / q(z_k \mid x)` give

.. math:: \log p(x) \approx \log \frac1K \sum_{k=1}^K w_k = \mathcal L_K(x),

the importance-weighted bound: :math:`\mathbb E[\mathcal L_K] \le \log p(x)`, non-decreasing in
:math:`K`, equal to the ELBO at :math:`K = 1` and to :math:`\log p(x)` as :math:`K \to \infty`
(or for every :math:`K` when :math:`q` is the exact posterior).

Reference:
    Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2016).

Example:
    >>> import torch
    >>> from pyro_vae import make_vae
    >>> vae = make_vae((4, 4), latent_dim=2, network={"type": "mlp", "hidden": [8]})
    >>> log_likelihood(vae, torch.rand(3, 4, 4), num_samples=100).shape
    torch.Size([3])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution

from pyro_vae.infer.objectives import elbo_terms
from pyro_vae.models.vae import VAE, is_standard_program

__all__ = ["log_weights", "log_likelihood", "iwae_bound"]

#: Decoder outputs held at once (4 MB in float32). Small enough that each pass over them stays in
#: the processor's cache, large enough (about 1,300 rows of 784 pixels) that the decoder's matrix
#: products run at full speed: ``make bench`` measures the throughput against the bare products.
MAX_ELEMENTS = 2**20


def _log_weights(vae: VAE, q: Distribution, prior: Distribution, x: Tensor, num_samples: int) -> Tensor:
    if not is_standard_program(vae):  # a redefined model or guide: its densities come from Pyro traces of it
        terms = elbo_terms(vae, x, num_samples)
        return terms["log_likelihood"] + terms["log_prior"] - terms["log_q"]
    z = q.rsample((num_samples,))
    return vae.decode(z).log_prob(x) + prior.log_prob(z) - q.log_prob(z)


def log_weights(vae: VAE, x: Tensor, num_samples: int) -> Tensor:
    r"""Log importance weights of shape ``(num_samples, batch)``.

    .. math:: \log w_k = \log p(x\mid z_k) + \log p(z_k) - \log q(z_k\mid x)

    The terms are those of the model and guide (:meth:`~pyro_vae.models.vae.VAE.encode`, ``prior``,
    :meth:`~pyro_vae.models.vae.VAE.decode`), evaluated without recording Pyro traces; a subclass that
    redefines ``model`` or ``guide`` is evaluated through Pyro traces of its own program.
    """
    return _log_weights(vae, vae.encode(x), vae.prior(), x, num_samples)


@torch.no_grad()
def log_likelihood(vae: VAE, x: Tensor, num_samples: int = 1000, batch_size: int = 100) -> Tensor:
    r"""Importance-sampled :math:`\log p(x)` of each data point, in nats, shape ``(len(x),)``.

    The log-mean-exp over ``num_samples`` draws is taken for each data point separately. Data
    points go through in batches of ``batch_size``, each encoded once, and samples in chunks of
    at most :data:`MAX_ELEMENTS` decoder outputs, so memory is bounded whatever ``num_samples`` is.

    Args:
        vae: the trained model/guide pair; the guide is the proposal.
        x: data, shape ``(N, *event_shape)``.
        num_samples: :math:`K`, draws of :math:`z` per data point.
        batch_size: data points per pass.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1 (got {num_samples})")
    was_training = vae.training
    vae.eval()
    try:
        out = []
        for xb in x.split(batch_size):
            q, prior = vae.encode(xb), vae.prior()
            chunk = max(1, MAX_ELEMENTS // (len(xb) * math.prod(vae.event_shape)))
            total = None  # running log-sum-exp over the chunks
            for start in range(0, num_samples, chunk):
                lse = torch.logsumexp(_log_weights(vae, q, prior, xb, min(chunk, num_samples - start)), dim=0)
                total = lse if total is None else torch.logaddexp(total, lse)
            out.append(total - math.log(num_samples))
        return torch.cat(out)
    finally:
        vae.train(was_training)


def iwae_bound(vae: VAE, x: Tensor, k: int, batch_size: int = 100) -> Tensor:
    r"""One draw of the importance-weighted bound :math:`\mathcal L_k(x)` of each data point (nats).

    :math:`k = 1` is the ELBO's Monte Carlo estimate; its expectation rises to :math:`\log p(x)` with :math:`k`.
    """
    return log_likelihood(vae, x, num_samples=k, batch_size=batch_size)
