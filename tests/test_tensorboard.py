"""TensorBoard logs: a run's metrics, KL per dimension and pictures, read back from the event files."""

import json
import sys

import pytest

from pyro_vae import Config, train_run
from pyro_vae.errors import ConfigError


def config(**train):
    return Config.from_dict(
        {
            "model": {"latent_dim": 3, "network": {"type": "mlp", "hidden": [16]}},
            "train": {"epochs": 2, "batch_size": 256, "log": "tensorboard", **train},
        }
    )


def test_a_run_logs_its_metrics_and_pictures_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = train_run(config(), tmp_path / "run", progress=False)
    events = EventAccumulator(
        str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "histograms": 0}
    )
    events.Reload()
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for key, group in (("train_elbo", "elbo"), ("test_elbo_mc", "elbo"), ("active_units", "training")):
        logged = events.Scalars(f"{group}/{key}")
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([m[key] for m in history], rel=1e-6)
    assert [e.step for e in events.Histograms("kl_per_dim")] == [1, 2]
    pictures = {name[: -len(".png")] for name in summary["files"] if name.endswith(".png")}
    assert {tag.removeprefix("pictures/") for tag in events.Tags()["images"]} == pictures


def test_without_the_package_the_run_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"train.log = tensorboard needs the tensorboard package: pip install"):
        train_run(config(), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
