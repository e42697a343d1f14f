r"""Evaluate, compare and draw a finished run: the questions asked of a trained model.

Each function opens a run folder (:func:`pyro_vae.runs.folders.load`), reloads its data set, seeds torch
from the run's config (so the same command gives the same numbers), and reports in nats per data
point with standard errors.

Example::

    from pyro_vae import evaluate_run
    evaluate_run("runs/demo", num_samples=1000)["log_likelihood"]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pyro_vae.errors import RunError
from pyro_vae.infer.compare import compare_estimators
from pyro_vae.infer.diagnostics import accuracy, diagnostics
from pyro_vae.infer.estimators import check_estimator
from pyro_vae.infer.marginal import log_likelihood
from pyro_vae.infer.objectives import evaluate_bounds
from pyro_vae.infer.program import required_labels
from pyro_vae.runs.config import Config, load_data, resolve_device
from pyro_vae.runs.folders import caption, density_note, loaded
from pyro_vae.runs.plots import draw_pictures, plot_gradient_snr, plot_gradient_variance
from pyro_vae.runs.storage import atomic_write
from pyro_vae.training.data import Dataset

__all__ = ["evaluate_run", "compare_run", "plot_run", "open_run"]

SPLITS = ("train", "test")


def open_run(run_dir: str | Path, device: str = "auto", data: dict | None = None) -> tuple[nn.Module, Config, Dataset]:
    """A finished run's trained program, config and data set, on ``device``, with torch seeded from the config.

    ``data`` replaces keys of the run's ``[data]`` table for this reading only: where its data are
    now, e.g. ``{"data_root": "/new/place"}`` or ``{"dataset": "/new/place/points.npy"}``.
    """
    target = resolve_device(device)
    vae, config, shape = loaded(run_dir, target)
    config = _moved(config, data or {})
    data = load_data(config, target)
    if tuple(data.event_shape) != shape:
        raise RunError(
            f"data set {data.name} has points of shape {data.event_shape} "
            f"but the run was trained on {shape}; "
            "restore data.dataset in its config.toml to the data it was trained on, or retrain on this one"
        )
    torch.manual_seed(config.train.seed)
    return vae, config, data


def _moved(config: Config, data: dict) -> Config:
    """``config`` with its data looked for where ``data`` says (``data_root``, ``dataset``); nothing else changes."""
    unknown = sorted(set(data) - {"data_root", "dataset"})
    if unknown:
        raise RunError(f"data: {unknown[0]} cannot be changed to read a run; only data_root and dataset can")
    values = config.to_dict()
    values["data"].update({k: str(v) for k, v in data.items() if v is not None})
    return Config.from_dict(values)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise RunError(f"{{split}} must be {' or '.join(SPLITS)} (got {split!r})", "split")


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    num_particles: int = 1,
    batch_size: int = 1000,
    device: str = "auto",
    num_samples: int = 0,
    data: dict | None = None,
) -> dict[str, Any]:
    r"""ELBO of a split of a run's data set under each reported estimator, with standard errors (nats per point).

    The estimators are :data:`~pyro_vae.infer.estimators.REPORTED` and the one the run trained with,
    from the same draws; an importance-weighted bound is evaluated with the particles it was
    trained with (:func:`~pyro_vae.infer.objectives.evaluate_bounds`). With ``num_samples = K > 0`` it
    adds ``log_likelihood``, the importance-sampled :math:`\log p(x)` with ``K`` samples per point
    (see :func:`pyro_vae.infer.marginal.log_likelihood`), and its standard error over the data points.
    A program with a classifier (``classify(x)``, the logits of :math:`q(y \mid x)`) adds its ``accuracy`` on
    the split's labels (:func:`~pyro_vae.infer.diagnostics.accuracy`). It reports whether the latent code is
    used, the keys of :func:`~pyro_vae.infer.diagnostics.diagnostics`
    (``active_units``, ``kl_per_dim``, ``mutual_information``, ``marginal_kl``, ...) on the first
    :data:`DIAGNOSTIC_POINTS` points (``diagnostic_points``).

    .. math:: \bar{\mathcal L} = \frac1N\sum_{n=1}^{N}\hat{\mathcal L}(x_n), \qquad
        \mathrm{se} = \frac{\operatorname{std}_n \hat{\mathcal L}(x_n)}{\sqrt N}

    Args:
        run_dir: a finished run folder (:func:`~pyro_vae.runs.folders.train_run`).
        split: ``"test"`` or ``"train"``.
        num_particles: draws of the latent code per point for the ELBO's estimates.
        batch_size: points per pass.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        num_samples: :math:`K`, importance samples per point for ``log_likelihood`` (0: not estimated).
        data: where the run's data are now, replacing keys of its ``[data]`` table for this reading only:
            ``{"data_root": ...}`` or ``{"dataset": ...}``.

    Returns:
        ``{"run", "split", "num_particles", "train_particles", "elbo_<estimator>", "elbo_<estimator>_se",
        "num_examples", ...}`` with the diagnostics' keys, and ``log_likelihood``, ``log_likelihood_se``
        where ``num_samples`` > 0; nats per data point.

    Example:
        >>> import tempfile
        >>> import torch
        >>> from pyro_vae import Config, train_run
        >>> folder = tempfile.mkdtemp()
        >>> torch.save((torch.rand(40, 6) > 0.5).float(), f"{folder}/points.pt")  # 40 binary points
        >>> config = Config.from_dict({
        ...     "data": {"dataset": f"{folder}/points.pt"},
        ...     "model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}},
        ...     "train": {"epochs": 1, "batch_size": 16},
        ... })
        >>> summary = train_run(config, f"{folder}/run", progress=False)
        >>> result = evaluate_run(f"{folder}/run", num_samples=10)
        >>> result["num_examples"], result["log_likelihood_of"], [key for key in result if key.startswith("elbo_")]
        (8, 'log p(x)', ['elbo_mc', 'elbo_mc_se', 'elbo_analytic', 'elbo_analytic_se'])
    """
    _check_split(split)
    if num_particles < 1:
        raise RunError(f"{{num_particles}} must be >= 1 (got {num_particles})", "num_particles")
    if num_samples < 0:
        raise RunError(f"{{num_samples}} must be >= 0 (got {num_samples})", "num_samples")
    vae, config, data = open_run(run_dir, device, data)
    x = data.train if split == "train" else data.test
    labels = data.train_labels if split == "train" else data.test_labels
    y = required_labels(vae, labels)  # a program that needs labels is evaluated at them; any other, label latent
    t = config.train
    scores = evaluate_bounds(vae, x, t.elbo, num_particles, t.num_particles, batch_size, y=y)
    result = {"run": str(run_dir), "split": split, "num_particles": num_particles, "train_particles": t.num_particles}
    result.update(scores)
    result["note"] = density_note(vae, x)
    result["binarization"] = data.binarization_note(split)
    result.update(_usage(vae, x, y))
    if hasattr(vae, "classify") and labels is not None:  # a program with a classifier q(y | x)
        result["accuracy"], result["accuracy_se"] = accuracy(vae, x, labels, batch_size)
        result["accuracy_points"] = int((labels >= 0).sum())  # the training split: its kept labels only
    if num_samples:
        ll = log_likelihood(vae, x, num_samples=num_samples, batch_size=min(batch_size, 100), y=y).double()
        se = ll.std().item() / len(ll) ** 0.5 if len(ll) > 1 else float("nan")
        result.update(log_likelihood=ll.mean().item(), log_likelihood_se=se, num_samples=num_samples)
        result["log_likelihood_of"] = "log p(x)" if y is None else "log p(x | y)"  # a program that needs labels
    return result


#: The diagnostics' mutual information costs N squared: evaluate takes them on at most this many points.
DIAGNOSTIC_POINTS = 10_000


def _usage(vae: nn.Module, x: Tensor, y: Tensor | None = None) -> dict[str, Any]:
    """Is the latent code used? :func:`~pyro_vae.infer.diagnostics.diagnostics` of the first points of ``x``."""
    if len(x) < 2:
        return {}
    report = diagnostics(vae, x[:DIAGNOSTIC_POINTS], y=None if y is None else y[:DIAGNOSTIC_POINTS])
    report["diagnostic_points"] = report.pop("num_points")
    report["diagnostic_samples"] = report.pop("num_samples")
    return report


def compare_run(
    run_dir: str | Path,
    split: str = "test",
    particles: Sequence[int] = (1, 10, 100),
    repeats: int = 50,
    batch_size: int = 100,
    device: str = "auto",
    estimators: Sequence[str] | None = None,
    data: dict | None = None,
) -> dict[str, Any]:
    """Compare estimators on a fixed batch of a run's data (:func:`pyro_vae.infer.compare.compare_estimators`).

    Writes ``compare.json``, ``compare.png`` (gradient variance against particles) and ``snr.png`` (the
    gradient's signal-to-noise ratio) into the run folder.

    Args:
        run_dir: a finished run folder (:func:`~pyro_vae.runs.folders.train_run`).
        split: ``"test"`` or ``"train"``.
        particles: numbers of particles :math:`L` to compare.
        repeats: independent estimates per estimator and :math:`L`, at least 2.
        batch_size: the batch: the split's first ``batch_size`` points.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        estimators: names from :data:`~pyro_vae.infer.estimators.ESTIMATORS` (default: every one that can
            treat the program).
        data: where the run's data are now (see :func:`evaluate_run`).

    Returns:
        What :func:`~pyro_vae.infer.compare.compare_estimators` returns, with ``run``, ``split`` and ``note``
        (the contents of ``compare.json``).

    Example:
        >>> import tempfile
        >>> import torch
        >>> from pyro_vae import Config, train_run
        >>> folder = tempfile.mkdtemp()
        >>> torch.save((torch.rand(40, 6) > 0.5).float(), f"{folder}/points.pt")  # 40 binary points
        >>> config = Config.from_dict({
        ...     "data": {"dataset": f"{folder}/points.pt"},
        ...     "model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}},
        ...     "train": {"epochs": 1, "batch_size": 16},
        ... })
        >>> summary = train_run(config, f"{folder}/run", progress=False)
        >>> result = compare_run(f"{folder}/run", particles=(1, 2), repeats=2, estimators=["mc", "analytic"])
        >>> [(row["estimator"], row["num_particles"]) for row in result["rows"]]
        [('mc', 1), ('analytic', 1), ('mc', 2), ('analytic', 2)]
    """
    _check_split(split)
    if repeats < 2:
        raise RunError(f"{{repeats}} must be >= 2 to estimate a variance (got {repeats})", "repeats")
    if not particles or min(particles) < 1:
        got = ",".join(map(str, particles))
        raise RunError(f"{{particles}} must be positive whole numbers such as 1,10,100 (got {got})", "particles")
    for name in estimators or ():
        check_estimator(name)
    vae, config, data = open_run(run_dir, device, data)
    x = (data.train if split == "train" else data.test)[:batch_size]
    labels = data.train_labels if split == "train" else data.test_labels
    y = required_labels(vae, None if labels is None else labels[:batch_size])
    chosen = tuple(estimators) if estimators else None  # None: every estimator that can treat the program
    result = {"run": str(run_dir), "split": split, **compare_estimators(vae, x, particles, repeats, chosen, y)}
    result["note"] = density_note(vae, x)
    atomic_write(Path(run_dir) / "compare.json", json.dumps(result, indent=2) + "\n")
    where = f"{caption(config)} | {len(x)} {split} points, {repeats} repeats"
    plot_gradient_variance(result, Path(run_dir) / "compare.png", where)
    plot_gradient_snr(result, Path(run_dir) / "snr.png", where)
    return result


def plot_run(run_dir: str | Path, device: str = "auto", data: dict | None = None) -> list[str]:
    """Draw (again) every picture of a finished run from its checkpoint and metrics; returns their paths.

    The pictures' draws are seeded with the run's seed: drawn again, they are the pictures the run drew.

    Args:
        run_dir: a finished run folder (:func:`~pyro_vae.runs.folders.train_run`).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        data: where the run's data are now (see :func:`evaluate_run`).

    Returns:
        The paths of the pictures drawn (those that do not apply to the program or the data are skipped).

    Example:
        >>> import tempfile
        >>> import torch
        >>> from pyro_vae import Config, train_run
        >>> folder = tempfile.mkdtemp()
        >>> torch.save((torch.rand(40, 6) > 0.5).float(), f"{folder}/points.pt")  # 40 binary points
        >>> config = Config.from_dict({
        ...     "data": {"dataset": f"{folder}/points.pt"},
        ...     "model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}},
        ...     "train": {"epochs": 1, "batch_size": 16},
        ... })
        >>> summary = train_run(config, f"{folder}/run", progress=False)
        >>> from pathlib import Path
        >>> [Path(path).name for path in plot_run(f"{folder}/run")]  # points, not images: no samples.png
        ['latent.png', 'curves.png', 'collapse.png']
    """
    run_dir = Path(run_dir)
    vae, config, data = open_run(run_dir, device, data)
    history = read_metrics(run_dir / "metrics.jsonl")
    drawn = draw_pictures(vae, data, history, run_dir, caption(config), config.train.seed)
    return [str(run_dir / name) for name in drawn]


def read_metrics(path: Path) -> list[dict]:
    """The epochs of a ``metrics.jsonl`` that can be read; each line that cannot is skipped and said on stderr."""
    if not path.is_file():
        return []
    history = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            metrics = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            metrics = "unreadable"
        if isinstance(metrics, dict):
            history.append(metrics)
        elif metrics is not None:
            print(f"pyro-vae: {path}: skipped line {number}, not a JSON object (a torn write?)", file=sys.stderr)
    return history
