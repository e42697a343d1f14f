"""A validation set held out of the training set, early stopping, the best model, and snapshots.

The validation split and the binarization of the held-out sets are fixed by seeds of their own,
so every run sees the same sets; a run keeps the parameters of its epoch with the best
validation ELBO (``best.pt``, what :func:`pyro_vae.load` returns); early stopping counts epochs
without improvement only once the KL warm-up is over; a run stopped and resumed ends as the one
never stopped; snapshots keep the parameters and the training time of chosen epochs.
"""

import json
import signal

import pytest
import torch

from pyro_vae import Config, load, load_dataset, make_vae, train_run
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.runs.folders import load_snapshot, resume_run, snapshot_path
from pyro_vae.runs.storage import load_checkpoint
from pyro_vae.training.data import Dataset
from pyro_vae.training.loop import TrainingInterrupted, fit


def test_the_validation_split_is_fixed_disjoint_and_held_out_of_training():
    whole = load_dataset("digits")
    held = load_dataset("digits", validation=200)
    again = load_dataset("digits", validation=200, seed=5)
    assert held.validation.shape == (200, 8, 8) and len(held.train) == len(whole.train) - 200
    assert torch.equal(held.test, whole.test)
    assert torch.equal(held.validation, again.validation) and torch.equal(held.train, again.train)
    rows = {tuple(r.tolist()) for r in whole.train.flatten(1)}
    kept = {tuple(r.tolist()) for r in held.train.flatten(1)}
    assert {tuple(r.tolist()) for r in held.validation.flatten(1)} | kept == rows
    assert len(held.train_labels) == len(held.train)
    assert whole.validation is None


def test_held_out_sets_are_binarized_the_same_whatever_the_run_seed():
    a = load_dataset("digits", binarize="dynamic", validation=100, seed=0)
    b = load_dataset("digits", binarize="dynamic", validation=100, seed=7)
    assert torch.equal(a.test, b.test) and torch.equal(a.validation, b.validation)
    assert set(a.validation.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a.train, b.train)  # dynamic: the training set stays grey, drawn anew every batch
    s0 = load_dataset("digits", binarize="static", seed=0)
    s7 = load_dataset("digits", binarize="static", seed=7)
    assert torch.equal(s0.test, s7.test) and not torch.equal(s0.train, s7.train)


def test_printed_numbers_say_how_the_test_set_was_binarized():
    dynamic = load_dataset("digits", binarize="dynamic", validation=100)
    assert dynamic.binarization_note("test") == (
        "dynamic binarization: the test set is drawn once, with seed 0 in every run"
    )
    assert "validation set" in dynamic.binarization_note("validation")
    assert dynamic.binarization_note("train") is None and load_dataset("digits").binarization_note() is None


def test_a_validation_set_as_large_as_the_training_set_is_refused():
    with pytest.raises(DataError, match=r"data.validation \(1438\) leaves no training points .* fewer than 1438"):
        load_dataset("digits", validation=1438)


def test_early_stopping_needs_a_validation_set():
    with pytest.raises(ConfigError, match=r"train.early_stopping \(5\) .* data.validation = 10000"):
        Config.from_dict({"train": {"early_stopping": 5}})
    vae = make_vae((8, 8), latent_dim=2, network={"type": "mlp", "hidden": [8]})
    with pytest.raises(ConfigError, match=r"early_stopping \(5\) .* validation=10000"):
        fit(vae, load_dataset("digits"), epochs=1, early_stopping=5, progress=False)


def toy_data():
    x = torch.rand(140, 4, 4, generator=torch.Generator().manual_seed(3))
    return Dataset("toy", x[:80], x[80:100], validation=x[100:])


def toy_vae():
    torch.manual_seed(0)
    return make_vae((4, 4), latent_dim=2, network={"type": "mlp", "hidden": [8]})


def test_training_stops_when_the_validation_elbo_stops_improving_and_keeps_the_best_epoch():
    vae = toy_vae()
    snapshots = {}

    def on_checkpoint(state):
        snapshots[state.epoch] = {k: v.clone() for k, v in vae.state_dict().items()}

    # a learning rate so small that only the evaluation's noise moves the validation ELBO
    history = fit(
        vae,
        toy_data(),
        epochs=50,
        batch_size=10,
        lr=1e-9,
        early_stopping=3,
        progress=False,
        on_checkpoint=on_checkpoint,
    )
    values = [m["validation_elbo"] for m in history]
    best = max(range(len(values)), key=values.__getitem__) + 1
    assert len(history) == best + 3 < 50  # stopped three epochs after the best one
    assert all(m["best_epoch"] == max(range(m["epoch"]), key=values.__getitem__) + 1 for m in history)
    for name, value in vae.state_dict().items():  # the model is the best epoch's, not the last one's
        assert torch.equal(value, snapshots[best][name]), name


def test_patience_counts_only_after_the_kl_warm_up():
    history = fit(
        toy_vae(),
        toy_data(),
        epochs=50,
        batch_size=10,
        lr=1e-9,
        early_stopping=1,
        kl_warmup={"type": "linear", "epochs": 6},
        progress=False,
    )
    values = [m["validation_elbo"] for m in history]
    worse = [e for e in range(2, len(values) + 1) if values[e - 1] <= max(values[: e - 1])]
    assert worse[0] < 6  # an epoch of the warm-up was no better, and training went on
    # epochs 1..5 never count; from epoch 6 (whose last step has weight 1) the first one no better stops it
    assert len(history) == min(e for e in worse if e >= 6)


def config(tmp_path, **train):
    return Config.from_dict(
        {
            "data": {"validation": 300},
            "model": {"latent_dim": 3, "network": {"type": "mlp", "hidden": [16]}},
            "train": {"epochs": 6, "batch_size": 128, "lr": 3e-2, "checkpoint_every": 0, **train},
        }
    )


def test_a_run_keeps_the_best_model_and_load_returns_it(tmp_path):
    summary = train_run(config(tmp_path), tmp_path / "run", progress=False)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best = max(history, key=lambda m: m["validation_elbo"])
    assert (summary["best_epoch"], summary["validation_elbo"]) == (best["epoch"], best["validation_elbo"])
    assert "best.pt" in summary["files"]
    kept = load_checkpoint(tmp_path / "run" / "best.pt")
    assert kept["epoch"] == best["epoch"]
    vae, _ = load(tmp_path / "run")
    for name, value in vae.state_dict().items():
        assert torch.equal(value, kept["model"][name]), name
    (tmp_path / "run" / "checkpoint.pt").unlink()  # a published run: config.toml and best.pt
    vae, _ = load(tmp_path / "run")
    assert torch.equal(next(iter(vae.state_dict().values())), next(iter(kept["model"].values())))


def test_a_stopped_run_with_early_stopping_resumes_to_the_same_best_model(tmp_path):
    cfg = config(tmp_path, epochs=12, early_stopping=2, lr=1e-1)
    train_run(cfg, tmp_path / "whole", progress=False)
    polls = iter(range(10**9))
    with pytest.raises(TrainingInterrupted):
        train_run(cfg, tmp_path / "stopped", progress=False, stop=lambda: signal.SIGTERM if next(polls) >= 20 else None)
    resume_run(tmp_path / "stopped", progress=False)

    def lines(name):
        return [
            {k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ]

    assert lines("stopped") == lines("whole")
    whole, stopped = (load_checkpoint(tmp_path / name / "best.pt") for name in ("whole", "stopped"))
    assert whole["epoch"] == stopped["epoch"]
    for name in whole["model"]:
        assert torch.equal(whole["model"][name], stopped["model"][name]), name


def test_snapshots_keep_the_parameters_and_training_time_of_chosen_epochs(tmp_path):
    summary = train_run(config(tmp_path, epochs=3, snapshots=[1, 3]), tmp_path / "run", progress=False)
    assert snapshot_path(tmp_path / "run", 1).is_file() and not snapshot_path(tmp_path / "run", 2).exists()
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    _, first = load_snapshot(tmp_path / "run", 1)
    assert first == {"epoch": 1, "train_seconds": history[0]["seconds"]}
    last, info = load_snapshot(tmp_path / "run", 3)
    assert info["train_seconds"] == pytest.approx(summary["train_seconds"])
    final = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model"]
    for name, value in last.state_dict().items():
        assert torch.equal(value, final[name]), name
    with pytest.raises(Exception, match=r"no snapshot of epoch 2; it has \[1, 3\]"):
        load_snapshot(tmp_path / "run", 2)


def test_a_resumed_run_forgets_a_best_model_written_after_its_checkpoint(tmp_path):
    cfg = config(tmp_path, epochs=4)
    polls = iter(range(10**9))
    with pytest.raises(TrainingInterrupted):  # stopped inside epoch 3; the checkpoint's best is epoch 1 or 2
        train_run(cfg, tmp_path / "run", progress=False, stop=lambda: signal.SIGTERM if next(polls) >= 20 else None)
    saved = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["train"]["best"]
    later = load_checkpoint(tmp_path / "run" / "best.pt")
    later["epoch"], later["model"] = 99, {k: v + 1 for k, v in later["model"].items()}  # as a killed run may leave
    torch.save(later, tmp_path / "run" / "best.pt")
    with pytest.raises(TrainingInterrupted):
        resume_run(tmp_path / "run", progress=False, stop=lambda: signal.SIGTERM)  # stops before its first step
    kept = load_checkpoint(tmp_path / "run" / "best.pt")
    assert kept["epoch"] == saved["epoch"]
    vae, _ = load(tmp_path / "run")
    for name, value in vae.state_dict().items():
        assert torch.equal(value, saved["model"][name]), name


def test_a_folder_with_a_model_but_no_config_is_not_a_run(tmp_path):
    train_run(config(tmp_path, epochs=1), tmp_path / "run", progress=False)
    (tmp_path / "run" / "config.toml").unlink()
    with pytest.raises(Exception, match=r"is not a finished pyro-vae run \(no config.toml\)"):
        load(tmp_path / "run")
