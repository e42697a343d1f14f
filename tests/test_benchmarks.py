"""The benchmark command (make bench) runs end to end in --smoke mode and prints every table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyro_vae

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
TABLES = [
    "== ms per training step (forward, backward, Adam) ==",
    "== ms per training step of a user's program (two stochastic layers) ==",
    "== ms per training step of the hierarchical program ==",
    "== ms per unlabelled training step of the semi-supervised program (M2) ==",
    "== seconds per MNIST training epoch ==",
    "== peak memory of library training ==",
    "== throughput of pyro_vae.log_likelihood ==",
]


def run_benchmark(script, *args, cwd, timeout=300, warnings_as_errors=False):
    """A benchmark script run as a user runs it; ``warnings_as_errors`` holds it (and its children) to the suite's."""
    env = {**os.environ, "PYTHONWARNINGS": "error"} if warnings_as_errors else None
    command = [sys.executable, str(SPEED.parent / script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


@pytest.mark.slow  # two interpreters (the memory part runs in its own) and JIT compilation: about 10 s
def test_speed_benchmark_runs_in_smoke_mode(tmp_path):
    # PYTHONWARNINGS reaches the memory part's process too: the benchmark is held to the suite's warnings-as-errors.
    result = run_benchmark("speed.py", "--smoke", cwd=tmp_path, warnings_as_errors=True)
    assert result.returncode == 0, result.stderr
    for title in TABLES:
        assert title in result.stdout, f"missing table {title!r} in:\n{result.stdout}"
    assert "RANDOM STAND-IN DATA" in result.stdout  # --smoke never reads MNIST, and says so
    assert "failed" not in result.stdout, result.stdout
    # each hand-written step computes the library's loss: same weights, same draws, float32 rounding apart
    same = [line for line in result.stdout.splitlines() if line.startswith("same weights, same draw of z")]
    assert len(same) == 8 and all(float(line.rsplit(" ", 1)[1]) < 1e-5 for line in same), same


@pytest.mark.slow  # three one-epoch runs on the digits
def test_estimator_benchmark_runs_in_smoke_mode(tmp_path):
    result = run_benchmark("estimators.py", "--smoke", "--out", tmp_path / "runs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("analytic", "iwae", "dreg"):
        assert f"\n{name} " in result.stdout, result.stdout
    assert (tmp_path / "runs" / "results.json").is_file()


@pytest.mark.slow  # every preset of the published protocols: two epochs of two steps each on the digits, K = 20
def test_quality_benchmark_runs_every_preset_in_smoke_mode(tmp_path):
    out = tmp_path / "quality"
    options = ["--smoke", "--budget", "full", "--out", out, "--quiet"]
    result = run_benchmark("quality.py", *options, cwd=tmp_path, timeout=600, warnings_as_errors=True)
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "results.json").read_text())
    presets = ["burda2016-vae", "burda2016-iwae5", "burda2016-iwae50", "burda2016-vae-2l", "burda2016-iwae5-2l"]
    presets += ["burda2016-iwae50-2l", "tomczak2018-standard", "tomczak2018-vamp"]
    assert [r["preset"] for r in rows] == presets
    for r in rows:
        assert {"preset", "budget", "run", "epochs", "train_seconds", "log_likelihood", "log_likelihood_se"} <= set(r)
        assert r["budget"] == "full" and r["log_likelihood"] < 0 and r["log_likelihood_se"] > 0 and r["curve"], r
        # Tomczak & Welling report statically binarized MNIST only: no published number for these dynamic rows
        assert r["published"] is None if r["preset"].startswith("tomczak") else r["published"] < -82, r
        assert len(r["active_units"]) == (2 if r["preset"].endswith("-2l") else 1), r
        assert r["preset"] in result.stdout
        assert (tmp_path / r["run"] / "config.toml").is_file() or Path(r["run"]).is_dir()
    assert (out / "log_likelihood.png").is_file()
    tomczak = next(r for r in rows if r["preset"] == "tomczak2018-vamp")
    assert (out / "tomczak2018-vamp-full" / "best.pt").is_file() and tomczak["best_epoch"] <= tomczak["epochs"]


@pytest.mark.slow  # an M1 and eight presets: two short epochs each on the digits, K = 20
def test_semisupervised_benchmark_runs_every_preset_in_smoke_mode(tmp_path):
    out = tmp_path / "semisupervised"
    result = run_benchmark(
        "semisupervised.py", "--smoke", "--out", out, "--quiet", cwd=tmp_path, warnings_as_errors=True
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "results.json").read_text())
    draws = [(100, 0), (100, 1), (100, 2)]
    expected = [("m1m2", n, seed) for n, seed in [*draws, (600, 0), (1000, 0), (3000, 0)]]
    assert [(r["program"], r["labels"], r["label_seed"]) for r in rows] == expected + [("m2", *d) for d in draws[:2]]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["log_likelihood"] < 0 and r["elbo"] <= r["log_likelihood"] + 1, r
        assert r["mutual_information"] >= 0 and r["test_images"] == 359
    assert "Kingma M1+M2 96.67 ± 0.14" in result.stdout and "3 draws" in result.stdout
    m1 = pyro_vae.load(out / "m1")[0]
    for name in ("m1m2-100-draw0", "m1m2-3000"):  # M1 held fixed through each run
        stacked = pyro_vae.load(out / name)[0]
        assert all(torch.equal(a, b) for a, b in zip(stacked.m1.state_dict().values(), m1.state_dict().values()))


def load_quality(name: str = "quality"):
    """benchmarks/<name>.py as a module (a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, SPEED.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_refuses_a_run_folder_of_another_protocol(tmp_path):
    quality = load_quality()
    options = ["--smoke", "--presets", "burda2016-vae", "--out", str(tmp_path), "--train-only", "--quiet"]
    quality.main(options)
    config = tmp_path / "burda2016-vae-cpu" / "config.toml"
    config.write_text(config.read_text().replace("latent_dim = 50", "latent_dim = 5"))
    with pytest.raises(SystemExit, match=r"burda2016-vae: .* was trained with another configuration than"):
        quality.main(options)


@pytest.mark.slow  # compiles a loss (seconds)
def test_quality_times_each_presets_step_eager_and_compiled(tmp_path):
    options = ["--step-times", "--smoke", "--presets", "burda2016-vae", "burda2016-iwae5", "--threads", "1"]
    result = run_benchmark("quality.py", *options, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith("burda")}
    assert rows["burda2016-vae"][2:4] == ["analytic", "k=1"] and rows["burda2016-vae"][-1] == "eager"
    assert rows["burda2016-iwae5"][2:4] == ["dreg", "k=5"] and rows["burda2016-iwae5"][-1] == "compiled"
    for row in rows.values():
        assert float(row[5]) > 0 and float(row[6]) > 0, row
    assert not list(tmp_path.iterdir())  # it trains nothing


def test_quality_reuses_a_curve_point_only_for_the_snapshot_it_was_computed_from(tmp_path):
    quality = load_quality()
    options = ["--smoke", "--presets", "burda2016-vae", "--out", str(tmp_path), "--quiet"]
    quality.main(options)
    results = tmp_path / "results.json"
    rows = json.loads(results.read_text())
    first, second = rows[0]["curve"]
    first["log_likelihood"] = second["log_likelihood"] = 1.0  # a point that is reused keeps this mark
    second["train_seconds"] += 1.0  # as if it had been computed from another run's snapshot of that epoch
    results.write_text(json.dumps(rows))
    curve = quality.main(options)[0]["curve"]
    assert [p["epoch"] for p in curve] == [1, 2]
    assert curve[0]["log_likelihood"] == 1.0 and curve[1]["log_likelihood"] < 0


def test_the_committed_quality_table_is_that_of_the_committed_runs():
    """Each row of results.json (the quality table) names a committed run of its preset, and its model."""
    from pyro_vae import Config

    quality = load_quality()
    rows = json.loads((quality.OUT / "results.json").read_text())
    assert rows
    for r in rows:
        run = quality.REPO / r["run"]
        model = quality._model_file(run)
        assert (run / "config.toml").is_file() and model.is_file(), r["run"]
        preset = quality.preset_config(r["preset"], r["budget"], quality.REPO)
        assert quality._same_protocol(Config.from_toml(run / "config.toml"), preset), r["run"]
        assert quality._digest(model) == r["model_digest"], r["run"]
        summary = json.loads((run / "summary.json").read_text())
        assert (summary["epochs"], summary["train_seconds"]) == (r["epochs"], r["train_seconds"]), r["run"]
        assert (summary["path"], r["epoch_seconds"]) == (r["path"], quality._median_epoch_seconds(run)), r["run"]
        assert r["test_images"] == 10_000 and r["num_samples"] == 5000, r["run"]


def test_the_committed_semisupervised_table_is_that_of_the_committed_runs():
    """Each row of results.json (the quality table) is a committed run of its preset, trained as the preset says,
    with the model the repository keeps where it keeps one."""
    from pyro_vae import Config
    from pyro_vae.runs.folders import anchored, located

    semi = load_quality("semisupervised")
    rows = json.loads((semi.OUT / "results.json").read_text())
    assert {r["preset"] for r in rows} == set(semi.PRESETS)
    for r in rows:
        run = semi.OUT / r["preset"]
        preset = anchored(
            semi.preset_config(r["preset"], semi.REPO.parent / "shared" / "data", m1=str(semi.REPO / semi.M1_RUN))
        )
        saved = located(Config.from_toml(run / "config.toml"), run)
        assert semi.quality._same_protocol(saved, preset), r["preset"]
        summary = json.loads((run / "summary.json").read_text())
        assert (summary["epochs"], summary["train_seconds"]) == (r["epochs"], r["train_seconds"]), r["preset"]
        if (run / "checkpoint.pt").is_file():
            assert semi.quality._digest(run / "checkpoint.pt") == r["model_digest"], r["preset"]
        assert r["test_images"] == 10_000 and r["num_samples"] == 5000, r["preset"]
    kept = [r for r in rows if (semi.OUT / r["preset"] / "checkpoint.pt").is_file()]
    assert {r["program"] for r in kept} == {"m1m2", "m2"}
