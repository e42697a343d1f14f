"""Run folders: train from a config into a folder, resume it, load a trained program back.

A run folder holds

- ``config.toml`` — the resolved configuration (every default filled in);
- ``metrics.jsonl`` — one JSON object per epoch (``epoch``, ``train_elbo``, ``test_elbo``, ``seconds``);
- ``checkpoint.pt`` — model, optimiser, random number generators, data order and position
  (a :class:`~pyro_vae.training.loop.TrainState`), written every ``train.checkpoint_every`` epochs, at
  the end, and when training is asked to stop; read with ``torch.load(weights_only=True)``;
- ``best.pt`` — with a validation set (``data.validation``), the parameters of the epoch with the
  best validation ELBO, written whenever it improves; :func:`load` returns this model;
- ``snapshots/epoch-NNNNN.pt`` — the model's parameters after each epoch of ``train.snapshots``
  (with the training seconds spent until then), for learning curves; read with :func:`load_snapshot`;
- ``reconstructions.png``, ``samples.png`` — pictures of the final model (image data only);
- ``summary.json`` — the final numbers.

Every file is written atomically. Nothing is written before the config, the data and the model
have all been checked. :func:`resume_run` continues a stopped or killed run from its checkpoint.
Evaluating, comparing and drawing a finished run is :mod:`pyro_vae.runs.evaluation`'s work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import inspect
import json
import os
import shutil
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor, nn

from pyro_vae.errors import PyroVAEError, RunError, renamed_errors
from pyro_vae.infer.estimators import has_fused_form
from pyro_vae.infer.objectives import check_free_bits_prior, check_program, evaluate_bounds
from pyro_vae.infer.program import label_use, required_labels
from pyro_vae.models.likelihoods import Likelihood
from pyro_vae.models.programs import MODELS
from pyro_vae.registry import names_run_folder
from pyro_vae.runs.config import Config, TrainConfig, build_model, config_names, load_data, resolve_device
from pyro_vae.runs.plots import draw_pictures, skipped_pictures
from pyro_vae.runs.storage import (
    LOCK_FILE,
    WriteError,
    atomic_write,
    check_not_held,
    hold_folder,
    load_checkpoint,
    remove_partial_writes,
    save_checkpoint,
)
from pyro_vae.runs.tensorboard import TensorBoard, check_tensorboard
from pyro_vae.training.data import FILE_SUFFIXES, Dataset
from pyro_vae.training.distributed import Distributed, from_env
from pyro_vae.training.initialization import initialize
from pyro_vae.training.loop import (
    TrainingDiverged,
    TrainingInterrupted,
    TrainState,
    check_batch_size,
    check_data_parallel,
    check_world_size,
    fit,
    label_weight,
    takes_labels,
    training_objective,
)
from pyro_vae.training.optim import shaped_by_length

__all__ = ["train_run", "resume_run", "load", "loaded", "load_snapshot", "snapshot_path", "caption", "RUN_FILES"]

RUN_FILES = ("config.toml", "checkpoint.pt")
#: The model a run keeps when it has a validation set: the best epoch's (see ``train.early_stopping``).
BEST_FILE = "best.pt"


def _prepare_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RunError(f"{{out}} {out} is a file; give a folder path", "out")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise RunError(f"{{out}} {out} is inside {blocking}, which is a file; give a folder path", "out")
    if out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):  # a dead writer's lock alone: empty
        if not overwrite:
            raise RunError(
                f"{{out}} {out} already exists and is not empty; pass {{overwrite=}} to replace that run, "
                "or choose another folder",
                "out",
                "overwrite=True",
            )
        if not (out / "config.toml").is_file():
            raise RunError(
                f"{{out}} {out} is not empty and is not a pyro-vae run folder; "
                "refusing to delete it: choose another folder",
                "out",
            )
    _make_folder(out)


def _make_folder(out: Path) -> None:
    """Create ``out`` and its missing parents, or raise a one-line :class:`RunError` and leave none of them."""
    missing = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parent = next((p for p in out.parents if p.is_dir()), out.parent)  # where it failed
        for folder in missing:  # innermost first; those this call made are empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        fix = f"make {parent} writable" if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else f"check {parent}"
        raise RunError(
            f"{{out}} {out} cannot be created in {parent}: {e.strerror or type(e).__name__}; "
            f"{fix}, or give a folder where you can write",
            "out",
        ) from None


def _clear_folder(out: Path) -> None:
    """Delete an earlier run's files from ``out`` (its lock, which this process holds now, stays)."""
    for path in out.iterdir():
        if path.name != LOCK_FILE:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def density_note(vae: nn.Module, x: Tensor) -> str | None:
    """What the likelihood's values mean for ``x`` (a density of grey levels, say), for a program with one of ours."""
    likelihood = getattr(vae, "likelihood", None)
    return likelihood.density_note(x) if isinstance(likelihood, Likelihood) else None


def caption(config: Config) -> str:
    """The run's configuration in one line, printed under every picture."""
    t = config.train
    return (
        f"{config.data.dataset} | {_program_words(config.model)} | elbo {t.elbo} x{t.num_particles} | "
        f"beta {t.beta:g} | epochs {t.epochs} | batch {t.batch_size} | lr {t.lr:g} | seed {t.seed}"
    )


def _program_words(m: Any) -> str:
    """The program of a caption: its name (but ``vae``'s), then the tables its constructor takes and its own
    parameters, so that a program shows what it is built from and nothing it ignores."""
    taken = inspect.signature(MODELS.get(m.type)).parameters
    net = ",".join(str(h) for h in m.network.get("hidden", m.network.get("channels", [])))
    words = [] if m.type == "vae" else [m.type]
    words += [f"{m.network['type']} {net}"] if "network" in taken else []
    words += [f"latent {m.latent_dim}"] if "latent_dim" in taken else []
    for name, value in m.params.items():
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        words.append(f"{name} {Path(shown).name if name in _named_runs(m) else shown}")
    words += [f"prior {m.prior['type']}"] if "prior" in taken else []
    words += [f"likelihood {m.likelihood['type']}"] if "likelihood" in taken else []
    return " | ".join(words)


def _header(config: Config, shape: tuple[int, ...]) -> dict[str, Any]:
    """What every model file of a run starts with: the config, and the shape of a data point it was built for."""
    return {"config": config.to_dict(), "event_shape": list(shape)}


def _state(vae: nn.Module, config: Config, state: TrainState, shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        **_header(config, shape),
        "epoch": state.epoch,
        "step": state.step,
        "model": vae.state_dict(),
        "train": state.to_dict(),
    }


def train_run(
    config: Config,
    out: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    stop: Callable[[], int | None] | None = None,
) -> dict[str, Any]:
    """Train the program of ``config`` into the run folder ``out`` and return the summary.

    The folder receives the files listed in :mod:`pyro_vae.runs.folders`: the resolved ``config.toml``,
    ``metrics.jsonl``, ``checkpoint.pt``, the pictures and ``summary.json``. Under ``torchrun`` the processes
    train one data-parallel job and process 0 writes.

    Args:
        config: the run's configuration.
        out: the run folder, created; one that is not empty is refused unless ``overwrite``.
        overwrite: replace the pyro-vae run in ``out`` (a folder that holds anything else is never deleted).
        progress: show what trains on what, a bar and a line per epoch on stderr.
        stop: polled after every step (see :func:`~pyro_vae.training.loop.fit`); when it answers other than
            ``None``, the run writes a checkpoint that :func:`resume_run` continues, and raises
            :class:`~pyro_vae.training.loop.TrainingInterrupted`.

    Returns:
        The summary that ``summary.json`` holds, with the data set and its sizes, ``epochs``, ``seconds``, the
        last ``train_elbo``, the test set's ``test_elbo_<estimator>`` with standard errors (nats per point),
        and the ``files`` written.

    Raises:
        PyroVAEError: for a bad config, data set or output folder, before anything is written.

    Example:
        >>> import tempfile
        >>> import torch
        >>> from pyro_vae import Config
        >>> folder = tempfile.mkdtemp()
        >>> torch.save((torch.rand(40, 6) > 0.5).float(), f"{folder}/points.pt")  # 40 binary points
        >>> config = Config.from_dict({
        ...     "data": {"dataset": f"{folder}/points.pt"},
        ...     "model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}},
        ...     "train": {"epochs": 1, "batch_size": 16},
        ... })
        >>> summary = train_run(config, f"{folder}/run", progress=False)
        >>> summary["epochs"], summary["num_train"], summary["num_test"], "checkpoint.pt" in summary["files"]
        (1, 32, 8, True)
    """
    out = Path(out)
    config = anchored(config)
    t = config.train
    with renamed_errors(config_names()), _job(t.device) as (device, distributed):
        main = distributed is None or distributed.is_main
        data = load_data(config, device)
        pyro.set_rng_seed(t.seed)  # the initial weights are part of what the seed fixes
        vae = build_model(config, data.event_shape, data.num_classes).to(device)
        if label_use(vae) != "none" and not config.data.num_classes:
            config.data.num_classes = data.num_classes or 0  # recorded: load rebuilds the program without data
        initialize(vae, t.weight_init, t.output_bias_init, train=data.train)
        world_size = distributed.world_size if distributed else 1
        check_batch_size(t.batch_size, len(data.train) // world_size)
        check_data_parallel(distributed, t.jit, t.compile)
        if t.free_bits and has_fused_form(vae):
            check_free_bits_prior(vae)  # in the prior's words
        takes_labels(vae, data)  # a program that needs a label at every point: refused where one has none
        y = required_labels(vae, data.train_labels)
        check_program(vae, data.train, t.elbo, t.free_bits, y=y)  # the contract, and what the estimator needs
        if t.log == "tensorboard":
            check_tensorboard()
        # (in a job, the processes agree on a stop at the first step)
        signum = stop() if stop is not None and distributed is None else None
        if signum is not None:  # asked to stop before anything was written: write nothing
            raise TrainingInterrupted(None, signum)
        if main:
            check_not_held(out)  # before --overwrite deletes anything of a run being written
            _prepare_folder(out, overwrite)
        with hold_folder(out) if main else contextlib.nullcontext():  # then deleting is this process's alone
            if main:
                _clear_folder(out)
                atomic_write(out / "config.toml", recorded(config, out).to_toml())
            if progress and main:
                _announce(config, data, device, out, world_size if distributed else 0)
            return _train_into(out, config, data, vae, None, progress, stop, distributed)


def _announce(config: Config, data: Dataset, device: torch.device, out: Path, processes: int) -> None:
    """The first line of a run on stderr: what trains on what, where, with how many threads or processes."""
    t = config.train
    n = torch.get_num_threads()
    threads = f" ({n} CPU thread{'s' * (n != 1)}; --threads N sets it)" if device.type == "cpu" else ""
    job = f" in {processes} processes of {t.batch_size} points a batch each" if processes else ""
    print(
        f"training on {data.name} ({len(data.train)} train / {len(data.test)} test points) "
        f"for {t.epochs} epochs on {device}{threads}{job}: "
        f"estimator {t.elbo}, {t.num_particles} particle(s), beta {t.beta:g}, into {out}",
        file=sys.stderr,
    )


def anchored(config: Config) -> Config:
    """``config`` with its data paths (``data.data_root``, a file ``data.dataset``) and the run folders its
    program names (a parameter marked :class:`~pyro_vae.registry.RunFolder`, as ``m1m2``'s ``features``) made
    absolute, from the working directory.

    A run records where its data are from anywhere, so that it can be evaluated from another folder.
    """
    values = config.to_dict()
    d = values["data"]
    d["data_root"] = str(Path(d["data_root"]).expanduser().resolve())
    if Path(d["dataset"]).suffix in FILE_SUFFIXES:
        d["dataset"] = str(Path(d["dataset"]).expanduser().resolve())
    for name in _named_runs(config.model):
        values["model"][name] = str(Path(values["model"][name]).expanduser().resolve())
    return Config.from_dict(values)


def _named_runs(m: Any) -> list[str]:
    """The parameters of the program ``m`` (``config.model``) that name a run folder
    (:class:`~pyro_vae.registry.RunFolder`)."""
    marked = [p.name for p in MODELS.parameters(m.type) if names_run_folder(p.annotation)]
    return [name for name in marked if isinstance(m.params.get(name), str)]


def _moved_runs(config: Config, move: Callable[[Path], str]) -> Config:
    """``config`` with each run folder its program names replaced by ``move(path)``."""
    values = config.to_dict()
    for name in _named_runs(config.model):
        values["model"][name] = move(Path(values["model"][name]).expanduser())
    return Config.from_dict(values)


def recorded(config: Config, out: str | Path) -> Config:
    """``config`` as the run folder ``out`` records it: the run folders its program names relative to ``out``,
    so that a run and the runs it is built on move together (a clone of a repository holding both)."""
    return _moved_runs(config, lambda path: os.path.relpath(path.resolve(), Path(out).resolve()))


def located(config: Config, run_dir: str | Path) -> Config:
    """``config``, read from the run folder ``run_dir``, with the run folders its program names made absolute:
    a relative one is relative to ``run_dir`` (:func:`recorded`)."""
    return _moved_runs(config, lambda path: str((Path(run_dir) / path).resolve()))


@contextlib.contextmanager
def _job(device_name: str) -> Iterator[tuple[torch.device, Distributed | None]]:
    """The device, and this process's place in a torchrun job (``None`` alone); leaves the job at the end, with the
    other processes where they all end or stop together, at once after an error."""
    device = resolve_device(device_name)
    distributed = from_env(device)
    if distributed is None:
        yield device, None
        return
    try:
        yield distributed.device, distributed
    except TrainingInterrupted:  # every process stops at the same step (Distributed.agree); process 0 writes
        distributed.close(wait=True)
        raise
    except BaseException:
        distributed.close()
        raise
    distributed.close(wait=True)


def resume_run(
    run_dir: str | Path,
    progress: bool = True,
    stop: Callable[[], int | None] | None = None,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its checkpoint, to the end of its schedule; returns the summary.

    The checkpoint holds every random number generator's state and the position in the data
    order, so the continued run draws what the uninterrupted one would have: on the CPU its
    final parameters and metrics (all but the timings) are bit-identical. Metrics of epochs
    after the checkpoint (a run killed between the two writes) are dropped and recomputed, and
    temporary files left by a killed write are removed.

    ``epochs`` extends the run (a finished one too) to that many epochs, as if it had been started
    with them: ``train.epochs`` in its ``config.toml`` becomes ``epochs``. A learning-rate schedule
    continues from its saved state; one drawn over the run's length (``cosine``, see
    :func:`~pyro_vae.training.optim.shaped_by_length`) cannot be extended. A finished run is refused
    without ``epochs``: there is nothing left to train.

    Args:
        run_dir: a run folder written by :func:`train_run`.
        progress: show a first line, a bar and a line per epoch on stderr.
        stop: polled after every step, as by :func:`train_run`.
        epochs: the run's new length in epochs (``None``: the length in its ``config.toml``).

    Returns:
        The summary, as :func:`train_run` returns it.

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
        >>> resume_run(f"{folder}/run", epochs=2, progress=False)["epochs"]
        2
    """
    run_dir = Path(run_dir)
    config, state = _resumable(run_dir)
    resume = TrainState.from_dict(state["train"])
    config = _extended(run_dir, config, resume, epochs)
    if config.train.log == "tensorboard":
        check_tensorboard()
    with renamed_errors(config_names()), _job(config.train.device) as (device, distributed):
        check_world_size(resume, distributed.world_size if distributed else 1, run_dir)  # before anything is written
        data = load_data(config, device)
        vae = _load_model(config, state, run_dir / "checkpoint.pt").to(device)
        main = distributed is None or distributed.is_main
        with hold_folder(run_dir) if main else contextlib.nullcontext():
            return _continue(run_dir, config, data, vae, resume, progress, stop, distributed)


def _continue(
    run_dir: Path,
    config: Config,
    data: Dataset,
    vae: nn.Module,
    resume: TrainState,
    progress: bool,
    stop: Callable[[], int | None] | None,
    distributed: Distributed | None,
) -> dict[str, Any]:
    """Put the run folder back as the checkpoint left it, and train on."""
    if distributed is None or distributed.is_main:
        remove_partial_writes(run_dir)
        (run_dir / "summary.json").unlink(missing_ok=True)  # until it is written again, the run is not finished
        atomic_write(run_dir / "config.toml", config.to_toml())
        atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in resume.history))
        _restore_best(run_dir, vae, config, resume, data.event_shape)
        if progress:
            device = next(vae.parameters()).device
            print(
                f"resuming {run_dir} at epoch {resume.epoch + 1}, step {resume.step} "
                f"of {config.train.epochs} epochs on {device}",
                file=sys.stderr,
            )
    return _train_into(run_dir, config, data, vae, resume, progress, stop, distributed)


def _resumable(run_dir: Path) -> tuple[Config, dict[str, Any]]:
    """The config and checkpoint of a run folder that can be continued, or a one-line :class:`RunError`."""
    if not (run_dir / "config.toml").is_file():
        raise RunError(
            f"{{run_dir}} {run_dir}: not a pyro-vae run folder (no config.toml); give the folder of an earlier run",
            "run_dir",
        )
    if not (run_dir / "checkpoint.pt").is_file():
        raise RunError(
            f"{{run_dir}} {run_dir}: the run stopped before its first checkpoint, so there is nothing to continue; "
            f"start it again with pyro-vae train --config {run_dir / 'config.toml'} --out {run_dir} --overwrite",
            "run_dir",
        )
    config = Config.from_toml(run_dir / "config.toml")
    if "label_batches" not in tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8")).get("data", {}):
        config.data.label_batches = "ratio"  # a run written before the choice: the steps it was trained with
    state = load_checkpoint(run_dir / "checkpoint.pt")
    if "train" not in state:
        raise RunError(
            f"{{run_dir}} {run_dir}: its checkpoint (format {state['format']}) has no training state; "
            "it can be evaluated, not resumed; retrain to continue",
            "run_dir",
        )
    if _but_epochs(Config.from_dict(state["config"])) != _but_epochs(config):
        raise RunError(
            f"{{run_dir}} {run_dir}: config.toml differs from the configuration the checkpoint was trained with; "
            "restore config.toml to resume",
            "run_dir",
        )
    return config, state


def _but_epochs(config: Config) -> dict[str, Any]:
    """A config's values without ``train.epochs``, which extending a run changes."""
    values = config.to_dict()
    values["train"].pop("epochs")
    return values


def _extended(run_dir: Path, config: Config, resume: TrainState, epochs: int | None) -> Config:
    """``config`` with ``train.epochs = epochs``; a :class:`RunError` where there is nothing left to do.

    A run killed after its last epoch, before its summary, is left to write the summary.
    """
    t = config.train
    stopped_early = 0 < t.early_stopping <= resume.waited
    summarized = (run_dir / "summary.json").is_file()
    if stopped_early and (epochs is not None or summarized):
        raise RunError(
            f"{{run_dir}} {run_dir} stopped early at epoch {resume.epoch} (no better validation ELBO in "
            f"{t.early_stopping} epochs), so there is nothing to continue; its model is that of epoch "
            f"{resume.best['epoch']}; train a new run to change train.early_stopping",
            "run_dir",
        )
    if epochs is not None and shaped_by_length(t.lr_schedule):
        raise RunError(
            f"{{run_dir}} {run_dir} follows a {t.lr_schedule['type']} learning-rate schedule shaped by its "
            f"{t.epochs} epochs; extending it would change the learning rate of the epochs to come: "
            "train a new run with more epochs",
            "run_dir",
        )
    if epochs is not None and epochs <= resume.epoch:
        raise RunError(
            f"{{epochs}} {epochs} is not more than the {resume.epoch} epochs {run_dir} has trained; give more",
            "epochs",
        )
    if epochs is None and resume.epoch >= t.epochs and summarized:
        raise RunError(
            f"{{run_dir}} {run_dir} has finished its {t.epochs} epochs; extend it with {{epochs=}}{t.epochs * 2} "
            "(any number above the epochs trained)",
            "run_dir",
            "epochs",
        )
    if epochs is not None:
        config = Config.from_dict({**config.to_dict(), "train": {**config.to_dict()["train"], "epochs": epochs}})
    return config


def _train_into(
    out: Path,
    config: Config,
    data: Dataset,
    vae: nn.Module,
    resume: TrainState | None,
    progress: bool,
    stop: Callable[[], int | None] | None,
    distributed: Distributed | None = None,
) -> dict[str, Any]:
    """Train (or continue) into ``out``; then pictures and summary.

    Metrics are written every epoch, checkpoints as configured and on a stop. In a data-parallel
    job only process 0 writes; the others return an empty summary.
    """
    t = config.train
    main = distributed is None or distributed.is_main
    lines = [json.dumps(m) for m in resume.history] if resume else []
    checkpoint = out / "checkpoint.pt"
    board = TensorBoard(out, resume.epoch + 1 if resume else None) if main and t.log == "tensorboard" else None

    def on_epoch(metrics: dict, optimizer: torch.optim.Optimizer) -> None:
        lines.append(json.dumps(metrics))
        atomic_write(out / "metrics.jsonl", "\n".join(lines) + "\n")
        if board is not None:
            board.epoch(metrics)

    try:
        history = fit(
            vae,
            data,
            **_fit_options(t),
            progress=progress,
            on_epoch=on_epoch if main else None,
            on_checkpoint=_checkpointer(out, config, vae, data.event_shape) if main else None,
            resume=resume,
            stop=stop,
            distributed=distributed,
        )
        summary = _summarize(out, config, data, vae, history, distributed) if main else {}
        if board is not None:
            board.pictures(out, summary["files"], len(history))
        return summary
    except TrainingInterrupted as e:
        if e.state is not None:
            if main:
                save_checkpoint(checkpoint, _state(vae, config, e.state, data.event_shape))
            e.checkpoint = checkpoint
        raise
    except (TrainingDiverged, WriteError) as e:
        raise _saying_what_is_kept(e, checkpoint) from None
    finally:
        if board is not None:
            board.close()


def _checkpointer(out: Path, config: Config, vae: nn.Module, shape: tuple[int, ...]) -> Callable[[TrainState], None]:
    """What a run writes after each epoch: its checkpoint as configured, its best model, its snapshots."""
    t = config.train

    def on_checkpoint(state: TrainState) -> None:
        last = state.epoch == t.epochs or 0 < t.early_stopping <= state.waited
        if last or (t.checkpoint_every and state.epoch % t.checkpoint_every == 0):
            save_checkpoint(out / "checkpoint.pt", _state(vae, config, state, shape))
        if state.best and state.best["epoch"] == state.epoch:
            _save_best(out, vae, config, state.best, shape)
        if state.epoch in t.snapshots:
            _save_snapshot(out, vae, config, state, shape)

    return on_checkpoint


def _saying_what_is_kept(error: TrainingDiverged | WriteError, checkpoint: Path) -> PyroVAEError:
    """``error`` again, its message ending with what is left of the run to continue from."""
    if not checkpoint.is_file():
        kept = "no checkpoint had been written yet"
    elif isinstance(error, WriteError):
        kept = f"the last checkpoint is kept: continue with pyro-vae train --resume {checkpoint.parent} then"
    else:
        kept = f"the last good checkpoint, {checkpoint}, is kept"
    return type(error)(f"{error.template}; {kept}", *error.names)


def _best(history: list[dict]) -> dict | None:
    """The metrics of the epoch with the best validation ELBO (the first of equals), or ``None`` without one."""
    scored = [m for m in history if "validation_elbo" in m]
    return max(scored, key=lambda m: m["validation_elbo"]) if scored else None


def _save_best(out: Path, vae: nn.Module, config: Config, best: dict[str, Any], shape: tuple[int, ...]) -> None:
    """``best.pt``: the parameters of epoch ``best["epoch"]``, ``best["model"]`` or else those ``vae`` holds."""
    state = {**_header(config, shape), "epoch": best["epoch"]}
    model = best.get("model", vae.state_dict())
    save_checkpoint(out / BEST_FILE, {**state, "validation_elbo": best["value"], "model": model})


def _restore_best(run_dir: Path, vae: nn.Module, config: Config, resume: TrainState, shape: tuple[int, ...]) -> None:
    """Make ``best.pt`` that of the checkpoint being resumed: a run killed after it wrote a later one drops that."""
    if resume.best:
        _save_best(run_dir, vae, config, resume.best, shape)
    else:
        (run_dir / BEST_FILE).unlink(missing_ok=True)


def snapshot_path(run_dir: str | Path, epoch: int) -> Path:
    """Where a run keeps its model's parameters after ``epoch`` (see ``train.snapshots``)."""
    return Path(run_dir) / "snapshots" / f"epoch-{epoch:05d}.pt"


def _save_snapshot(out: Path, vae: nn.Module, config: Config, state: TrainState, shape: tuple[int, ...]) -> None:
    path = snapshot_path(out, state.epoch)
    path.parent.mkdir(exist_ok=True)
    train_seconds = sum(m["seconds"] for m in state.history)
    snapshot = {**_header(config, shape), "epoch": state.epoch}
    save_checkpoint(path, {**snapshot, "train_seconds": train_seconds, "model": vae.state_dict()})


def load_snapshot(
    run_dir: str | Path, epoch: int, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The program of a run after ``epoch`` (in eval mode) and its snapshot's ``epoch`` and ``train_seconds``."""
    run_dir = Path(run_dir)
    _check_run(run_dir)
    config = Config.from_toml(run_dir / "config.toml")
    path = snapshot_path(run_dir, epoch)
    if not path.is_file():
        kept = sorted(int(p.stem.split("-")[1]) for p in path.parent.glob("epoch-*.pt"))
        raise RunError(f"{run_dir} has no snapshot of epoch {epoch}; it has {kept or 'none'} (train.snapshots)")
    state = load_checkpoint(path)
    vae = _load_model(config, state, path, run_dir)
    return vae.to(device).eval(), {"epoch": state["epoch"], "train_seconds": state["train_seconds"]}


def _fit_options(t: TrainConfig) -> dict[str, Any]:
    """The settings of ``[train]`` that :func:`~pyro_vae.training.loop.fit` takes as keyword arguments."""
    taken = inspect.signature(fit).parameters
    return {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name in taken}


def _summarize(
    out: Path,
    config: Config,
    data: Dataset,
    vae: nn.Module,
    history: list[dict],
    distributed: Distributed | None,
) -> dict[str, Any]:
    """Keep the best model, draw the pictures of a trained run, evaluate it on the test set, write its summary."""
    t = config.train
    best, seconds = _best(history), sum(m["seconds"] for m in history)
    if best is not None:  # fit left the best epoch's parameters in vae; written again for a run killed after them
        _save_best(out, vae, config, {"epoch": best["epoch"], "value": best["validation_elbo"]}, data.event_shape)
    vae.eval()
    pictures = draw_pictures(vae, data, history, out, caption(config), t.seed)
    torch.manual_seed(t.seed)  # as evaluate_run does: `pyro-vae evaluate` reproduces these numbers in any one process
    final = evaluate_bounds(
        vae, data.test, t.elbo, train_particles=t.num_particles, y=required_labels(vae, data.test_labels)
    )
    summary = {
        "run": str(out),
        "dataset": data.name,
        "num_train": len(data.train),
        "num_test": len(data.test),
        "epochs": len(history),
        **({"best_epoch": best["epoch"], "validation_elbo": best["validation_elbo"]} if best else {}),
        "seconds": seconds,  # the whole run's training, across resumes and extensions
        "train_seconds": seconds,  # the same, under the name the benchmarks use
        "train_elbo": (best or history[-1])["train_elbo"],  # of the epoch whose model this is
        "train_objective": training_objective(
            t.elbo,
            t.beta,
            t.kl_warmup,
            t.free_bits,
            label_weight(data, takes_labels(vae, data), t.batch_size, distributed.world_size if distributed else 1),
        ),
        **{f"test_{k}": v for k, v in final.items() if k != "num_examples"},
        "path": history[-1]["path"],
        "note": density_note(vae, data.test),
        "binarization": data.binarization_note("test"),
        "device": str(next(vae.parameters()).device),
        "processes": distributed.world_size if distributed else 1,
        "pictures_skipped": skipped_pictures(vae, data),
        "files": [
            "config.toml",
            "metrics.jsonl",
            "checkpoint.pt",
            *([BEST_FILE] if best else []),
            *pictures,
            "summary.json",
        ],
    }
    atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _check_run(run_dir: Path) -> None:
    if run_dir.is_file():
        raise RunError(f"{run_dir} is a file, not a run folder; give the --out folder of a finished pyro-vae train")
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist; give the --out folder of a finished pyro-vae train")
    kept = (run_dir / BEST_FILE).is_file()  # a published run: config.toml and best.pt, no training state
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file() and not (kept and f == "checkpoint.pt")]
    if missing:
        raise RunError(
            f"{run_dir} is not a finished pyro-vae run (no {', '.join(missing)}); "
            "give the --out folder of pyro-vae train"
        )


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Config]:
    """The trained program of a run folder (in eval mode, on ``device``) and its config.

    The model is that of ``best.pt`` where the run kept one (a run with a validation set: the epoch
    with the best validation ELBO), else the last checkpoint's. A folder holding ``config.toml`` and
    ``best.pt`` alone (a published run) loads too.

    Args:
        run_dir: a run folder written by :func:`train_run`.
        device: where the program's parameters are put (``"cpu"``, ``"cuda"``, a :class:`torch.device`).

    Returns:
        The pair ``(program, config)``, the trained program (a :class:`~pyro_vae.VAE` for
        ``model.type = "vae"``) in eval mode and the run's :class:`~pyro_vae.Config`.

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
        >>> vae, config = load(f"{folder}/run")
        >>> type(vae).__name__, vae.training, config.model.latent_dim, vae.sample(3).shape
        ('VAE', False, 2, torch.Size([3, 6]))
    """
    program, config, _ = loaded(run_dir, device)
    return program, config


def loaded(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Config, tuple[int, ...]]:
    """:func:`load`, and the shape of the data points the program was trained on."""
    run_dir = Path(run_dir)
    _check_run(run_dir)
    config = Config.from_toml(run_dir / "config.toml")
    path = run_dir / BEST_FILE if (run_dir / BEST_FILE).is_file() else run_dir / "checkpoint.pt"
    state = load_checkpoint(path)
    program = _load_model(config, state, path)
    return program.to(device).eval(), config, tuple(state["event_shape"])


def _load_model(config: Config, state: dict[str, Any], path: Path, run_dir: Path | None = None) -> nn.Module:
    """The program of ``config`` with the parameters of the checkpoint ``state``, read from ``path`` in ``run_dir``."""
    missing = [key for key in ("event_shape", "model") if key not in state]
    if missing:
        raise RunError(
            f"checkpoint {path} has no {' or '.join(repr(k) for k in missing)}; "
            "it was not written by pyro-vae train: retrain"
        )
    vae = build_model(located(config, run_dir or path.parent), tuple(state["event_shape"]))
    try:
        vae.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:200]
        raise RunError(
            f"checkpoint {path} does not fit the model of {(run_dir or path.parent) / 'config.toml'} ({first}); "
            "was config.toml edited? restore it or retrain"
        ) from None
    return vae
