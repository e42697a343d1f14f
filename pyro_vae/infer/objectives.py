r"""The loss SVI minimises, and ELBOs per data point for evaluation.

:class:`Objective` is the negative (beta-weighted) estimate of one estimator of
:mod:`pyro_vae.infer.estimators`, on one of three paths that compute the same value and gradient from
the same draws: Pyro's traced ELBO (the reference), Pyro's JIT-compiled ELBO (``jit=True``), or
the estimator's fused loss, straight-line tensor code (``fused=True``, the fastest; see ``make bench``).
:func:`evaluate_elbo` reports the ELBO of a data set under several estimators from the same draws.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.poutine.trace_struct import Trace
from torch import Tensor, nn

from pyro_vae.errors import ConfigError
from pyro_vae.infer.estimators import (
    ESTIMATORS,
    FUSED_PROGRAMS,
    REPORTED,
    check_estimator,
    evaluation_plan,
    has_fused_form,
    make_estimator,
)
from pyro_vae.infer.program import (
    batches,
    bind,
    check_methods,
    closed_form_sites,
    enumerated_sites,
    first_points,
    kept_rng,
    label_use,
    latent_sites,
    observed_sites,
    per_point,
    sample_sites,
    traces,
)
from pyro_vae.models.kl import closed_form_kl, per_dimension
from pyro_vae.models.priors import PRIORS
from pyro_vae.models.vae import VAE

__all__ = [
    "ESTIMATORS",
    "PATHS",
    "Objective",
    "check_estimator",
    "check_fused",
    "check_free_bits_prior",
    "check_program",
    "choose_path",
    "make_elbo",
    "fused_loss",
    "kl_methods",
    "elbo_terms",
    "elbo_per_example",
    "evaluate_elbo",
    "evaluate_bounds",
]

#: How an :class:`Objective` computes its estimator, fastest first: the estimator's fused tensor
#: code compiled with :func:`torch.compile`, the same code run eagerly, Pyro's JIT-compiled ELBO, or
#: Pyro's traced ELBO (the reference).
PATHS: tuple[str, ...] = ("compiled", "fused", "jit", "pyro")


def check_fused(fused: bool | str, jit: bool) -> None:
    """A :class:`ConfigError` when both the fused path and Pyro's JIT are asked for."""
    if fused is True and jit:
        raise ConfigError("fused and jit cannot both be true: fused is the faster of the two; pass jit=False")


def choose_path(
    program: nn.Module, jit: bool = False, fused: bool | Literal["auto"] = "auto", compile: bool = False
) -> str:
    """The path (one of :data:`PATHS`) an :class:`Objective` for ``program`` takes.

    A program is fused only where it declares a fused form (:func:`~pyro_vae.infer.estimators.has_fused_form`:
    the classes in :data:`~pyro_vae.infer.estimators.FUSED_PROGRAMS` do, held to Pyro's reference by the tests);
    any other takes Pyro's path.
    ``fused="auto"`` fuses wherever that is declared and ``jit`` does not ask for Pyro's JIT. ``compile``
    compiles the fused path, whatever ``fused`` says.
    """
    check_fused(fused, jit)
    if compile and jit:
        raise ConfigError("compile and jit cannot both be true: compile compiles the fused path; pass jit=False")
    declared = has_fused_form(program)
    if (fused is True or compile) and not declared:
        raise ConfigError(f"{{fused}}: {_why_not_fused(program)}; use {{fused=}}False", "fused")
    if compile:
        return "compiled"
    if jit:
        return "jit"
    return "fused" if fused is True or (fused == "auto" and declared) else "pyro"


def _why_not_fused(program: nn.Module) -> str:
    name = type(program).__name__
    if isinstance(program, tuple(FUSED_PROGRAMS)):  # a subclass, or an instance with a method replaced
        return f"{name} redefines the model or guide (or what they call), which the fused ELBO cannot know"
    return f"{name} declares no fused form of its ELBO (pyro_vae.infer.estimators.FUSED_PROGRAMS)"


def make_elbo(estimator: str = "mc", num_particles: int = 1, jit: bool = False, free_bits: float = 0.0) -> ELBO:
    r"""Pyro's ELBO for the VAE's model/guide pair: the reference of the estimator registered as ``estimator``.

    Its ``differentiable_loss(model, guide, x)`` is the negative bound; for ``"mc"`` the sampled ELBO

    .. math:: -\frac1L\sum_{l=1}^{L}\big[\log p(x, z^{(l)}) - \log q(z^{(l)} \mid x)\big], \qquad
        z^{(l)} \sim q(z \mid x),

    summed over the data points, and for ``"analytic"`` the same with the closed-form KL in place of the
    sampled :math:`\log q - \log p` where it is exact.

    Args:
        estimator: a name in :data:`~pyro_vae.infer.estimators.ESTIMATORS`: ``"mc"`` (Monte Carlo,
            ``Trace_ELBO``), ``"analytic"`` (closed-form KL, as ``TraceMeanField_ELBO``), ``"stl"``, or the
            importance-weighted ``"iwae"`` and ``"dreg"``.
        num_particles: samples of :math:`z` per data point, drawn in one vectorized pass.
        jit: compile the estimator with Pyro's JIT (``mc`` and ``analytic`` only).
            The batch shape is fixed at the first call, so give it equal-sized batches.
        free_bits: a floor, in nats, under each latent dimension's KL term
            (:class:`~pyro_vae.infer.references.TraceFreeBits_ELBO`; ``mc`` and ``analytic`` only).

    Returns:
        A :class:`pyro.infer.ELBO`, whose ``loss`` and ``differentiable_loss`` take ``(model, guide, x)``.

    Reference:
        Auto-Encoding Variational Bayes (Kingma & Welling, 2014).

    Example:
        >>> import torch
        >>> from pyro_vae import make_vae
        >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [16]})
        >>> elbo = make_elbo("analytic", num_particles=2)
        >>> elbo.differentiable_loss(vae.model, vae.guide, torch.rand(5, 8, 8)).shape
        torch.Size([])
    """
    return make_estimator(estimator, num_particles).pyro_elbo(jit, free_bits)


def fused_loss(
    vae: VAE,
    x: Tensor,
    num_data: int | None = None,
    estimator: str = "mc",
    num_particles: int = 1,
    beta: float = 1.0,
    free_bits: float = 0.0,
) -> Tensor:
    r"""The negative ELBO that Pyro's estimator computes for ``vae.model`` / ``vae.guide``, as plain tensor code.

    .. math:: \text{loss} = -\frac{N}{B}\sum_{n=1}^{B}\frac1L\sum_{l=1}^{L}\Big(\log p(x_n\mid z_n^{(l)})
        + \beta\,[\log p(z_n^{(l)}) - \log q(z_n^{(l)}\mid x_n)]\Big), \qquad z_n^{(l)} \sim q(z\mid x_n),

    for ``mc`` (the other estimators: :meth:`~pyro_vae.infer.estimators.Estimator.fused_loss`). From the same
    random state the value and the gradient equal those of :func:`make_elbo`'s ELBO to float rounding; the
    tests hold it to that. What it saves is Pyro's per-step bookkeeping (traces, messengers, the param
    store), which costs a few milliseconds a step whatever the batch size.

    It is valid for a program that declares a fused form (the classes in
    :data:`~pyro_vae.infer.estimators.FUSED_PROGRAMS`); a subclass that redefines either method is a different
    program, and is refused with a :class:`~pyro_vae.ConfigError`.

    Args:
        vae: a program that declares a fused form (:func:`~pyro_vae.infer.estimators.has_fused_form`).
        x: a minibatch, shape ``(B, *event_shape)``.
        num_data: :math:`N`, the size of the data set ``x`` is drawn from (default ``len(x)``).
        estimator: a name in :data:`~pyro_vae.infer.estimators.ESTIMATORS`.
        num_particles: :math:`L`, draws of :math:`z` per data point.
        beta: :math:`\beta`, the weight of the KL term (1 is the ELBO; 0 drops the latent terms).
        free_bits: a floor, in nats, under each latent dimension's KL term (0: off).

    Returns:
        The loss, a scalar tensor that carries the gradient of the program's parameters.

    Reference:
        Auto-Encoding Variational Bayes (Kingma & Welling, 2014), estimators A and B.

    Example:
        >>> import torch
        >>> from pyro_vae import make_vae
        >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [16]})
        >>> loss = fused_loss(vae, torch.rand(5, 8, 8), num_data=100, estimator="analytic")
        >>> loss.shape, loss.requires_grad
        (torch.Size([]), True)
    """
    if not has_fused_form(vae):
        raise ConfigError(f"fused_loss: {_why_not_fused(vae)}; use Objective(program, fused=False)")
    if free_bits:
        check_free_bits_prior(vae)
    return make_estimator(estimator, num_particles).fused_loss(vae, x, num_data, beta, free_bits)


class Objective:
    r"""The loss SVI minimises for one program: the negative (beta-weighted) ELBO, differentiable.

    .. math:: \text{loss}(x_{1..B}) = -\frac{N}{B}\sum_{n=1}^{B}\Big(\mathbb E_q[\log p(x_n\mid z)]
        - \beta\,\mathrm{KL}(q(z\mid x_n)\,\|\,p(z))\Big)

    an unbiased estimate of the negative ELBO of all ``N = num_data`` points from a minibatch, summed over
    every site of the program (:mod:`pyro_vae.infer.program`; the scaling by :math:`N/B` and :math:`\beta`
    is applied from outside, or passed to a program that declares ``num_data`` and ``beta``).

    Args:
        vae: the program, a model/guide pair (:mod:`pyro_vae.infer.program`).
        estimator: a name in :data:`~pyro_vae.infer.estimators.ESTIMATORS` (see :func:`make_elbo`).
        num_particles: draws of the latent sites per data point, in one vectorized pass.
        jit: run Pyro's JIT-compiled ELBO (``mc`` and ``analytic`` only; equal-sized batches); not with
            ``fused=True``.
        beta: weight of the KL term (1 is the ELBO; 0 drops the KL).
        fused: compute the estimator as plain tensor code (the estimator's
            :meth:`~pyro_vae.infer.estimators.Estimator.fused_loss`), the fastest exact path; not with
            ``jit``. ``"auto"`` fuses wherever that is exact (see :func:`choose_path`); the default,
            ``False``, runs Pyro's ELBO, the reference.
        free_bits: a floor, in nats per data point, under each latent dimension's KL term
            (:func:`~pyro_vae.models.kl.free_bits_kl`; 0: off); with ``mc`` and ``analytic`` and a prior that is a
            product over dimensions.
        compile: compile the fused path with :func:`torch.compile` (the first call takes seconds;
            about 6% faster a step on ``make bench``'s machine). Its draws are torch's, as on the
            fused path.

    Attributes:
        path: the path taken, one of :data:`PATHS`.

    References:
        - Auto-Encoding Variational Bayes (Kingma & Welling, 2014).
        - beta-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework (Higgins et al., 2017).
        - Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016): free bits.

    Example:
        >>> import torch
        >>> from pyro_vae.models.vae import make_vae
        >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [16]})
        >>> objective = Objective(vae, "analytic", fused="auto")
        >>> objective.path
        'fused'
        >>> objective(torch.rand(4, 8, 8), num_data=100).backward()
    """

    def __init__(
        self,
        vae: VAE,
        estimator: str = "mc",
        num_particles: int = 1,
        jit: bool = False,
        beta: float = 1.0,
        fused: bool | Literal["auto"] = False,
        compile: bool = False,
        free_bits: float = 0.0,
    ) -> None:
        if not beta >= 0:
            raise ConfigError(f"{{beta}} must be >= 0 (got {beta})", "beta")
        check_methods(vae)
        self.path = choose_path(vae, jit, fused, compile)
        self.estimator = make_estimator(estimator, num_particles)
        self.estimator.check_options(beta, jit, free_bits)
        if free_bits and has_fused_form(vae):  # any other program is checked at its first call
            check_free_bits_prior(vae)
        self.elbo = self.estimator.pyro_elbo(jit, free_bits)
        self.name, self.num_particles, self.beta, self.free_bits = estimator, num_particles, beta, free_bits
        self.vae = vae
        # Bound once: Pyro's JIT caches compiled code by id(model), and ``vae.model`` makes a new
        # bound-method object (a new id) at every attribute access, which would re-trace each step.
        self.model, self.guide = bind(vae.model), bind(vae.guide)
        self.labels = label_use(vae)  # whether a batch carries y (see pyro_vae.models.programs.label_use)
        if jit and self.labels != "none":  # Pyro's JIT traces its arguments, and y is None on unlabelled batches
            raise ConfigError(
                f"{{jit}}: {type(vae).__name__} takes labels, which Pyro's JIT cannot trace (y is None where a label "
                "is latent); drop {jit=}",
                "jit=True",
            )
        # the fused form is the declared program's own; any other is checked once, and so is an enumerated site
        self._checked = self.fused and self.labels == "none"
        self._auxiliary: Tensor | float = 0.0
        self._fused = self._fused_loss
        if self.path == "compiled":
            # fallback_random: the compiled code draws z from torch's generator, as the eager code and Pyro do.
            self._fused = torch.compile(self._fused_loss, options={"fallback_random": True})

    def _fused_loss(self, x: Tensor, num_data: int | None, y: Tensor | None = None) -> Tensor:
        return self.estimator.fused_loss(self.vae, x, num_data, self.beta, self.free_bits, y)

    @property
    def fused(self) -> bool:
        """Whether the estimator's fused tensor code computes the loss (eagerly or compiled)."""
        return self.path in ("fused", "compiled")

    @property
    def jit(self) -> bool:
        return self.path == "jit"

    def __call__(
        self, x: Tensor, num_data: int | None = None, y: Tensor | None = None, also: Sequence[tuple] = ()
    ) -> Tensor:
        """The loss of minibatch ``x`` (with labels ``y``, ``None`` where they are latent, for a program that
        takes them), an estimate of the negative ELBO of ``num_data`` points; plus, on labelled points, the
        program's ``auxiliary_loss(x, y)`` where it has one, scaled alike (:mod:`pyro_vae.infer.program`).
        ``also``: further ``(x, y, num_data)`` parts of the same step, whose losses are added."""
        if also:
            return self(x, num_data, y) + sum(self(part_x, n, part_y) for part_x, part_y, n in also)
        if not self._checked:  # a label that may be latent is checked latent: where the guide would enumerate it
            checked_y = None if self.labels == "optional" else y
            if check_program(self.vae, x, self.name, self.free_bits, jit=self.jit, y=checked_y):
                self.elbo = self.estimator.pyro_elbo(self.jit, enumerate=True)
            self._checked = True
        loss = self._fused(x, num_data, y) if self.fused else self._pyro_loss(x, num_data, y)
        auxiliary = getattr(self.vae, "auxiliary_loss", None)
        if y is None or auxiliary is None:
            return loss
        term = (num_data if num_data is not None else len(x)) / len(x) * auxiliary(x, y)
        self._auxiliary = self._auxiliary + term.detach()
        return loss + term

    def take_auxiliary(self) -> float:
        """The program's auxiliary terms added to the losses since the last call (the training loop reports the
        ELBO without them)."""
        value, self._auxiliary = float(self._auxiliary), 0.0
        return value

    def _pyro_loss(self, x: Tensor, num_data: int | None, y: Tensor | None) -> Tensor:
        batch = (x,) if self.labels == "none" else (x, y)
        with warnings.catch_warnings():
            # Pyro's JIT runs on torch.jit.trace, which torch 2.x marks deprecated but still supports.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
            # A NaN loss is reported by the training loop, with the epoch and step; Pyro's warning would repeat it.
            warnings.filterwarnings("ignore", message="Encountered NaN")
            return self.elbo.differentiable_loss(self.model, self.guide, *batch, num_data=num_data, beta=self.beta)


def check_free_bits_prior(vae: VAE) -> None:
    """A :class:`ConfigError` unless the prior is a product over latent dimensions (free bits needs each one's KL).

    A program without a ``prior`` module (the semi-supervised one) is checked site by site by :func:`check_program`.
    """
    if not callable(getattr(vae, "prior", None)):
        return
    if per_dimension(vae.prior()) is None:
        name = next((n for n in PRIORS if PRIORS.get(n) is type(vae.prior)), type(vae.prior).__name__)
        raise ConfigError(
            f"{{free_bits}} needs the KL term of each latent dimension, and the prior {name!r} is "
            "not a product over dimensions; use a factorised prior (standard_normal, normal, laplace, student_t) "
            "or {free_bits=}0",
            "free_bits",
        )


def _check_param_store(vae: nn.Module, guide_trace: Trace, model_trace: Trace) -> None:
    """A :class:`ConfigError` where Pyro's param store holds another module's parameter under this program's name.

    Pyro's JIT reads the parameters from the store; one left there by an earlier module registered with the same
    ``pyro.module`` name would be read instead of the program's own.
    """
    own = {id(p) for p in vae.parameters()}
    for trace in (guide_trace, model_trace):
        for site in trace.nodes.values():
            if site["type"] == "param" and "$$$" in site["name"] and id(site["value"]) not in own:
                raise ConfigError(
                    f"{{jit}}: Pyro's param store holds {site['name']!r} of another module registered under the "
                    "same pyro.module name, which the JIT would read instead of this program's; give pyro.module "
                    "a name unique to each instance, or call pyro.clear_param_store() first",
                    "jit",
                )


def check_program(
    vae: nn.Module, x: Tensor, estimator: str = "mc", free_bits: float = 0.0, jit: bool = False, y: Tensor | None = None
) -> bool:
    """A one-line :class:`ConfigError` for a program that breaks the contract, or that ``estimator`` cannot train.

    The contract (:mod:`pyro_vae.infer.program`) is checked on a run of the first two points of ``x``; then what
    the estimator needs of every latent site (:meth:`~pyro_vae.infer.estimators.Estimator.check_site`), and, with
    ``free_bits``, a KL term per latent dimension: guide and model distributions that are products over dimensions;
    with ``jit``, that Pyro's param store holds the program's own parameters. Returns whether the guide
    enumerates a site (:func:`~pyro_vae.infer.program.enumerated_sites`), which only an estimator that
    :attr:`~pyro_vae.infer.estimators.Estimator.enumerates` trains (and not with free bits).
    """
    with kept_rng(x):
        guide_trace, model_trace = traces(vae, *first_points(vae, x, y), enumerate=True)
    if jit:
        _check_param_store(vae, guide_trace, model_trace)
    chosen = ESTIMATORS.get(estimator)
    enumerated = enumerated_sites(guide_trace)
    if enumerated and (free_bits or not chosen.enumerates):
        setting = "{free_bits}" if free_bits else f"{{estimator}} {estimator!r}"
        raise ConfigError(
            f"{setting}: the guide enumerates site {enumerated[0]!r}, which only 'mc' (TraceEnum_ELBO) sums out in "
            "training, without free bits; train with {estimator=}'mc', or sample the site (no infer enumerate)",
            "estimator",
            "free_bits",
        )
    for name in latent_sites(guide_trace):
        chosen.check_site(guide_trace.nodes[name])
        if free_bits and None in (
            per_dimension(guide_trace.nodes[name]["fn"]),
            per_dimension(model_trace.nodes[name]["fn"]),
        ):
            raise ConfigError(
                f"{{free_bits}} needs the KL term of each latent dimension, and site {name!r} has a distribution "
                "that is not a product over dimensions; use factorised distributions there, or {free_bits=}0",
                "free_bits",
            )
    return bool(enumerated)


def kl_methods(vae: nn.Module, x: Tensor, estimator: str | None = None, y: Tensor | None = None) -> dict[str, str]:
    """How each latent site's KL term is estimated, in the guide's order: ``"closed_form"`` or ``"sampled"``.

    An estimator whose ``closed_form_kl`` is false (``"mc"``) samples every term. One that is true
    (``"analytic"``) takes the closed form where it is exact: one is registered, and the model's distribution
    at the site depends only on draws the guide made before it (:func:`~pyro_vae.infer.program.closed_form_sites`);
    it samples the others. ``estimator=None`` answers whether the closed form is exact at all. ``y``: the labels
    of ``x``, for a program that takes them.
    """
    uses_closed_form = estimator is None or make_estimator(estimator).closed_form_kl
    exact = closed_form_sites(vae.model, vae.guide, *first_points(vae, x, y))
    return {name: "closed_form" if uses_closed_form and ok else "sampled" for name, ok in exact.items()}


def elbo_terms(
    vae: nn.Module,
    x: Tensor,
    num_particles: int = 1,
    closed_form: dict[str, bool] | None = None,
    y: Tensor | None = None,
) -> dict[str, Tensor]:
    r"""Each term of the ELBO per particle and data point, summed over the program's sites, from one run of each.

    Returns tensors of shape ``(num_particles, batch)``: ``log_likelihood``, :math:`\log p(x\mid z)` summed over
    the observed sites; ``log_prior`` and ``log_q``, :math:`\log p(z)` and :math:`\log q(z\mid x)` summed over the
    latent sites; and ``kl``, the sum over latent sites of the closed-form :math:`\mathrm{KL}(q\|p)` where it is
    exact (``closed_form``, by default :func:`~pyro_vae.infer.program.closed_form_sites`) and of the sampled
    :math:`\log q - \log p` elsewhere. Densities are Pyro's: scaled and masked as the program says. ``y``: the
    labels of ``x`` for a program that takes them (:func:`~pyro_vae.infer.program.label_use`; ``None``: latent).
    A site the guide enumerates is summed out: each term is its expectation under :math:`q` of the site's
    values, :math:`\sum_y q(y \mid x)\,T(y)`, exact (:func:`enumerated_terms` keeps them apart).
    """
    terms, log_q = enumerated_terms(vae, x, num_particles, closed_form, y)
    if log_q is None:
        return terms
    shape = terms["log_q"].shape
    weight, dims = torch.broadcast_to(log_q.exp(), shape), tuple(range(len(shape) - 2))
    return {name: (weight * term).sum(dims) for name, term in terms.items()}


def enumerated_terms(
    vae: nn.Module,
    x: Tensor,
    num_particles: int = 1,
    closed_form: dict[str, bool] | None = None,
    y: Tensor | None = None,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """:func:`elbo_terms` before the enumerated sites are summed out: terms of shape ``(*values, particles,
    batch)``, one entry per joint value of the sites the guide enumerates, and the guide's log-probability of
    each value (``None`` where nothing is enumerated: the terms are then ``(particles, batch)``)."""
    batch = first_points(vae, x, y, len(x))
    if closed_form is None:
        with kept_rng(x):
            closed_form = closed_form_sites(vae.model, vae.guide, *batch)
    guide_trace, model_trace = traces(vae, *batch, num_particles=num_particles, enumerate=True)
    sites = sample_sites(guide_trace) + sample_sites(model_trace)
    shape = torch.broadcast_shapes((num_particles, len(x)), *(s["fn"].log_prob(s["value"]).shape for s in sites))
    latent = latent_sites(guide_trace)
    log_p = [per_point(model_trace.nodes[name], shape) for name in latent]
    log_q = [per_point(guide_trace.nodes[name], shape) for name in latent]
    kl = [
        _closed_kl(guide_trace.nodes[name], model_trace.nodes[name], shape) if closed_form.get(name) else q - p
        for name, p, q in zip(latent, log_p, log_q)
    ]
    terms = {
        "log_likelihood": _total([per_point(site, shape) for site in observed_sites(model_trace)], shape),
        "log_prior": _total(log_p, shape),
        "log_q": _total(log_q, shape),
        "kl": _total(kl, shape),
    }
    enumerated = [guide_trace.nodes[name] for name in enumerated_sites(guide_trace)]
    if not enumerated:
        return terms, None
    return terms, functools.reduce(torch.add, [s["fn"].log_prob(s["value"]) for s in enumerated])


def _closed_kl(guide_site: dict, model_site: dict, shape: torch.Size) -> Tensor:
    """The closed-form KL of a latent site per particle and data point, scaled and masked as the guide site."""
    kl = closed_form_kl(guide_site["fn"], model_site["fn"])
    return torch.broadcast_to(scale_and_mask(kl, guide_site["scale"], guide_site["mask"]), shape)


def _total(terms: list[Tensor], shape: torch.Size) -> Tensor:
    """The sum of per-point terms; zeros for none."""
    return functools.reduce(torch.add, terms) if terms else torch.zeros(shape)


def elbo_per_example(
    vae: nn.Module, x: Tensor, estimator: str = "mc", num_particles: int = 1, y: Tensor | None = None
) -> Tensor:
    r"""The bound that ``estimator`` estimates, for each data point of ``x``, from ``num_particles`` draws.

    With :math:`\log w_l = \log p(x, z_l) - \log q(z_l \mid x)`, :math:`z_l \sim q(z \mid x)`, :math:`l = 1..L`:

    .. math:: \hat{\mathcal L}(x) = \frac1L\sum_{l=1}^{L} \log w_l \quad \text{(the ELBO's estimators)}, \qquad
        \hat{\mathcal L}_L(x) = \log\frac1L\sum_{l=1}^{L} w_l \quad \text{(iwae, dreg)}.

    ``"analytic"`` takes the closed-form KL in place of the sampled :math:`\log q - \log p` of a latent site
    where it is exact and registered, and samples it elsewhere (:func:`kl_methods`).

    Args:
        vae: the program, a model/guide pair (:mod:`pyro_vae.infer.program`).
        x: data, shape ``(N, *event_shape)``.
        estimator: a name in :data:`~pyro_vae.infer.estimators.ESTIMATORS`.
        num_particles: :math:`L`, draws of the latent sites per data point.
        y: the labels of ``x``, for a program that takes them (``None``: latent).

    Returns:
        The estimate of each point in nats, shape ``(N,)``.

    References:
        - Auto-Encoding Variational Bayes (Kingma & Welling, 2014).
        - Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2016).

    Example:
        >>> import torch
        >>> from pyro_vae import make_vae
        >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [16]})
        >>> elbo_per_example(vae, torch.rand(5, 8, 8), "iwae", num_particles=10).shape
        torch.Size([5])
    """
    check_summable(vae, x, [estimator], y)
    return make_estimator(estimator, num_particles).per_example(elbo_terms(vae, x, num_particles, y=y))


def check_summable(vae: nn.Module, x: Tensor, estimators: Sequence[str], y: Tensor | None = None) -> None:
    """A one-line :class:`ConfigError` where a guide enumerates a site and an estimator's value is not linear in
    the terms (the importance-weighted bound): :func:`elbo_terms` sums enumerated sites out of each term."""
    bounds = [e for e in estimators if ESTIMATORS.get(e).bound != "elbo"]
    if not bounds:
        return
    with kept_rng(x):
        enumerated = enumerated_sites(traces(vae, *first_points(vae, x, y), enumerate=True)[0])
    if enumerated:
        raise ConfigError(
            f"{{estimator}} {bounds[0]!r}: the guide enumerates site {enumerated[0]!r}, and the importance-weighted "
            "bound of an enumerated site is not implemented; use {estimator=}'mc' or 'analytic'",
            "estimator",
        )


@torch.no_grad()
def evaluate_elbo(
    vae: VAE,
    x: Tensor,
    num_particles: int = 1,
    batch_size: int = 1000,
    estimators: Sequence[str] = REPORTED,
    reduce: Callable[[Tensor], Tensor] | None = None,
    y: Tensor | None = None,
) -> dict[str, float]:
    r"""Mean per-example ELBO of ``x`` under each estimator, with its standard error, in nats per data point.

    With :math:`\hat{\mathcal L}(x_n)` the estimate of point :math:`n` (:func:`elbo_per_example`),

    .. math:: \bar{\mathcal L} = \frac1N\sum_{n=1}^{N}\hat{\mathcal L}(x_n), \qquad
        \mathrm{se} = \frac{\operatorname{std}_n \hat{\mathcal L}(x_n)}{\sqrt N};

    the standard error covers both the spread of the data and the Monte Carlo noise of each per-example
    estimate. All estimators are formed from the same draws of :math:`z`, so their difference is not blurred
    by independent noise. The program is evaluated in eval mode, without gradients, and left as it was.

    Args:
        vae: the program, a model/guide pair (:mod:`pyro_vae.infer.program`).
        x: data, shape ``(N, *event_shape)``.
        num_particles: draws of the latent sites per data point.
        batch_size: data points per pass.
        estimators: names in :data:`~pyro_vae.infer.estimators.ESTIMATORS`.
        reduce: sums a tensor over the processes of a data-parallel job, each holding its shard of ``x``:
            the sums, sums of squares and counts are added up before anything is averaged (``None``: one process).
        y: the labels of ``x``, for a program that takes them (``None``: latent).

    Returns:
        ``{"elbo_<name>", "elbo_<name>_se", ..., "num_examples"}``, a pair per estimator named in
        ``estimators`` (by default :data:`~pyro_vae.infer.estimators.REPORTED`: ``elbo_mc``,
        ``elbo_analytic``), in nats per data point; ``num_examples`` is :math:`N` (summed over the processes).

    Example:
        >>> import torch
        >>> from pyro_vae import make_vae
        >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [16]})
        >>> result = evaluate_elbo(vae, torch.rand(20, 8, 8), num_particles=2)
        >>> sorted(result)
        ['elbo_analytic', 'elbo_analytic_se', 'elbo_mc', 'elbo_mc_se', 'num_examples']
        >>> result["num_examples"]
        20
    """
    chosen = {e: make_estimator(e, num_particles) for e in estimators}
    check_methods(vae)
    check_summable(vae, x, estimators, y)
    was_training = vae.training
    vae.eval()
    try:
        parts: dict[str, list[Tensor]] = {e: [] for e in chosen}
        with kept_rng(x):
            closed_form = closed_form_sites(vae.model, vae.guide, *first_points(vae, x, y))
        for xb, *yb in batches(vae, x, y, batch_size):
            terms = elbo_terms(vae, xb, num_particles, closed_form, *yb)
            for e, estimator in chosen.items():
                parts[e].append(estimator.per_example(terms))
        values = {e: torch.cat(v) for e, v in parts.items()}
    finally:
        vae.train(was_training)
    if reduce is not None:
        return _reduced_summary(values, reduce)
    n = len(x)
    out: dict[str, float] = {}
    for e, v in values.items():
        v = v.double()
        out[f"elbo_{e}"] = v.mean().item()
        out[f"elbo_{e}_se"] = (v.std().item() / math.sqrt(n)) if n > 1 else float("nan")
    out["num_examples"] = n
    return out


def evaluate_bounds(
    vae: VAE,
    x: Tensor,
    estimator: str,
    num_particles: int = 1,
    train_particles: int = 1,
    batch_size: int = 1000,
    reduce: Callable[[Tensor], Tensor] | None = None,
    y: Tensor | None = None,
) -> dict[str, float]:
    """What an evaluation of a run trained with ``estimator`` reports (``evaluation_plan``).

    The ELBO by each reported estimator with ``num_particles`` draws and, for a bound defined by its
    particles (IWAE), that bound with the ``train_particles`` it was trained with. Same keys as
    :func:`evaluate_elbo` (``y``: the labels of a program that needs them).
    """
    out: dict[str, float] = {}
    for names, particles in evaluation_plan(estimator, num_particles, train_particles):
        out.update(evaluate_elbo(vae, x, particles, batch_size, names, reduce, y))
    return out


def _reduced_summary(values: dict[str, Tensor], reduce: Callable[[Tensor], Tensor]) -> dict[str, float]:
    """Mean and standard error of per-example values held in shards, from their summed moments."""
    stats = torch.stack(
        [
            torch.stack(
                [
                    v.double().sum(),
                    v.double().square().sum(),
                    torch.tensor(float(len(v)), dtype=torch.float64, device=v.device),
                ]
            )
            for v in values.values()
        ]
    )
    stats = reduce(stats).cpu()
    out: dict[str, float] = {}
    for e, (total, squares, n) in zip(values, stats.tolist()):
        mean = total / n
        out[f"elbo_{e}"] = mean
        out[f"elbo_{e}_se"] = math.sqrt(max(squares - n * mean * mean, 0.0) / (n - 1) / n) if n > 1 else float("nan")
    out["num_examples"] = int(stats[0, 2].item()) if len(stats) else 0
    return out
