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

**Any program.** Each measure is taken per latent site, from Pyro traces of the program (a site's
:math:`\mathbb E_q[z]` averaged over the draws of the sites it is conditioned on); the
:class:`~pyro_vae.models.vae.VAE` is read from its encoder directly. The mutual information and the marginal KL
are defined for a site whose guide and model distributions depend on :math:`x` alone, with a diagonal-Normal
guide; elsewhere they are ``None``. With several latent sites the report's top level combines them (units and
dimensions added up, KL terms summed, per-dimension lists joined in the guide's order) and ``sites`` holds each
site's own report.

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
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from pyro_vae.errors import ConfigError
from pyro_vae.infer.estimators import runs_as
from pyro_vae.infer.program import (
    SiteStructure,
    batches,
    device_of,
    finite_mean,
    first_points,
    kept_rng,
    latent_sites,
    required_labels,
    site_structure,
    traces,
)
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
    "AGGREGATE_ELEMENTS",
    "accuracy",
    "predictions",
]

#: Entries of the (draws, N) block of guide log-densities held at once when :math:`\log q(z)` is
#: summed over all N components: 2**22 is 32 MB in float64 (about 420 draws at N = 10,000).
AGGREGATE_ELEMENTS = 2**22


class Estimate(NamedTuple):
    """A quantity (a scalar, or one value per latent dimension), its standard error and how it was computed.

    ``se`` is ``None`` for a closed form; ``method`` is ``"closed_form"`` or ``"sampled"``.
    """

    value: Tensor
    se: Tensor | None
    method: str


class _Site(NamedTuple):
    """What the measures of one latent site are made of, over all the data points."""

    means: Tensor  # (N, latent_dim): the posterior mean of each point
    kl_per_dim: Estimate | None  # None: the distributions are not products over dimensions
    kl_total: Estimate
    surgery: tuple[Estimate, Estimate] | None  # mutual information and marginal KL, where defined
    label: bool = False  # a categorical site: its "dimensions" are its classes, not units of the latent code


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
def _evaluating(vae: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside; the module's mode as it was afterwards."""
    was_training = vae.training
    vae.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        vae.train(was_training)


def _encode(vae: nn.Module, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """The guide's ``(loc, scale)``, each ``(N, latent_dim)``, encoding ``batch_size`` points of ``x`` at a time.

    Each batch moves to the model's device, so a large ``x`` may stay in host memory.
    """
    device = device_of(vae, x)
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


def _draw(vae: nn.Module, loc: Tensor, scale: Tensor, num_samples: int) -> Tensor:
    """``num_samples`` draws from each point's guide, shape ``(num_samples, N, latent_dim)``, by torch's global RNG."""
    return vae.posterior(loc, scale).sample((num_samples,))


def _log_aggregate(loc: Tensor, scale: Tensor, z: Tensor) -> Tensor:
    r"""The aggregate posterior's log-density :math:`\log \frac1N \sum_n q(z \mid x_n)` at each draw, in float64.

    .. math:: \log q(z) = \operatorname{logsumexp}_n \Big[-\frac12\sum_j \frac{(z_j - \mu_{nj})^2}{\sigma_{nj}^2}
        - \sum_j \log\sigma_{nj}\Big] - \frac d2\log 2\pi - \log N

    Exact over all N components. The square is expanded, :math:`z_j^2\sigma_{nj}^{-2} - 2z_j\mu_{nj}\sigma_{nj}^{-2}
    + \mu_{nj}^2\sigma_{nj}^{-2}`, so a chunk of draws costs one matrix product into a (draws, N) block rather
    than a (draws, N, latent_dim) one, at most :data:`AGGREGATE_ELEMENTS` entries at once: memory is bounded whatever N
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
    rows = max(1, AGGREGATE_ELEMENTS // len(loc))
    blocks = (torch.addmm(const, torch.cat([c.square(), c], -1), weights) for c in flat.split(rows))
    return torch.cat([torch.logsumexp(block, -1) for block in blocks]).reshape(z.shape[:-1])


def _kl_per_dim(vae: nn.Module, loc: Tensor, scale: Tensor, prior: Distribution, z: Tensor) -> Estimate | None:
    factors = _factors(prior, loc.shape[-1])
    if factors is None:
        return None
    q = vae.posterior(loc, scale).base_dist  # the per-dimension Normals, batch shape (N, latent_dim)
    kl = closed_form_kl(q, factors)
    if kl is not None:
        return Estimate(kl.mean(0), None, "closed_form")
    return _mean((q.log_prob(z) - factors.log_prob(z)).mean(0))


def _kl_total(vae: nn.Module, loc: Tensor, scale: Tensor, prior: Distribution, z: Tensor) -> Estimate:
    q = vae.posterior(loc, scale)
    kl = closed_form_kl(q, prior)
    if kl is not None:
        return Estimate(kl.mean(0), None, "closed_form")
    return _mean((q.log_prob(z) - prior.log_prob(z)).mean(0))


def _surgery(vae: nn.Module, loc: Tensor, scale: Tensor, prior: Distribution, z: Tensor) -> tuple[Estimate, Estimate]:
    """Mutual information and marginal KL from the same draws ``z``; per draw they add up to the sampled KL."""
    log_aggregate = _log_aggregate(loc, scale, z)
    information = vae.posterior(loc, scale).log_prob(z) - log_aggregate
    return _mean(information.mean(0)), _mean((log_aggregate - prior.log_prob(z)).mean(0))


def _encoded_sites(vae: nn.Module, x: Tensor, num_samples: int, batch_size: int, surgery: bool) -> dict[str, _Site]:
    """The VAE's one latent site, read from its encoder: ``(loc, scale)`` of every point, then one set of draws."""
    loc, scale = _encode(vae, x, batch_size)
    prior, z = vae.prior(), _draw(vae, loc, scale, num_samples)
    return {
        vae.latent_site: _Site(
            loc,
            _kl_per_dim(vae, loc, scale, prior, z),
            _kl_total(vae, loc, scale, prior, z),
            _surgery(vae, loc, scale, prior, z) if surgery else None,
        )
    }


class _Parts:
    """Per-point terms of one latent site, gathered batch by batch from traces."""

    def __init__(self) -> None:
        self.means, self.kl, self.dims, self.normal, self.classes = [], [], [], [], []

    def add(self, guide_site: dict, model_site: dict, closed_form: bool) -> None:
        q, p, v = guide_site["fn"], model_site["fn"], guide_site["value"]
        draws, batch = v.shape[:2]
        pair = [_categorical(d) for d in (q, p)]
        if None not in pair:  # a label: the mean of its one-hot code is q's probabilities; for I(x; y), exactly
            probs = [torch.broadcast_to(d.probs, (*v.shape, d.probs.shape[-1]))[0] for d in pair]
            self.classes.append(tuple(probs))
            self.means.append(probs[0])
        else:
            self.means.append(_posterior_mean(q, v).reshape(draws, batch, -1).mean(0))
        kl = closed_form_kl(q, p) if closed_form else None
        kl = q.log_prob(v) - p.log_prob(v) if kl is None else kl
        self.kl.append(torch.broadcast_to(kl, (draws, batch)).mean(0))
        self.dims.append(_kl_dims(q, p, v, closed_form))
        base = _diagonal_normal(q)
        if base is not None:  # for the aggregate posterior: q's loc and scale, the draws and their densities
            # a scalar site is one of one dimension
            loc, scale = (torch.broadcast_to(t, v.shape)[0].reshape(batch, -1) for t in (base.loc, base.scale))
            self.normal.append((loc, scale, v.reshape(draws, batch, -1), q.log_prob(v), p.log_prob(v)))

    def site(self, structure: SiteStructure, surgery: bool) -> _Site:
        method = "closed_form" if structure.closed_form else "sampled"
        exact = structure.closed_form and not structure.conditioned  # depends on no other draw: exact given x
        per_dim = None if any(d is None for d in self.dims) else self._estimate(torch.cat(self.dims), exact, method)
        defined = surgery and not structure.conditioned
        if defined and len(self.classes) == len(self.kl):
            information = _categorical_surgery(self.classes)
        else:
            information = _traced_surgery(self.normal) if defined and len(self.normal) == len(self.kl) else None
        kl = self._estimate(torch.cat(self.kl), exact, method)
        return _Site(torch.cat(self.means), per_dim, kl, information, len(self.classes) == len(self.kl))

    @staticmethod
    def _estimate(terms: Tensor, exact: bool, method: str) -> Estimate:
        """The mean of per-point terms: with no standard error where exact given x, else with its own."""
        return Estimate(terms.double().mean(0), None, method) if exact else _mean(terms)._replace(method=method)


def _traced_sites(
    vae: nn.Module, x: Tensor, num_samples: int, batch_size: int, surgery: bool, y: Tensor | None = None
) -> dict[str, _Site]:
    """Every latent site of any program, from Pyro traces of ``batch_size`` points at a time (with the labels
    ``y`` of a program that needs them)."""
    device = device_of(vae, x)
    to = lambda batch: tuple(t if t is None else t.to(device) for t in batch)  # noqa: E731
    first = to(first_points(vae, x, y))
    with kept_rng(first[0]):
        structure = site_structure(vae.model, vae.guide, *first)
    parts = {name: _Parts() for name in structure}
    for batch in batches(vae, x, y, batch_size):
        guide_trace, model_trace = traces(vae, *to(batch), num_particles=num_samples)
        for name in latent_sites(guide_trace):
            parts[name].add(guide_trace.nodes[name], model_trace.nodes[name], structure[name].closed_form)
    return {name: part.site(structure[name], surgery) for name, part in parts.items()}


def _sites(
    vae: nn.Module, x: Tensor, num_samples: int, batch_size: int, surgery: bool = True, y: Tensor | None = None
) -> dict[str, _Site]:
    if runs_as(vae, VAE):
        return _encoded_sites(vae, x, num_samples, batch_size, surgery)
    return _traced_sites(vae, x, num_samples, batch_size, surgery, required_labels(vae, y))


def _posterior_mean(q: Distribution, value: Tensor) -> Tensor:
    """The guide's mean at each draw, or the draw itself where the distribution has no finite mean (a label)."""
    mean = finite_mean(q)
    mean = value if mean is None else mean
    return torch.broadcast_to(mean, value.shape).to(
        mean.dtype if mean.is_floating_point() else torch.get_default_dtype()
    )


def _kl_dims(q: Distribution, p: Distribution, value: Tensor, closed_form: bool) -> Tensor | None:
    """Each point's KL term per coordinate, ``(batch, latent_dim)``, averaged over the draws; ``None`` unfactorised."""
    q_j, p_j = per_dimension(q), per_dimension(p)
    if q_j is None or p_j is None:
        return None
    kl = closed_form_kl(q_j, p_j) if closed_form else None
    kl = q_j.log_prob(value) - p_j.log_prob(value) if kl is None else kl
    draws, batch = value.shape[:2]
    return torch.broadcast_to(kl, value.shape).reshape(draws, batch, -1).mean(0)


def _diagonal_normal(q: Distribution) -> Normal | None:
    """The Normal a diagonal-Normal guide is made of, or ``None``."""
    while isinstance(q, Independent):
        q = q.base_dist
    return q if isinstance(q, Normal) else None


def _categorical(d: Distribution) -> Categorical | None:
    """The categorical distribution a label's site draws from (through ``Independent`` wrappers), or ``None``."""
    while isinstance(d, Independent):
        d = d.base_dist
    return d if isinstance(d, Categorical) else None


def _categorical_surgery(classes: list[tuple[Tensor, Tensor]]) -> tuple[Estimate, Estimate] | None:
    r"""Mutual information and marginal KL of a label site given x alone, exact from the guide's probabilities:
    :math:`I(x; y) = H[\bar q(y)] - \frac1N\sum_n H[q(y\mid x_n)]` and
    :math:`\mathrm{KL}(\bar q(y)\,\|\,p(y))`, :math:`\bar q = \frac1N\sum_n q(\cdot\mid x_n)`; ``None`` where the
    prior differs from point to point."""
    q = torch.cat([a for a, _ in classes]).double()
    p = torch.cat([b for _, b in classes]).double()
    if not torch.allclose(p, p[:1].expand_as(p)):
        return None
    mean = q.mean(0)
    entropy = lambda probs: -torch.special.xlogy(probs, probs).sum(-1)  # noqa: E731
    information = entropy(mean) - entropy(q).mean()
    marginal = (torch.special.xlogy(mean, mean) - torch.special.xlogy(mean, p[0])).sum()
    return Estimate(information, None, "closed_form"), Estimate(marginal, None, "closed_form")


def _traced_surgery(normal: list[tuple[Tensor, ...]]) -> tuple[Estimate, Estimate]:
    """Mutual information and marginal KL of a site whose guide is a diagonal Normal given x alone."""
    loc, scale, z, log_q, log_p = (torch.cat(parts, dim=0 if i < 2 else 1) for i, parts in enumerate(zip(*normal)))
    log_aggregate = _log_aggregate(loc, scale, z)
    return _mean((log_q - log_aggregate).mean(0)), _mean((log_aggregate - log_p).mean(0))


def _one_site(
    vae: nn.Module, x: Tensor, num_samples: int, batch_size: int, surgery: bool = False, y: Tensor | None = None
) -> _Site:
    """The measures of a program with one latent site; a :class:`ConfigError` for several (use :func:`diagnostics`)."""
    with _evaluating(vae):
        sites = _sites(vae, x, num_samples, batch_size, surgery, y)
    if len(sites) != 1:
        raise ConfigError(
            f"this measure is of one latent site, and the program has {len(sites)} ({', '.join(sites)}); "
            "diagnostics() reports each site under 'sites'"
        )
    return next(iter(sites.values()))


def activity(vae: nn.Module, x: Tensor, batch_size: int = 100, y: Tensor | None = None) -> Tensor:
    r"""The activity of each latent dimension, shape ``(latent_dim,)``: the variance of its posterior mean over ``x``.

    .. math:: A_j = \frac1{N-1}\sum_{n=1}^N (\mu_j(x_n) - \bar\mu_j)^2

    The unbiased sample variance (divisor :math:`N - 1`), as the sample covariance of the reference. For a
    program with one latent site (:func:`diagnostics` reports each site of any program).

    Reference:
        Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2016), section 5.2.
    """
    _check(x, batch_size=batch_size)
    if runs_as(vae, VAE):
        with _evaluating(vae):
            return _encode(vae, x, batch_size)[0].var(0)
    return _one_site(vae, x, 1, batch_size, y=y).means.var(0)


def kl_per_dim(
    vae: nn.Module, x: Tensor, num_samples: int = 1, batch_size: int = 100, y: Tensor | None = None
) -> Estimate | None:
    r"""The average KL of each latent dimension, :math:`\frac1N\sum_n \mathrm{KL}(q(z_j\mid x_n)\,\|\,p(z_j))`.

    In closed form where one is registered between the guide's and the prior's factors (and exact,
    :func:`~pyro_vae.infer.program.closed_form_sites`), else the average of
    :math:`\log q(z_j\mid x_n) - \log p(z_j)` over ``num_samples`` draws per point. ``None`` for a prior that
    does not factorise over the dimensions (a mixture, the VampPrior, a flow), whose per-dimension KL is not
    defined. For a program with one latent site.
    """
    _check(x, num_samples, batch_size)
    return _one_site(vae, x, num_samples, batch_size, y=y).kl_per_dim


def kl_total(
    vae: nn.Module, x: Tensor, num_samples: int = 1, batch_size: int = 100, y: Tensor | None = None
) -> Estimate:
    r"""The average KL term of the ELBO, :math:`\frac1N\sum_n \mathrm{KL}(q(z\mid x_n)\,\|\,p(z))`.

    In closed form where one is registered and exact, else sampled with ``num_samples`` draws per point. For a
    program with one latent site.
    """
    _check(x, num_samples, batch_size)
    return _one_site(vae, x, num_samples, batch_size, y=y).kl_total


def mutual_information(
    vae: nn.Module, x: Tensor, num_samples: int = 1, batch_size: int = 100, y: Tensor | None = None
) -> Estimate | None:
    r"""The mutual information :math:`I_q(x; z)` under the aggregate posterior of ``x``, in nats.

    .. math:: \hat I = \frac1{NS}\sum_{i=1}^N\sum_{s=1}^S \Big[\log q(z_{is}\mid x_i)
        - \log\frac1N\sum_{n=1}^N q(z_{is}\mid x_n)\Big], \qquad z_{is} \sim q(z\mid x_i),

    with :math:`S` = ``num_samples``. The cost is :math:`O(S N^2 \cdot \text{latent\_dim})`. ``None`` where it
    is not defined (see the module). For a program with one latent site.

    Reference:
        ELBO surgery: yet another way to carve up the variational evidence lower bound (Hoffman & Johnson, 2016).
    """
    surgery = _surgery_of(vae, x, num_samples, batch_size, y)
    return None if surgery is None else surgery[0]


def marginal_kl(
    vae: nn.Module, x: Tensor, num_samples: int = 1, batch_size: int = 100, y: Tensor | None = None
) -> Estimate | None:
    r"""The KL from the aggregate posterior of ``x`` to the prior, :math:`\mathrm{KL}(q(z)\,\|\,p(z))`, in nats.

    .. math:: \widehat{\mathrm{KL}} = \frac1{NS}\sum_{i,s} \Big[\log\frac1N\sum_n q(z_{is}\mid x_n)
        - \log p(z_{is})\Big], \qquad z_{is} \sim q(z\mid x_i).

    ``None`` where it is not defined (see the module). For a program with one latent site.

    Reference:
        ELBO surgery: yet another way to carve up the variational evidence lower bound (Hoffman & Johnson, 2016).
    """
    surgery = _surgery_of(vae, x, num_samples, batch_size, y)
    return None if surgery is None else surgery[1]


def _surgery_of(
    vae: nn.Module, x: Tensor, num_samples: int, batch_size: int, y: Tensor | None
) -> tuple[Estimate, Estimate] | None:
    """Mutual information and marginal KL of ``x``: checked, encoded, sampled."""
    _check(x, num_samples, batch_size)
    return _one_site(vae, x, num_samples, batch_size, surgery=True, y=y).surgery


def _listed(t: Tensor | None) -> list[float] | None:
    return None if t is None else t.double().tolist()


def _scalar(t: Tensor | None) -> float | None:
    return None if t is None else t.double().item()


def latent_usage(
    vae: nn.Module,
    x: Tensor,
    batch_size: int = 1000,
    threshold: float = 0.01,
    num_samples: int = 1,
    y: Tensor | None = None,
) -> dict[str, Any]:
    r"""``active_units`` and ``kl_per_dim`` of ``x``, from ``num_samples`` draws per point (one: what training
    records each epoch).

    ``num_samples`` draws per point instead average a site's :math:`\mathbb E_q[z]` over the draws of the sites it
    is conditioned on (the upper layers of a bottom-up guide), and its sampled KL over its own.

    With several latent sites, units are added up, ``kl_per_dim`` joins the sites' lists (``None`` if one is
    not factorised), and ``sites`` holds each site's pair. A sampled per-dimension KL takes one draw per point
    from torch's generator; wrap the call in :func:`torch.random.fork_rng` to leave a run's random stream as it was.
    """
    _check(x, num_samples, batch_size, threshold)
    with _evaluating(vae):
        sites = _sites(vae, x, num_samples, batch_size, surgery=False, y=y)
    usage = {
        name: {
            "active_units": int((site.means.var(0) > threshold).sum()),
            "kl_per_dim": None if site.kl_per_dim is None else _listed(site.kl_per_dim.value),
        }
        for name, site in sites.items()
    }
    units = [usage[name] for name, site in sites.items() if not site.label] or list(usage.values())
    combined = {
        "active_units": sum(u["active_units"] for u in units),  # a label's classes are not units of the code
        "kl_per_dim": _joined([u["kl_per_dim"] for u in usage.values()]),
    }
    return combined if len(usage) == 1 else {**combined, "sites": usage}


def _joined(lists: list[list[float] | None]) -> list[float] | None:
    return None if any(v is None for v in lists) else [x for v in lists for x in v]


def _site_report(site: _Site, threshold: float) -> dict[str, Any]:
    """The JSON-ready measures of one latent site."""
    spread = site.means.var(0)
    per_dim, total = site.kl_per_dim, site.kl_total
    information, marginal = site.surgery if site.surgery is not None else (None, None)
    return {
        "label": site.label,
        "latent_dim": spread.shape[-1],
        "activity": _listed(spread),
        "active_units": int((spread > threshold).sum()),
        "kl_per_dim": None if per_dim is None else _listed(per_dim.value),
        "kl_per_dim_se": None if per_dim is None else _listed(per_dim.se),
        "kl_method": "not_factorised" if per_dim is None else per_dim.method,
        "kl_total": _scalar(total.value),
        "kl_total_se": _scalar(total.se),
        "kl_total_method": total.method,
        "mutual_information": None if information is None else _scalar(information.value),
        "mutual_information_se": None if information is None else _scalar(information.se),
        "marginal_kl": None if marginal is None else _scalar(marginal.value),
        "marginal_kl_se": None if marginal is None else _scalar(marginal.se),
    }


def _combined(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The top level of a report of several sites: units and dimensions added up (a label's classes are not
    units of the latent code: its site is left out of them), KLs summed, lists joined."""
    parts = list(reports.values())
    units = [r for r in parts if not r["label"]] or parts
    methods = {r["kl_method"] for r in parts}
    total_methods = {r["kl_total_method"] for r in parts}
    ses = [r["kl_total_se"] for r in parts if r["kl_total_se"] is not None]
    return {
        "latent_dim": sum(r["latent_dim"] for r in units),
        "activity": [a for r in units for a in r["activity"]],
        "active_units": sum(r["active_units"] for r in units),
        "kl_per_dim": _joined([r["kl_per_dim"] for r in parts]),
        "kl_per_dim_se": None,
        "kl_method": methods.pop() if len(methods) == 1 else "mixed",
        "kl_total": sum(r["kl_total"] for r in parts),
        "kl_total_se": math.sqrt(sum(se * se for se in ses)) if ses else None,  # sites taken as independent
        "kl_total_method": total_methods.pop() if len(total_methods) == 1 else "mixed",
        "mutual_information": None,
        "mutual_information_se": None,
        "marginal_kl": None,
        "marginal_kl_se": None,
        "sites": reports,
    }


def diagnostics(
    vae: nn.Module,
    x: Tensor,
    num_samples: int = 1,
    batch_size: int = 100,
    threshold: float = 0.01,
    y: Tensor | None = None,
) -> dict[str, Any]:
    r"""Every measure of this module for ``x``, as plain Python values (JSON-ready), from one set of draws.

    The module runs in eval mode without gradients and is left in the mode it was in. Draws come
    from torch's global RNG (``pyro.set_rng_seed`` makes them reproducible). Sampled per-dimension
    KLs, the sampled total KL, the mutual information and the marginal KL share the draws, so per
    draw ``sum(kl_per_dim) == kl_total == mutual_information + marginal_kl`` when sampled:

    .. math:: \frac1N\sum_n \mathrm{KL}(q(z\mid x_n)\,\|\,p(z)) = I_q(x; z) + \mathrm{KL}(q(z)\,\|\,p(z)).

    Args:
        vae: any program (:mod:`pyro_vae.infer.program`).
        x: data, shape ``(N, *event_shape)``, ``N >= 2``; the aggregate posterior is over these points.
        num_samples: draws of the latent sites per data point; the time grows as ``num_samples * N**2 * latent_dim``.
        batch_size: data points per pass of the guide.
        threshold: a dimension is active when its activity exceeds it.
        y: the labels of ``x``, passed to a program that needs them at every call (``model(x, y)``); any other
            is diagnosed with its label latent.

    Returns:
        ``num_points``, ``num_samples``, ``threshold``, ``latent_site`` (the name of a program's one latent site);
        ``label`` (whether the site is a categorical label, whose dimensions are its classes); ``latent_dim``;
        ``activity`` (per dimension) and ``active_units`` (how many exceed ``threshold``);
        ``kl_per_dim`` (per dimension, ``None`` when the prior does not factorise), ``kl_per_dim_se``
        (``None`` unless sampled), ``kl_method`` (``"closed_form"``, ``"sampled"`` or ``"not_factorised"``);
        ``kl_total``, ``kl_total_se``, ``kl_total_method``; ``mutual_information``,
        ``mutual_information_se``, ``marginal_kl``, ``marginal_kl_se`` (``None`` where not defined). KLs and
        information in nats. With several latent sites these combine the sites' and ``sites`` holds each one's
        report, by name in the guide's order (and there is no ``latent_site``).

    References:
        - Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2016), section 5.2: active units.
        - ELBO surgery: yet another way to carve up the variational evidence lower bound (Hoffman & Johnson, 2016).

    Example:
        >>> import torch
        >>> from pyro_vae import make_vae
        >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [16]})
        >>> report = diagnostics(vae, torch.rand(20, 8, 8))
        >>> report["latent_dim"], len(report["activity"]), report["kl_method"], report["kl_per_dim_se"]
        (2, 2, 'closed_form', None)
    """
    _check(x, num_samples, batch_size, threshold)
    with _evaluating(vae):
        sites = _sites(vae, x, num_samples, batch_size, y=y)
    reports = {name: _site_report(site, threshold) for name, site in sites.items()}
    header = {"num_points": len(x), "num_samples": int(num_samples), "threshold": float(threshold)}
    if len(reports) == 1:
        ((name, report),) = reports.items()
        return {**header, "latent_site": name, **report}
    return {**header, **_combined(reports)}


@torch.no_grad()
def predictions(program: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    r"""The mode of the program's classifier :math:`q(y\mid x)` at each point of ``x``: ``classify(x)`` returns
    its logits, shape ``(batch, num_classes)`` (:class:`~pyro_vae.models.ssvae.SSVAE` has one)."""
    was_training = program.training
    program.eval()
    try:
        return torch.cat([program.classify(xb).argmax(-1) for xb in x.split(batch_size)])
    finally:
        program.train(was_training)


def accuracy(program: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    r"""How often the program's classifier :math:`q(y\mid x)` puts its mode on the label (:func:`predictions`),
    and the binomial standard error :math:`\sqrt{a(1-a)/n}`; points labelled
    :data:`~pyro_vae.training.labels.UNLABELLED` (-1) are left out.
    """
    kept = y >= 0
    hits = predictions(program, x[kept], batch_size) == y[kept]
    a = hits.double().mean().item()
    return a, math.sqrt(a * (1 - a) / len(hits)) if len(hits) > 1 else float("nan")
