r"""The loss SVI minimises, and ELBOs per data point for evaluation.

:class:`Objective` is the negative (beta-weighted) estimate of one estimator of
:mod:`pyro_vae.infer.estimators`, on one of three paths that compute the same value and gradient from
the same draws: Pyro's traced ELBO (the reference), Pyro's JIT-compiled ELBO (``jit=True``), or
the estimator's fused loss, straight-line tensor code (``fused=True``, the fastest; see ``make bench``).
:func:`evaluate_elbo` reports the ELBO of a data set under several estimators from the same draws.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_vae.errors import ConfigError
from pyro_vae.infer.estimators import ESTIMATORS, REPORTED, check_estimator, evaluation_plan, make_estimator
from pyro_vae.models.kl import closed_form_kl, per_dimension
from pyro_vae.models.priors import PRIORS
from pyro_vae.models.vae import VAE, is_standard_program

__all__ = [
    "ESTIMATORS",
    "PATHS",
    "Objective",
    "check_estimator",
    "check_fused",
    "check_free_bits_prior",
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


def choose_path(vae: VAE, jit: bool = False, fused: bool | Literal["auto"] = "auto", compile: bool = False) -> str:
    """The path (one of :data:`PATHS`) an :class:`Objective` for ``vae`` takes.

    ``fused="auto"`` takes the fused path unless ``jit`` asks for Pyro's JIT or ``vae`` redefines
    its program (a different program, which only Pyro's traces can evaluate). ``compile`` compiles
    the fused path, whatever ``fused`` says.
    """
    check_fused(fused, jit)
    if compile and jit:
        raise ConfigError("compile and jit cannot both be true: compile compiles the fused path; pass jit=False")
    if (fused is True or compile) and not is_standard_program(vae):
        raise ConfigError(
            f"{{fused}}: {type(vae).__name__} redefines the model or guide (or what they call), "
            "which the fused ELBO cannot know; use {fused=}False",
            "fused",
        )
    if compile:
        return "compiled"
    if jit:
        return "jit"
    return "fused" if fused is True or (fused == "auto" and is_standard_program(vae)) else "pyro"


def make_elbo(estimator: str = "mc", num_particles: int = 1, jit: bool = False, free_bits: float = 0.0) -> ELBO:
    """Pyro's ELBO for the VAE's model/guide pair: the reference of the estimator registered as ``estimator``.

    Args:
        estimator: a name in :data:`~pyro_vae.infer.estimators.ESTIMATORS`: ``"mc"`` (Monte Carlo,
            ``Trace_ELBO``) or ``"analytic"`` (closed-form KL, ``TraceMeanField_ELBO``).
        num_particles: samples of :math:`z` per data point, drawn in one vectorized pass.
        jit: compile the estimator (Pyro's ``JitTrace_ELBO`` / ``JitTraceMeanField_ELBO``).
            The batch shape is fixed at the first call, so give it equal-sized batches.
        free_bits: a floor under each latent dimension's KL term (``TraceFreeBits_ELBO``).
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
    """The negative ELBO that Pyro's estimator computes for ``vae.model`` / ``vae.guide``, as plain tensor code.

    From the same random state the value and the gradient equal those of :func:`make_elbo`'s
    ELBO to float rounding (see :meth:`~pyro_vae.infer.estimators.Estimator.fused_loss`); the tests
    hold it to that. What it saves is Pyro's per-step bookkeeping (traces, messengers, the param
    store), which costs a few milliseconds a step whatever the batch size.

    It is valid for the model and guide of :class:`~pyro_vae.models.vae.VAE` itself; a subclass that
    redefines either is a different program, and :class:`Objective` refuses to fuse it.
    """
    if free_bits:
        check_free_bits_prior(vae)
    return make_estimator(estimator, num_particles).fused_loss(vae, x, num_data, beta, free_bits)


class Objective:
    r"""The loss SVI minimises for one VAE: the negative (beta-weighted) ELBO, differentiable.

    .. math:: \text{loss}(x_{1..B}) = -\frac{N}{B}\sum_{n=1}^{B}\Big(\mathbb E_q[\log p(x_n\mid z)]
        - \beta\,\mathrm{KL}(q(z\mid x_n)\,\|\,p(z))\Big)

    an unbiased estimate of the negative ELBO of all ``N = num_data`` points from a minibatch.

    Args:
        vae: the model/guide pair.
        estimator, num_particles, jit: see :func:`make_elbo`.
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
        self.path = choose_path(vae, jit, fused, compile)
        self.estimator = make_estimator(estimator, num_particles)
        self.estimator.check_options(beta, jit, free_bits)
        if free_bits:
            check_free_bits_prior(vae)
        self.elbo = self.estimator.pyro_elbo(jit, free_bits)
        self.name, self.num_particles, self.beta, self.free_bits = estimator, num_particles, beta, free_bits
        self.vae = vae
        # Bound once: Pyro's JIT caches compiled code by id(model), and ``vae.model`` makes a new
        # bound-method object (a new id) at every attribute access, which would re-trace each step.
        self.model, self.guide = vae.model, vae.guide
        self._fused = self._fused_loss
        if self.path == "compiled":
            # fallback_random: the compiled code draws z from torch's generator, as the eager code and Pyro do.
            self._fused = torch.compile(self._fused_loss, options={"fallback_random": True})

    def _fused_loss(self, x: Tensor, num_data: int | None) -> Tensor:
        return self.estimator.fused_loss(self.vae, x, num_data, self.beta, self.free_bits)

    @property
    def fused(self) -> bool:
        """Whether the estimator's fused tensor code computes the loss (eagerly or compiled)."""
        return self.path in ("fused", "compiled")

    @property
    def jit(self) -> bool:
        return self.path == "jit"

    def __call__(self, x: Tensor, num_data: int | None = None) -> Tensor:
        if self.fused:
            return self._fused(x, num_data)
        with warnings.catch_warnings():
            # Pyro's JIT runs on torch.jit.trace, which torch 2.x marks deprecated but still supports.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
            # A NaN loss is reported by the training loop, with the epoch and step; Pyro's warning would repeat it.
            warnings.filterwarnings("ignore", message="Encountered NaN")
            return self.elbo.differentiable_loss(self.model, self.guide, x, num_data=num_data, beta=self.beta)


def check_free_bits_prior(vae: VAE) -> None:
    """A :class:`ConfigError` unless the prior is a product over latent dimensions (free bits needs each one's KL)."""
    if per_dimension(vae.prior()) is None:
        name = next((n for n in PRIORS if PRIORS.get(n) is type(vae.prior)), type(vae.prior).__name__)
        raise ConfigError(
            f"{{free_bits}} needs the KL term of each latent dimension, and the prior {name!r} is "
            "not a product over dimensions; use a factorised prior (standard_normal, normal, laplace, student_t) "
            "or {free_bits=}0",
            "free_bits",
        )


def kl_methods(vae: VAE, x: Tensor, estimator: str | None = None) -> dict[str, str]:
    """How each latent site's KL term is estimated: ``"closed_form"`` or ``"sampled"``.

    An estimator whose ``closed_form_kl`` is false (``"mc"``) samples every term. One that is true
    (``"analytic"``) uses the closed form wherever ``kl_divergence(guide site, model site)`` is
    registered, exactly as :class:`~pyro.infer.TraceMeanField_ELBO` decides, and samples the
    others. ``estimator=None`` answers whether a closed form is registered at all.
    """
    with torch.no_grad():
        guide_trace, model_trace = _traces(vae, x)
    uses_closed_form = estimator is None or make_estimator(estimator).closed_form_kl
    methods = {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site) or name not in guide_trace.nodes:
            continue
        closed = uses_closed_form and closed_form_kl(guide_trace.nodes[name]["fn"], site["fn"]) is not None
        methods[name] = "closed_form" if closed else "sampled"
    return methods


def _traces(vae: VAE, x: Tensor, num_particles: int = 1) -> tuple[poutine.Trace, poutine.Trace]:
    """One run of the guide, and of the model replayed against it, vectorized over ``num_particles``."""
    particles = lambda fn: pyro.plate("particles", num_particles, dim=-2)(fn)  # noqa: E731
    guide_trace = poutine.trace(particles(vae.guide)).get_trace(x)
    model_trace = poutine.trace(poutine.replay(particles(vae.model), trace=guide_trace)).get_trace(x)
    return guide_trace, model_trace


def elbo_terms(vae: VAE, x: Tensor, num_particles: int = 1) -> dict[str, Tensor | None]:
    r"""Each term of the ELBO per particle and data point, from one run of the guide and the model.

    Returns a dict of tensors of shape ``(num_particles, batch)``:
    ``log_likelihood`` :math:`\log p(x\mid z)`, ``log_prior`` :math:`\log p(z)`,
    ``log_q`` :math:`\log q(z\mid x)`, and ``kl``, the closed-form :math:`\mathrm{KL}(q\|p)` of
    shape ``(batch,)``, or ``None`` when no closed form is registered for the prior.
    """
    guide_trace, model_trace = _traces(vae, x, num_particles)
    z_q, z_p = guide_trace.nodes["z"], model_trace.nodes["z"]
    obs = model_trace.nodes["x"]
    kl = closed_form_kl(z_q["fn"], z_p["fn"])
    return {
        "log_likelihood": obs["fn"].log_prob(obs["value"]),
        "log_prior": z_p["fn"].log_prob(z_p["value"]),
        "log_q": z_q["fn"].log_prob(z_q["value"]),
        "kl": None if kl is None else kl[0],  # the same for every particle
    }


def elbo_per_example(vae: VAE, x: Tensor, estimator: str = "mc", num_particles: int = 1) -> Tensor:
    """The ELBO of each data point in ``x`` (nats), averaged over ``num_particles`` draws of :math:`z`.

    ``"analytic"`` falls back to the sampled KL when the prior has no closed form, like
    :class:`~pyro.infer.TraceMeanField_ELBO`.
    """
    return make_estimator(estimator, num_particles).per_example(elbo_terms(vae, x, num_particles))


@torch.no_grad()
def evaluate_elbo(
    vae: VAE,
    x: Tensor,
    num_particles: int = 1,
    batch_size: int = 1000,
    estimators: Sequence[str] = REPORTED,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Mean per-example ELBO of ``x`` under each estimator, with its standard error.

    The standard error is that of a mean over the data points,
    ``std(per-example ELBO) / sqrt(num_examples)``; it covers both the spread of the data and
    the Monte Carlo noise of each per-example estimate. All estimators are formed from the same
    draws of :math:`z`, so their difference is not blurred by independent noise.

    ``reduce`` sums a tensor over the processes of a data-parallel job, each holding its shard
    of ``x``: the sums, sums of squares and counts are added up before anything is averaged.

    Returns:
        ``{"elbo_<name>", "elbo_<name>_se", ..., "num_examples"}``, a pair per estimator named in
        ``estimators`` (by default :data:`~pyro_vae.infer.estimators.REPORTED`: ``elbo_mc``,
        ``elbo_analytic``), in nats per data point.
    """
    chosen = {e: make_estimator(e, num_particles) for e in estimators}
    was_training = vae.training
    vae.eval()
    try:
        parts: dict[str, list[Tensor]] = {e: [] for e in chosen}
        for xb in x.split(batch_size):
            terms = elbo_terms(vae, xb, num_particles)
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
) -> dict[str, float]:
    """What an evaluation of a run trained with ``estimator`` reports (``evaluation_plan``).

    The ELBO by each reported estimator with ``num_particles`` draws and, for a bound defined by its
    particles (IWAE), that bound with the ``train_particles`` it was trained with. Same keys as
    :func:`evaluate_elbo`.
    """
    out: dict[str, float] = {}
    for names, particles in evaluation_plan(estimator, num_particles, train_particles):
        out.update(evaluate_elbo(vae, x, particles, batch_size, names, reduce))
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
