r"""Is the latent code used? Activity, per-dimension KL, mutual information and marginal KL.

A VAE can fit its data while leaving latent dimensions unused: the guide returns the prior for
them, whatever :math:`x` is ("posterior collapse"). Four measures over a data set
:math:`x_1..x_N`, with the guide :math:`q(z \mid x_n) = \mathcal N(\mu_n, \operatorname{diag}\sigma_n^2)`:

- **activity** of dimension :math:`j`, the spread of its posterior mean over the data,

  .. math:: A_j = \operatorname{Cov}_x\big(\mathbb E_{q(z\mid x)}[z_j]\big)
      = \frac1{N-1}\sum_n (\mu_{nj} - \bar\mu_j)^2;

  the dimension is active when :math:`A_j` exceeds a threshold (0.01 in the reference).
- **KL per dimension**, :math:`\frac1N\sum_n \mathrm{KL}(q(z_j\mid x_n)\,\|\,p(z_j))`, for priors
  that factorise over dimensions; its sum is the average KL term of the ELBO.
- the **mutual information** between :math:`x` and :math:`z` under the aggregate posterior
  :math:`q(z) = \frac1N\sum_n q(z \mid x_n)`,

  .. math:: I_q(x; z) = \frac1N\sum_i \mathbb E_{q(z\mid x_i)}[\log q(z\mid x_i) - \log q(z)]
      \in [0, \log N],
- and the **marginal KL** :math:`\mathrm{KL}(q(z)\,\|\,p(z)) = \mathbb E_{q(z)}[\log q(z) - \log p(z)]`.

ELBO surgery splits the average KL term into the last two:

.. math:: \frac1N\sum_n \mathrm{KL}(q(z\mid x_n)\,\|\,p(z)) = I_q(x; z) + \mathrm{KL}(q(z)\,\|\,p(z)),

so a KL spent on information about :math:`x` is told apart from a KL spent on an aggregate
posterior that does not match the prior. Both are estimated from the same draws
:math:`z \sim q(z \mid x_i)`, ``num_samples`` per point, with :math:`\log q(z)` the exact
log-sum-exp over all :math:`N` components; so per draw, the sampled KL is exactly their sum.

Standard errors are those of a mean over the data points, ``std(per-point term) / sqrt(N)``, each
term averaged over its ``num_samples`` draws (as :func:`~pyro_vae.infer.objectives.evaluate_elbo` does).
Given :math:`x`, the points' draws are independent, so this covers the Monte-Carlo error of the
draws; it overstates it by the spread of the per-point expectations, which it also counts. When
:math:`x` is an i.i.d. sample of the data distribution, that spread is the sampling error of
:math:`x`, and the standard error is that of the estimate of the population quantity (for the
mutual information and marginal KL to first order in :math:`1/N`, whose finite-:math:`N` bias it
does not cover). Closed forms are exact given :math:`x`: their standard error is ``None``.

References:
    Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2016), section 5.2: active units.
    ELBO surgery: yet another way to carve up the variational evidence lower bound
    (Hoffman & Johnson, 2016).

Example:
    >>> import torch
    >>> from pyro_vae import make_vae
    >>> vae = make_vae((4, 4), latent_dim=2, network={"type": "mlp", "hidden": [8]})
    >>> report = diagnostics(vae, torch.rand(20, 4, 4), num_samples=2)
    >>> report["latent_dim"], report["kl_method"], len(report["kl_per_dim"])
    (2, 'closed_form', 2)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

from pyro_vae.errors import ConfigError
from pyro_vae.models.kl import closed_form_kl, per_dimension
from pyro_vae.models.vae import VAE

__all__ = [
    "Estimate",
    "diagnostics",
    "latent_usage",
    "activity",
    "kl_per_dim",
    "kl_total",
    "mutual_information",
    "marginal_kl",
    "MAX_ELEMENTS",
]

#: Entries of the (draws, N) block of guide log-densities held at once when :math:`\log q(z)` is
#: summed over all N components: 2**22 is 32 MB in float64 (about 420 draws at N = 10,000).
MAX_ELEMENTS = 2**22


class Estimate(NamedTuple):
    """A quantity (a scalar, or one value per latent dimension), its standard error and how it was computed.

    ``se`` is ``None`` for a closed form; ``method`` is ``"closed_form"`` or ``"sampled"``.
    """

    value: Tensor
    se: Tensor | None
    method: str


def _check(x: Tensor, num_samples: int = 1, batch_size: int = 1, threshold: float = 0.0) -> None:
    """A :class:`ConfigError` naming the first argument out of range."""
    if num_samples < 1:
        raise ConfigError(f"{{num_samples}} must be >= 1 (got {num_samples})", "num_samples")
    if batch_size < 1:
        raise ConfigError(f"{{batch_size}} must be >= 1 (got {batch_size})", "batch_size")
    if not threshold >= 0:  # also refuses NaN
        raise ConfigError(f"{{threshold}} must be >= 0 (got {threshold})", "threshold")
    if len(x) < 2:
        raise ConfigError(f"{{x}} must hold at least 2 data points to measure a spread (got {len(x)})", "x")


@contextlib.contextmanager
def _evaluating(vae: VAE) -> Iterator[None]:
    """Eval mode and no gradients inside; the module's mode as it was afterwards."""
    was_training = vae.training
    vae.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        vae.train(was_training)


def _encode(vae: VAE, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """The guide's ``(loc, scale)``, each ``(N, latent_dim)``, encoding ``batch_size`` points of ``x`` at a time.

    Each batch moves to the model's device, so a large ``x`` may stay in host memory.
    """
    tensor = next(iter([*vae.parameters(), *vae.buffers()]), None)
    device = x.device if tensor is None else tensor.device
    locs, scales = zip(*(vae.encoder(xb.to(device)) for xb in x.split(batch_size)))
    return torch.cat(locs), torch.cat(scales)


def _mean(terms: Tensor) -> Estimate:
    """The mean over the data points (dimension 0) of per-point terms, with its standard error."""
    terms = terms.double()
    return Estimate(terms.mean(0), terms.std(0) / math.sqrt(len(terms)), "sampled")


def _factors(prior: Distribution, latent_dim: int) -> Distribution | None:
    """The prior's univariate factors, batch shape ``(latent_dim,)``, or ``None`` where it does not factorise."""
    factors = per_dimension(prior)
    factorised = factors is not None and len(factors.batch_shape) == 1 and factors.batch_shape[0] in (1, latent_dim)
    return factors if factorised else None


def _draw(vae: VAE, loc: Tensor, scale: Tensor, num_samples: int) -> Tensor:
    """``num_samples`` draws from each point's guide, shape ``(num_samples, N, latent_dim)``, by torch's global RNG."""
    return vae.posterior(loc, scale).sample((num_samples,))


def _log_aggregate(loc: Tensor, scale: Tensor, z: Tensor) -> Tensor:
    r"""The aggregate posterior's log-density :math:`\log \frac1N \sum_n q(z \mid x_n)` at each draw, in float64.

    .. math:: \log q(z) = \operatorname{logsumexp}_n \Big[-\frac12\sum_j \frac{(z_j - \mu_{nj})^2}{\sigma_{nj}^2}
        - \sum_j \log\sigma_{nj}\Big] - \frac d2\log 2\pi - \log N

    Exact over all N components. The square is expanded, :math:`z_j^2\sigma_{nj}^{-2} - 2z_j\mu_{nj}\sigma_{nj}^{-2}
    + \mu_{nj}^2\sigma_{nj}^{-2}`, so a chunk of draws costs one matrix product into a (draws, N) block rather
    than a (draws, N, latent_dim) one, at most :data:`MAX_ELEMENTS` entries at once: memory is bounded whatever N
    is, time grows as N squared. The expansion cancels, with a rounding error of a few
    :math:`\epsilon\sum_j (|z_j| + |\mu_{nj}|)^2/\sigma_{nj}^2`; in float64 (:math:`\epsilon \approx 2\cdot 10^{-16}`)
    that is about 1e-6 nats at :math:`|z| + |\mu| = 10` and :math:`\sigma = 10^{-4}`.
    """
    loc, scale, flat = loc.double(), scale.double(), z.reshape(-1, z.shape[-1]).double()
    precision = scale.pow(-2)
    shift = loc * precision
    const = -scale.log().sum(-1) - (loc * shift).sum(-1) / 2 - loc.shape[-1] * math.log(2 * math.pi) / 2
    const = const - math.log(len(loc))
    weights = torch.cat([-precision / 2, shift], -1).T  # (2 latent_dim, N)
    rows = max(1, MAX_ELEMENTS // len(loc))
    blocks = (torch.addmm(const, torch.cat([c.square(), c], -1), weights) for c in flat.split(rows))
    return torch.cat([torch.logsumexp(block, -1) for block in blocks]).reshape(z.shape[:-1])


def _kl_per_dim(vae: VAE, loc: Tensor, scale: Tensor, prior: Distribution, z: Tensor) -> Estimate | None:
    factors = _factors(prior, loc.shape[-1])
    if factors is None:
        return None
    q = vae.posterior(loc, scale).base_dist  # the per-dimension Normals, batch shape (N, latent_dim)
    kl = closed_form_kl(q, factors)
    if kl is not None:
        return Estimate(kl.mean(0), None, "closed_form")
    return _mean((q.log_prob(z) - factors.log_prob(z)).mean(0))


def _kl_total(vae: VAE, loc: Tensor, scale: Tensor, prior: Distribution, z: Tensor) -> Estimate:
    q = vae.posterior(loc, scale)
    kl = closed_form_kl(q, prior)
    if kl is not None:
        return Estimate(kl.mean(0), None, "closed_form")
    return _mean((q.log_prob(z) - prior.log_prob(z)).mean(0))


def _surgery(vae: VAE, loc: Tensor, scale: Tensor, prior: Distribution, z: Tensor) -> tuple[Estimate, Estimate]:
    """Mutual information and marginal KL from the same draws ``z``; per draw they add up to the sampled KL."""
    log_aggregate = _log_aggregate(loc, scale, z)
    information = vae.posterior(loc, scale).log_prob(z) - log_aggregate
    return _mean(information.mean(0)), _mean((log_aggregate - prior.log_prob(z)).mean(0))


def activity(vae: VAE, x: Tensor, batch_size: int = 100) -> Tensor:
    r"""The activity of each latent dimension, shape ``(latent_dim,)``: the variance of its posterior mean over ``x``.

    .. math:: A_j = \frac1{N-1}\sum_{n=1}^N (\mu_j(x_n) - \bar\mu_j)^2

    The unbiased sample variance (divisor :math:`N - 1`), as the sample covariance of the reference.

    Reference:
        Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2016), section 5.2.
    """
    _check(x, batch_size=batch_size)
    with _evaluating(vae):
        loc, _ = _encode(vae, x, batch_size)
        return loc.var(0)


def kl_per_dim(vae: VAE, x: Tensor, num_samples: int = 1, batch_size: int = 100) -> Estimate | None:
    r"""The average KL of each latent dimension, :math:`\frac1N\sum_n \mathrm{KL}(q(z_j\mid x_n)\,\|\,p(z_j))`.

    In closed form where one is registered between the guide's Normal and the prior's factor
    (:func:`~pyro_vae.models.kl.closed_form_kl`), else the average of :math:`\log q(z_j\mid x_n) - \log p(z_j)`
    over ``num_samples`` draws per point. ``None`` for a prior that does not factorise over the
    dimensions (a mixture, the VampPrior, a flow), whose per-dimension KL is not defined.
    """
    _check(x, num_samples, batch_size)
    with _evaluating(vae):
        loc, scale = _encode(vae, x, batch_size)
        return _kl_per_dim(vae, loc, scale, vae.prior(), _draw(vae, loc, scale, num_samples))


def kl_total(vae: VAE, x: Tensor, num_samples: int = 1, batch_size: int = 100) -> Estimate:
    r"""The average KL term of the ELBO, :math:`\frac1N\sum_n \mathrm{KL}(q(z\mid x_n)\,\|\,p(z))`.

    In closed form where one is registered, else sampled with ``num_samples`` draws per point.
    """
    _check(x, num_samples, batch_size)
    with _evaluating(vae):
        loc, scale = _encode(vae, x, batch_size)
        return _kl_total(vae, loc, scale, vae.prior(), _draw(vae, loc, scale, num_samples))


def mutual_information(vae: VAE, x: Tensor, num_samples: int = 1, batch_size: int = 100) -> Estimate:
    r"""The mutual information :math:`I_q(x; z)` under the aggregate posterior of ``x``, in nats.

    .. math:: \hat I = \frac1{NS}\sum_{i=1}^N\sum_{s=1}^S \Big[\log q(z_{is}\mid x_i)
        - \log\frac1N\sum_{n=1}^N q(z_{is}\mid x_n)\Big], \qquad z_{is} \sim q(z\mid x_i),

    with :math:`S` = ``num_samples``. The cost is :math:`O(S N^2 \cdot \text{latent\_dim})`.

    Reference:
        ELBO surgery: yet another way to carve up the variational evidence lower bound (Hoffman & Johnson, 2016).
    """
    return _surgery_of(vae, x, num_samples, batch_size)[0]


def marginal_kl(vae: VAE, x: Tensor, num_samples: int = 1, batch_size: int = 100) -> Estimate:
    r"""The KL from the aggregate posterior of ``x`` to the prior, :math:`\mathrm{KL}(q(z)\,\|\,p(z))`, in nats.

    .. math:: \widehat{\mathrm{KL}} = \frac1{NS}\sum_{i,s} \Big[\log\frac1N\sum_n q(z_{is}\mid x_n)
        - \log p(z_{is})\Big], \qquad z_{is} \sim q(z\mid x_i).

    Reference:
        ELBO surgery: yet another way to carve up the variational evidence lower bound (Hoffman & Johnson, 2016).
    """
    return _surgery_of(vae, x, num_samples, batch_size)[1]


def _surgery_of(vae: VAE, x: Tensor, num_samples: int, batch_size: int) -> tuple[Estimate, Estimate]:
    """Mutual information and marginal KL of ``x``: checked, encoded, sampled."""
    _check(x, num_samples, batch_size)
    with _evaluating(vae):
        loc, scale = _encode(vae, x, batch_size)
        return _surgery(vae, loc, scale, vae.prior(), _draw(vae, loc, scale, num_samples))


def _listed(t: Tensor | None) -> list[float] | None:
    return None if t is None else t.double().tolist()


def _scalar(t: Tensor | None) -> float | None:
    return None if t is None else t.double().item()


def latent_usage(vae: VAE, x: Tensor, batch_size: int = 1000, threshold: float = 0.01) -> dict[str, Any]:
    """``active_units`` and ``kl_per_dim`` of ``x`` from one pass of the encoder: what training records each epoch.

    A sampled per-dimension KL takes one draw per point from torch's generator; wrap the call in
    :func:`torch.random.fork_rng` to leave a run's random stream as it was.
    """
    _check(x, batch_size=batch_size, threshold=threshold)
    with _evaluating(vae):
        loc, scale = _encode(vae, x, batch_size)
        per_dim = _kl_per_dim(vae, loc, scale, vae.prior(), _draw(vae, loc, scale, 1))
        spread = loc.var(0)
    kl = None if per_dim is None else _listed(per_dim.value)
    return {"active_units": int((spread > threshold).sum()), "kl_per_dim": kl}


def diagnostics(
    vae: VAE, x: Tensor, num_samples: int = 1, batch_size: int = 100, threshold: float = 0.01
) -> dict[str, Any]:
    r"""Every measure of this module for ``x``, as plain Python values (JSON-ready), from one set of draws.

    The module runs in eval mode without gradients and is left in the mode it was in. Draws come
    from torch's global RNG (``pyro.set_rng_seed`` makes them reproducible). Sampled per-dimension
    KLs, the sampled total KL, the mutual information and the marginal KL share the draws, so per
    draw ``sum(kl_per_dim) == kl_total == mutual_information + marginal_kl`` when sampled.

    Args:
        vae: the model; its guide is ``vae.posterior(*vae.encoder(x))``.
        x: data, shape ``(N, *event_shape)``, ``N >= 2``; the aggregate posterior is over these points.
        num_samples: draws of :math:`z` per data point; the time grows as ``num_samples * N**2 * latent_dim``.
        batch_size: data points per pass of the encoder.
        threshold: a dimension is active when its activity exceeds it.

    Returns:
        ``num_points``, ``latent_dim``, ``num_samples``, ``threshold``;
        ``activity`` (per dimension) and ``active_units`` (how many exceed ``threshold``);
        ``kl_per_dim`` (per dimension, ``None`` when the prior does not factorise), ``kl_per_dim_se``
        (``None`` unless sampled), ``kl_method`` (``"closed_form"``, ``"sampled"`` or ``"not_factorised"``);
        ``kl_total``, ``kl_total_se``, ``kl_total_method``; ``mutual_information``,
        ``mutual_information_se``, ``marginal_kl``, ``marginal_kl_se``. KLs and information in nats.
    """
    _check(x, num_samples, batch_size, threshold)
    with _evaluating(vae):
        loc, scale = _encode(vae, x, batch_size)
        prior, z = vae.prior(), _draw(vae, loc, scale, num_samples)
        per_dim = _kl_per_dim(vae, loc, scale, prior, z)
        total = _kl_total(vae, loc, scale, prior, z)
        information, marginal = _surgery(vae, loc, scale, prior, z)
        spread = loc.var(0)
    return {
        "num_points": len(x),
        "latent_dim": loc.shape[-1],
        "num_samples": int(num_samples),
        "threshold": float(threshold),
        "activity": _listed(spread),
        "active_units": int((spread > threshold).sum()),
        "kl_per_dim": None if per_dim is None else _listed(per_dim.value),
        "kl_per_dim_se": None if per_dim is None else _listed(per_dim.se),
        "kl_method": "not_factorised" if per_dim is None else per_dim.method,
        "kl_total": _scalar(total.value),
        "kl_total_se": _scalar(total.se),
        "kl_total_method": total.method,
        "mutual_information": _scalar(information.value),
        "mutual_information_se": _scalar(information.se),
        "marginal_kl": _scalar(marginal.value),
        "marginal_kl_se": _scalar(marginal.se),
    }
