r"""Closed-form Kullback-Leibler divergences, registered with ``torch.distributions.kl``.

Pyro's analytic-KL ELBO (:class:`~pyro.infer.TraceMeanField_ELBO`) asks
``kl_divergence(q, p)`` for every latent site and falls back to a sampled
:math:`\log q(z) - \log p(z)` where none is registered. Registering the Gaussian pair here makes
the training objective use the same formula that the tests check against its derivation.

Importing this module (as ``import pyro_vae`` does) registers these closed forms with
``torch.distributions.kl`` for the process: ``kl_divergence`` of two Pyro ``Normal`` distributions
then uses :func:`gaussian_kl_elementwise` (the same values as torch's own, computed more
accurately for extreme scales). It is the only global state the library changes on import.

Reference:
    Tutorial: Deriving the Standard Variational Autoencoder (VAE) Loss Function
    (Odaibo, 2019), the closed form of the Gaussian KL term.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, kl_divergence, register_kl

__all__ = [
    "gaussian_kl",
    "gaussian_kl_elementwise",
    "closed_form_kl",
    "UnitNormal",
    "per_dimension",
    "coordinate_kl",
    "free_bits_kl",
]


def gaussian_kl_elementwise(
    loc_q: Tensor | float,
    scale_q: Tensor | float,
    loc_p: Tensor | float = 0.0,
    scale_p: Tensor | float = 1.0,
) -> Tensor:
    r"""KL divergence between univariate Gaussians, element by element, with broadcasting.

    .. math:: \mathrm{KL}(\mathcal N(\mu_q,\sigma_q^2)\,\|\,\mathcal N(\mu_p,\sigma_p^2))
        = \log\frac{\sigma_p}{\sigma_q} + \frac{\sigma_q^2 + (\mu_q-\mu_p)^2}{2\sigma_p^2} - \frac12

    Written with the ratio :math:`r = \sigma_q/\sigma_p` as
    :math:`\tfrac12\,[\,r^2 - 1 - 2\log r + ((\mu_q-\mu_p)/\sigma_p)^2\,]`, which stays accurate for
    tiny and huge scales where :math:`\sigma_q^2` alone would under- or overflow.
    """
    loc_q, scale_q = torch.as_tensor(loc_q), torch.as_tensor(scale_q)
    if _is_number(loc_p, 0) and _is_number(scale_p, 1):  # the standard normal: the same numbers without two divisions
        ratio, z = scale_q, loc_q
    else:
        loc_p, scale_p = torch.as_tensor(loc_p), torch.as_tensor(scale_p)
        ratio = scale_q / scale_p
        z = (loc_q - loc_p) / scale_p
    # ratio**2 - 1 - 2 log(ratio) = expm1(2u) - 2u with u = log(ratio): no cancellation near ratio = 1.
    two_u = 2 * torch.log(ratio)
    return 0.5 * (torch.expm1(two_u) - two_u + z * z)


def _is_number(value: Tensor | float, number: float) -> bool:
    return isinstance(value, (int, float)) and value == number


def gaussian_kl(
    loc_q: Tensor | float,
    scale_q: Tensor | float,
    loc_p: Tensor | float = 0.0,
    scale_p: Tensor | float = 1.0,
) -> Tensor:
    r"""KL divergence between diagonal Gaussians, summed over the last dimension.

    .. math:: \mathrm{KL}(q\,\|\,p) = \sum_j \Big[\log\frac{\sigma_{p,j}}{\sigma_{q,j}}
        + \frac{\sigma_{q,j}^2 + (\mu_{q,j}-\mu_{p,j})^2}{2\sigma_{p,j}^2} - \frac12\Big]

    Against the standard normal prior this is the VAE's regulariser
    :math:`-\tfrac12\sum_j(1 + \log\sigma_j^2 - \mu_j^2 - \sigma_j^2)`.

    Args:
        loc_q: means :math:`\mu_q`, shape ``(..., latent_dim)``.
        scale_q: standard deviations :math:`\sigma_q > 0`, broadcastable with ``loc_q``.
        loc_p: prior means :math:`\mu_p` (default 0).
        scale_p: prior standard deviations :math:`\sigma_p > 0` (default 1).

    Returns:
        The divergence in nats, of the broadcast shape without its last dimension.

    References:
        - Auto-Encoding Variational Bayes (Kingma & Welling, 2014), appendix B: the term against
          :math:`\mathcal N(0, I)`.
        - Tutorial: Deriving the Standard Variational Autoencoder (VAE) Loss Function (Odaibo, 2019).

    Example:
        >>> import torch
        >>> gaussian_kl(torch.zeros(3), torch.ones(3))
        tensor(0.)
        >>> round(gaussian_kl(torch.tensor([1.0]), torch.tensor([1.0])).item(), 4)
        0.5
    """
    return gaussian_kl_elementwise(loc_q, scale_q, loc_p, scale_p).sum(-1)


def closed_form_kl(q: Distribution, p: Distribution) -> Tensor | None:
    """``kl_divergence(q, p)`` where a closed form is registered, else ``None`` (the ELBO then samples it)."""
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


class UnitNormal(dist.Normal):
    r"""The standard normal :math:`\mathcal N(0, 1)` element by element, known to be so.

    ``loc`` and ``scale`` are zeros and ones as in :class:`~pyro.distributions.Normal`; knowing it
    saves operations: the log-density is :math:`-\tfrac12 z^2 - \log\sqrt{2\pi}` and the KL
    against it divides by nothing. The values are those of the general formulas, bit for bit.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        return -(value**2) / 2 - math.log(math.sqrt(2 * math.pi))


@register_kl(dist.Normal, dist.Normal)
def _kl_normal_normal(q: dist.Normal, p: dist.Normal) -> Tensor:
    return gaussian_kl_elementwise(q.loc, q.scale, p.loc, p.scale)


@register_kl(dist.Normal, UnitNormal)
def _kl_normal_unit_normal(q: dist.Normal, p: UnitNormal) -> Tensor:
    return gaussian_kl_elementwise(q.loc, q.scale)


def per_dimension(d: Distribution) -> Distribution | None:
    """The distribution of each coordinate apart, where ``d`` is a product over its event (else ``None``).

    ``Independent`` only sums its base's log-densities over the event; a base with an empty event
    (a Normal, a Laplace, a Student-t) is then one distribution per latent dimension. A mixture,
    a VampPrior or a flow is not a product over dimensions.
    """
    while isinstance(d, Independent):
        d = d.base_dist
    return d if d.event_shape == () else None


def coordinate_kl(q: Distribution, p: Distribution, z: Tensor, closed_form: bool = True) -> Tensor:
    r"""The KL term of each data point and latent dimension :math:`j`, shape ``(..., batch, latent_dim)``.

    The closed form :math:`\mathrm{KL}(q_j \,\|\, p_j)` where ``closed_form`` and one is registered between the
    coordinates' distributions (then the same for every draw), else the sampled
    :math:`\log q_j(z_j) - \log p_j(z_j)` at the draws ``z``. Both ``q`` and ``p`` must be products over
    dimensions (:func:`per_dimension`).
    """
    q_j, p_j = per_dimension(q), per_dimension(p)
    if q_j is None or p_j is None:
        raise ValueError("the KL per latent dimension needs distributions that are products over dimensions")
    kl = closed_form_kl(q_j, p_j) if closed_form else None
    return kl if kl is not None else q_j.log_prob(z) - p_j.log_prob(z)


def free_bits_kl(kl: Tensor, free_bits: float) -> Tensor:
    r"""The KL term of a batch under free bits: :math:`B\sum_j \max(\lambda, \overline{\mathrm{KL}}_j)`.

    ``kl`` holds the KL term of each draw, data point and latent dimension, shape ``(..., B, latent_dim)``
    (:func:`~pyro_vae.models.kl.coordinate_kl`); :math:`\overline{\mathrm{KL}}_j` is its mean over the draws and the
    batch. A dimension whose average KL is below :math:`\lambda` nats counts :math:`\lambda` and gets no
    gradient pushing its KL further down (the floor is per data point, averaged over the minibatch).

    Reference:
        Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016).
    """
    mean = kl.reshape(-1, kl.shape[-1]).mean(0)
    return kl.shape[-2] * mean.clamp(min=free_bits).sum()
