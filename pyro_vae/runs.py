"""Run folders: train from a config into a folder, load a trained VAE back, evaluate it.

A run folder holds

- ``config.toml`` — the resolved configuration (every default filled in);
- ``metrics.jsonl`` — one JSON object per epoch (``epoch``, ``train_elbo``, ``test_elbo``, ``seconds``);
- ``checkpoint.pt`` — model, optimiser, random number generators, data order and position
  (a :class:`~pyro_vae.train.TrainState`), written every ``train.checkpoint_every`` epochs, at
  the end, and when training is asked to stop; read with ``torch.load(weights_only=True)``;
- ``reconstructions.png``, ``samples.png`` — pictures of the final model (image data only);
- ``summary.json`` — the final numbers.

Every file is written atomically. Nothing is written before the config, the data and the model
have all been checked. :func:`resume_run` continues a stopped or killed run from its checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae.compare import compare_estimators
from pyro_vae.config import Config, resolve_device
from pyro_vae.data import Dataset, load_dataset
from pyro_vae.distributed import Distributed, from_env
from pyro_vae.errors import RunError
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.marginal import log_likelihood
from pyro_vae.objectives import evaluate_elbo
from pyro_vae.plots import plot_curves, plot_gradient_variance, plot_latent_space, plot_manifold, plot_reconstructions, plot_samples
from pyro_vae.storage import atomic_write, load_checkpoint, remove_partial_writes, save_checkpoint
from pyro_vae.train import TrainingDiverged, TrainingInterrupted, TrainState, check_batch_size, check_data_parallel, check_world_size, fit
from pyro_vae.vae import VAE, make_vae

__all__ = ["train_run", "resume_run", "load", "evaluate_run", "compare_run", "plot_run", "draw_pictures", "load_data", "build_vae", "RUN_FILES"]

RUN_FILES = ("config.toml", "checkpoint.pt")


def load_data(config: Config, device: str | torch.device = "cpu") -> Dataset:
    """The data set a config names, checked against the support of its likelihood."""
    likelihood = LIKELIHOODS.get(config.model.likelihood["type"], "model.likelihood.type")
    d = config.data
    return load_dataset(
        d.dataset,
        data_root=d.data_root,
        download=d.download,
        binarize=d.binarize,
        support=likelihood.support,
        support_text=likelihood.support_text,
        device=device,
        seed=config.train.seed,
    )


def build_vae(config: Config, event_shape: tuple[int, ...]) -> VAE:
    """The (untrained) VAE a config describes, for data points of shape ``event_shape``."""
    m = config.model
    return make_vae(event_shape, m.latent_dim, network=m.network, prior=m.prior, likelihood=m.likelihood)


def _prepare_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; give a folder path")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise RunError(f"--out {out} is inside {blocking}, which is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunError(f"--out {out} already exists and is not empty; pass --overwrite to replace that run, or choose another folder")
        if not (out / "config.toml").is_file():
            raise RunError(f"--out {out} is not empty and is not a pyro-vae run folder; refusing to delete it: choose another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _caption(config: Config) -> str:
    m, t = config.model, config.train
    net = ",".join(str(h) for h in m.network.get("hidden", m.network.get("channels", [])))
    return (
        f"{config.data.dataset} | {m.network['type']} {net} | latent {m.latent_dim} | prior {m.prior['type']} | "
        f"likelihood {m.likelihood['type']} | elbo {t.elbo} x{t.num_particles} | beta {t.beta:g} | "
        f"epochs {t.epochs} | batch {t.batch_size} | lr {t.lr:g} | seed {t.seed}"
    )


def _state(vae: VAE, config: Config, state: TrainState) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "event_shape": list(vae.event_shape),
        "epoch": state.epoch,
        "step": state.step,
        "model": vae.state_dict(),
        "train": state.to_dict(),
    }


def train_run(
    config: Config, out: str | Path, overwrite: bool = False, progress: bool = True, stop: Callable[[], int | None] | None = None
) -> dict[str, Any]:
    """Train the VAE of ``config`` into the run folder ``out`` and return the summary.

    ``stop`` is polled after every step (see :func:`~pyro_vae.train.fit`); when it asks, the
    run writes a checkpoint that :func:`resume_run` continues, and raises
    :class:`~pyro_vae.train.TrainingInterrupted`.

    Raises:
        PyroVAEError: for a bad config, data set or output folder, before anything is written.
    """
    out = Path(out)
    t = config.train
    with _job(t.device) as (device, distributed):
        main = distributed is None or distributed.is_main
        data = load_data(config, device)
        pyro.set_rng_seed(t.seed)  # the initial weights are part of what the seed fixes
        vae = build_vae(config, data.event_shape).to(device)
        world_size = distributed.world_size if distributed else 1
        check_batch_size(t.batch_size, len(data.train) // world_size)
        check_data_parallel(distributed, t.jit)
        signum = stop() if stop is not None and distributed is None else None  # (in a job, the processes agree on a stop at the first step)
        if signum is not None:  # asked to stop before anything was written: write nothing
            raise TrainingInterrupted(None, signum)
        if main:
            _prepare_folder(out, overwrite)
            atomic_write(out / "config.toml", config.to_toml())
        if progress and main:
            processes = f" in {world_size} processes of {t.batch_size} points a batch each" if distributed else ""
            print(
                f"training on {data.name} ({len(data.train)} train / {len(data.test)} test points) for {t.epochs} epochs "
                f"on {device}{processes}: {t.elbo} ELBO, {t.num_particles} particle(s), beta {t.beta:g}, into {out}",
                file=sys.stderr,
            )
        return _train_into(out, config, data, vae, None, progress, stop, distributed)


@contextlib.contextmanager
def _job(device_name: str) -> Iterator[tuple[torch.device, Distributed | None]]:
    """The device, and this process's place in a torchrun job (``None`` alone); leaves the job at the end."""
    device = resolve_device(device_name)
    distributed = from_env(device)
    try:
        yield (distributed.device if distributed else device), distributed
    finally:
        if distributed is not None:
            distributed.close()


def resume_run(run_dir: str | Path, progress: bool = True, stop: Callable[[], int | None] | None = None) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its checkpoint, to the end of its schedule; returns the summary.

    The checkpoint holds every random number generator's state and the position in the data
    order, so the continued run draws what the uninterrupted one would have: on the CPU its
    final parameters and metrics (all but the timings) are bit-identical. Metrics of epochs
    after the checkpoint (a run killed between the two writes) are dropped and recomputed, and
    temporary files left by a killed write are removed.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise RunError(f"--resume {run_dir}: not a pyro-vae run folder (no config.toml); give the --out folder of an earlier pyro-vae train")
    if not (run_dir / "checkpoint.pt").is_file():
        raise RunError(
            f"--resume {run_dir}: the run stopped before its first checkpoint, so there is nothing to continue; "
            f"start it again with pyro-vae train --config {run_dir / 'config.toml'} --out {run_dir} --overwrite"
        )
    config = Config.from_toml(run_dir / "config.toml")
    state = load_checkpoint(run_dir / "checkpoint.pt")
    if "train" not in state:
        raise RunError(f"--resume {run_dir}: its checkpoint (format {state['format']}) has no training state; it can be evaluated, not resumed; retrain to continue")
    if Config.from_dict(state["config"]) != config:
        raise RunError(f"--resume {run_dir}: config.toml differs from the configuration the checkpoint was trained with; restore config.toml to resume")
    resume = TrainState.from_dict(state["train"])
    with _job(config.train.device) as (device, distributed):
        check_world_size(resume, distributed.world_size if distributed else 1, run_dir)  # before anything is written
        data = load_data(config, device)
        vae = _load_model(config, state, run_dir).to(device)
        if distributed is None or distributed.is_main:
            remove_partial_writes(run_dir)
            atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in resume.history))
            if progress:
                print(f"resuming {run_dir} at epoch {resume.epoch + 1}, step {resume.step} of {config.train.epochs} epochs on {device}", file=sys.stderr)
        return _train_into(run_dir, config, data, vae, resume, progress, stop, distributed)


def _train_into(
    out: Path,
    config: Config,
    data: Dataset,
    vae: VAE,
    resume: TrainState | None,
    progress: bool,
    stop: Callable[[], int | None] | None,
    distributed: Distributed | None = None,
) -> dict[str, Any]:
    """Train (or continue) into ``out``: metrics every epoch, checkpoints as configured and on a stop; then pictures and summary.

    In a data-parallel job only process 0 writes; the others return an empty summary.
    """
    t = config.train
    main = distributed is None or distributed.is_main
    lines = [json.dumps(m) for m in resume.history] if resume else []
    checkpoint = out / "checkpoint.pt"

    def on_epoch(metrics: dict, optimizer: torch.optim.Optimizer) -> None:
        lines.append(json.dumps(metrics))
        atomic_write(out / "metrics.jsonl", "\n".join(lines) + "\n")

    def on_checkpoint(state: TrainState) -> None:
        if state.epoch == t.epochs or (t.checkpoint_every and state.epoch % t.checkpoint_every == 0):
            save_checkpoint(checkpoint, _state(vae, config, state))

    start = time.perf_counter()
    try:
        history = fit(
            vae, data, epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, elbo=t.elbo, num_particles=t.num_particles,
            jit=t.jit, beta=t.beta, fused=t.fused, clip_grad_norm=t.clip_grad_norm, seed=t.seed, progress=progress,
            on_epoch=on_epoch if main else None, on_checkpoint=on_checkpoint if main else None, resume=resume, stop=stop, distributed=distributed,
        )
    except TrainingInterrupted as e:
        if e.state is not None:
            if main:
                save_checkpoint(checkpoint, _state(vae, config, e.state))
            e.checkpoint = checkpoint
        raise
    except TrainingDiverged as e:
        kept = f"the last good checkpoint, {checkpoint}, is kept" if checkpoint.is_file() else "no checkpoint had been written yet"
        raise TrainingDiverged(f"{e}; {kept}") from None
    seconds = time.perf_counter() - start
    if not main:
        return {}
    vae.eval()
    pictures = draw_pictures(vae, data, history, out, _caption(config))
    torch.manual_seed(t.seed)  # as evaluate_run does: `pyro-vae evaluate` reproduces these numbers in any one process
    final = evaluate_elbo(vae, data.test)
    summary = {
        "run": str(out),
        "dataset": data.name,
        "num_train": len(data.train),
        "num_test": len(data.test),
        "epochs": t.epochs,
        "seconds": seconds,
        "train_elbo": history[-1]["train_elbo"],
        **{f"test_{k}": v for k, v in final.items() if k != "num_examples"},
        "device": str(next(vae.parameters()).device),
        "processes": distributed.world_size if distributed else 1,
        "files": ["config.toml", "metrics.jsonl", "checkpoint.pt", *pictures, "summary.json"],
    }
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _open_run(run_dir: str | Path, device: str) -> tuple[VAE, Config, Dataset]:
    """A finished run's trained VAE, config and data set, on ``device``, with torch seeded from the config."""
    target = resolve_device(device)
    vae, config = load(run_dir, target)
    data = load_data(config, target)
    if tuple(data.event_shape) != tuple(vae.event_shape):
        raise RunError(
            f"data set {data.name} has points of shape {data.event_shape} but the run was trained on {vae.event_shape}; "
            "restore data.dataset in its config.toml to the data it was trained on, or retrain on this one"
        )
    torch.manual_seed(config.train.seed)
    return vae, config, data


def plot_run(run_dir: str | Path, device: str = "auto") -> list[str]:
    """Draw (again) every picture of a finished run from its checkpoint and metrics; returns their paths."""
    run_dir = Path(run_dir)
    vae, config, data = _open_run(run_dir, device)
    metrics = run_dir / "metrics.jsonl"
    history = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    return [str(run_dir / name) for name in draw_pictures(vae, data, history, run_dir, _caption(config))]


def _check_run(run_dir: Path) -> None:
    if run_dir.is_file():
        raise RunError(f"{run_dir} is a file, not a run folder; give the --out folder of a finished pyro-vae train")
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist; give the --out folder of a finished pyro-vae train")
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    if missing:
        raise RunError(f"{run_dir} is not a finished pyro-vae run (no {', '.join(missing)}); give the --out folder of pyro-vae train")


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[VAE, Config]:
    """The trained VAE of a run folder (in eval mode, on ``device``) and its config.

    Example::

        vae, config = load("runs/demo")
        images = vae.sample(16)  # shape (16, 8, 8)
    """
    run_dir = Path(run_dir)
    _check_run(run_dir)
    config = Config.from_toml(run_dir / "config.toml")
    state = load_checkpoint(run_dir / "checkpoint.pt")
    vae = _load_model(config, state, run_dir)
    return vae.to(device).eval(), config


def _load_model(config: Config, state: dict[str, Any], run_dir: Path) -> VAE:
    """The VAE of ``config`` with the parameters of the checkpoint ``state``."""
    missing = [key for key in ("event_shape", "model") if key not in state]
    if missing:
        raise RunError(f"checkpoint {run_dir / 'checkpoint.pt'} has no {' or '.join(repr(k) for k in missing)}; it was not written by pyro-vae train: retrain")
    vae = build_vae(config, tuple(state["event_shape"]))
    try:
        vae.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:200]
        raise RunError(f"checkpoint {run_dir / 'checkpoint.pt'} does not fit the model of {run_dir / 'config.toml'} ({first}); was config.toml edited? restore it or retrain") from None
    return vae


def evaluate_run(
    run_dir: str | Path, split: str = "test", num_particles: int = 1, batch_size: int = 1000, device: str = "auto", num_samples: int = 0
) -> dict[str, Any]:
    r"""ELBO of a split of a run's data set under both estimators, with standard errors (nats per point).

    With ``num_samples = K > 0`` it adds ``log_likelihood``, the importance-sampled
    :math:`\log p(x)` with ``K`` samples per point (see :func:`pyro_vae.marginal.log_likelihood`),
    and its standard error over the data points.
    """
    if split not in ("train", "test"):
        raise RunError(f"--split must be train or test (got {split!r})")
    if num_particles < 1:
        raise RunError(f"--num-particles must be >= 1 (got {num_particles})")
    if num_samples < 0:
        raise RunError(f"--num-samples must be >= 0 (got {num_samples})")
    vae, _, data = _open_run(run_dir, device)
    x = data.train if split == "train" else data.test
    result = {"run": str(run_dir), "split": split, "num_particles": num_particles, **evaluate_elbo(vae, x, num_particles, batch_size)}
    if num_samples:
        ll = log_likelihood(vae, x, num_samples=num_samples, batch_size=min(batch_size, 100)).double()
        result.update(log_likelihood=ll.mean().item(), log_likelihood_se=ll.std().item() / len(ll) ** 0.5 if len(ll) > 1 else float("nan"), num_samples=num_samples)
    return result


def compare_run(
    run_dir: str | Path, split: str = "test", particles: tuple[int, ...] = (1, 10, 100), repeats: int = 50, batch_size: int = 100, device: str = "auto"
) -> dict[str, Any]:
    """Compare the two ELBO estimators on a fixed batch of a run's data (:func:`pyro_vae.compare.compare_estimators`).

    Writes ``compare.json`` and ``compare.png`` (gradient variance against particles) into the run folder.
    """
    if split not in ("train", "test"):
        raise RunError(f"--split must be train or test (got {split!r})")
    if repeats < 2:
        raise RunError(f"--repeats must be >= 2 to estimate a variance (got {repeats})")
    if not particles or min(particles) < 1:
        raise RunError(f"--particles must be positive whole numbers such as 1,10,100 (got {','.join(map(str, particles))})")
    vae, config, data = _open_run(run_dir, device)
    x = (data.train if split == "train" else data.test)[:batch_size]
    result = {"run": str(run_dir), "split": split, **compare_estimators(vae, x, particles, repeats)}
    atomic_write(Path(run_dir) / "compare.json", json.dumps(result, indent=2) + "\n")
    plot_gradient_variance(result, Path(run_dir) / "compare.png", f"{_caption(config)} | {len(x)} {split} points, {repeats} repeats")
    return result
