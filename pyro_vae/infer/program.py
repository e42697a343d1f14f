r"""What a program is, and how every tool of pyro-vae reads one: from Pyro traces, site by site.

**The program contract.** A program is a :class:`torch.nn.Module` with two methods over the same batch:

- ``model(*batch)``, the generative model :math:`p(x, z)`; its observed sites take ``obs=`` from the batch;
- ``guide(*batch)``, the variational posterior :math:`q(z \mid x)`: a sample site for each latent site of the
  model, and no other.

``batch`` is ``(x,)``, a tensor of shape ``(B, *event_shape)``. Every sample site lives inside a ``pyro.plate``
over the batch at ``dim=-1`` (an event of several dimensions is a ``.to_event``), so that each data point has
its own terms. There may be any number of latent sites, continuous or discrete, drawn in any order.

The library applies, from outside, with Pyro's effect handlers (:func:`bind`):

- **minibatch scaling**: every site's log-density times :math:`N/B` (``poutine.scale``), an unbiased estimate
  of the full-data objective from a batch of :math:`B` of the :math:`N` points;
- **the KL weight** :math:`\beta` (with its warm-up and free bits): the latent sites' log-densities, in the
  model and the guide, times :math:`\beta` (:class:`KLWeight`; masked out at :math:`\beta = 0`).

A program therefore needs neither a ``num_data`` nor a ``beta`` argument. One whose ``model`` or ``guide``
declares them (:class:`~pyro_vae.models.vae.VAE` does) is passed them instead, and scales itself.

**How the tools read it.** Every tool walks one run of the guide and of the model replayed against it
(:func:`traces`), by site type, never by name: the ELBO sums :math:`\log p - \log q` over all sites per
particle; the closed-form KL of a latent site is used only where it is exact (:func:`closed_form_sites`);
:math:`\log p(x)` takes the guide's joint over all latent sites as its proposal. A program that breaks the
contract is refused in one line naming the site (:func:`check_sites`).

Example:
    >>> import pyro, pyro.distributions as dist, torch
    >>> class Mixture(torch.nn.Module):
    ...     def model(self, x):
    ...         with pyro.plate("data", len(x), dim=-1):
    ...             y = pyro.sample("y", dist.Categorical(logits=torch.zeros(3)))
    ...             pyro.sample("x", dist.Normal(y.double(), 1.0), obs=x)
    ...     def guide(self, x):
    ...         with pyro.plate("data", len(x), dim=-1):
    ...             pyro.sample("y", dist.Categorical(logits=torch.zeros(len(x), 3)))
    >>> guide_trace, model_trace = traces(Mixture(), torch.zeros(4, dtype=torch.float64), num_particles=2)
    >>> latent_sites(guide_trace), [s["name"] for s in observed_sites(model_trace)]
    (['y'], ['x'])
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn

from pyro_vae.errors import ConfigError
from pyro_vae.models.kl import closed_form_kl
from pyro_vae.models.programs import check_methods, label_use

__all__ = [
    "KLWeight",
    "bind",
    "check_methods",
    "label_use",
    "first_points",
    "batches",
    "required_labels",
    "traces",
    "sample_sites",
    "latent_sites",
    "enumerated_sites",
    "observed_sites",
    "check_sites",
    "per_point",
    "SiteStructure",
    "site_structure",
    "closed_form_sites",
    "finite_mean",
    "device_of",
    "kept_rng",
]

_CONTRACT = "a program's sites live inside pyro.plate(name, len(x), dim=-1)"


class KLWeight(Messenger):
    r"""Weight every latent site's log-density by ``beta``, in the model and the guide: the KL term times beta.

    .. math:: \mathcal L_\beta = \mathbb E_q[\log p(x\mid z)] - \beta\,\mathrm{KL}(q(z\mid x)\,\|\,p(z))

    At ``beta = 0`` the latent sites are masked out (Pyro's ``scale`` refuses 0): an autoencoder with a noisy code.

    Reference:
        beta-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework (Higgins et al., 2017).
    """

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def _process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
            return
        if self.beta == 0:
            msg["mask"] = False
        else:
            msg["scale"] = msg["scale"] * self.beta


def _declares(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def bind(fn: Callable) -> Callable:
    """A program's ``model`` or ``guide`` as ``fn(*batch, num_data=None, beta=1.0)``, with the contract's scaling.

    What ``fn`` declares of ``num_data`` and ``beta`` is passed to it; what it does not is applied from
    outside: ``poutine.scale`` by ``num_data / B`` and :class:`KLWeight`. A function that declares both is
    returned as it is.
    """
    takes_num_data, takes_beta = _declares(fn, "num_data"), _declares(fn, "beta")
    if takes_num_data and takes_beta:
        return fn

    @functools.wraps(fn)
    def bound(*batch: Tensor, num_data: int | None = None, beta: float = 1.0) -> Any:
        options: dict[str, Any] = {}
        with contextlib.ExitStack() as handlers:
            if takes_num_data:
                options["num_data"] = num_data
            elif num_data is not None and num_data != len(batch[0]):
                handlers.enter_context(poutine.scale(scale=num_data / len(batch[0])))
            if takes_beta:
                options["beta"] = beta
            elif beta != 1:
                handlers.enter_context(KLWeight(beta))
            return fn(*batch, **options)

    return bound


def traces(
    program: nn.Module, *batch: Tensor | None, num_particles: int = 1, enumerate: bool = False
) -> tuple[Trace, Trace]:
    """One run of the guide, vectorized over ``num_particles`` at dim -2, and of the model replayed against it.

    The contract is checked (:func:`check_sites`); every site's value and density have the particle dimension
    first, then the batch. With ``enumerate``, the guide's sites marked ``infer={"enumerate": "parallel"}``
    take every value of their support at once, in dimensions left of the particles' (``poutine.enum``); else
    they are sampled like any other site.
    """
    check_methods(program)
    particles = pyro.plate("particles", num_particles, dim=-2)
    guide = poutine.enum(particles(program.guide), first_available_dim=-3) if enumerate else particles(program.guide)
    guide_trace = poutine.trace(guide).get_trace(*batch)
    model_trace = poutine.trace(poutine.replay(particles(program.model), trace=guide_trace)).get_trace(*batch)
    check_sites(guide_trace, model_trace)
    return guide_trace, model_trace


def first_points(program: nn.Module, x: Tensor, y: Tensor | None = None, n: int = 2) -> tuple[Tensor | None, ...]:
    """The batch of the first ``n`` points that ``program`` is called with: ``(x,)``, or ``(x, y)`` for a program
    that takes labels (:func:`label_use`; ``y`` may be ``None`` unless the program needs it, see :func:`batches`)."""
    return next(batches(program, x[:n], None if y is None else y[:n], n))


def required_labels(program: nn.Module, labels: Tensor | None) -> Tensor | None:
    """The labels a tool passes to ``program`` when it evaluates data: ``labels`` for a program that needs them at
    every call (``model(x, y)``), else ``None`` (a label that may be latent is evaluated latent: summed out)."""
    return labels if label_use(program) == "required" else None


def batches(program: nn.Module, x: Tensor, y: Tensor | None = None, size: int | None = None) -> Iterator[tuple]:
    """The batches a tool calls ``program`` with, ``size`` points at a time (all at once by default): ``(x,)``, or
    ``(x, y)`` for a program that takes labels; a one-line :class:`ConfigError` where ``y`` marks a point unlabelled
    (-1), or is missing for a program that needs labels at every call (``model(x, y)``)."""
    use, name = label_use(program), type(program).__name__
    if use == "required" and (y is None or bool((y < 0).any())):
        missing = "none were given" if y is None else "some points are unlabelled (-1)"
        raise ConfigError(
            f"{name}.model(x, y) needs a label for every point, and {missing}; give every point its label"
        )
    if use == "optional" and y is not None and bool((y < 0).any()):  # a batch is labelled or not, as a whole
        raise ConfigError(
            f"labels of {name}: some points are unlabelled (-1); pass y=None to sum the label out, "
            "or only labelled points"
        )
    chunks = x.split(size or max(1, len(x)))
    labels = [None] * len(chunks) if y is None or use == "none" else y.split(size or max(1, len(x)))
    return ((xb,) if use == "none" else (xb, yb) for xb, yb in zip(chunks, labels))


def enumerated_sites(guide_trace: Trace) -> list[str]:
    """The guide's sites that take every value of their support at once (traced with ``enumerate``)."""
    return [s["name"] for s in sample_sites(guide_trace) if s["infer"].get("_enumerate_dim") is not None]


def sample_sites(trace: Trace) -> list[dict[str, Any]]:
    """The sample sites of a trace in the order they were drawn, without plates' subsample sites."""
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def latent_sites(guide_trace: Trace) -> list[str]:
    """The names of the latent sites, in the order the guide draws them."""
    return [s["name"] for s in sample_sites(guide_trace)]


def observed_sites(model_trace: Trace) -> list[dict[str, Any]]:
    """The model's observed sites."""
    return [s for s in sample_sites(model_trace) if s["is_observed"]]


def check_sites(guide_trace: Trace, model_trace: Trace) -> None:
    """A one-line :class:`ConfigError` naming the first site that breaks the program contract."""
    for site in sample_sites(guide_trace):
        name, twin = site["name"], model_trace.nodes.get(site["name"])
        if twin is None or twin["type"] != "sample":
            raise ConfigError(
                f"guide site {name!r} is not a sample site of the model: the guide draws the model's latent "
                f"sites and no others; sample {name!r} in the model too, or remove it from the guide"
            )
        if twin["is_observed"]:
            raise ConfigError(f"guide site {name!r} is observed in the model; the guide draws latent sites only")
    for site in sample_sites(model_trace):
        if not site["is_observed"] and site["name"] not in guide_trace.nodes:
            raise ConfigError(
                f"latent site {site['name']!r} of the model has no site in the guide; sample it in the guide too"
            )
    for site in sample_sites(guide_trace) + sample_sites(model_trace):
        if not any(frame.dim == -1 and frame.vectorized for frame in site["cond_indep_stack"]):
            raise ConfigError(f"site {site['name']!r} is outside the data plate: {_CONTRACT}; move it inside")


def per_point(site: dict[str, Any], shape: torch.Size) -> Tensor:
    """A site's log-density per particle and data point, of shape ``(particles, batch)``, scaled and masked."""
    log_p = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])
    try:
        return torch.broadcast_to(log_p, shape)
    except RuntimeError:
        raise ConfigError(
            f"site {site['name']!r} has log-densities of shape {tuple(log_p.shape)}, not one per data point; "
            f"{_CONTRACT}, and a site's other dimensions are its event: declare them with .to_event()"
        ) from None


@contextlib.contextmanager
def kept_rng(x: Tensor) -> Iterator[None]:
    """Run a look at a program's structure without moving the random stream of ``x``'s device."""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        yield


def _floating(value: Tensor) -> bool:
    return torch.is_tensor(value) and value.is_floating_point()


def _leaf_traces(model: Callable, guide: Callable, batch: tuple, kwargs: dict) -> tuple[Trace, Trace, dict]:
    """Traces of two data points with the guide's continuous draws made leaves, so autograd can read dependence."""
    batch = tuple(None if b is None else b[:2] for b in batch)
    guide_trace = poutine.trace(guide).get_trace(*batch, **kwargs)
    leaves = {}
    for name in latent_sites(guide_trace):
        site = guide_trace.nodes[name]
        if _floating(site["value"]):
            site["value"] = leaves[name] = site["value"].detach().requires_grad_()
    guide_trace = poutine.trace(poutine.replay(guide, trace=guide_trace)).get_trace(*batch, **kwargs)  # on the leaves
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*batch, **kwargs)
    check_sites(guide_trace, model_trace)
    return guide_trace, model_trace, leaves


def _density(site: dict[str, Any]) -> Tensor:
    """A site's log-density at its value held fixed: a function of the distribution's parameters alone."""
    return site["fn"].log_prob(site["value"].detach())


class SiteStructure(NamedTuple):
    """What one run of a program tells of a latent site: read once, used by the analytic KL and the diagnostics."""

    closed_form: bool  #: its KL term is exact in closed form (see :func:`closed_form_sites`)
    conditioned: bool  #: its guide or model distribution depends on another latent draw (else on x alone)


def site_structure(model: Callable, guide: Callable, *batch: Tensor, **kwargs: Any) -> dict[str, SiteStructure]:
    """Each latent site's :class:`SiteStructure`, in the guide's order, from one run on two data points.

    Dependence is read by autograd, with the guide's continuous draws made leaves (the guide replayed on them);
    a discrete draw is assumed to be depended on: by a site the guide draws before it (whose closed form is then
    not taken: exact, only noisier) and by every other site (conditioned).
    """
    with torch.enable_grad():
        guide_trace, model_trace, leaves = _leaf_traces(model, guide, batch, kwargs)
        order = latent_sites(guide_trace)
        out = {}
        for i, name in enumerate(order):
            later, others = order[i + 1 :], [n for n in order if n != name]
            prior = _density(model_trace.nodes[name])
            closed = (
                closed_form_kl(guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"]) is not None
                and all(n in leaves for n in later)
                and not _depends(prior, [leaves[n] for n in later])
            )
            conditioned = any(n not in leaves for n in others) or _depends(
                _density(guide_trace.nodes[name]).sum() + prior.sum(), [leaves[n] for n in others]
            )
            out[name] = SiteStructure(closed, conditioned)
    return out


def closed_form_sites(model: Callable, guide: Callable, *batch: Tensor, **kwargs: Any) -> dict[str, bool]:
    r"""Whether each latent site's KL term is exact in closed form, in the guide's order: the analytic choice.

    A site's term :math:`\mathbb E_q[\log q(z_s\mid\cdot) - \log p(z_s\mid\cdot)]` is
    :math:`\mathrm{KL}(q(z_s\mid\cdot)\,\|\,p(z_s\mid\cdot))` given the draws it is conditioned on when

    - a closed form is registered between the guide's and the model's distributions at the site, and
    - the model's distribution at the site depends only on draws the guide made *before* it.

    A bottom-up guide breaks the second: it draws :math:`z_1 \sim q(z_1\mid x)` before :math:`z_2`, while
    :math:`p(z_1\mid z_2)` depends on :math:`z_2`; the KL at the sampled :math:`z_2` is then biased, and the
    term is sampled instead. Dependence is read as :func:`site_structure` reads it.
    """
    return {name: s.closed_form for name, s in site_structure(model, guide, *batch, **kwargs).items()}


def finite_mean(fn: Any) -> Tensor | None:
    """A distribution's mean where it has a finite, floating-point one (a label's Categorical has none)."""
    try:
        mean = fn.mean
    except (NotImplementedError, AttributeError):
        return None
    return mean if mean.is_floating_point() and bool(torch.isfinite(mean).all()) else None


def device_of(program: nn.Module, default: Tensor) -> torch.device:
    """Where a program's parameters (or buffers) are; ``default``'s device for one that has none."""
    tensor = next(iter([*program.parameters(), *program.buffers()]), default)
    return tensor.device


def _depends(output: Tensor, inputs: list[Tensor]) -> bool:
    """Whether ``output`` is a function of any of ``inputs`` (leaves), by autograd's graph."""
    if not inputs or not output.requires_grad:
        return False
    grads = torch.autograd.grad(output.sum(), inputs, allow_unused=True, retain_graph=True)  # read twice a site
    return any(g is not None for g in grads)
