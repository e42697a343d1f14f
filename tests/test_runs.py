"""Run folders from the Python API: train, load, evaluate, and safety of what is read and written."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from pyro_vae import Config, evaluate_run, load, resume_run, train_run
from pyro_vae.errors import PyroVAEError, RunError
from pyro_vae.runs.folders import anchored
from pyro_vae.runs.storage import CHECKPOINT_FORMAT, load_checkpoint

TINY = {
    "model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [16]}},
    "train": {"epochs": 2, "batch_size": 256, "checkpoint_every": 1},
}


def tiny_config(**train):
    values = json.loads(json.dumps(TINY))
    values["train"].update(train)
    return Config.from_dict(values)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train_run(tiny_config(), out, progress=False)
    return out


def test_run_folder_contents(run_dir):
    files = {p.name for p in run_dir.iterdir()}
    assert files == {
        "config.toml",
        "metrics.jsonl",
        "checkpoint.pt",
        "summary.json",
        "reconstructions.png",
        "samples.png",
        "latent.png",
        "manifold.png",
        "curves.png",
        "collapse.png",
    }
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all({"train_elbo", "test_elbo", "seconds"} <= set(m) for m in metrics)
    saved = Config.from_toml(run_dir / "config.toml")
    assert saved == anchored(tiny_config()) and Path(saved.data.data_root).is_absolute()  # usable from anywhere
    # The checkpoint is readable with weights_only=True: no pickled code in it.
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT and state["epoch"] == 2


def test_same_seed_same_metrics(run_dir, tmp_path):
    train_run(tiny_config(), tmp_path / "again", progress=False)

    def strip(p):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in p.read_text().splitlines()]

    assert strip(run_dir / "metrics.jsonl") == strip(tmp_path / "again" / "metrics.jsonl")


def test_load_and_evaluate(run_dir):
    vae, config = load(run_dir)
    assert config == anchored(tiny_config()) and not vae.training
    assert vae.sample(3).shape == (3, 8, 8)
    result = evaluate_run(run_dir, num_particles=5)
    assert result["num_examples"] == 359
    assert {"elbo_mc", "elbo_mc_se", "elbo_analytic", "elbo_analytic_se"} <= set(result)
    assert abs(result["elbo_mc"] - result["elbo_analytic"]) < 4 * max(result["elbo_mc_se"], result["elbo_analytic_se"])


def test_existing_folder_needs_overwrite_and_nothing_is_written_on_bad_input(run_dir, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    with pytest.raises(RunError, match="already exists and is not empty; pass overwrite=True"):
        train_run(tiny_config(), run_dir, progress=False)
    with pytest.raises(PyroVAEError, match="batch_size"):
        train_run(tiny_config(batch_size=5000), run_dir, overwrite=True, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
    other = tmp_path / "not-a-run"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(RunError, match="not a pyro-vae run folder; refusing to delete it"):
        train_run(tiny_config(), other, overwrite=True, progress=False)
    assert (other / "thesis.tex").read_text() == "precious"
    with pytest.raises(PyroVAEError):
        train_run(
            Config.from_dict({**TINY, "data": {"dataset": str(tmp_path / "missing.npy")}}),
            tmp_path / "never",
            progress=False,
        )
    assert not (tmp_path / "never").exists()


class _Payload:
    """Unpickling this object would create a file; safe loading must never do it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    "write,message",
    [
        (torch.save, "holds pickled Python objects, which pyro-vae never loads"),  # a torch checkpoint with a payload
        (lambda obj, f: pickle.dump(obj, f), "cannot read checkpoint .*not a pyro-vae checkpoint"),  # a bare pickle
    ],
)
def test_checkpoint_that_runs_code_is_refused(run_dir, tmp_path, write, message):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.toml").write_text((run_dir / "config.toml").read_text())
    with open(evil / "checkpoint.pt", "wb") as f:
        write({"format": CHECKPOINT_FORMAT, "x": _Payload(marker)}, f)
    with pytest.raises(RunError, match=message):
        load(evil)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload is real: plain unpickling runs it
    assert marker.exists()


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "cannot read checkpoint"),
        (lambda p: p.write_bytes(b""), "cannot read checkpoint"),
        (lambda p: torch.save({"format": 99}, p), "has format 99, this pyro-vae reads formats 1, 2"),
        (lambda p: torch.save({"weights": torch.zeros(3)}, p), "not a pyro-vae checkpoint"),
        (lambda p: p.unlink(), "is not a finished pyro-vae run"),
    ],
)
def test_damaged_checkpoints(run_dir, tmp_path, damage, message):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in run_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    damage(copy / "checkpoint.pt")
    with pytest.raises(RunError, match=message):
        load(copy)


def test_checkpoint_from_another_architecture(run_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in run_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "config.toml").write_text((run_dir / "config.toml").read_text().replace("hidden = [16]", "hidden = [32]"))
    with pytest.raises(RunError, match="does not fit the model of"):
        load(copy)


def test_missing_run_folder(tmp_path):
    with pytest.raises(RunError, match="does not exist; give the --out folder"):
        load(tmp_path / "nowhere")


def test_atomic_write_leaves_no_temporary_files(run_dir):
    assert not [name for name in os.listdir(run_dir) if name.endswith(".tmp")]
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert set(state) >= {"format", "config", "event_shape", "epoch", "step", "model", "train"}
    assert {"optimizer", "rng", "order", "history"} <= set(state["train"])


def test_non_image_data_get_the_pictures_that_make_sense(tmp_path):
    import numpy as np

    path = tmp_path / "points.npy"
    np.save(path, np.random.default_rng(0).random((400, 5)).astype(np.float32))
    config = Config.from_dict({**json.loads(json.dumps(TINY)), "data": {"dataset": str(path)}})
    summary = train_run(config, tmp_path / "run", progress=False)
    assert {"latent.png", "curves.png"} <= set(summary["files"])
    assert not {"reconstructions.png", "samples.png", "manifold.png"} & set(summary["files"])


def test_a_schedule_drawn_over_the_runs_length_is_not_extended_whatever_its_name(tmp_path):
    """Extending a run asks the schedule's registry entry (``shaped_by_length``), as a plugin's can answer."""
    from pyro_vae.training.optim import LR_SCHEDULES, constant

    def stretched(optimizer, epochs):
        return constant(optimizer, epochs)

    stretched.shaped_by_length = True
    LR_SCHEDULES.register("stretched")(stretched)
    try:
        train_run(tiny_config(epochs=1, lr_schedule={"type": "stretched"}), tmp_path / "run", progress=False)
        with pytest.raises(RunError, match="follows a stretched learning-rate schedule shaped by its 1 epochs"):
            resume_run(tmp_path / "run", progress=False, epochs=2)
    finally:
        LR_SCHEDULES.unregister("stretched")


def test_a_caption_shows_what_the_program_is_built_from():
    """vae: its network, prior and likelihood; another program: its name and parameters, not the tables it ignores."""
    from pyro_vae.runs.folders import caption

    vae = caption(Config.from_dict({"model": {"latent_dim": 3}}))
    assert "| mlp " in vae and "latent 3 | prior standard_normal | likelihood bernoulli" in vae
    m2 = caption(Config.from_dict({"model": {"type": "ssvae", "hidden": [64], "alpha": 5.0}}))
    assert "| ssvae | latent 10 | hidden 64 | activation softplus | alpha 5.0 | likelihood bernoulli |" in m2
    assert "mlp" not in m2 and "prior" not in m2
