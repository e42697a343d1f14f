r"""Estimators of the ELBO as registry entries: one class each, chosen by name (``train.elbo``).

An estimator knows three things about the bound it estimates for :class:`~pyro_vae.models.vae.VAE`:

- its **Pyro reference**: the :class:`~pyro.infer.ELBO` that runs ``vae.model`` / ``vae.guide``
  (:meth:`Estimator.pyro_elbo`, with a JIT-compiled variant);
- its **fused loss**: the same estimate, value and gradient from the same draws, as plain tensor
  code without Pyro's per-step traces (:meth:`Estimator.fused_loss`, tested equal to the reference);
- its **value per data point** for evaluation, from the terms of one run of guide and model
  (:meth:`Estimator.per_example`).

Three entries target the evidence lower bound

.. math:: \mathcal L(x) = \mathbb E_{q(z\mid x)}[\log p(x\mid z)] - \mathrm{KL}(q(z\mid x)\,\|\,p(z))
    \le \log p(x).

- ``"mc"`` (:class:`~pyro.infer.Trace_ELBO`) estimates all of it from samples
  :math:`z^{(l)} \sim q`: :math:`\frac1L\sum_l \log p(x\mid z^{(l)}) + \log p(z^{(l)}) - \log q(z^{(l)}\mid x)`.
- ``"analytic"`` (:class:`~pyro_vae.infer.references.TraceAnalytic_ELBO`, Pyro's ``TraceMeanField_ELBO`` where it
  is exact) samples the reconstruction term and uses the closed-form KL (:func:`pyro_vae.models.kl.gaussian_kl`)
  of each latent site whose closed form is registered and exact.
- ``"stl"``: ``mc``'s value with the sticking-the-landing gradient (no score term).

Two target the importance-weighted bound :math:`\mathcal L_K(x) = \mathbb E[\log\frac1K\sum_k
p(x, z_k)/q(z_k\mid x)]` of :math:`K` = ``num_particles`` draws:

- ``"iwae"``, its value and reparameterised gradient;
- ``"dreg"``, the same value with the doubly reparameterized gradient for the encoder.

The references of the last three are in :mod:`pyro_vae.infer.references` (Pyro ships no such estimators,
and its ``RenyiELBO`` is not the per-data-point IWAE bound under minibatch scaling).

Adding an estimator is one subclass, one ``@ESTIMATORS.register`` and one row in the parametrized
tests; nothing outside this module asks for an estimator by name.

Reference:
    Auto-Encoding Variational Bayes (Kingma & Welling, 2014), estimators A and B.

Example:
    >>> list(ESTIMATORS)
    ['mc', 'analytic', 'stl', 'iwae', 'dreg']
    >>> make_estimator("analytic", num_particles=4).closed_form_kl
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from pyro.infer import ELBO, JitTrace_ELBO, JitTraceEnum_ELBO, Trace_ELBO, TraceEnum_ELBO
from torch import Tensor
from torch.distributions import Distribution, Independent

from pyro_vae.errors import ConfigError
from pyro_vae.infer.references import (
    JitTraceAnalytic_ELBO,
    TraceAnalytic_ELBO,
    TraceDReG_ELBO,
    TraceFreeBits_ELBO,
    TraceIWAE_ELBO,
    TraceSTL_ELBO,
    square_weights,
)
from pyro_vae.models.fused import Draw, gaussian
from pyro_vae.models.hierarchical import Hierarchical
from pyro_vae.models.kl import (  # importing kl also registers the Gaussian closed form
    UnitNormal,
    closed_form_kl,
    coordinate_kl,
    free_bits_kl,
)
from pyro_vae.models.ssvae import SSVAE
from pyro_vae.models.stacked import M1M2
from pyro_vae.models.vae import VAE
from pyro_vae.registry import Registry

__all__ = [
    "ESTIMATORS",
    "BOUNDS",
    "REPORTED",
    "Estimator",
    "MonteCarloELBO",
    "AnalyticKLELBO",
    "StickingTheLandingELBO",
    "IWAE",
    "DReG",
    "make_estimator",
    "FUSED_PROGRAMS",
    "has_fused_form",
    "runs_as",
    "log_weight",
    "check_estimator",
    "reported_with",
    "value_name",
    "evaluation_plan",
]

#: The bounds the estimators target, as messages name them.
BOUNDS: dict[str, str] = {"elbo": "ELBO", "iwae": "IWAE bound"}

#: Estimators by name; each entry is an :class:`Estimator` subclass.
ESTIMATORS: Registry = Registry("estimator", context=("num_particles",), group="pyro_vae.estimators")

#: Programs whose ELBO the estimators' fused tensor code computes (:meth:`Estimator.fused_loss`), each held to
#: Pyro's reference by the tests (``tests/test_estimators.py``). Exact classes: a subclass may redefine its program,
#: and is fused only once it is added here, with a test that holds it to the reference.
#: Each declares the fused form of :mod:`pyro_vae.models.fused`.
FUSED_PROGRAMS: set[type] = {VAE, Hierarchical, SSVAE, M1M2}


def runs_as(program: Any, cls: type) -> bool:
    """Whether ``program`` is an instance of exactly ``cls`` that runs as its class says.

    An instance that replaces a method of its class (``vae.decode = ...``) runs another program.
    """
    return type(program) is cls and not any(callable(v) and hasattr(cls, k) for k, v in vars(program).items())


def has_fused_form(program: Any) -> bool:
    """Whether ``program`` declares a fused form: it runs as a class in :data:`FUSED_PROGRAMS` (:func:`runs_as`)."""
    return type(program) in FUSED_PROGRAMS and runs_as(program, type(program))


def log_weight(terms: dict[str, Tensor]) -> Tensor:
    r""":math:`\log p(x, z) - \log q(z \mid x)` per particle and data point, from the terms of
    :func:`~pyro_vae.infer.objectives.elbo_terms`: the sampled ELBO's term, and an importance weight's log."""
    return terms["log_likelihood"] + terms["log_prior"] - terms["log_q"]


def _name(cls: type) -> str:
    """The name an estimator class is registered under."""
    return next((n for n in ESTIMATORS if ESTIMATORS.get(n) is cls), cls.__name__)


class _JitTrace_ELBO(JitTrace_ELBO):
    """Pyro's ``JitTrace_ELBO`` whose ``differentiable_loss`` has the right gradient.

    In pyro-ppl 1.9 the compiled function returns ``loss`` without detaching it, and
    ``differentiable_loss`` returns ``loss + (surrogate - surrogate.detach())``: for a
    reparameterised model that doubles every gradient (``loss_and_grads``, which back-propagates
    the surrogate alone, is unaffected). Detaching the loss restores value and gradient.
    """

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate - surrogate.detach())


class Estimator:
    r"""An estimator of a lower bound on :math:`\log p(x)` for a program's model/guide pair.

    Subclasses set ``reference`` and ``jit_reference`` (Pyro's ELBO classes) and may override
    :meth:`fused_loss` and :meth:`per_example`; the base class implements the ELBO

    .. math:: \mathcal L(x) = \mathbb E_{q(z\mid x)}[\log p(x\mid z)] - \mathrm{KL}(q(z\mid x)\,\|\,p(z))
        \le \log p(x),

    with the closed-form KL wherever one is registered and exact when ``closed_form_kl`` is true, and
    sampled otherwise. Each one is registered in :data:`ESTIMATORS` under the name a configuration gives.

    Args:
        num_particles: draws of :math:`z` per data point, in one vectorized pass.

    Reference:
        Auto-Encoding Variational Bayes (Kingma & Welling, 2014), estimators A and B.

    Example:
        >>> import torch
        >>> from pyro_vae import ESTIMATORS, make_vae
        >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [16]})
        >>> estimator = ESTIMATORS.get("analytic")(num_particles=4)
        >>> isinstance(estimator, Estimator), estimator.closed_form_kl
        (True, True)
        >>> estimator.fused_loss(vae, torch.rand(5, 8, 8)).shape
        torch.Size([])
    """

    reference: ClassVar[type[ELBO]]
    #: Pyro's JIT-compiled variant of the reference, where there is one.
    jit_reference: ClassVar[type[ELBO] | None] = None
    #: Whether the KL term is the registered closed form (else sampled), as in ``TraceMeanField_ELBO``.
    closed_form_kl: ClassVar[bool] = False
    #: The bound it estimates; estimators of the same bound agree in expectation (``compare`` checks it).
    bound: ClassVar[str] = "elbo"
    #: The registered estimator whose value this one computes with another gradient, if any; evaluation
    #: reports that one (``stl`` has ``mc``'s value, ``dreg`` ``iwae``'s).
    value_of: ClassVar[str | None] = None
    #: Whether the number of particles is part of the bound (the IWAE bound of K samples), so that the
    #: bound is evaluated with the particles it was trained with.
    particles_define_bound: ClassVar[bool] = False
    #: Whether beta, the weight of the KL term, means anything for the bound.
    weights_kl: ClassVar[bool] = True
    #: Whether log q is evaluated with the guide's parameters held fixed (no score term, as in STL and DReG).
    stop_guide: ClassVar[bool] = False
    #: Whether free bits (a floor under each latent dimension's KL term) is implemented for it.
    free_bits: ClassVar[bool] = True
    #: Whether it trains a guide that enumerates a site (``infer={"enumerate": "parallel"}``), summing it out; Pyro's
    #: ``TraceEnum_ELBO`` is then its reference.
    enumerates: ClassVar[bool] = False
    #: Whether its gradient is taken through every latent draw, so that each latent site must be reparameterizable
    #: (``mc``'s reference, Pyro's ``Trace_ELBO``, adds score-function terms for the others).
    reparameterized: ClassVar[bool] = True

    @classmethod
    def check_site(cls, site: dict[str, Any]) -> None:
        """A one-line :class:`ConfigError` for a guide site this estimator cannot differentiate through."""
        name, fn = site["name"], site["fn"]
        if cls.reparameterized and not fn.has_rsample:
            raise ConfigError(
                f"{{estimator}} {_name(cls)!r} differentiates through every latent draw, and site {name!r} "
                f"({type(fn).__name__}) cannot be reparameterized; train this program with {{estimator=}}'mc'",
                "estimator",
            )

    @classmethod
    def check_options(cls, beta: float = 1.0, jit: bool = False, free_bits: float = 0.0) -> None:
        """A :class:`ConfigError` for settings this estimator has no meaning or no implementation for."""
        if not cls.weights_kl and beta != 1:
            raise ConfigError(
                f"{{beta}} is {beta:g}, but beta weights the KL term of the ELBO and the importance-weighted bound "
                "has none; use {beta=}1 with this estimator, or an ELBO estimator (mc, analytic, stl)",
                "beta",
            )
        if jit and cls.jit_reference is None:
            raise ConfigError(
                f"{{jit}}: {cls.__name__} has no Pyro JIT variant; drop {{jit=}} (the default fused path is faster)",
                "jit=True",
            )
        _check_free_bits(cls, free_bits, jit)

    def __init__(self, num_particles: int = 1) -> None:
        if num_particles < 1:
            raise ConfigError(f"{{num_particles}} must be >= 1 (got {num_particles})", "num_particles")
        self.num_particles = num_particles

    def pyro_elbo(self, jit: bool = False, free_bits: float = 0.0, enumerate: bool = False) -> ELBO:
        """Pyro's estimator for ``vae.model`` / ``vae.guide`` (JIT-compiled with ``jit``: fixed batch shapes then).

        With ``free_bits`` > 0 it is :class:`~pyro_vae.infer.references.TraceFreeBits_ELBO`, the ELBO with a floor
        of ``free_bits`` nats under each latent dimension's KL term; with ``enumerate`` (a guide that enumerates
        a site, for an estimator that :attr:`enumerates`), ``TraceEnum_ELBO``.
        """
        options: dict[str, Any] = dict(num_particles=self.num_particles, vectorize_particles=True, max_plate_nesting=1)
        if jit:
            # Tracing a Pyro program warns about Python ints taken from tensor shapes; the shapes are
            # fixed by design here (equal-sized batches), so the warnings carry no information.
            options["ignore_jit_warnings"] = True
        self.check_options(jit=jit, free_bits=free_bits)
        if free_bits:
            return TraceFreeBits_ELBO(free_bits, closed_form_kl=self.closed_form_kl, **options)
        if enumerate:
            # strict_enumeration_warning off: a labelled batch has nothing to enumerate, and that is expected
            return (JitTraceEnum_ELBO if jit else TraceEnum_ELBO)(**options, strict_enumeration_warning=False)
        return (self.jit_reference if jit else self.reference)(**options)

    def fused_loss(
        self,
        vae: Any,
        x: Tensor,
        num_data: int | None = None,
        beta: float = 1.0,
        free_bits: float = 0.0,
        y: Tensor | None = None,
    ) -> Tensor:
        r"""The negative (beta-weighted) ELBO that :meth:`pyro_elbo` computes, as plain tensor code.

        .. math:: \text{loss} = -\frac{N}{B}\sum_{n=1}^{B}\frac1L\sum_{l=1}^{L}\Big(\log p(x_n\mid z_n^{(l)})
            + \beta\,[\log p(z_n^{(l)}) - \log q(z_n^{(l)}\mid x_n)]\Big), \qquad z_n^{(l)} \sim q(z\mid x_n),

        summed over the program's latent sites, with :math:`\beta\,\mathrm{KL}(q\,\|\,p)` in place of a
        site's bracket where the estimator uses the closed form and it is exact, and with free bits
        :math:`\lambda` > 0 a site's bracket summed over the batch replaced by
        :math:`-B\sum_j \max(\lambda, \overline{\mathrm{KL}}_j)` (:func:`free_bits_kl`).
        The program is one that declares the fused form (:mod:`pyro_vae.models.fused`); its draws are those Pyro
        makes, ``q.rsample``: for the VAE one standard-normal tensor :math:`\epsilon` of shape
        ``(L, B, latent_dim)`` (without ``L`` when it is 1, which spares the networks a reshape each way) and
        :math:`z = \mu + \sigma\epsilon`.

        A program with a label ``y`` (``None`` where it is latent and enumerated) declares its whole ELBO instead,
        ``fused_elbo(x, y, num_particles, beta)``, summed over particles and points: ``mc``'s value, which
        :func:`~pyro_vae.infer.objectives.check_program` makes the only estimator that trains it.
        """
        L = self.num_particles
        if hasattr(vae, "fused_elbo"):
            elbo = vae.fused_elbo(x, y, L, beta)
            return elbo * (-(num_data if num_data is not None else x.shape[0]) / x.shape[0] / L)
        draws = vae.fused_guide(x, L)
        zs = [draw.z for draw in draws]
        priors, out = vae.fused_model(zs)
        elbo = vae.likelihood.total_log_prob(out, x)
        if beta:  # beta = 0 drops the latent terms (Pyro's mask), rather than multiplying them by 0
            held = vae.fused_held_guide(x, draws, zs) if self.stop_guide else [draw[:2] for draw in draws]
            for draw, prior, exact, params in zip(draws, priors, vae.fused_exact, held):
                elbo = elbo + self._latent_terms(draw, prior, exact, params, beta, free_bits)
        batch = x.shape[0]
        return elbo * (-(num_data if num_data is not None else batch) / batch / L)

    def _latent_terms(
        self, draw: Draw, prior: Distribution, exact: bool, held: tuple[Tensor, Tensor], beta: float, free_bits: float
    ) -> Tensor:
        """beta times the sum over particles and data points of one site's log p(z) - log q(z|x), or of -KL."""
        L, closed = self.num_particles, self.closed_form_kl and exact
        if free_bits:
            kl = coordinate_kl(gaussian(draw.loc, draw.scale), prior, draw.z, closed)
            return -(beta * L) * free_bits_kl(kl, free_bits)
        kl = _total_kl(gaussian(draw.loc, draw.scale), prior) if closed else None
        if kl is not None:  # the same for every particle where q's parameters have no particle dimension
            particles = draw.z.numel() // draw.loc.numel()
            return -(kl if beta * particles == 1 else beta * particles * kl)
        latent = _total_log_ratio(prior, draw.z, *held, self.stop_guide)
        return latent if beta == 1 else beta * latent

    def per_example(self, terms: dict[str, Tensor]) -> Tensor:
        """The estimate for each data point, shape ``(batch,)``, from :func:`pyro_vae.infer.objectives.elbo_terms`."""
        if self.closed_form_kl:
            return (terms["log_likelihood"] - terms["kl"]).mean(0)
        return log_weight(terms).mean(0)


@ESTIMATORS.register("mc")
class MonteCarloELBO(Estimator):
    """The ELBO with every term sampled (Pyro's ``Trace_ELBO``)."""

    reference = Trace_ELBO
    jit_reference = _JitTrace_ELBO
    reparameterized = False
    enumerates = True


@ESTIMATORS.register("analytic")
class AnalyticKLELBO(Estimator):
    """The ELBO with the closed-form KL of each latent site where it is exact (as Pyro's ``TraceMeanField_ELBO``).

    Exact: a closed form is registered, and the model's distribution at the site depends only on draws the
    guide made before it (:func:`~pyro_vae.infer.program.closed_form_sites`); the other terms are sampled.
    """

    reference = TraceAnalytic_ELBO
    jit_reference = JitTraceAnalytic_ELBO
    closed_form_kl = True


@ESTIMATORS.register("stl")
class StickingTheLandingELBO(MonteCarloELBO):
    r"""The ELBO with the "sticking the landing" gradient: :math:`\log q` at the guide's parameters held fixed.

    The value is ``mc``'s. The gradient drops the score term :math:`\nabla_\phi \log q_\phi(z)\vert_z`,
    whose expectation is zero, and keeps the path derivative through :math:`z = \mu + \sigma\epsilon`:
    when :math:`q` is the exact posterior, the encoder's gradient is zero for every draw.

    Reference:
        Sticking the Landing: Simple, Lower-Variance Gradient Estimators for Variational Inference
        (Roeder, Wu & Duvenaud, 2017).
    """

    reference = TraceSTL_ELBO
    jit_reference = None
    value_of = "mc"
    stop_guide = True
    free_bits = False
    reparameterized = True
    enumerates = False


@ESTIMATORS.register("iwae")
class IWAE(Estimator):
    r"""The importance-weighted bound of :math:`K` = ``num_particles`` samples per data point.

    .. math:: \mathcal L_K(x) = \mathbb E\Big[\log \frac1K \sum_{k=1}^K \frac{p(x, z_k)}{q(z_k \mid x)}\Big],
        \qquad z_k \sim q(z \mid x),

    a tighter bound on :math:`\log p(x)` than the ELBO (:math:`K = 1`), rising to it with :math:`K`.
    Its gradient is that of the log-mean-exp through the reparameterised draws.

    Reference:
        Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2016).
    """

    reference = TraceIWAE_ELBO
    jit_reference = None
    bound = "iwae"
    particles_define_bound = True
    weights_kl = False
    free_bits = False

    def fused_loss(
        self,
        vae: Any,
        x: Tensor,
        num_data: int | None = None,
        beta: float = 1.0,
        free_bits: float = 0.0,
        y: Tensor | None = None,  # never a label program's: an enumerated site is refused (check_program)
    ) -> Tensor:
        self.check_options(beta, free_bits=free_bits)
        L = self.num_particles
        draws = vae.fused_guide(x, L)
        # DReG weights the gradient of the log-weight at each draw: at a copy of it, so that what reaches a draw
        # through a later one (z2 drawn from z1) is not weighted twice
        zs = [draw.z.view_as(draw.z) if self.stop_guide else draw.z for draw in draws]
        priors, out = vae.fused_model(zs)
        guide = vae.fused_held_guide(x, draws, zs) if self.stop_guide else [draw[:2] for draw in draws]
        log_w = vae.likelihood(out).log_prob(x)
        for z, prior, params in zip(zs, priors, guide):
            log_w = log_w + prior.log_prob(z) - gaussian(*params).log_prob(z)
        if L == 1:  # Pyro adds no particle dimension for one particle (and one weight is 1)
            log_w = log_w.unsqueeze(0)
        elif self.stop_guide:
            square_weights(zs, log_w)
        bound = (torch.logsumexp(log_w, 0) - math.log(L)).sum()
        batch = x.shape[0]
        return bound * (-(num_data if num_data is not None else batch) / batch)

    def per_example(self, terms: dict[str, Tensor]) -> Tensor:
        log_w = log_weight(terms)
        return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


@ESTIMATORS.register("dreg")
class DReG(IWAE):
    r"""The importance-weighted bound with doubly reparameterized gradients for the encoder.

    The value and the decoder's gradient are ``iwae``'s. The encoder's gradient replaces IWAE's
    :math:`\sum_k \tilde w_k \nabla_\phi \log w_k` by its doubly reparameterized form
    :math:`\sum_k \tilde w_k^2 \,\frac{\partial \log w_k}{\partial z_k}\frac{\partial z_k}{\partial\phi}`
    (:math:`\tilde w` the normalised weights), which has the same expectation, no score term, and a
    signal-to-noise ratio that grows with :math:`K` instead of shrinking.

    Reference:
        Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives
        (Tucker, Lawson, Gu & Maddison, 2019).
    """

    reference = TraceDReG_ELBO
    value_of = "iwae"
    stop_guide = True


def _total_log_ratio(prior: Distribution, z: Tensor, loc: Tensor, scale: Tensor, stop_guide: bool) -> Tensor:
    r""":math:`\sum [\log p(z) - \log q(z \mid \cdot)]` over every particle and data point of the draws :math:`z`.

    .. math:: -\log q(z \mid \cdot) = \sum_j \tfrac12\epsilon_j^2 + \log\sigma_j + \tfrac12\log 2\pi,

    the value of ``-q.log_prob(z)`` and, since :math:`z` moves with :math:`\mu` and :math:`\sigma`,
    the same total derivative, in a third of the operations (:math:`\epsilon = (z - \mu)/\sigma` needs no
    gradient). Against the standard normal prior the two normalising constants cancel:
    :math:`\tfrac12\sum(\epsilon^2 - z^2) + \sum\log\sigma`. With ``stop_guide``, ``loc`` and ``scale`` are the
    guide's parameters held fixed (``fused_held_guide``): :math:`\epsilon = (z - \bar\mu)/\bar\sigma` keeps its
    gradient through :math:`z` (and through :math:`\bar\mu, \bar\sigma`'s dependence on earlier draws), and the
    score term is gone (sticking the landing).
    """
    if stop_guide:
        eps = (z - loc) / scale
    else:
        with torch.no_grad():
            eps = (z - loc) / scale
    particles = z.numel() // scale.numel()
    log_scale = scale.log().sum()
    log_scale = log_scale if particles == 1 else particles * log_scale
    while isinstance(prior, Independent):  # which only sums its base's log-density
        prior = prior.base_dist
    if isinstance(prior, UnitNormal) and _covers(z.shape, prior.batch_shape):
        return (eps.square().sum() - z.square().sum()) / 2 + log_scale
    neg_log_q = eps.square().sum() / 2 + (eps.numel() * math.log(2 * math.pi) / 2) + log_scale
    return prior.log_prob(z).sum() + neg_log_q


def _covers(shape: torch.Size, batch_shape: torch.Size) -> bool:
    """Whether ``batch_shape`` broadcasts to ``shape`` (``torch.broadcast_shapes`` costs tens of microseconds)."""
    n = len(batch_shape)
    return n <= len(shape) and all(b in (1, s) for b, s in zip(batch_shape, shape[len(shape) - n :]))


def _check_free_bits(cls: type[Estimator], free_bits: float, jit: bool) -> None:
    if not free_bits >= 0:
        raise ConfigError(f"{{free_bits}} must be >= 0 (got {free_bits}); 0 turns free bits off", "free_bits")
    if free_bits and not cls.free_bits:
        raise ConfigError(
            f"{{free_bits}} ({free_bits:g}) is a floor under each latent dimension's KL term of the ELBO, implemented "
            "for the estimators mc and analytic; use one of them, or {free_bits=}0",
            "free_bits",
        )
    if free_bits and jit:
        raise ConfigError(
            "{free_bits} has no Pyro JIT variant; drop {jit=} (the default fused path is faster)",
            "free_bits",
            "jit=True",
        )


def _total_kl(q: Distribution, p: Distribution) -> Tensor | None:
    """The closed-form ``KL(q || p)`` summed over the batch, or ``None`` where none is registered."""
    while isinstance(q, Independent) and isinstance(p, Independent):  # each only sums its base's KL
        if q.reinterpreted_batch_ndims != p.reinterpreted_batch_ndims:
            break
        q, p = q.base_dist, p.base_dist
    kl = closed_form_kl(q, p)
    return None if kl is None else kl.sum()


#: Estimators whose values every evaluation reports, from the same draws: the ELBO sampled and
#: with the closed-form KL.
REPORTED: tuple[str, ...] = ("mc", "analytic")


def check_estimator(name: str) -> None:
    """A :class:`ConfigError` naming the known estimators unless ``name`` is one of them."""
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise ConfigError(f"{{estimator}}: unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}", "estimator")


def make_estimator(name: str = "mc", num_particles: int = 1) -> Estimator:
    """The estimator registered as ``name``, with ``num_particles`` draws per data point."""
    check_estimator(name)
    return ESTIMATORS.get(name)(num_particles=num_particles)


def value_name(name: str) -> str:
    """The estimator whose value ``name`` reports: itself, or the one it shares its value with."""
    return ESTIMATORS.get(name).value_of or name


def reported_with(name: str) -> tuple[str, ...]:
    """The estimators an evaluation of a run trained with ``name`` reports: :data:`REPORTED`, and ``name``'s value."""
    value = value_name(name)
    return REPORTED + (() if value in REPORTED else (value,))


def evaluation_plan(name: str, num_particles: int = 1, train_particles: int = 1) -> list[tuple[tuple[str, ...], int]]:
    """Which estimators an evaluation of a run trained with ``name`` computes, and with how many particles each.

    The ELBO's estimators take ``num_particles`` draws; a bound defined by its particles (IWAE) takes
    the ``train_particles`` it was trained with, from draws of its own.
    """
    names = reported_with(name)
    fixed = tuple(n for n in names if ESTIMATORS.get(n).particles_define_bound)
    free = tuple(n for n in names if n not in fixed)
    return [(free, num_particles)] + ([(fixed, train_particles)] if fixed else [])
