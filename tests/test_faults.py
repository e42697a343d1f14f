"""Faults during training: stop and resume exactly, never half-written, never past a NaN.

A run stopped between two steps (SIGINT, SIGTERM, or a crash after its last checkpoint) and
continued with ``--resume`` must end with bit-identical parameters and metrics (all but the
timings) to the run that was never stopped: the checkpoint holds the optimiser, every random
number generator and the position in the data order. The fault-injection test at the end kills
real training processes at random moments with each signal.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_vae import Config, make_vae, train_run
from pyro_vae.cli.main import main
from pyro_vae.errors import ConfigError, RunError
from pyro_vae.infer.objectives import Objective
from pyro_vae.runs.folders import resume_run
from pyro_vae.runs.storage import load_checkpoint, save_checkpoint
from pyro_vae.training.data import Dataset
from pyro_vae.training.loop import TrainingDiverged, TrainingInterrupted, TrainState, fit, svi_step

EPOCHS = 3


def toy_data(binarize="none"):
    x = torch.rand(100, 4, 4, generator=torch.Generator().manual_seed(2))
    return Dataset("toy", x[:80], x[80:], binarize=binarize)


def toy_vae(seed=0):
    torch.manual_seed(seed)
    return make_vae((4, 4), latent_dim=2, network={"type": "mlp", "hidden": [8]})


def strip(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def stop_after(n):
    """A ``stop`` that asks for a stop (as SIGTERM would) once it has been polled ``n`` times."""
    calls = iter(range(10**9))
    return lambda: signal.SIGTERM if next(calls) >= n else None


def assert_same_parameters(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bit for bit, not approximately


# 8 steps an epoch (80 points, batch 10): polls 0 (before the first step), 1..8 (after each step), 9 (after epoch 1)...
@pytest.mark.parametrize("polls", [0, 1, 5, 9, 13, 18])
@pytest.mark.parametrize(
    "options",
    [
        dict(elbo="mc"),
        dict(elbo="analytic", fused=True),
        dict(elbo="analytic", jit=True),
        dict(elbo="mc", num_particles=3, binarize="dynamic"),
    ],
    ids=["mc", "analytic-fused", "analytic-jit", "mc-3-particles-dynamic-binarization"],
)
def test_stop_and_resume_is_bit_identical(polls, options):
    options = dict(options)
    data = toy_data(options.pop("binarize", "none"))
    kwargs = dict(epochs=EPOCHS, batch_size=10, progress=False, seed=4, **options)
    reference_vae = toy_vae()
    reference = fit(reference_vae, data, **kwargs)

    vae = toy_vae()
    with pytest.raises(TrainingInterrupted) as info:
        fit(vae, data, stop=stop_after(polls), **kwargs)
    state = info.value.state
    assert info.value.signum == signal.SIGTERM
    saved = {k: v.clone() for k, v in vae.state_dict().items()}

    resumed_vae = toy_vae(seed=99)  # other initial weights: everything must come from the saved state
    resumed_vae.load_state_dict(saved)
    resumed = fit(resumed_vae, data, resume=TrainState.from_dict(state.to_dict()), **kwargs)
    assert strip(resumed) == strip(reference)
    assert_same_parameters(resumed_vae.state_dict(), reference_vae.state_dict())


def test_a_stopped_run_resumes_through_its_checkpoint(tmp_path):
    config = Config.from_dict(
        {
            "model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}},
            "train": {"epochs": 3, "batch_size": 256, "checkpoint_every": 0},
        }
    )
    train_run(config, tmp_path / "whole", progress=False)
    with pytest.raises(TrainingInterrupted) as info:
        train_run(
            config, tmp_path / "stopped", progress=False, stop=stop_after(9)
        )  # polls: before writing, at the start, 5 steps, end of epoch 1, 2 steps
    assert info.value.checkpoint == tmp_path / "stopped" / "checkpoint.pt"
    state = load_checkpoint(info.value.checkpoint)
    assert (state["epoch"], state["step"]) == (1, 2)
    assert len((tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()) == 1
    resume_run(tmp_path / "stopped", progress=False)
    whole, stopped = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("whole", "stopped"))
    assert_same_parameters(stopped["model"], whole["model"])

    def lines(name):
        return strip(json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines())

    assert lines("stopped") == lines("whole")
    assert (
        json.loads((tmp_path / "stopped" / "summary.json").read_text())["test_elbo_mc"]
        == json.loads((tmp_path / "whole" / "summary.json").read_text())["test_elbo_mc"]
    )


def test_stop_before_anything_is_written_writes_nothing(tmp_path):
    config = Config.from_dict({"train": {"epochs": 1}})
    with pytest.raises(TrainingInterrupted) as info:
        train_run(config, tmp_path / "never", progress=False, stop=lambda: signal.SIGINT)
    assert info.value.state is None and not (tmp_path / "never").exists()


def test_resume_refuses_what_it_cannot_continue(tmp_path, capsys):
    config = Config.from_dict(
        {
            "model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}},
            "train": {"epochs": 1, "batch_size": 512},
        }
    )
    run = tmp_path / "run"
    train_run(config, run, progress=False)
    cases = {
        "a folder that is not a run": (tmp_path / "nothing", "not a pyro-vae run folder \\(no config.toml\\)"),
        "a run with no checkpoint yet": (
            tmp_path / "early",
            "stopped before its first checkpoint, so there is nothing to continue; start it again",
        ),
        "an edited config": (
            tmp_path / "edited",
            "config.toml differs from the configuration the checkpoint was trained with; restore config.toml",
        ),
        "a format-1 checkpoint": (tmp_path / "old", "has no training state; it can be evaluated, not resumed"),
    }
    (tmp_path / "nothing").mkdir()
    for name in ("early", "edited", "old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.toml").write_text((run / "config.toml").read_text())
    (tmp_path / "edited" / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    (tmp_path / "edited" / "config.toml").write_text(
        (run / "config.toml").read_text().replace("lr = 0.001", "lr = 0.01")
    )
    old = load_checkpoint(run / "checkpoint.pt")
    save_checkpoint(
        tmp_path / "old" / "checkpoint.pt",
        {k: v for k, v in old.items() if k not in ("train", "step", "format")}
        | {"optimizer": old["train"]["optimizer"]},
    )
    torch.save(
        {**torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=True), "format": 1},
        tmp_path / "old" / "checkpoint.pt",
    )
    for what, (folder, message) in cases.items():
        before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
        with pytest.raises(RunError, match=message):
            resume_run(folder, progress=False)
        assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before, what
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 2
    assert "--resume continues" in capsys.readouterr().err


def test_a_finished_run_is_extended_as_if_it_had_been_started_longer(tmp_path, capsys):
    config = Config.from_dict(
        {
            "model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}},
            "train": {"epochs": 2, "batch_size": 256, "checkpoint_every": 0},
        }
    )
    train_run(
        Config.from_dict({**config.to_dict(), "train": {**config.to_dict()["train"], "epochs": 4}}),
        tmp_path / "long",
        progress=False,
    )
    train_run(config, tmp_path / "short", progress=False)
    assert main(["train", "--resume", str(tmp_path / "short")]) == 2  # finished: nothing left without --epochs
    assert "has finished its 2 epochs; extend it with --epochs 4" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "short"), "--epochs", "2", "--quiet"]) == 2
    assert "train.epochs 2 is not more than the 2 epochs" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "short"), "--epochs", "4", "--quiet"]) == 0
    long, short = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("long", "short"))
    assert_same_parameters(short["model"], long["model"])
    assert Config.from_toml(tmp_path / "short" / "config.toml").train.epochs == 4
    summary = json.loads((tmp_path / "short" / "summary.json").read_text())
    history = [json.loads(line) for line in (tmp_path / "short" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == summary["epochs"] == 4
    assert summary["seconds"] == pytest.approx(sum(m["seconds"] for m in history))  # the whole run, not the last part


def test_a_nan_gradient_stops_before_the_parameters_move():
    data = toy_data()
    vae = toy_vae()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    weight = vae.decoder.net[0].weight
    weight.register_hook(lambda g: torch.full_like(g, float("nan")))  # a finite loss whose gradient is not
    with pytest.raises(
        TrainingDiverged,
        match=(
            r"a gradient became nan at epoch 1, step 1 \(the loss was .*\); "
            r"lower the learning rate \(lr\) or clip the gradient"
        ),
    ):
        fit(vae, data, epochs=1, batch_size=10, progress=False)
    assert_same_parameters(vae.state_dict(), before)


def test_divergence_names_the_checkpoint_it_keeps(tmp_path, monkeypatch):
    config = Config.from_dict(
        {
            "model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}},
            "train": {"epochs": 3, "batch_size": 512, "checkpoint_every": 1},
        }
    )
    real_call = Objective.__call__
    calls = iter(range(10**9))

    def failing_call(self, x, num_data=None):  # the loss turns NaN in the second epoch (2 steps an epoch)
        loss = real_call(self, x, num_data)
        return loss * float("nan") if next(calls) >= 2 else loss

    monkeypatch.setattr(Objective, "__call__", failing_call)
    with pytest.raises(
        TrainingDiverged,
        match=r"the loss became nan at epoch 2, step 1; .*the last good checkpoint, .*checkpoint.pt, is kept",
    ):
        train_run(config, tmp_path / "run", progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1


def test_gradient_clipping_bounds_the_step():
    vae, x = toy_vae(), toy_data().train[:10]
    optimizer = torch.optim.SGD(vae.parameters(), lr=1.0)
    before = torch.nn.utils.parameters_to_vector(vae.parameters()).detach().clone()
    svi_step(Objective(vae), optimizer, x, num_data=80, clip_grad_norm=0.5)
    change = torch.nn.utils.parameters_to_vector(vae.parameters()).detach() - before
    assert change.norm() == pytest.approx(0.5, rel=1e-5)  # plain SGD with lr 1 moves by the clipped gradient


def test_clip_grad_norm_is_validated():
    with pytest.raises(ConfigError, match="train.clip_grad_norm must be >= 0"):
        Config.from_dict({"train": {"clip_grad_norm": -1.0}})


# --- fault injection: real processes, real signals ------------------------------------------------------------

TRAIN = [
    "--epochs",
    "20",
    "--hidden",
    "64",
    "--latent-dim",
    "4",
    "--batch-size",
    "64",
    "--checkpoint-every",
    "3",
    "--quiet",
]


def _cli(*args):
    return [sys.executable, "-m", "pyro_vae", *args]


def _check_folder_is_sound(run: Path):
    """Whatever is in the folder reads back: the config, every metrics line, and the checkpoint if any."""
    Config.from_toml(run / "config.toml")
    for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []:
        json.loads(line)
    if (run / "checkpoint.pt").exists():
        state = load_checkpoint(run / "checkpoint.pt")
        assert "train" in state


@pytest.mark.slow
def test_killed_at_random_moments_then_resumed_ends_like_the_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    reference = tmp_path / "reference"
    subprocess.run(_cli("train", *TRAIN, "--out", str(reference)), check=True, env=env, timeout=300)
    expected = load_checkpoint(reference / "checkpoint.pt")
    expected_metrics = strip(json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines())
    rng = random.Random(20261122)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        for attempt in range(2):
            run = tmp_path / f"{signum.name}-{attempt}"
            process = subprocess.Popen(
                _cli("train", *TRAIN, "--out", str(run)),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + 120
            while not (run / "config.toml").exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 3.0))  # a random moment of the run: set-up, a step, an evaluation, a write
            process.send_signal(signum)
            _, err = process.communicate(timeout=120)
            if process.returncode == 0:
                continue  # it finished before the signal: nothing to resume
            conventional = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}[signum]
            assert process.returncode == conventional, err
            assert "Traceback" not in err
            _check_folder_is_sound(run)
            if signum != signal.SIGKILL:
                assert "continue with: pyro-vae train --resume" in err and (run / "checkpoint.pt").exists()
            if not (run / "checkpoint.pt").exists():  # killed before the first checkpoint: nothing to lose but set-up
                continue
            if not (run / "summary.json").exists():  # else it was killed after its last write: nothing left to do
                subprocess.run(
                    _cli("train", "--resume", str(run), "--quiet"),
                    check=True,
                    env=env,
                    timeout=300,
                    capture_output=True,
                )
            assert not list(run.glob(".*.tmp"))
            assert_same_parameters(load_checkpoint(run / "checkpoint.pt")["model"], expected["model"])
            assert (
                strip(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()) == expected_metrics
            )


def test_a_run_killed_after_its_last_epoch_resumes_to_write_its_summary(tmp_path):
    config = Config.from_dict(
        {"model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}}, "train": {"epochs": 2}}
    )
    first = train_run(config, tmp_path / "run", progress=False)
    (tmp_path / "run" / "summary.json").unlink()  # killed while drawing its pictures
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = resume_run(tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == metrics  # no epoch trained again
    assert again["test_elbo_mc"] == first["test_elbo_mc"] and (tmp_path / "run" / "summary.json").is_file()
    with pytest.raises(RunError, match="has finished its 2 epochs; extend it with epochs=4"):
        resume_run(tmp_path / "run", progress=False)


def test_a_full_disk_ends_training_in_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import errno

    from pyro_vae import storage

    config = Config.from_dict(
        {
            "model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}},
            "train": {"epochs": 4, "batch_size": 256, "checkpoint_every": 1},
        }
    )
    replace, written = storage.os.replace, []

    def full_after_first_checkpoint(source, target):
        if Path(target).name == "checkpoint.pt":
            if written:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(target)
        return replace(source, target)

    monkeypatch.setattr(storage.os, "replace", full_after_first_checkpoint)
    run = tmp_path / "run"
    with pytest.raises(storage.WriteError) as info:
        train_run(config, run, progress=False)
    assert str(info.value) == (
        f"cannot write checkpoint.pt in {run}: No space left on device; free space in {run} (or write to another "
        f"folder); the last checkpoint is kept: continue with pyro-vae train --resume {run} then"
    )
    assert not list(run.glob(".*.tmp"))  # the half-written temporary file is gone
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(storage.os, "replace", replace)  # space freed
    resume_run(run, progress=False)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4


@pytest.mark.skipif(sys.platform == "win32", reason="file-size limits are POSIX")
def test_a_file_size_limit_is_reported_by_the_command_in_one_line(tmp_path):
    import resource

    def limited():  # in the child: files of at most 100 kB, and a write past it fails instead of killing
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    run = tmp_path / "run"
    result = subprocess.run(
        _cli("train", "--epochs", "2", "--quiet", "--out", str(run)),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limited,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"cannot write checkpoint.pt in {run}: File too large; free space in {run}" in result.stderr
    assert not list(run.glob(".*.tmp"))


def _lock(folder: Path, pid: int) -> None:
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".lock").write_text(f"{pid} {socket.gethostname()}\n")


def test_a_run_folder_being_written_is_refused_to_a_second_writer(tmp_path):
    config = Config.from_dict(
        {"model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}}, "train": {"epochs": 1}}
    )
    run = tmp_path / "run"
    train_run(config, run, progress=False)
    assert not (run / ".lock").exists()  # a finished run holds nothing
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock(run, holder.pid)
        before = sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir())
        message = rf"{run} is being written by process {holder.pid} on .*; wait for that run to end or stop it"
        with pytest.raises(RunError, match=message):
            train_run(config, run, overwrite=True, progress=False)
        with pytest.raises(RunError, match=message):
            resume_run(run, progress=False, epochs=2)
        assert sorted((p.name, p.stat().st_mtime_ns) for p in run.iterdir()) == before  # nothing touched
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over
    resume_run(run, progress=False, epochs=2)
    assert not (run / ".lock").exists()
    _lock(tmp_path / "fresh", holder.pid)  # a dead writer's lock alone does not make a folder a run
    train_run(config, tmp_path / "fresh", progress=False)


def test_a_second_command_on_a_run_being_trained_is_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(_cli("train", "--epochs", "500", "--quiet", "--out", str(run)), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run / ".lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(
            _cli("train", "--epochs", "1", "--quiet", "--out", str(run), "--overwrite"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert f"{run} is being written by process {first.pid} on " in second.stderr
        assert first.poll() is None and (run / "config.toml").exists()  # the first run goes on, its folder intact
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)


def test_a_cosine_schedule_is_not_extended(tmp_path):
    config = Config.from_dict(
        {
            "model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}},
            "train": {"epochs": 2, "batch_size": 256, "lr_schedule": {"type": "cosine"}},
        }
    )
    train_run(config, tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="cosine learning-rate schedule shaped by its 2 epochs"):
        resume_run(tmp_path / "run", progress=False, epochs=4)
