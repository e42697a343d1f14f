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
from collections.abc import Callable

import torch
from torch import Tensor, nn

from pyro_vae.errors import ConfigError
from pyro_vae.infer.estimators import log_weight, runs_as
from pyro_vae.infer.objectives import enumerated_terms
from pyro_vae.infer.program import (
    batches,
    check_methods,
    first_points,
    kept_rng,
    observed_sites,
    required_labels,
    sample_sites,
    traces,
)
from pyro_vae.models.vae import VAE

__all__ = ["log_weights", "log_likelihood", "iwae_bound", "DECODER_ELEMENTS"]

#: Decoder outputs held at once (4 MB in float32). Small enough that each pass over them stays in
#: the processor's cache, large enough (about 1,300 rows of 784 pixels) that the decoder's matrix
#: products run at full speed: ``make bench`` measures the throughput against the bare products.
DECODER_ELEMENTS = 2**20


def log_weights(vae: nn.Module, x: Tensor, num_samples: int, y: Tensor | None = None) -> Tensor:
    r"""Log importance weights of shape ``(num_samples, batch)``, the guide's joint over all latent sites as proposal.

    .. math:: \log w_k = \log p(x, z_k) - \log q(z_k\mid x), \qquad z_k \sim q(z\mid x),

    summed over every site of the program, from Pyro traces (:func:`~pyro_vae.infer.objectives.elbo_terms`). A
    :class:`~pyro_vae.models.vae.VAE` is evaluated from its parts without traces. ``y``: the labels of a program
    that needs them at every call, whose weights are then those of :math:`p(x \mid y)`.
    """
    return _sampler(vae, x, y)(num_samples)


def _sampler(vae: nn.Module, x: Tensor, y: Tensor | None = None) -> Callable[[int], Tensor]:
    """:func:`log_weights` of ``x`` for a number of draws; the VAE's guide and prior are evaluated once."""
    if not runs_as(vae, VAE):
        return lambda num_samples: _traced_log_weights(vae, x, num_samples, y)
    q, prior = vae.encode(x), vae.prior()

    def draw(num_samples: int) -> Tensor:
        z = q.rsample((num_samples,))
        return vae.decode(z).log_prob(x) + prior.log_prob(z) - q.log_prob(z)

    return draw


def _traced_log_weights(vae: nn.Module, x: Tensor, num_samples: int, y: Tensor | None = None) -> Tensor:
    r"""Log weights from traces. A site the guide enumerates is summed inside each weight,
    :math:`\tilde w_k = \sum_y q(y\mid x)\,w_k(y) = \sum_y p(x, y, z_k^y) / q(z_k^y\mid x, y)`, which keeps
    :math:`\mathbb E[\tilde w_k] = p(x)` with no draw of :math:`y`."""
    terms, log_q = enumerated_terms(vae, x, num_samples, closed_form={}, y=y)
    if log_q is None:
        return log_weight(terms)
    summed = log_q + log_weight(terms)  # log q(y|x) + log w_k(y), for each joint value y of the enumerated sites
    return summed.reshape(-1, *summed.shape[-2:]).logsumexp(0)


def _point_size(vae: nn.Module, x: Tensor, y: Tensor | None = None) -> int:
    """How many values one data point's observed sites hold, from one run of the program on ``x[:1]``.

    A :class:`ConfigError` for a site whose log-density the program weights: log p(x) needs them as they are.
    """
    with kept_rng(x):
        guide_trace, model_trace = traces(vae, *first_points(vae, x, y, 1))
    for site in sample_sites(guide_trace) + sample_sites(model_trace):
        if site["mask"] is not None or not (isinstance(site["scale"], float) and site["scale"] == 1.0):
            raise ConfigError(
                f"site {site['name']!r} is scaled or masked in the program; log p(x) needs every site's "
                "density unweighted: drop the poutine.scale or mask there"
            )
    return sum(site["value"].numel() for site in observed_sites(model_trace)) or 1


@torch.no_grad()
def log_likelihood(
    vae: nn.Module, x: Tensor, num_samples: int = 1000, batch_size: int = 100, y: Tensor | None = None
) -> Tensor:
    r"""Importance-sampled :math:`\log p(x)` of each data point, in nats, with the guide as proposal.

    .. math:: \log p(x) \approx \log \frac1K \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k \mid x)},
        \qquad z_k \sim q(z \mid x),

    the log-mean-exp over ``num_samples`` draws from the guide's joint over all latent sites, taken for
    each data point separately: a draw of :math:`\mathcal L_K(x)`, whose expectation is at most
    :math:`\log p(x)` and rises to it as :math:`K` grows (:func:`iwae_bound`). For a program that needs
    labels at every call (``model(x, y)``) it is :math:`\log p(x \mid y)` at the labels ``y``. Data points go
    through in batches of ``batch_size`` and draws in chunks of at most :data:`DECODER_ELEMENTS` observed
    values, so memory is bounded whatever ``num_samples`` is. The program is evaluated in eval mode, without
    gradients, and left in the mode it was in.

    Args:
        vae: a trained program (:mod:`pyro_vae.infer.program`); its guide is the proposal.
        x: data, shape ``(N, *event_shape)``.
        num_samples: :math:`K`, draws of the latent sites per data point.
        batch_size: data points per pass.
        y: the labels of ``x``, for a program that needs them (any other is evaluated with its label latent,
            summed out where its guide enumerates it).

    Returns:
        The estimate of each point in nats, shape ``(N,)``.

    Reference:
        Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2016), section 5: the log-likelihood
        estimate, with :math:`K = 5000`.

    Example:
        >>> import torch
        >>> from pyro_vae import make_vae
        >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [16]})
        >>> log_likelihood(vae, torch.rand(5, 8, 8), num_samples=100).shape
        torch.Size([5])
    """
    if num_samples < 1:
        raise ConfigError(f"{{num_samples}} must be >= 1 (got {num_samples})", "num_samples")
    check_methods(vae)
    was_training = vae.training
    vae.eval()
    try:
        y = required_labels(vae, y)
        size = _point_size(vae, x, y)
        out = []
        for xb, *yb in batches(vae, x, y, batch_size):
            chunk, draw = max(1, DECODER_ELEMENTS // (len(xb) * size)), _sampler(vae, xb, *yb)
            total = None  # running log-sum-exp over the chunks
            for start in range(0, num_samples, chunk):
                lse = torch.logsumexp(draw(min(chunk, num_samples - start)), dim=0)
                total = lse if total is None else torch.logaddexp(total, lse)
            out.append(total - math.log(num_samples))
        return torch.cat(out)
    finally:
        vae.train(was_training)


def iwae_bound(vae: nn.Module, x: Tensor, num_samples: int, batch_size: int = 100, y: Tensor | None = None) -> Tensor:
    r"""One draw of the importance-weighted bound :math:`\mathcal L_K(x)` of each point (nats), K = ``num_samples``.

    .. math:: \mathcal L_K(x) = \mathbb E\Big[\log \frac1K \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k \mid x)}\Big]
        \le \log p(x), \qquad z_k \sim q(z \mid x).

    :math:`K = 1` is the ELBO's Monte Carlo estimate; its expectation rises to :math:`\log p(x)` with :math:`K`.
    It is :func:`log_likelihood` with ``num_samples`` draws, under the name of what a small :math:`K` gives.

    Args:
        vae: the program (:mod:`pyro_vae.infer.program`); its guide is the proposal.
        x: data, shape ``(N, *event_shape)``.
        num_samples: :math:`K`, draws of the latent sites per data point.
        batch_size: data points per pass.
        y: the labels of ``x``, for a program that needs them at every call.

    Returns:
        The bound of each point in nats, shape ``(N,)``.

    Reference:
        Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2016).

    Example:
        >>> import torch
        >>> from pyro_vae import make_vae
        >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [16]})
        >>> x = torch.rand(5, 8, 8)
        >>> iwae_bound(vae, x, num_samples=1).shape, iwae_bound(vae, x, num_samples=10).shape
        (torch.Size([5]), torch.Size([5]))
    """
    return log_likelihood(vae, x, num_samples=num_samples, batch_size=batch_size, y=y)
