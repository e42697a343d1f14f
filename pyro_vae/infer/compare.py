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
    >>> sorted(result["rows"][0])[:5]
    ['elbo', 'elbo_se', 'estimator', 'grad_snr', 'grad_snr_median']
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from pyro_vae.errors import ConfigError
from pyro_vae.infer.estimators import ESTIMATORS, check_estimator
from pyro_vae.infer.objectives import Objective, check_program, kl_methods

__all__ = ["compare_estimators", "parameter_groups", "format_comparison", "snr_slopes"]


def parameter_groups(vae: nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """A program's trainable parameters by its top-level submodules, and those it holds itself under ``program``.

    A :class:`~pyro_vae.models.vae.VAE`'s groups are ``encoder``, ``decoder``, ``prior`` and ``likelihood``.
    """
    groups = {name: [p for p in child.parameters() if p.requires_grad] for name, child in vae.named_children()}
    own = [p for p in vae.parameters(recurse=False) if p.requires_grad]
    return {**groups, **({"program": own} if own else {})}


class _Moments:
    """Running sums of a gradient and of its square (float64): mean, variance and SNR without keeping the draws."""

    def __init__(self) -> None:
        self.count, self.total, self.squares = 0, None, None

    def add(self, g: Tensor) -> None:
        g = g.double()
        self.count += 1
        self.total = g.clone() if self.total is None else self.total.add_(g)
        self.squares = g.square() if self.squares is None else self.squares.add_(g.square())

    def summary(self) -> dict[str, float | None]:
        """Total variance (the covariance's trace); mean and median over coordinates of the SNR |E g| / std."""
        if self.total is None:
            return {"variance": None, "snr": None, "snr_median": None}
        n = self.count
        mean = self.total / n
        var = ((self.squares - n * mean.square()) / (n - 1)).clamp_min(0)
        std = var.sqrt()
        # |mean| of n draws overstates |E g| by about std / sqrt(n) (a coordinate with no signal would
        # show an SNR of 0.8 / sqrt(n)): estimate |E g|^2 by mean^2 - var / n, floored at zero.
        signal = (mean.square() - var / n).clamp_min(0).sqrt()
        snr = (signal / std)[std > 0]
        return {
            "variance": var.sum().item(),
            "snr": snr.mean().item() if len(snr) else None,
            "snr_median": snr.median().item() if len(snr) else None,
        }


def _estimates(
    vae: nn.Module, x: Tensor, estimator: str, num_particles: int, repeats: int, y: Tensor | None = None
) -> dict[str, Any]:
    """The bound per data point and its gradient, ``repeats`` times, with the time per estimate."""
    objective = Objective(vae, estimator, num_particles, fused="auto")  # the fastest exact path
    groups = parameter_groups(vae)
    values, seconds = [], []
    moments = {name: _Moments() for name in groups}
    for _ in range(repeats):
        vae.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = objective(x, None, y) / len(x)  # the negative bound per data point
        loss.backward()
        seconds.append(time.perf_counter() - start)
        values.append(-loss.item())
        for name, params in groups.items():
            if params:
                # a parameter the loss does not reach (unused by this program's sites) has a zero gradient
                moments[name].add(
                    torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
                )
    vae.zero_grad(set_to_none=True)
    v = torch.tensor(values, dtype=torch.float64)
    stats = {name: m.summary() for name, m in moments.items()}
    return {
        "estimator": estimator,
        "num_particles": num_particles,
        "elbo": v.mean().item(),
        "elbo_se": v.std().item() / math.sqrt(repeats),
        # Total variance: the trace of the gradient's covariance, sum over coordinates of their variance.
        "grad_variance": {name: st["variance"] for name, st in stats.items()},
        # Signal-to-noise ratio |E g_j| / std(g_j) of each coordinate j, averaged over the group's coordinates.
        "grad_snr": {name: st["snr"] for name, st in stats.items()},
        "grad_snr_median": {name: st["snr_median"] for name, st in stats.items()},
        "ms_per_estimate": 1000 * sorted(seconds)[len(seconds) // 2],
    }


def snr_slopes(result: dict[str, Any], group: str) -> dict[str, float]:
    """Per estimator, the slope of log SNR against log K over the rows of a comparison (least squares).

    Rainforth et al. (2018) find about -1/2 for IWAE's encoder and +1/2 for its decoder; Tucker et
    al. (2019) about +1/2 for DReG's encoder.
    """
    slopes = {}
    for name in dict.fromkeys(r["estimator"] for r in result["rows"]):
        points = [(r["num_particles"], r["grad_snr"][group]) for r in result["rows"] if r["estimator"] == name]
        points = [(k, s) for k, s in points if s]
        if len({k for k, _ in points}) >= 2:
            logk = torch.tensor([math.log(k) for k, _ in points], dtype=torch.float64)
            logs = torch.tensor([math.log(s) for _, s in points], dtype=torch.float64)
            slopes[name] = (
                ((logk - logk.mean()) * (logs - logs.mean())).sum() / (logk - logk.mean()).square().sum()
            ).item()
    return slopes


def compare_estimators(
    vae: nn.Module,
    x: Tensor,
    particles: Sequence[int] = (1, 10, 100),
    repeats: int = 100,
    estimators: Sequence[str] | None = None,
    y: Tensor | None = None,
) -> dict[str, Any]:
    r"""Measure estimators on the batch ``x`` for each number of particles.

    Each estimator and :math:`L` gives ``repeats`` independent estimates of the bound per data point and of its
    gradient :math:`g`; per parameter group it reports the gradient's total variance and the signal-to-noise
    ratio of each coordinate,

    .. math:: \operatorname{tr}\operatorname{Cov}[g] = \sum_j \operatorname{Var}[g_j], \qquad
        \mathrm{SNR}_j = \frac{|\mathbb E[g_j]|}{\sqrt{\operatorname{Var}[g_j]}},

    averaged over the group's coordinates (``grad_snr``) and its median (``grad_snr_median``).

    Args:
        vae: a (trained) model/guide pair; its parameters are not changed.
        x: a fixed batch of data.
        particles: numbers of particles :math:`L` to compare.
        repeats: independent estimates per estimator and :math:`L`; standard errors and
            variances are over these.
        estimators: names from :data:`~pyro_vae.infer.estimators.ESTIMATORS` (default: every one that can treat
            the program; the others are listed under ``skipped`` with why, e.g. a discrete site for ``stl``).
        y: the labels of ``x``, for a program that needs them at every call (any other's label is latent).

    Returns:
        ``{"kl", "num_examples", "repeats", "rows", "agreement", "skipped"}``. ``kl`` says whether each
        latent site has an exact closed-form KL, ``{site: "closed_form" | "sampled"}``; a row per estimator and
        :math:`L` (``estimator``, ``num_particles``, ``elbo``, ``elbo_se``; ``grad_variance``, ``grad_snr``
        and ``grad_snr_median`` per parameter group; ``ms_per_estimate``, the median time); per :math:`L`,
        for every estimator after the first of its bound, the difference of the two means in combined
        standard errors and the ratio of gradient variances (first / this one), under ``estimators`` =
        ``[first, this one]``; and ``skipped``, the estimators left out, each with why.

    Reference:
        Tighter Variational Bounds are Not Necessarily Better (Rainforth et al., 2018): the gradient's
        signal-to-noise ratio.

    Example:
        >>> import torch
        >>> from pyro_vae import make_vae
        >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [16]})
        >>> result = compare_estimators(vae, torch.rand(8, 8, 8), (1, 4), repeats=3, estimators=["mc", "analytic"])
        >>> [(row["estimator"], row["num_particles"]) for row in result["rows"]]
        [('mc', 1), ('analytic', 1), ('mc', 4), ('analytic', 4)]
        >>> result["kl"], sorted(result["rows"][0]["grad_variance"]), result["agreement"][0]["estimators"]
        ({'z': 'closed_form'}, ['decoder', 'encoder', 'likelihood', 'prior'], ['mc', 'analytic'])
    """
    if repeats < 2:
        raise ConfigError(f"{{repeats}} must be >= 2 to estimate a variance (got {repeats})", "repeats")
    skipped: dict[str, str] = {}
    if estimators:
        names = list(estimators)
        for name in names:
            check_estimator(name)
            check_program(vae, x, name, y=y)
    else:  # every registered estimator that can treat this program
        names = []
        for name in ESTIMATORS:
            try:
                check_program(vae, x, name, y=y)
                names.append(name)
            except ConfigError as e:
                skipped[name] = str(e)
    rows = [_estimates(vae, x, name, num_particles, repeats, y) for num_particles in particles for name in names]
    agreement = [_agreement(rows, num_particles, names) for num_particles in particles]
    return {
        "kl": kl_methods(vae, x[:2], y=y),
        "num_examples": len(x),
        "repeats": repeats,
        "rows": rows,
        "agreement": [a for pairs in agreement for a in pairs],
        "skipped": skipped,
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
    """The comparison as a text table, with the agreement lines and, over several K, the SNR slopes."""
    groups = [g for g in result["rows"][0]["grad_variance"] if result["rows"][0]["grad_variance"][g] is not None]
    lines = [
        f"batch of {result['num_examples']} points, {result['repeats']} repeats per row; bound in nats per point; "
        "var: total gradient variance over the group's coordinates; snr: mean over coordinates of |E g| / std",
    ]
    for name, why in result.get("skipped", {}).items():
        lines.append(f"{name} skipped: {why}")
    sampled = [site for site, how in result["kl"].items() if how == "sampled"]
    if sampled:
        lines.append(
            f"no closed-form KL for {', '.join(sampled)}: estimators that use the closed form where one is "
            "registered sample it here, so they compute the same thing and only their random draws differ"
        )
    columns = [f"{'var ' + g:>13}" for g in groups] + [f"{'snr ' + g:>12}" for g in groups]
    header = f"{'estimator':<9} {'L':>4} {'bound':>10} {'± SE':>7} " + " ".join(columns) + f" {'ms':>7}"
    lines += [header, "-" * len(header)]
    for r in result["rows"]:
        cells = [f"{r['grad_variance'][g]:13.4g}" for g in groups] + [_number(r["grad_snr"][g], 12) for g in groups]
        lines.append(
            f"{r['estimator']:<9} {r['num_particles']:>4} {r['elbo']:10.3f} {r['elbo_se']:7.3f} {' '.join(cells)} "
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
    if len({r["num_particles"] for r in result["rows"]}) > 1:
        for g in groups:
            slopes = ", ".join(f"{name} {v:+.2f}" for name, v in snr_slopes(result, g).items())
            lines.append(f"slope of log SNR against log L, {g}: {slopes}")
    return "\n".join(lines)


def _number(value: float | None, width: int) -> str:
    return f"{value:{width}.4g}" if value is not None else f"{'-':>{width}}"
