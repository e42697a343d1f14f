r"""ELBO estimators, and per-example ELBO evaluation.

Both estimators target the same evidence lower bound

.. math:: \mathcal L(x) = \mathbb E_{q(z\mid x)}[\log p(x\mid z)] - \mathrm{KL}(q(z\mid x)\,\|\,p(z))
    \le \log p(x).

- ``"mc"`` (:class:`~pyro.infer.Trace_ELBO`) estimates all of it from samples
  :math:`z^{(l)} \sim q`: :math:`\frac1L\sum_l \log p(x\mid z^{(l)}) + \log p(z^{(l)}) - \log q(z^{(l)}\mid x)`.
- ``"analytic"`` (:class:`~pyro.infer.TraceMeanField_ELBO`) samples only the reconstruction term
  and uses the closed-form KL (:func:`pyro_vae.kl.gaussian_kl`) wherever one is registered.

``jit=True`` compiles the estimator with :mod:`torch.jit` through Pyro's JIT variants.
``fused=True`` computes the same estimator as straight-line tensor code
(:func:`fused_loss`): the same value and gradient from the same draws, without tracing the
model and guide at every step (see ``make bench``).

Reference:
    Auto-Encoding Variational Bayes (Kingma & Welling, 2014), estimators A and B.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_vae.errors import ConfigError
from pyro_vae.kl import closed_form_kl  # importing kl also registers the Gaussian closed form
from pyro_vae.vae import VAE, is_standard_program

__all__ = ["ESTIMATORS", "Objective", "check_estimator", "check_fused", "make_elbo", "fused_loss", "kl_methods", "elbo_terms", "elbo_per_example", "evaluate_elbo"]


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


class _JitTraceMeanField_ELBO(JitTraceMeanField_ELBO):
    """Pyro's ``JitTraceMeanField_ELBO`` without its re-trace on every call.

    In pyro-ppl 1.9 ``differentiable_loss`` tests for ``self._loss_and_surrogate_loss`` (the name
    ``JitTrace_ELBO`` uses) but stores the compiled function as ``self._differentiable_loss``, so
    the test always fails and the model is traced again at every step: about 3x slower than no
    JIT, with a tracer warning per site per step. Aliasing the stored function under the name
    that is tested makes the first compilation the only one.
    """

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        loss = super().differentiable_loss(model, guide, *args, **kwargs)
        self._loss_and_surrogate_loss = self._differentiable_loss
        return loss


#: ``name -> (estimator, its JIT-compiled variant)``.
ESTIMATORS: dict[str, tuple[type[ELBO], type[ELBO]]] = {
    "mc": (Trace_ELBO, _JitTrace_ELBO),
    "analytic": (TraceMeanField_ELBO, _JitTraceMeanField_ELBO),
}


def check_estimator(estimator: str, path: str = "train.elbo") -> None:
    """A :class:`ConfigError` naming the known estimators unless ``estimator`` is one of them."""
    if estimator not in ESTIMATORS:
        raise ConfigError(f"{path}: unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")


def check_fused(fused: bool, jit: bool) -> None:
    """A :class:`ConfigError` when both the fused path and Pyro's JIT are asked for."""
    if fused and jit:
        raise ConfigError("train.fused and train.jit cannot both be true: fused is the faster of the two; drop --jit (train.jit = false)")


def make_elbo(estimator: str = "mc", num_particles: int = 1, jit: bool = False) -> ELBO:
    """A Pyro ELBO for the VAE's model/guide pair.

    Args:
        estimator: ``"mc"`` (Monte Carlo, ``Trace_ELBO``) or ``"analytic"`` (closed-form KL,
            ``TraceMeanField_ELBO``).
        num_particles: samples of :math:`z` per data point, drawn in one vectorized pass.
        jit: compile the estimator (Pyro's ``JitTrace_ELBO`` / ``JitTraceMeanField_ELBO``).
            The batch shape is fixed at the first call, so give it equal-sized batches.
    """
    check_estimator(estimator)
    if num_particles < 1:
        raise ConfigError(f"train.num_particles must be >= 1 (got {num_particles})")
    cls = ESTIMATORS[estimator][int(jit)]
    options: dict[str, Any] = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    if jit:
        # Tracing a Pyro program warns about Python ints taken from tensor shapes; the shapes are
        # fixed by design here (equal-sized batches), so the warnings carry no information.
        options["ignore_jit_warnings"] = True
    return cls(**options)


def fused_loss(vae: VAE, x: Tensor, num_data: int | None = None, estimator: str = "mc", num_particles: int = 1, beta: float = 1.0) -> Tensor:
    r"""The negative ELBO that Pyro's estimator computes for ``vae.model`` / ``vae.guide``, as plain tensor code.

    .. math:: \text{loss} = -\frac{N}{B}\sum_{n=1}^{B}\frac1L\sum_{l=1}^{L}\Big(\log p(x_n\mid z_n^{(l)})
        + \beta\,[\log p(z_n^{(l)}) - \log q(z_n^{(l)}\mid x_n)]\Big), \qquad z_n^{(l)} \sim q(z\mid x_n),

    with :math:`\beta\,\mathrm{KL}(q\,\|\,p)` in place of the bracket for ``"analytic"`` wherever
    a closed form is registered (as :class:`~pyro.infer.TraceMeanField_ELBO` decides). The draws
    are those Pyro makes (one standard-normal tensor of shape ``(L, B, latent_dim)``), so from the
    same random state the value and the gradient equal :class:`~pyro.infer.Trace_ELBO`'s and
    :class:`~pyro.infer.TraceMeanField_ELBO`'s to float rounding; the tests hold it to that.
    What it saves is Pyro's per-step bookkeeping (traces, messengers, the param store), which
    costs a few milliseconds a step whatever the batch size.

    It is valid for the model and guide of :class:`~pyro_vae.vae.VAE` itself; a subclass that
    redefines either is a different program, and :class:`Objective` refuses to fuse it.
    """
    q = vae.encode(x)
    # Pyro's vectorized particles: z of shape (L, B, latent_dim), drawn in one call; for L = 1 the
    # same numbers without the particle dimension, which spares the networks a reshape each way.
    z = q.rsample((num_particles,)) if num_particles > 1 else q.rsample()
    elbo = vae.decode(z).log_prob(x).sum()
    if beta:  # beta = 0 drops the latent terms (Pyro's mask), rather than multiplying them by 0
        prior = vae.prior()
        kl = closed_form_kl(q, prior) if estimator == "analytic" else None
        if kl is not None:  # the same for every particle
            kl = kl.sum() if beta * num_particles == 1 else beta * num_particles * kl.sum()
            elbo = elbo - kl
        else:
            latent = (prior.log_prob(z) - q.log_prob(z)).sum()
            elbo = elbo + (latent if beta == 1 else beta * latent)
    batch = x.shape[0]
    return elbo * (-(num_data if num_data is not None else batch) / batch / num_particles)


class Objective:
    r"""The loss SVI minimises for one VAE: the negative (beta-weighted) ELBO, differentiable.

    .. math:: \text{loss}(x_{1..B}) = -\frac{N}{B}\sum_{n=1}^{B}\Big(\mathbb E_q[\log p(x_n\mid z)]
        - \beta\,\mathrm{KL}(q(z\mid x_n)\,\|\,p(z))\Big)

    an unbiased estimate of the negative ELBO of all ``N = num_data`` points from a minibatch.

    Args:
        vae: the model/guide pair.
        estimator, num_particles, jit: see :func:`make_elbo`.
        beta: weight of the KL term (1 is the ELBO; 0 drops the KL).
        fused: compute the estimator as plain tensor code (:func:`fused_loss`), the fastest
            exact path; not with ``jit`` (it is the faster of the two).

    Example:
        >>> import torch
        >>> from pyro_vae.vae import make_vae
        >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [16]})
        >>> loss = Objective(vae, "analytic")(torch.rand(4, 8, 8), num_data=100)
        >>> loss.backward()
    """

    def __init__(self, vae: VAE, estimator: str = "mc", num_particles: int = 1, jit: bool = False, beta: float = 1.0, fused: bool = False) -> None:
        if beta < 0:
            raise ConfigError(f"train.beta must be >= 0 (got {beta})")
        check_fused(fused, jit)
        if fused and not is_standard_program(vae):
            raise ConfigError(f"train.fused: {type(vae).__name__} redefines the model or guide, which the fused ELBO cannot know; set train.fused = false")
        self.elbo = make_elbo(estimator, num_particles, jit)
        self.estimator, self.num_particles, self.jit, self.beta, self.fused = estimator, num_particles, jit, beta, fused
        self.vae = vae
        # Bound once: Pyro's JIT caches compiled code by id(model), and ``vae.model`` makes a new
        # bound-method object (a new id) at every attribute access, which would re-trace each step.
        self.model, self.guide = vae.model, vae.guide

    def __call__(self, x: Tensor, num_data: int | None = None) -> Tensor:
        if self.fused:
            return fused_loss(self.vae, x, num_data, self.estimator, self.num_particles, self.beta)
        with warnings.catch_warnings():
            # Pyro's JIT runs on torch.jit.trace, which torch 2.x marks deprecated but still supports.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
            # A NaN loss is reported by the training loop, with the epoch and step; Pyro's warning would repeat it.
            warnings.filterwarnings("ignore", message="Encountered NaN")
            return self.elbo.differentiable_loss(self.model, self.guide, x, num_data=num_data, beta=self.beta)


def kl_methods(vae: VAE, x: Tensor, estimator: str) -> dict[str, str]:
    """How each latent site's KL term is estimated: ``"closed_form"`` or ``"sampled"``.

    ``"mc"`` samples every term. ``"analytic"`` uses the closed form wherever
    ``kl_divergence(guide site, model site)`` is registered, exactly as
    :class:`~pyro.infer.TraceMeanField_ELBO` decides, and samples the others.
    """
    with torch.no_grad():
        guide_trace, model_trace = _traces(vae, x)
    methods = {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site) or name not in guide_trace.nodes:
            continue
        closed = estimator == "analytic" and closed_form_kl(guide_trace.nodes[name]["fn"], site["fn"]) is not None
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


def _combine(terms: dict[str, Tensor | None], estimator: str) -> Tensor:
    """The per-example ELBO that ``estimator`` (already checked) forms from the terms of :func:`elbo_terms`."""
    if estimator == "analytic" and terms["kl"] is not None:
        return terms["log_likelihood"].mean(0) - terms["kl"]
    return (terms["log_likelihood"] + terms["log_prior"] - terms["log_q"]).mean(0)


def elbo_per_example(vae: VAE, x: Tensor, estimator: str = "mc", num_particles: int = 1) -> Tensor:
    """The ELBO of each data point in ``x`` (nats), averaged over ``num_particles`` draws of :math:`z`.

    ``"analytic"`` falls back to the sampled KL when the prior has no closed form, like
    :class:`~pyro.infer.TraceMeanField_ELBO`.
    """
    check_estimator(estimator, "estimator")
    return _combine(elbo_terms(vae, x, num_particles), estimator)


@torch.no_grad()
def evaluate_elbo(
    vae: VAE,
    x: Tensor,
    num_particles: int = 1,
    batch_size: int = 1000,
    estimators: tuple[str, ...] = ("mc", "analytic"),
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
        ``{"elbo_mc", "elbo_mc_se", "elbo_analytic", "elbo_analytic_se", "num_examples"}``
        (one pair per estimator asked for), in nats per data point.
    """
    for e in estimators:
        check_estimator(e, "estimators")
    was_training = vae.training
    vae.eval()
    try:
        parts: dict[str, list[Tensor]] = {e: [] for e in estimators}
        for xb in x.split(batch_size):
            terms = elbo_terms(vae, xb, num_particles)
            for e in estimators:
                parts[e].append(_combine(terms, e))
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


def _reduced_summary(values: dict[str, Tensor], reduce: Callable[[Tensor], Tensor]) -> dict[str, float]:
    """Mean and standard error of per-example values held in shards, from their summed moments."""
    stats = torch.stack([torch.stack([v.double().sum(), v.double().square().sum(), torch.tensor(float(len(v)), dtype=torch.float64, device=v.device)]) for v in values.values()])
    stats = reduce(stats).cpu()
    out: dict[str, float] = {}
    for e, (total, squares, n) in zip(values, stats.tolist()):
        mean = total / n
        out[f"elbo_{e}"] = mean
        out[f"elbo_{e}_se"] = math.sqrt(max(squares - n * mean * mean, 0.0) / (n - 1) / n) if n > 1 else float("nan")
    out["num_examples"] = int(stats[0, 2].item()) if len(stats) else 0
    return out
