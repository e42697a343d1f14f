"""Stochastic variational inference: fit a VAE to a data set, epoch by epoch, resumably.

One SVI step draws a minibatch, evaluates the differentiable negative ELBO of
:class:`~pyro_vae.infer.objectives.Objective` (a Pyro ELBO applied to the model/guide pair),
back-propagates, checks that the loss and the gradient are finite, and takes an optimiser step
over the VAE's parameters.

Between two steps the whole run is described by a :class:`TrainState`: epochs and steps done,
the optimiser's state, every random number generator's state and the data order. Training
continued from a saved state draws exactly what the uninterrupted run would have drawn, so on
the CPU it ends with bit-identical parameters and metrics. ``stop`` lets a caller (the command
line, on SIGINT or SIGTERM) end training at the next step boundary with
:class:`TrainingInterrupted`, which carries that state.

In a data-parallel job (``distributed``, see :mod:`pyro_vae.training.distributed`) each process trains on
its shard of every batch of ``batch_size`` points, the gradient is averaged over processes, the
test set is evaluated in shards summed over processes, and each process's draws are seeded with
``seed + rank``. Only process 0 shows progress; every process calls the callbacks.

Example:
    >>> from pyro_vae import load_dataset, make_vae
    >>> data = load_dataset("digits")
    >>> vae = make_vae(data.event_shape, latent_dim=2, network={"type": "mlp", "hidden": [32]})
    >>> history = fit(vae, data, epochs=1, progress=False)
    >>> sorted(history[0])  # doctest: +NORMALIZE_WHITESPACE
    ['active_units', 'beta', 'epoch', 'kl', 'kl_per_dim', 'lr', 'path', 'seconds', 'test_elbo',
     'test_elbo_analytic', 'test_elbo_mc', 'train_elbo']

:func:`fit` tells the story of a run; the pieces it is built from each do one thing:
:func:`_build` checks the settings and makes the objective, optimiser and schedules; :class:`_Run`
puts a saved :class:`TrainState` back and goes through the epochs, each of which is

- its steps (:class:`_Stepper`: minibatches, each step's KL weight, SVI steps),
- its metrics (:class:`_Measures`: the test set's bounds, the KL weight, the latent code's use),
- its validation (:class:`_Validation`: the best epoch's parameters and early stopping);

:class:`_Stops` answers stop requests between steps, :class:`_Progress` shows the bar and the epoch lines.
"""

from __future__ import annotations

import importlib.util
import math
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyro
import torch
from torch import Tensor, nn
from tqdm import std

from pyro_vae.errors import ConfigError, DataError, PyroVAEError
from pyro_vae.infer.diagnostics import accuracy, latent_usage
from pyro_vae.infer.estimators import BOUNDS, ESTIMATORS, reported_with, value_name
from pyro_vae.infer.objectives import Objective, evaluate_bounds, kl_methods
from pyro_vae.infer.program import label_use, required_labels
from pyro_vae.models.vae import VAE
from pyro_vae.training.annealing import KL_SCHEDULES, Constant, KLSchedule, check_kl_schedule, make_kl_schedule
from pyro_vae.training.data import Dataset
from pyro_vae.training.distributed import Distributed, data_parallel
from pyro_vae.training.labels import Batch, epoch_steps, labelled_weight
from pyro_vae.training.optim import load_schedule_state, make_lr_schedule, make_optimizer, schedule_state

__all__ = [
    "fit",
    "svi_step",
    "takes_labels",
    "check_batch_size",
    "check_early_stopping",
    "check_data_parallel",
    "check_world_size",
    "TrainState",
    "TrainingDiverged",
    "TrainingInterrupted",
    "METRICS",
    "get_rng_state",
    "set_rng_state",
]


def progress_bar_class(widgets: bool) -> type:
    """``tqdm.auto``'s bar where Jupyter's widgets (ipywidgets) are installed, else tqdm's text bar: without them
    importing ``tqdm.auto`` in a notebook warns "IProgress not found" (and its bar draws nothing)."""
    if not widgets:
        return std.tqdm
    from tqdm.auto import tqdm as auto

    return auto


tqdm = progress_bar_class(importlib.util.find_spec("ipywidgets") is not None)

#: What each epoch's metrics hold (ELBOs in nats per data point).
METRICS: dict[str, str] = {
    "epoch": "the epoch, from 1",
    "train_elbo": "mean per-point training objective over the epoch's steps (the beta-weighted ELBO when beta != 1)",
    "test_elbo": "ELBO (beta = 1) of the test set by the training estimator",
    "test_elbo_<name>": "the same by each reported estimator (mc, analytic and the training one), from the same draws",
    "seconds": "training time of the epoch",
    "lr": "learning rate of the epoch",
    "beta": "the KL weight at the epoch's last step (train.beta times the KL warm-up's weight)",
    "path": "how the objective was computed: compiled, fused, jit or pyro",
    "kl": "how each latent site's KL term was estimated: closed_form or sampled",
    "active_units": "latent dimensions whose posterior mean varies over the test set (variance > 0.01)",
    "kl_per_dim": "average KL of each latent dimension on the test set (None: a prior not factorised by dimension)",
    "validation_elbo": "ELBO (beta = 1) of the validation set by the training estimator (with a validation set only)",
    "best_epoch": "the epoch with the best validation ELBO so far (with a validation set only)",
}

#: How the path an objective takes is described at the start of a run.
_PATH_TEXT = {
    "compiled": "compiled (the fused estimator compiled with torch.compile, exact; the first step compiles it)",
    "fused": "fused (the estimator as plain tensor code, exact)",
    "jit": "jit (Pyro's ELBO compiled with torch.jit)",
    "pyro": "pyro (Pyro's traced ELBO)",
}


class TrainingDiverged(PyroVAEError):
    """The loss or a gradient became NaN or infinite."""


def check_early_stopping(early_stopping: int, data: Dataset) -> None:
    """A :class:`ConfigError` for early stopping without a validation set, or for a negative patience."""
    if early_stopping < 0:
        raise ConfigError(f"{{early_stopping}} must be >= 0 (got {early_stopping}); 0 turns it off", "early_stopping")
    if early_stopping and data.validation is None:
        raise ConfigError(
            f"{{early_stopping}} ({early_stopping}) watches the ELBO of a validation set, and there is none; "
            "hold one out of the training set with {validation=}10000",
            "early_stopping",
            "validation",
        )


def check_batch_size(batch_size: int, num_data: int) -> None:
    """Batches have exactly ``batch_size`` points, so there must be at least that many."""
    if batch_size > num_data:
        raise ConfigError(
            f"{{batch_size}} ({batch_size}) is larger than the training set ({num_data} points); "
            f"use {{batch_size=}}{num_data} or less",
            "batch_size",
        )


def get_rng_state(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Every random number generator a run on ``device`` draws from (torch, that GPU's, Python, NumPy), as data."""
    device = torch.device(device)
    numpy = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy[1].astype(np.int64)),
            "pos": int(numpy[2]),
            "has_gauss": int(numpy[3]),
            "cached_gaussian": float(numpy[4]),
        },
    }


def set_rng_state(state: dict[str, Any], device: torch.device | str = "cpu") -> None:
    """Restore what :func:`get_rng_state` returned, the GPU's generator on ``device``."""
    device = torch.device(device)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"][0].cpu(), device)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))


@dataclass
class TrainState:
    """A training run between two steps: enough to continue it exactly.

    Attributes:
        epoch: epochs completed.
        step: steps completed in epoch ``epoch + 1``.
        total: sum of those steps' losses (for the epoch's mean training ELBO).
        seconds: training time spent in those steps.
        order: state of the data-order generator at the start of epoch ``epoch + 1``.
        rng: :func:`get_rng_state` at this point.
        optimizer: the optimiser's ``state_dict()``.
        scheduler: the learning-rate schedule's ``state_dict()`` (empty in checkpoints written before schedules).
        history: the metrics of the completed epochs.
        world_size: processes of the (data-parallel) run; ``rng`` is process 0's.
        best: with a validation set, the best epoch so far by validation ELBO: ``epoch``, ``value``
            and its parameters, ``model``; empty without one.
        waited: epochs after the KL warm-up since the validation ELBO last improved (early stopping).
    """

    epoch: int = 0
    step: int = 0
    total: float = 0.0
    seconds: float = 0.0
    order: Tensor | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    world_size: int = 1
    best: dict[str, Any] = field(default_factory=dict)
    waited: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Tensors and plain values only, for a checkpoint read with ``weights_only=True``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        return cls(**values)


class TrainingInterrupted(PyroVAEError):
    """Training was asked to stop (see ``stop`` in :func:`fit`); ``state`` continues it."""

    def __init__(self, state: TrainState | None, signum: int | None = None) -> None:
        where = "before training started" if state is None else f"at epoch {state.epoch + 1}, step {state.step}"
        super().__init__(f"training stopped {where}")
        self.state, self.signum = state, signum
        self.checkpoint: Path | None = None  # set by whoever saved the state


def check_data_parallel(distributed: Distributed | None, jit: bool, compile: bool = False) -> None:
    """A :class:`ConfigError` for Pyro's JIT or a compiled loss under DistributedDataParallel (untested there)."""
    if distributed and (jit or compile):
        name = "jit" if jit else "compile"
        raise ConfigError(
            f"{{{name}}} cannot be used under torchrun (DistributedDataParallel); "
            "the default fused path is exact and fast",
            name,
        )


def check_world_size(resume: TrainState, world_size: int, run_dir: Path | None = None) -> None:
    """A :class:`ConfigError` unless ``resume`` was saved by ``world_size`` processes (its data shards depend on it)."""
    if resume.world_size != world_size:
        where = f" {run_dir}" if run_dir else " RUN_DIR"
        how = (
            f"torchrun --nproc_per_node={resume.world_size} -m pyro_vae train --resume{where}"
            if resume.world_size > 1
            else f"pyro-vae train --resume{where} without torchrun"
        )
        raise ConfigError(
            f"the checkpoint was written by {resume.world_size} process(es), this job has {world_size}; "
            f"resume with {how}"
        )


def _check_finite(loss: float, gradient: Tensor, epoch: int, step: int) -> None:
    """Raise :class:`TrainingDiverged` unless the loss and ``gradient`` (a sum or norm of the gradient) are finite."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"the loss became {loss} at epoch {epoch}, step {step}; lower the learning rate ({{lr}}), check the data "
            "for extreme values, or use a likelihood whose support fits the data",
            "lr",
        )
    if not torch.isfinite(gradient):
        raise TrainingDiverged(
            f"a gradient became {gradient.item()} at epoch {epoch}, step {step} (the loss was {loss:.6g}); "
            "lower the learning rate ({lr}) or clip the gradient ({clip_grad_norm=}10), "
            "and check the data for extreme values",
            "lr",
            "clip_grad_norm",
        )


def svi_step(
    objective: Callable[[Tensor, int], Tensor],
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    num_data: int,
    clip_grad_norm: float = 0.0,
    where: tuple[int, int] = (0, 0),
    y: Tensor | None = None,
    also: tuple[Batch, ...] = (),
) -> float:
    """One SVI step on minibatch ``x``; returns the loss (negative ELBO estimate of all ``num_data`` points).

    ``y``: the minibatch's labels, for a program that takes them (``None``: unlabelled, or a program without).
    ``also``: further parts of the same step (an unlabelled minibatch beside a labelled one), whose losses are
    added before the gradient is taken.

    ``objective`` is an :class:`~pyro_vae.infer.objectives.Objective`, or one wrapped by
    :func:`~pyro_vae.training.distributed.data_parallel`, whose backward pass averages the gradient over processes.

    The loss and the gradient are checked before the parameters move (``where`` = (epoch, step)
    names the step in the message), so a diverging step never corrupts them. ``clip_grad_norm > 0``
    rescales the gradient to at most that total norm.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = objective(x, num_data) if y is None and not also else objective(x, num_data, y, also)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Encountered NaN")  # Pyro's; the check below names the epoch and step
        loss.backward()
    parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if clip_grad_norm > 0:
        check = torch.nn.utils.clip_grad_norm_(parameters, clip_grad_norm)  # the norm before clipping
    else:  # a sum is finite exactly when every term is (or it overflows, as no sane gradient does): a third of a norm
        check = torch.stack([p.grad.sum() for p in parameters]).sum() if parameters else torch.zeros(())
    value = loss.item()
    _check_finite(value, check, *where)
    optimizer.step()
    return value


def _compile(objective: Objective, x: Tensor, num_data: int) -> None:
    """Trace a JIT objective once, outside the run's random stream (tracing draws extra numbers)."""
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        objective(x, num_data)


class _Stops:
    """Stop requests, polled at step boundaries; in a data-parallel job every process stops at the same step."""

    def __init__(self, stop: Callable[[], int | None] | None, distributed: Distributed | None) -> None:
        self.stop, self.distributed = stop, distributed

    def check(self, snapshot: Callable[[], TrainState]) -> None:
        """Raise :class:`TrainingInterrupted` with ``snapshot()`` if a stop was asked for."""
        if self.stop is None:
            return
        signum = self.stop()
        if self.distributed is not None and self.distributed.agree(signum is not None):
            signum = signum if signum is not None else signal.SIGTERM
        if signum is not None:
            raise TrainingInterrupted(snapshot(), signum)


def training_objective(
    estimator: str,
    beta: float = 1.0,
    kl_warmup: dict[str, Any] | str | None = None,
    free_bits: float = 0.0,
    label_weight: float = 1.0,
) -> str:
    """What a run's training loss estimates, for its epoch lines and summary: its bound, or what it changes in it
    (``label_weight``: the factor on the labelled points' terms, see
    :func:`~pyro_vae.training.labels.labelled_weight`)."""
    changes = [f"beta {beta:g}"] if beta != 1 else []
    if label_weight != 1:
        changes.append(f"labelled terms x{label_weight:.3g}")
    warmup = KL_SCHEDULES.validate(kl_warmup or "constant", "kl_warmup")
    if not issubclass(KL_SCHEDULES.get(warmup["type"]), Constant):
        changes.append("KL warm-up")
    if free_bits:
        changes.append(f"free bits {free_bits:g}")
    bound = BOUNDS[ESTIMATORS.get(estimator).bound]
    return f"objective ({bound} with {', '.join(changes)})" if changes else bound


class _Progress:
    """The progress bar (terminals only) and about ten epoch lines a run, on standard error."""

    def __init__(self, show: bool, epochs: int, steps: int, state: TrainState) -> None:
        self.show, self.epochs, self.bound, self.objective = show, epochs, "ELBO", "ELBO"
        # disable=None: a bar on terminals only; logs get the epoch lines instead.
        self.bar = tqdm(
            total=epochs * steps,
            initial=state.epoch * steps + state.step,
            disable=None if show else True,
            unit="step",
            dynamic_ncols=True,
            leave=False,
        )

    def start(self, estimator: str, kl: dict[str, str], path: str, objective: str) -> None:
        if self.show:
            sites = ", ".join(f"{site}: {how.replace('_', ' ')}" for site, how in kl.items())
            self.bound, self.objective = BOUNDS[ESTIMATORS.get(estimator).bound], objective
            print(f"KL term ({estimator} {self.bound}): {sites}; path: {_PATH_TEXT[path]}", file=sys.stderr)

    def epoch(self, metrics: dict[str, Any]) -> None:
        epoch = metrics["epoch"]
        if self.show and (epoch % max(1, self.epochs // 10) == 0 or epoch in (1, self.epochs)):
            tqdm.write(
                f"epoch {epoch:4d}  train {self.objective} {metrics['train_elbo']:9.3f}  "
                f"test {self.bound} {metrics['test_elbo']:9.3f}  "
                + (f"validation {metrics['validation_elbo']:9.3f}  " if "validation_elbo" in metrics else "")
                + f"{metrics['seconds']:6.2f} s",
                file=sys.stderr,
            )

    def stopped_early(self, best: dict[str, Any], patience: int) -> None:
        if self.show:
            tqdm.write(
                f"stopped early: no better validation ELBO in {patience} epochs; "
                f"the model is that of epoch {best['epoch']} (validation ELBO {best['value']:.3f})",
                file=sys.stderr,
            )

    def close(self) -> None:
        self.bar.close()


def _place(distributed: Distributed | None) -> tuple[int, int]:
    """This process's rank and the number of processes of its job (0 and 1 for a process alone)."""
    return (distributed.rank, distributed.world_size) if distributed else (0, 1)


@dataclass(frozen=True, kw_only=True)
class _BetaSchedule:
    """The KL term's weight at each step: ``beta`` (``train.beta``) times the KL schedule's weight at that step."""

    beta: float
    schedule: KLSchedule
    steps_per_epoch: int

    def at(self, epoch: int, step: int) -> float:
        """The weight at ``step`` (from 1) of ``epoch`` (from 1)."""
        return self.beta * self.schedule((epoch - 1) * self.steps_per_epoch + step - 1)

    def warmed_up(self, epoch: int) -> bool:
        """Whether the schedule's weight had reached 1 by the last step of ``epoch``."""
        return self.schedule(epoch * self.steps_per_epoch - 1) >= 1.0


@dataclass(frozen=True, kw_only=True)
class _Context:
    """What every piece of a run works with: the VAE, its objective, the KL weight, and this process's job."""

    vae: VAE
    objective: Objective
    kl_weight: _BetaSchedule
    distributed: Distributed | None

    @property
    def rank(self) -> int:
        return _place(self.distributed)[0]

    @property
    def world_size(self) -> int:
        return _place(self.distributed)[1]

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def bounds(self, x: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """The bounds of the objective's estimator on ``x`` (with the ``labels`` of a program that needs them at
        every call); in a job each process evaluates its shard, and they sum."""
        y = required_labels(self.vae, labels)
        distributed = self.distributed
        if distributed:
            x = x[distributed.rank :: distributed.world_size]
            y = None if y is None else y[distributed.rank :: distributed.world_size]
        reduce = distributed.all_reduce if distributed else None
        name, particles = self.objective.name, self.objective.num_particles
        return evaluate_bounds(self.vae, x, name, train_particles=particles, reduce=reduce, y=y)

    def value(self, scores: dict[str, float]) -> float:
        """The ELBO by the training estimator among ``scores``."""
        return scores[f"elbo_{value_name(self.objective.name)}"]


#: ``snapshot(epoch, step, total, seconds, order)``: the run's state after ``step`` steps of epoch ``epoch + 1``.
_Snapshot = Callable[[int, int, float, float, Tensor], TrainState]


@dataclass(kw_only=True)
class _Stepper:
    """An epoch's SVI steps: minibatches in the data order, each step's KL weight, and the sum of their losses."""

    context: _Context
    data: Dataset
    loss: Callable[[Tensor, int], Tensor]  # the objective, or its data-parallel wrapper
    optimizer: torch.optim.Optimizer
    order: torch.Generator
    batch_size: int
    clip_grad_norm: float
    labelled: bool  # the program takes labels and the data have them: minibatches carry y (labelled_batches)

    def batches(self, first: int) -> Iterator[tuple[Batch, ...]]:
        """The epoch's steps from the ``first``-th on, in this process's shard: each one minibatch, or a labelled
        and an unlabelled one (:meth:`~pyro_vae.training.data.Dataset.labelled_batches`)."""
        c, data = self.context, self.data
        place = {"start": first, "rank": c.rank, "world_size": c.world_size}
        if self.labelled:
            return data.labelled_batches(self.batch_size, self.order, **place)
        return ((Batch(x, None, len(data.train)),) for x in data.batches(self.batch_size, self.order, **place))

    def epoch(
        self, epoch: int, start: TrainState, progress: _Progress, stops: _Stops, snapshot: _Snapshot
    ) -> tuple[float, float]:
        """The steps of ``epoch`` (from where ``start`` stopped, if inside it); returns the summed loss and seconds."""
        c = self.context
        first = start.step if epoch == start.epoch + 1 else 0
        total, elapsed = (start.total, start.seconds) if first else (0.0, 0.0)
        epoch_order = self.order.get_state()
        c.vae.train()
        began = time.perf_counter()
        for step, ((x, y, num_data), *also) in enumerate(self.batches(first), first + 1):
            c.objective.beta = c.kl_weight.at(epoch, step)
            where = (epoch, step)
            loss = svi_step(self.loss, self.optimizer, x, num_data, self.clip_grad_norm, where, y, tuple(also))
            total += loss - c.objective.take_auxiliary()  # the ELBO's part: a classifier's term is not the ELBO's
            progress.bar.update()
            seconds = elapsed + time.perf_counter() - began
            stops.check(lambda: snapshot(epoch - 1, step, total, seconds, epoch_order))  # noqa: B023 (called at once)
        seconds = elapsed + time.perf_counter() - began
        if c.distributed:  # each process's losses estimate the same full-data objective: average them
            total = c.distributed.mean(total)
        return total, seconds


@dataclass(kw_only=True)
class _Measures:
    """An epoch's metrics but validation's (:data:`METRICS`): its training objective, the test set's bounds,
    the KL weight, and how the latent code is used."""

    context: _Context
    data: Dataset
    kl: dict[str, str]  # how each latent site's KL term is estimated (see kl_methods)

    def epoch(self, epoch: int, total: float, seconds: float, lr: float) -> dict[str, Any]:
        """The metrics of ``epoch``, whose steps' losses summed to ``total`` in ``seconds`` at rate ``lr``."""
        c = self.context
        steps = c.kl_weight.steps_per_epoch
        scores = c.bounds(self.data.test, self.data.test_labels)
        return {
            "epoch": epoch,
            "train_elbo": -total / (steps * len(self.data.train)),
            "test_elbo": c.value(scores),
            **{f"test_elbo_{n}": scores[f"elbo_{n}"] for n in reported_with(c.objective.name)},
            "seconds": seconds,
            "lr": lr,
            "beta": c.kl_weight.at(epoch, steps),
            "path": c.objective.path,
            "kl": self.kl,
            **self.latent_usage(),
            **self.accuracy(),
        }

    def accuracy(self) -> dict[str, float]:
        """``test_accuracy``: how often a program's classifier (``classify(x)``) puts its mode on the test label."""
        vae, labels = self.context.vae, self.data.test_labels
        if not hasattr(vae, "classify") or labels is None or self.context.rank != 0:
            return {}
        return {"test_accuracy": accuracy(vae, self.data.test, labels)[0]}

    def latent_usage(self) -> dict[str, Any]:
        """Active units and the KL per dimension on the test set (process 0), outside the run's random stream."""
        device = self.context.device
        if self.context.rank != 0 or len(self.data.test) < 2:
            return {}
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return latent_usage(
                self.context.vae, self.data.test, y=required_labels(self.context.vae, self.data.test_labels)
            )


@dataclass(kw_only=True)
class _Validation:
    """The validation ELBO after each epoch: the best epoch's parameters, and early stopping's patience."""

    context: _Context
    x: Tensor | None  # the validation set
    labels: Tensor | None = None  # its labels
    patience: int = 0  # epochs without a better validation ELBO, after the KL warm-up, before training stops
    best: dict[str, Any] = field(default_factory=dict)  # see TrainState.best
    waited: int = 0

    @property
    def stopped_early(self) -> bool:
        """Whether the validation ELBO has not improved for ``patience`` epochs after the warm-up."""
        return 0 < self.patience <= self.waited

    def epoch(self, epoch: int) -> dict[str, Any]:
        """The validation ELBO of ``epoch``; keeps the best epoch's parameters and counts epochs without one."""
        if self.x is None:
            return {}
        value = self.context.value(self.context.bounds(self.x, self.labels))
        if not self.best or value > self.best["value"]:
            model = {k: v.detach().clone() for k, v in self.context.vae.state_dict().items()}
            self.best, self.waited = {"epoch": epoch, "value": value, "model": model}, 0
        elif self.context.kl_weight.warmed_up(epoch):  # patience counts after the warm-up
            self.waited += 1
        return {"validation_elbo": value, "best_epoch": self.best["epoch"]}

    def finish(self, progress: _Progress) -> None:
        """Say if training stopped early; leave the VAE with the best epoch's parameters (with a validation set)."""
        if self.stopped_early:
            progress.stopped_early(self.best, self.patience)
        if self.best:
            self.context.vae.load_state_dict(self.best["model"])


@dataclass(kw_only=True)
class _Run:
    """One call of :func:`fit`: each epoch's steps, then its schedule step, metrics, validation and callbacks."""

    stepper: _Stepper
    measures: _Measures
    validation: _Validation
    schedule: torch.optim.lr_scheduler.LRScheduler
    epochs: int
    seed: int
    described: str  # what the training loss estimates (see training_objective)
    history: list[dict] = field(default_factory=list)

    def snapshot(self, epoch: int, step: int, total: float, seconds: float, order: Tensor) -> TrainState:
        """The run's state after ``step`` steps of epoch ``epoch + 1`` (see :data:`_Snapshot`)."""
        c = self.stepper.context
        if c.distributed and step:  # every process stops at this step (agreed): carry the average of their partial sums
            total = c.distributed.mean(total)
        return TrainState(
            epoch=epoch,
            step=step,
            total=total,
            seconds=seconds,
            order=order,
            rng=get_rng_state(c.device),
            optimizer=self.stepper.optimizer.state_dict(),
            scheduler=schedule_state(self.schedule),
            history=list(self.history),
            world_size=c.world_size,
            best=dict(self.validation.best),
            waited=self.validation.waited,
        )

    def restore(self, resume: TrainState | None) -> TrainState:
        """Put the optimiser, schedule, data order and generators back as ``resume`` saved them (or start)."""
        c, stepper = self.stepper.context, self.stepper
        if resume is None:
            return TrainState(order=stepper.order.get_state(), rng=get_rng_state(c.device), world_size=c.world_size)
        check_world_size(resume, c.world_size)
        stepper.optimizer.load_state_dict(resume.optimizer)
        if resume.scheduler:
            load_schedule_state(self.schedule, resume.scheduler)
        stepper.order.set_state(resume.order)
        if c.rank == 0:
            set_rng_state(resume.rng, c.device)
        else:  # only process 0's generators are saved; the others restart from seeds fixed by rank and position
            pyro.set_rng_seed(((self.seed + c.rank) * 1_000_003 + resume.epoch * 10_007 + resume.step) % 2**32)
        self.history = list(resume.history)
        self.validation.best, self.validation.waited = dict(resume.best), resume.waited
        return resume

    def end_epoch(self, epoch: int, total: float, seconds: float) -> dict[str, Any]:
        """Step the learning-rate schedule, then measure and validate the epoch and record its metrics."""
        lr = self.stepper.optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():  # a run resumed after the last step of its first epoch steps the schedule first
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.schedule.step()
        metrics = {**self.measures.epoch(epoch, total, seconds, lr), **self.validation.epoch(epoch)}
        self.history.append(metrics)
        return metrics

    def train(
        self,
        resume: TrainState | None,
        *,
        progress: bool,
        stop: Callable[[], int | None] | None,
        on_epoch: Callable[[dict, torch.optim.Optimizer], None] | None,
        on_checkpoint: Callable[[TrainState], None] | None,
    ) -> list[dict]:
        """Train from ``resume`` (or from the start) to the last epoch; see :func:`fit` for the rest."""
        c = self.stepper.context
        steps = c.kl_weight.steps_per_epoch
        shown = _Progress(show=progress and c.rank == 0, epochs=self.epochs, steps=steps, state=resume or TrainState())
        shown.start(c.objective.name, self.measures.kl, c.objective.path, self.described)
        state = self.restore(resume)
        stops = _Stops(stop, c.distributed)
        try:
            return self.epochs_from(state, progress=shown, stops=stops, on_epoch=on_epoch, on_checkpoint=on_checkpoint)
        finally:
            shown.close()

    def epochs_from(
        self,
        state: TrainState,
        *,
        progress: _Progress,
        stops: _Stops,
        on_epoch: Callable[[dict, torch.optim.Optimizer], None] | None,
        on_checkpoint: Callable[[TrainState], None] | None,
    ) -> list[dict]:
        """The epochs from ``state`` on: steps, metrics, callbacks, and stop checks between steps."""
        stops.check(lambda: self.snapshot(state.epoch, state.step, state.total, state.seconds, state.order))
        for epoch in range(state.epoch + 1, self.epochs + 1):
            if self.validation.stopped_early:
                break
            total, seconds = self.stepper.epoch(epoch, state, progress, stops, self.snapshot)
            metrics = self.end_epoch(epoch, total, seconds)
            progress.epoch(metrics)
            if on_epoch is not None:
                on_epoch(metrics, self.stepper.optimizer)
            end = self.snapshot(epoch, 0, 0.0, 0.0, self.stepper.order.get_state())
            if on_checkpoint is not None:
                on_checkpoint(end)
            if epoch < self.epochs and not self.validation.stopped_early:
                stops.check(lambda end=end: end)
        self.validation.finish(progress)
        return self.history


def _check_settings(
    data: Dataset, distributed: Distributed | None, *, batch_size: int, clip_grad_norm: float, jit: bool, compile: bool
) -> None:
    """A :class:`ConfigError` for settings that cannot train on ``data`` in this job."""
    check_batch_size(batch_size, len(data.train) // _place(distributed)[1])
    if clip_grad_norm < 0:
        raise ConfigError(
            f"{{clip_grad_norm}} must be >= 0 (got {clip_grad_norm}); 0 turns clipping off", "clip_grad_norm"
        )
    check_data_parallel(distributed, jit, compile)


def takes_labels(vae: nn.Module, data: Dataset) -> bool:
    """Whether minibatches carry labels: the program takes them and the data have them; a one-line
    :class:`DataError` where a program needs them at every call (``model(x, y)``) and a training point has none."""
    use = label_use(vae)
    if use == "required" and data.num_labelled < len(data.train):
        raise DataError(
            f"{type(vae).__name__}.model(x, y) needs a label for every training point, and data set {data.name} has "
            f"{data.num_labelled} of {len(data.train)}; give every point its label (data.labels = 0 keeps them all)"
        )
    return use != "none" and data.train_labels is not None


def label_weight(data: Dataset, labelled: bool, batch_size: int, world_size: int = 1) -> float:
    """The factor on the labelled points' terms of a run's steps: 1 but for ``"balanced"`` steps."""
    if not labelled or data.label_batches != "balanced":
        return 1.0
    return labelled_weight(data.train_labels, batch_size, world_size)


def _labelled_only(data: Dataset, labelled: bool) -> bool:
    """Whether a step may be all labelled (ratio steps, or no unlabelled point): a classifier may then take no part."""
    return labelled and (data.label_batches == "ratio" or data.num_labelled == len(data.train))


def _steps_per_epoch(data: Dataset, labelled: bool, batch_size: int, world_size: int) -> int:
    """The steps of an epoch in each process (formed as ``data.label_batches`` says where ``labelled``)."""
    if labelled:
        return epoch_steps(data.train_labels, batch_size, world_size, data.label_batches)
    return len(data.train) // world_size // batch_size


def _build(
    vae: VAE,
    data: Dataset,
    distributed: Distributed | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    elbo: str,
    num_particles: int,
    jit: bool,
    beta: float,
    fused: bool | Literal["auto"],
    compile: bool,
    optimizer: dict[str, Any] | str,
    lr_schedule: dict[str, Any] | str,
    kl_warmup: dict[str, Any] | str,
    free_bits: float,
    early_stopping: int,
    clip_grad_norm: float,
    seed: int,
) -> _Run:
    """Check the settings, seed every generator, and build the pieces of a run from the settings of :func:`fit`."""
    _check_settings(data, distributed, batch_size=batch_size, clip_grad_norm=clip_grad_norm, jit=jit, compile=compile)
    rank, n = _place(distributed)  # n: the processes of the job
    labelled = takes_labels(vae, data)
    steps_per_epoch = _steps_per_epoch(data, labelled, batch_size, n)
    kl_schedule = make_kl_schedule(kl_warmup, steps_per_epoch)
    check_kl_schedule(kl_schedule, elbo, compile)
    pyro.set_rng_seed((seed + rank) % 2**32)  # NumPy, which Pyro seeds too, takes 32-bit seeds
    order = torch.Generator().manual_seed(seed)  # the same permutation in every process; each takes its shard
    objective = Objective(vae, elbo, num_particles, jit, beta, fused, compile, free_bits)
    loss = data_parallel(vae, objective, distributed, beta, _labelled_only(data, labelled)) if distributed else None
    optim = make_optimizer(vae.parameters(), lr, optimizer)
    schedule = make_lr_schedule(optim, lr_schedule, epochs)
    check_early_stopping(early_stopping, data)
    kl = kl_methods(vae, data.test[:2], elbo, y=required_labels(vae, data.test_labels))
    if objective.jit:
        _compile(objective, data.train[:batch_size], len(data.train))
    kl_weight = _BetaSchedule(beta=beta, schedule=kl_schedule, steps_per_epoch=steps_per_epoch)
    c = _Context(vae=vae, objective=objective, kl_weight=kl_weight, distributed=distributed)
    return _Run(
        stepper=_Stepper(
            context=c,
            data=data,
            loss=loss or objective,
            optimizer=optim,
            order=order,
            batch_size=batch_size,
            clip_grad_norm=clip_grad_norm,
            labelled=labelled,
        ),
        measures=_Measures(context=c, data=data, kl=kl),
        validation=_Validation(context=c, x=data.validation, labels=data.validation_labels, patience=early_stopping),
        schedule=schedule,
        epochs=epochs,
        seed=seed,
        described=training_objective(elbo, beta, kl_warmup, free_bits, label_weight(data, labelled, batch_size, n)),
    )


def fit(
    vae: VAE,
    data: Dataset,
    *,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 1e-3,
    elbo: str = "mc",
    num_particles: int = 1,
    jit: bool = False,
    beta: float = 1.0,
    fused: bool | Literal["auto"] = "auto",
    compile: bool = False,
    optimizer: dict[str, Any] | str = "adam",
    lr_schedule: dict[str, Any] | str = "constant",
    kl_warmup: dict[str, Any] | str = "constant",
    free_bits: float = 0.0,
    early_stopping: int = 0,
    clip_grad_norm: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[dict, torch.optim.Optimizer], None] | None = None,
    on_checkpoint: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
    stop: Callable[[], int | None] | None = None,
    distributed: Distributed | None = None,
) -> list[dict]:
    r"""Train ``vae`` on ``data.train`` by SVI; returns one dict of metrics per epoch (:data:`METRICS`).

    Each step is an optimiser step on the loss of :class:`~pyro_vae.infer.objectives.Objective` for a minibatch,
    an estimate of the negative beta-weighted ELBO of the whole training set, so that training maximises

    .. math:: \max_{\theta,\phi}\ \sum_{n=1}^{N} \mathbb E_{q_\phi(z\mid x_n)}[\log p_\theta(x_n\mid z)]
        - \beta\,\mathrm{KL}(q_\phi(z\mid x_n)\,\|\,p(z)).

    ``epochs`` to ``seed`` are the settings of ``[train]`` (:class:`~pyro_vae.runs.config.TrainConfig` documents
    them): same names, meanings and defaults; a component may be named alone (``optimizer="sgd"``). A loss or
    gradient that is not finite raises :class:`TrainingDiverged` before the parameters move.

    Args:
        vae: the program (:mod:`pyro_vae.infer.program`), trained in place; on the device of ``data``'s tensors.
        data: ``data.train`` is trained on; ``data.test`` (and ``data.validation``) evaluated after each epoch.
        epochs: passes over the training set.
        batch_size: points per step (per process, in a data-parallel job).
        lr: the learning rate, which ``lr_schedule`` multiplies.
        elbo: the estimator, a name in :data:`~pyro_vae.infer.estimators.ESTIMATORS`.
        num_particles: draws of the latent code per point and step.
        jit: compute the loss with Pyro's JIT-compiled ELBO.
        beta: :math:`\beta`, the weight of the KL term (1: the ELBO; 0: no KL).
        fused: compute the estimator as plain tensor code; ``"auto"``: wherever it is exact and ``jit`` is off.
        compile: compile the fused estimator with :func:`torch.compile`.
        optimizer: an entry of :data:`~pyro_vae.training.optim.OPTIMIZERS`, ``{"type": name, ...}`` or a name.
        lr_schedule: an entry of :data:`~pyro_vae.training.optim.LR_SCHEDULES`, stepped after each epoch.
        kl_warmup: an entry of :data:`~pyro_vae.training.annealing.KL_SCHEDULES`; a step's KL weight is
            ``beta`` times the schedule's.
        free_bits: a floor in nats under each latent dimension's KL term (0: off).
        early_stopping: stop after this many epochs without a better validation ELBO (0: off; needs
            ``data.validation``); with a validation set ``vae`` ends with its best epoch's parameters.
        clip_grad_norm: the largest total gradient norm of a step (0: no clipping).
        seed: the seed of Pyro, torch, NumPy and the data order.
        progress: show a bar and a line per epoch on stderr.
        on_epoch: called after each epoch as ``on_epoch(metrics, optimizer)``.
        on_checkpoint: called after ``on_epoch`` with the :class:`TrainState` that continues the run.
        resume: such a :class:`TrainState` to continue from (``vae`` holding its parameters).
        stop: polled after every step; an answer other than ``None`` (a signal number) ends training with
            :class:`TrainingInterrupted`, whose ``state`` continues it.
        distributed: this process's place in a data-parallel job (:mod:`pyro_vae.training.distributed`;
            ``None``: alone).

    Returns:
        The metrics of each epoch, ``[{"epoch": 1, "train_elbo": ..., "test_elbo": ..., ...}, ...]``, keys
        as :data:`METRICS` says, ELBOs in nats per data point.

    Reference:
        Auto-Encoding Variational Bayes (Kingma & Welling, 2014), algorithm 1.

    Example:
        >>> import torch
        >>> from pyro_vae import Dataset, make_vae
        >>> data = Dataset("points", train=torch.rand(64, 8, 8), test=torch.rand(16, 8, 8))
        >>> vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [16]})
        >>> history = fit(vae, data, epochs=2, batch_size=16, elbo="analytic", progress=False)
        >>> [metrics["epoch"] for metrics in history], history[-1]["path"], history[-1]["kl"]
        ([1, 2], 'fused', {'z': 'closed_form'})
    """
    run = _build(
        vae,
        data,
        distributed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        elbo=elbo,
        num_particles=num_particles,
        jit=jit,
        beta=beta,
        fused=fused,
        compile=compile,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        kl_warmup=kl_warmup,
        free_bits=free_bits,
        early_stopping=early_stopping,
        clip_grad_norm=clip_grad_norm,
        seed=seed,
    )
    return run.train(resume, progress=progress, stop=stop, on_epoch=on_epoch, on_checkpoint=on_checkpoint)
