r"""Estimators side by side: the same bound, different noise.

Estimators of the same bound agree in expectation; they differ in the noise of the value and of
the gradient. The analytic ELBO, for one, replaces the sampled
:math:`\log p(z) - \log q(z\mid x)` by its expectation, the closed-form KL, which removes that
term's share of the noise. This module measures every estimator asked for on a fixed batch: the
bound's mean and standard error over repeated estimates, the total variance of the stochastic
gradient per parameter group, and the time per estimate; and, for each estimator, its agreement
with the first estimator of the same bound.

Example:
    >>> import torch
    >>> from pyro_vae import make_vae
    >>> vae = make_vae((4, 4), latent_dim=2, network={"type": "mlp", "hidden": [8]})
    >>> result = compare_estimators(vae, torch.rand(8, 4, 4), particles=(1, 4), repeats=5)
    >>> sorted(result["rows"][0])[:4]
    ['elbo', 'elbo_se', 'estimator', 'grad_variance']
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from pyro_vae.estimators import ESTIMATORS, check_estimator
from pyro_vae.objectives import Objective, kl_methods
from pyro_vae.vae import VAE

__all__ = ["compare_estimators", "parameter_groups", "format_comparison"]


def parameter_groups(vae: VAE) -> dict[str, list[torch.nn.Parameter]]:
    """The VAE's trainable parameters by role: ``encoder``, ``decoder`` (with the likelihood's), ``prior``."""
    return {
        "encoder": [p for p in vae.encoder.parameters() if p.requires_grad],
        "decoder": [p for m in (vae.decoder, vae.likelihood) for p in m.parameters() if p.requires_grad],
        "prior": [p for p in vae.prior.parameters() if p.requires_grad],
    }


def _estimates(vae: VAE, x: Tensor, estimator: str, num_particles: int, repeats: int) -> dict[str, Any]:
    """ELBO per data point and its gradient, ``repeats`` times, with the time per estimate."""
    objective = Objective(vae, estimator, num_particles)
    groups = parameter_groups(vae)
    values, grads = [], {name: [] for name in groups}
    seconds = []
    for _ in range(repeats):
        vae.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = objective(x) / len(x)  # the negative ELBO per data point
        loss.backward()
        seconds.append(time.perf_counter() - start)
        values.append(-loss.item())
        for name, params in groups.items():
            if params:
                grads[name].append(torch.cat([p.grad.flatten() for p in params]).double())
    vae.zero_grad(set_to_none=True)
    v = torch.tensor(values, dtype=torch.float64)
    return {
        "estimator": estimator,
        "num_particles": num_particles,
        "elbo": v.mean().item(),
        "elbo_se": v.std().item() / math.sqrt(repeats),
        # Total variance: the trace of the gradient's covariance, sum over coordinates of their variance.
        "grad_variance": {name: torch.stack(g).var(0).sum().item() if g else None for name, g in grads.items()},
        "ms_per_estimate": 1000 * sorted(seconds)[len(seconds) // 2],
    }


def compare_estimators(
    vae: VAE,
    x: Tensor,
    particles: Sequence[int] = (1, 10, 100),
    repeats: int = 100,
    estimators: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Measure estimators on the batch ``x`` for each number of particles.

    Args:
        vae: a (trained) model/guide pair; its parameters are not changed.
        x: a fixed batch of data.
        particles: numbers of particles :math:`L` to compare.
        repeats: independent estimates per estimator and :math:`L`; standard errors and
            variances are over these.
        estimators: names from :data:`~pyro_vae.estimators.ESTIMATORS` (default: all of them).

    Returns:
        ``{"kl": {site: "closed_form" | "sampled"}, "rows": [...], "agreement": [...]}``: ``kl``
        says whether each latent site has a registered closed form; a row per estimator and
        :math:`L` (``elbo``, ``elbo_se``, ``grad_variance`` per parameter group,
        ``ms_per_estimate``); and per :math:`L`, for every estimator after the first of its bound,
        the difference of the two means in combined standard errors and the ratio of gradient
        variances (first / this one), under ``estimators`` = ``[first, this one]``.
    """
    if repeats < 2:
        raise ValueError(f"repeats must be >= 2 to estimate a variance (got {repeats})")
    names = list(estimators) if estimators else list(ESTIMATORS)
    for name in names:
        check_estimator(name)
    rows = [_estimates(vae, x, name, num_particles, repeats) for num_particles in particles for name in names]
    agreement = [_agreement(rows, num_particles, names) for num_particles in particles]
    return {
        "kl": kl_methods(vae, x[:2]),
        "num_examples": len(x),
        "repeats": repeats,
        "rows": rows,
        "agreement": [a for pairs in agreement for a in pairs],
    }


def _agreement(rows: list[dict[str, Any]], num_particles: int, names: list[str]) -> list[dict[str, Any]]:
    """Each estimator against the first estimator of the same bound, at ``num_particles``."""
    at = {r["estimator"]: r for r in rows if r["num_particles"] == num_particles}
    first: dict[str, str] = {}
    out = []
    for name in names:
        reference = first.setdefault(ESTIMATORS.get(name).bound, name)
        if reference == name:
            continue
        a, b = at[reference], at[name]
        se = math.hypot(a["elbo_se"], b["elbo_se"])
        ratio = {
            group: (a["grad_variance"][group] / b["grad_variance"][group]) if b["grad_variance"][group] else None
            for group in a["grad_variance"]
        }
        difference = a["elbo"] - b["elbo"]
        out.append(
            {
                "num_particles": num_particles,
                "estimators": [reference, name],
                "difference": difference,
                "difference_in_se": difference / se,
                "grad_variance_ratio": ratio,
            }
        )
    return out


def format_comparison(result: dict[str, Any]) -> str:
    """The comparison as a text table."""
    groups = list(result["rows"][0]["grad_variance"])
    lines = [
        f"batch of {result['num_examples']} points, {result['repeats']} repeats per row; ELBO in nats per point; "
        "gradient variance: total over the group's coordinates",
    ]
    sampled = [site for site, how in result["kl"].items() if how == "sampled"]
    if sampled:
        lines.append(
            f"no closed-form KL for {', '.join(sampled)}: estimators that use the closed form where one is "
            "registered sample it here, so they compute the same thing and only their random draws differ"
        )
    header = (
        f"{'estimator':<9} {'L':>4} {'ELBO':>10} {'± SE':>7} "
        + " ".join(f"{'var ' + g:>13}" for g in groups)
        + f" {'ms':>7}"
    )
    lines += [header, "-" * len(header)]
    for r in result["rows"]:
        variances = " ".join(f"{v:13.4g}" if v is not None else f"{'-':>13}" for v in r["grad_variance"].values())
        lines.append(
            f"{r['estimator']:<9} {r['num_particles']:>4} {r['elbo']:10.3f} {r['elbo_se']:7.3f} {variances} "
            f"{r['ms_per_estimate']:7.1f}"
        )
    lines.append("")
    for a in result["agreement"]:
        first, other = a["estimators"]
        ratios = ", ".join(f"{g} {v:.2f}" for g, v in a["grad_variance_ratio"].items() if v is not None)
        lines.append(
            f"L = {a['num_particles']:>3}: {first} - {other} = {a['difference']:+.3f} nats "
            f"({a['difference_in_se']:+.1f} SE); "
            f"gradient variance {first} / {other}: {ratios}"
        )
    return "\n".join(lines)
