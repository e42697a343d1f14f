r"""Pyro ELBOs for the estimators Pyro does not ship, or does not compute per data point.

Each class runs the model and the guide through Pyro's traces, with vectorized particles, exactly
as :class:`~pyro.infer.Trace_ELBO` does, and forms its estimate from the sample sites: they are the
references that the fused estimators of :mod:`pyro_vae.infer.estimators` are tested against, and they
evaluate any model/guide pair (a subclass of :class:`~pyro_vae.models.vae.VAE` that redefines its program too).

- :class:`TraceAnalytic_ELBO`, Pyro's ``TraceMeanField_ELBO`` where it is exact: the closed-form KL of a latent
  site only where the model's distribution there depends on nothing the guide draws later.
- :class:`TraceIWAE_ELBO`, the importance-weighted bound. Pyro's ``RenyiELBO(alpha=0)`` is this
  bound for a full batch, but under minibatch scaling it multiplies each data point's log-weights
  by :math:`N/B` *inside* the log-mean-exp, which is not the bound; here the log-mean-exp is taken
  per data point and then scaled (the tests compare both against a hand-written value).
- :class:`TraceDReG_ELBO`, the same bound with doubly reparameterized encoder gradients.
- :class:`TraceSTL_ELBO`, the ELBO with the sticking-the-landing gradient.
- :class:`TraceFreeBits_ELBO`, the ELBO with free bits: a floor under each latent dimension's KL term.

Pyro ships no JIT-compiled variants of these; the fused path is the fast one.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled, torch_item
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from pyro.util import check_model_guide_match
from torch import Tensor, nn
from torch.distributions import kl_divergence

from pyro_vae.errors import ConfigError
from pyro_vae.infer.program import closed_form_sites, kept_rng
from pyro_vae.models.kl import coordinate_kl, free_bits_kl

__all__ = [
    "TraceAnalytic_ELBO",
    "JitTraceAnalytic_ELBO",
    "TraceIWAE_ELBO",
    "TraceDReG_ELBO",
    "TraceSTL_ELBO",
    "TraceFreeBits_ELBO",
    "held",
    "square_weights",
]


class _HeldParams(Messenger):
    """Every ``pyro.param`` value detached: the same numbers, no gradient to the parameter."""

    def _pyro_post_param(self, msg: dict[str, Any]) -> None:
        msg["value"] = msg["value"].detach()


@contextlib.contextmanager
def held(fn: Callable) -> Iterator[None]:
    """The parameters ``fn`` computes with held fixed: its ``pyro.param`` values, and the parameters of the module
    whose method it is (a program's ``guide``), each replaced by a copy that passes no gradient back.

    What the held parameters compute still depends on its inputs: a guide site whose distribution depends on
    an earlier draw keeps that dependence, which the sticking-the-landing and DReG gradients need. The guide is
    run again with them: a guide with random layers (dropout) would draw them anew, so its log q would not be
    that of the draw.
    """
    owner = _owner(fn)
    swapped = []
    try:
        for module in owner.modules() if owner is not None else ():
            for name, p in module._parameters.items():
                if p is not None:
                    swapped.append((module, name, p))
                    module._parameters[name] = p.detach()
        with _HeldParams(), warnings.catch_warnings():
            # pyro.module skips a parameter that needs no gradient, and says so: these copies need none by design
            warnings.filterwarnings("ignore", message=".*was not registered in the param store")
            yield
    finally:
        for module, name, p in swapped:
            module._parameters[name] = p


def _owner(fn: Callable) -> nn.Module | None:
    """The module whose method ``fn`` is (through ``functools.wraps``), if any."""
    owner = getattr(inspect.unwrap(fn), "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _with_values(trace: Trace, values: dict[str, Tensor]) -> Trace:
    """A copy of ``trace`` whose sites in ``values`` hold those values (to replay a program against)."""
    copy = trace.copy()
    for name, value in values.items():
        copy.nodes[name] = {**trace.nodes[name], "value": value}
    return copy


class _HeldGuide:
    """The guide's log-densities with its parameters held fixed, for the gradients without a score term."""

    def _held_log_q(self, guide: Callable, guide_trace: Trace, values: dict, args: tuple, kwargs: dict) -> dict:
        r"""Each guide site's unscaled :math:`\log q(z)` at ``values`` (else the trace's own), with the guide's
        parameters held fixed (:func:`held`): the guide, vectorized as it ran, replayed against ``guide_trace``.

        The gradient reaches the draws, and through each site's dependence on earlier draws, but not the guide's
        parameters: the score term is gone and the path derivative is whole.
        """
        replayed = poutine.replay(self._vectorized_num_particles(guide), trace=_with_values(guide_trace, values))
        with held(guide):
            trace = poutine.trace(replayed).get_trace(*args, **kwargs)
        modules = [s["name"] for s in trace.nodes.values() if s["type"] == "param" and "$$$" in s["name"]]
        if modules and _owner(guide) is None:
            raise ConfigError(
                f"the guide uses a module's parameters ({modules[0].split('$$$')[0]!r}, through pyro.module), and "
                "sticking the landing and DReG can hold them fixed only where the guide is a method of that module "
                "(a program's guide, as Objective passes it); pass program.guide itself, or use mc or iwae"
            )
        return {site["name"]: site["fn"].log_prob(site["value"]) for site in _sample_sites(trace)}


def square_weights(latents: list[Tensor], log_w: Tensor) -> None:
    r"""Make the gradient reaching each draw :math:`z_k` carry its normalised weight :math:`\tilde w_k` once more.

    The gradient of :math:`\log\sum_k w_k` at :math:`z_k` is :math:`\tilde w_k\,\partial\log w_k/\partial z_k`;
    DReG's encoder gradient has :math:`\tilde w_k^2` there. Only the encoder's parameters are reached
    through :math:`z` (with :math:`\log q` evaluated at fixed parameters), so the decoder's and the
    prior's gradients stay IWAE's. ``latents`` and ``log_w`` have the particle dimension first.
    """
    weights = torch.softmax(log_w.detach(), 0)
    for z in latents:
        if z.requires_grad:
            w = weights.reshape(weights.shape + (1,) * (z.dim() - weights.dim()))
            z.register_hook(lambda grad, w=w: grad * w)


def _identity(fn: Callable) -> Any:
    """What a model or guide is, for a cache: a bound method by its object and function (each access is new)."""
    return (id(fn.__self__), fn.__func__) if hasattr(fn, "__self__") and hasattr(fn, "__func__") else fn


class _ClosedForms:
    """Which latent sites an ELBO may take the closed-form KL of, found once per model/guide pair."""

    def _closed_forms(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> dict[str, bool]:
        cache = self.__dict__.setdefault("_closed_form_cache", {})
        key = (_identity(model), _identity(guide))
        if key not in cache:
            with kept_rng(args[0]):
                cache[key] = closed_form_sites(model, guide, *args, **kwargs)
        return cache[key]


class TraceAnalytic_ELBO(_ClosedForms, TraceMeanField_ELBO):
    r"""The ELBO with each latent site's closed-form KL where it is exact (the ``analytic`` reference).

    Pyro's :class:`~pyro.infer.TraceMeanField_ELBO` takes ``kl_divergence(q, p)`` of every site where one is
    registered, after a warning that it cannot verify the mean-field condition. A bottom-up guide breaks it:
    :math:`q(z_1\mid x)` is drawn before :math:`z_2`, while :math:`p(z_1\mid z_2)` depends on :math:`z_2`, and the
    KL at the sampled :math:`z_2` is biased. Here a site takes its closed form only where the model's distribution
    there depends on no later draw of the guide (:func:`~pyro_vae.infer.program.closed_form_sites`); its term
    is sampled, :math:`\log p - \log q`, elsewhere. Every latent site must be reparameterized, as in Pyro's.
    """

    def _get_traces(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Any:
        self._exact = self._closed_forms(model, guide, args, kwargs)
        return super()._get_traces(model, guide, args, kwargs)

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Trace, Trace]:
        return Trace_ELBO._get_trace(self, model, guide, args, kwargs)  # the exact condition is checked per site

    def _differentiable_loss_particle(self, model_trace: Trace, guide_trace: Trace) -> tuple[Any, Tensor]:
        elbo: Tensor | float = 0.0
        for site in _sample_sites(model_trace):
            if site["is_observed"]:
                elbo = elbo + site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[site["name"]]
            check_fully_reparametrized(guide_site)
            if self._exact.get(site["name"]):
                kl = kl_divergence(guide_site["fn"], site["fn"])
                elbo = elbo - scale_and_mask(kl, guide_site["scale"], guide_site["mask"]).sum()
            else:
                elbo = elbo + site["log_prob_sum"] - guide_site["score_parts"].entropy_term.sum()
        loss = -(elbo.detach() if torch._C._get_tracing_state() else torch_item(elbo))
        return loss, -elbo


class JitTraceAnalytic_ELBO(JitTraceMeanField_ELBO, TraceAnalytic_ELBO):
    """:class:`TraceAnalytic_ELBO` compiled with Pyro's JIT, without a re-trace on every call.

    In pyro-ppl 1.9 ``JitTraceMeanField_ELBO.differentiable_loss`` tests for ``self._loss_and_surrogate_loss``
    (the name ``JitTrace_ELBO`` uses) but stores the compiled function as ``self._differentiable_loss``, so the
    test always fails and the model is traced again at every step: about 3x slower than no JIT, with a tracer
    warning per site per step. Aliasing the stored function under the name that is tested makes the first
    compilation the only one. The exact sites are found before the first compilation, outside the tracer.
    """

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        self._closed_forms(model, guide, args, kwargs)
        loss = super().differentiable_loss(model, guide, *args, **kwargs)
        self._loss_and_surrogate_loss = self._differentiable_loss
        return loss


def _sample_sites(trace: Trace) -> list[dict[str, Any]]:
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


class TraceIWAE_ELBO(_HeldGuide, Trace_ELBO):
    r"""The importance-weighted bound :math:`\mathcal L_K`, per data point, from Pyro traces (the ``iwae`` reference).

    With :math:`K` = ``num_particles`` vectorized particles, the log-weight of particle :math:`k` and
    data point :math:`n` is :math:`\log p(x_n, z_{nk}) - \log q(z_{nk} \mid x_n)` (the sites'
    unscaled log-densities); the loss is :math:`-\frac NB\sum_n \log\frac1K\sum_k w_{nk}`. Every site
    must carry the same scale, the data plate's :math:`N/B`: a KL weight (beta) has no place here.

    Reference:
        Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2016).
    """

    stop_guide = False

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        log_w, scale, latents = self._log_weights(model, guide, args, kwargs)
        if self.num_particles == 1:  # Pyro adds no particle dimension for one particle
            log_w, latents = log_w.unsqueeze(0), [z.unsqueeze(0) for z in latents]
        if self.stop_guide:
            square_weights(latents, log_w)
        return -scale * (torch.logsumexp(log_w, 0) - math.log(self.num_particles)).sum()

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()

    def _log_weights(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple:
        """The log-weights, the sites' common scale, and the draws whose gradient DReG weights.

        With ``stop_guide`` the model and the held guide (:meth:`_held_log_q`) see a copy of each draw (a view):
        the weight multiplies the gradient of the log-weight there, not what reaches a draw through a later one.
        """
        if self.stop_guide:
            if self.max_plate_nesting == float("inf"):  # as Pyro's _get_traces does before vectorizing
                self._guess_max_plate_nesting(model, guide, args, kwargs)
            guide_trace = poutine.trace(self._vectorized_num_particles(guide)).get_trace(*args, **kwargs)
            values = {site["name"]: site["value"].view_as(site["value"]) for site in _sample_sites(guide_trace)}
            replayed = poutine.replay(self._vectorized_num_particles(model), trace=_with_values(guide_trace, values))
            model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
            if is_validation_enabled():
                check_model_guide_match(model_trace, guide_trace)
            model_trace.compute_log_prob()
            log_q = self._held_log_q(guide, guide_trace, values, args, kwargs)
        else:
            ((model_trace, guide_trace),) = self._get_traces(model, guide, args, kwargs)
            values = {site["name"]: site["value"] for site in _sample_sites(guide_trace)}
            log_q = {site["name"]: site["unscaled_log_prob"] for site in _sample_sites(guide_trace)}
        sites = _sample_sites(model_trace) + _sample_sites(guide_trace)
        scales = {float(site["scale"]) for site in sites}
        if len(scales) != 1 or any(site["mask"] is not None for site in sites):
            raise ConfigError(
                "beta weights the KL term of the ELBO; the importance-weighted bound has none: use beta = 1"
            )
        log_w = sum(site["unscaled_log_prob"] for site in _sample_sites(model_trace)) - sum(log_q.values())
        return log_w, scales.pop(), list(values.values())


class TraceDReG_ELBO(TraceIWAE_ELBO):
    r"""The importance-weighted bound with doubly reparameterized encoder gradients, from Pyro traces (``dreg``).

    The value is :class:`TraceIWAE_ELBO`'s; :math:`\log q` is evaluated with the guide's parameters
    held fixed (:func:`held`), and the gradient of the log-weight at each draw is weighted once more
    (:func:`square_weights`).

    Reference:
        Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives
        (Tucker, Lawson, Gu & Maddison, 2019).
    """

    stop_guide = True


class TraceSTL_ELBO(_HeldGuide, Trace_ELBO):
    r"""The ELBO with the sticking-the-landing gradient, from Pyro traces (the ``stl`` reference).

    :class:`~pyro.infer.Trace_ELBO`'s estimate, with each guide site's :math:`\log q(z)` evaluated at
    the guide's parameters held fixed (:func:`held`): the value is the same, the score term is gone from
    the gradient, and the dependence of a site's distribution on earlier draws is kept.

    Reference:
        Sticking the Landing: Simple, Lower-Variance Gradient Estimators for Variational Inference
        (Roeder, Wu & Duvenaud, 2017).
    """

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        ((model_trace, guide_trace),) = self._get_traces(model, guide, args, kwargs)
        elbo = sum(site["log_prob"].sum() for site in _sample_sites(model_trace))
        log_q = self._held_log_q(guide, guide_trace, {}, args, kwargs)
        for site in _sample_sites(guide_trace):
            elbo = elbo - scale_and_mask(log_q[site["name"]], site["scale"], site["mask"]).sum()
        return -elbo / self.num_particles


class TraceFreeBits_ELBO(_ClosedForms, Trace_ELBO):
    r"""The ELBO with free bits, from Pyro traces (the reference of ``free_bits`` with ``mc`` and ``analytic``).

    Each latent site's KL term counts at least :math:`\lambda` nats per data point in every latent
    dimension :math:`j`, on average over the minibatch of :math:`B` points and the particles:

    .. math:: \mathcal L_\lambda = \sum_{n=1}^B \mathbb E_q[\log p(x_n \mid z_n)]
        - \beta B \sum_j \max\Big(\lambda, \frac1B\sum_{n=1}^B \mathrm{KL}_{nj}\Big),

    scaled by :math:`N/B` like every site. :math:`\mathrm{KL}_{nj}` is the closed form where
    ``closed_form_kl`` and one is registered between the guide's and the prior's coordinates, else
    the sampled :math:`\log q_j(z_j) - \log p_j(z_j)` (:func:`~pyro_vae.models.kl.coordinate_kl`).

    Reference:
        Improved Variational Inference with Inverse Autoregressive Flow (Kingma et al., 2016).
    """

    def __init__(self, free_bits: float, closed_form_kl: bool = False, **options: Any) -> None:
        super().__init__(**options)
        self.free_bits, self.closed_form_kl = free_bits, closed_form_kl

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        exact = self._closed_forms(model, guide, args, kwargs) if self.closed_form_kl else {}
        ((model_trace, guide_trace),) = self._get_traces(model, guide, args, kwargs)
        elbo: Tensor | float = 0.0
        for site in _sample_sites(model_trace):
            if site["is_observed"]:
                elbo = elbo + site["log_prob"].sum()
            elif site["mask"] is not False:  # beta = 0 masks the latent site out
                guide_site = guide_trace.nodes[site["name"]]
                kl = coordinate_kl(guide_site["fn"], site["fn"], site["value"], exact.get(site["name"], False))
                elbo = elbo - self.num_particles * site["scale"] * free_bits_kl(kl, self.free_bits)
        return -elbo / self.num_particles
