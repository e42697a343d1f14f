"""The command line end to end, as a user runs it: train on digits, evaluate, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_vae import ESTIMATORS
from pyro_vae.cli.main import main
from pyro_vae.errors import RunError
from pyro_vae.runs.config import Config, presets

SMALL = ["--epochs", "2", "--hidden", "32", "--latent-dim", "2", "--batch-size", "256", "--quiet"]


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "pyro_vae", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run("train", *SMALL, "--elbo", "analytic", "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_train_then_evaluate_json(trained):
    out, result = trained
    assert f"run folder: {out}" in result.stdout and "test ELBO" in result.stdout
    assert {"config.toml", "metrics.jsonl", "checkpoint.pt", "reconstructions.png", "samples.png"} <= {
        p.name for p in out.iterdir()
    }
    evaluated = run("evaluate", out, "--json", "--num-particles", "4")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["num_examples"] == 359
    for key in ("elbo_mc", "elbo_mc_se", "elbo_analytic", "elbo_analytic_se"):
        assert isinstance(report[key], float)
    assert report["elbo_mc"] < 0 and report["elbo_mc_se"] > 0


def test_evaluate_prints_a_table(trained, capsys):
    assert main(["evaluate", str(trained[0])]) == 0
    text = capsys.readouterr().out
    assert "ELBO (mc" in text and "ELBO (analytic" in text and "359 points" in text


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "pyro-vae"
    assert script.exists(), "pip install . must provide the pyro-vae command"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "train" in result.stdout and "evaluate" in result.stdout


def test_config_file_and_set(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[train]\nepochs = 1\nbatch_size = 500\n\n[model]\nlatent_dim = 3\n")
    out = tmp_path / "run"
    assert (
        main(["train", "--config", str(config), "--set", "model.network.hidden=[16]", "--quiet", "--out", str(out)])
        == 0
    )
    saved = (out / "config.toml").read_text()
    assert "latent_dim = 3" in saved and "hidden = [16]" in saved and "batch_size = 500" in saved


@pytest.mark.parametrize(
    "args,message",
    [
        (["train", "--dataset", "cifar"], "unknown data set 'cifar'; use digits, mnist or the path"),
        (["train", "--epochs", "-2"], "train.epochs must be >= 1 (got -2)"),
        (["train", "--elbo", "exact"], "train.elbo: unknown estimator 'exact'; known: mc, analytic"),
        (["train", "--dataset", "mnist", "--data-root", "{tmp}/empty"], "MNIST not found under"),
        (["train", "--batch-size", "100000"], "use --batch-size 1438 or less"),
        (["train", "--set", "train.epochs"], "expected key.sub=value"),
        (["evaluate", "{tmp}/no-such-run"], "does not exist; give the --out folder"),
        (["evaluate", "{tmp}"], "is not a finished pyro-vae run"),
    ],
)
def test_bad_input_one_line_nonzero_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "train":
        args += ["--out", str(out), "--quiet"]
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: error: ") and message in lines[0], lines
    assert not out.exists()


def test_corrupted_checkpoint(trained, tmp_path, capsys):
    out, _ = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "checkpoint.pt").write_bytes(b"garbage")
    assert main(["evaluate", str(copy)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    with pytest.raises(RunError, match="cannot read checkpoint"):  # --debug: the exception itself, with its traceback
        main(["--debug", "evaluate", str(copy)])


def test_debug_works_after_the_command_too(trained, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.toml").write_bytes((trained[0] / "config.toml").read_bytes())
    (copy / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(RunError, match="cannot read checkpoint"):
        main(["evaluate", str(copy), "--debug"])


def test_threads_sets_torchs_threads_and_training_says_how_many(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    try:
        assert main(["train", *SMALL[:-1], "--epochs", "1", "--threads", "1", "--out", str(tmp_path / "run")]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert "on cpu (1 CPU thread; --threads N sets it)" in capsys.readouterr().err
    assert "--threads N" in run("train", "--help").stdout


def test_plot_draws_the_pictures_training_drew(trained, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in trained[0].iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    assert main(["plot", str(copy)]) == 0
    for name in ("samples.png", "reconstructions.png", "manifold.png", "latent.png", "curves.png"):
        assert (copy / name).read_bytes() == (trained[0] / name).read_bytes(), name


def test_plot_reads_what_it_can_of_a_torn_metrics_file(trained, tmp_path, capsys):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in trained[0].iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    (copy / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed mid-write
    assert main(["plot", str(copy)]) == 0
    assert f"{copy / 'metrics.jsonl'}: skipped line 2, not a JSON object (a torn write?)" in capsys.readouterr().err
    assert (copy / "curves.png").is_file()


def test_a_run_records_its_data_from_anywhere_and_reads_moved_data(tmp_path, monkeypatch, capsys):
    import numpy as np

    work = tmp_path / "work"
    work.mkdir()
    np.save(work / "points.npy", np.random.default_rng(0).random((400, 4, 4)).astype(np.float32))
    monkeypatch.chdir(work)
    assert main(["train", *SMALL, "--dataset", "points.npy", "--out", "run"]) == 0
    recorded = (work / "run" / "config.toml").read_text()
    assert f'dataset = "{work / "points.npy"}"' in recorded and f'data_root = "{work / "data"}"' in recorded
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(work / "run")]) == 0  # from another folder
    (work / "points.npy").rename(tmp_path / "moved.npy")
    capsys.readouterr()
    assert main(["evaluate", str(work / "run")]) == 2 and "does not exist" in capsys.readouterr().err
    for command in ("evaluate", "plot"):
        assert main([command, str(work / "run"), "--dataset", str(tmp_path / "moved.npy")]) == 0


def test_config_prints_the_resolved_configuration(tmp_path, capsys):
    from pyro_vae import Config

    assert main(["config"]) == 0
    assert Config.from_toml_string(capsys.readouterr().out) == Config()
    (tmp_path / "c.toml").write_text("[train]\nepochs = 7\n")
    assert main(["config", "--config", str(tmp_path / "c.toml"), "--set", "model.network.hidden=64,32"]) == 0
    printed = Config.from_toml_string(capsys.readouterr().out)
    assert printed.train.epochs == 7 and printed.model.network["hidden"] == [64, 32]
    assert main(["config", "--set", "latent_dim=2"]) == 2
    assert "did you mean model.latent_dim?" in capsys.readouterr().err


def test_component_shortcuts_set_the_type_with_its_defaults():
    from pyro_vae.cli.main import _parser, _train_config

    args = _parser().parse_args(["train", "--prior", "laplace", "--likelihood", "gaussian", "--network", "gated_mlp"])
    config = _train_config(args)
    assert (config.model.prior["type"], config.model.likelihood["type"]) == ("laplace", "gaussian")
    assert config.model.network == {"type": "gated_mlp", "hidden": [300, 300]}  # the network's own defaults
    args = _parser().parse_args(["train", "--network", "mlp", "--hidden", "64"])
    assert _train_config(args).model.network["hidden"] == [64]


@pytest.mark.parametrize("command", ["train", "evaluate", "compare", "plot", "config"])
def test_help_explains_every_option_and_shows_defaults(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    from pyro_vae.cli.main import _parser

    parser = _parser()._subparsers._group_actions[0].choices[command]
    for action in parser._actions:
        assert action.help or not action.option_strings, f"{command} {action.option_strings} has no help"
    if command == "train":
        assert "(default: 50)" in text and "(default: mc)" in text
    if command == "evaluate":
        assert "(default: 1000)" in text


def test_evaluate_help_says_log_likelihood_needs_num_samples(capsys):
    """log p(x) is estimated only with --num-samples K; every mention of it in the help says so."""
    for argv in (["--help"], ["evaluate", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())  # argparse's line breaks undone
        mentions = [text[i - 120 : i + 120] for i in range(len(text)) if text.startswith("log p(x)", i)]
        assert mentions and all("--num-samples K" in m or "K samples" in m for m in mentions), mentions
    assert "(K > 0); the default, 0, skips it" in text and "0 skips it (default: 0)" in text


def test_argparse_rejects_malformed_numbers(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--hidden", "400,x"])
    assert info.value.code == 2 and "layer sizes" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(presets()))
def test_every_preset_trains_for_two_epochs_by_its_name(preset, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a name, not a path: found in the package from any folder
    out = tmp_path / preset
    assert main(["train", "--config", preset, "--epochs", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    closed = preset in {"standard_normal", "normal", "laplace"}
    assert f"KL term (analytic ELBO): z: {'closed form' if closed else 'sampled'}" in err
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and '"kl": {"z": "' + ("closed_form" if closed else "sampled") + '"}' in metrics[-1]


def test_presets_are_listed_with_what_they_are(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name, description in presets().items():
        assert f"  {name}" in out and description in out
    assert main(["config", "--config", "vamp"]) == 0
    assert Config.from_toml_string(capsys.readouterr().out) == Config.load("vamp")


def test_a_file_named_like_a_preset_is_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("vamp").write_text("[model]\nlatent_dim = 3\n")
    assert main(["config", "--config", "vamp"]) == 0
    assert Config.from_toml_string(capsys.readouterr().out).model.latent_dim == 3


def test_evaluate_adds_the_importance_sampled_log_likelihood(trained, capsys):
    assert main(["evaluate", str(trained[0]), "--json", "--num-samples", "50", "--num-particles", "50"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_samples"] == 50 and report["log_likelihood_se"] > 0
    # log p(x) ≥ ELBO for every point, so the means are ordered too (beyond their shared noise).
    assert report["log_likelihood"] > report["elbo_analytic"] - 4 * report["elbo_analytic_se"]


def test_compare_writes_table_json_and_plot(trained, capsys):
    out = trained[0]
    assert main(["compare", str(out), "--particles", "1,4", "--repeats", "5", "--batch-size", "20"]) == 0
    text = capsys.readouterr().out
    assert "mc - analytic" in text and "var encoder" in text
    assert (out / "compare.png").stat().st_size > 0
    saved = json.loads((out / "compare.json").read_text())
    every = len(list(ESTIMATORS))  # compare covers every registered estimator by default
    assert [r["num_particles"] for r in saved["rows"]] == [1] * every + [4] * every
    assert main(["compare", str(out), "--particles", "2", "--repeats", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["repeats"] == 3
    assert main(["compare", str(out), "--repeats", "1"]) == 2


def test_plot_redraws_every_picture(trained, capsys):
    out = trained[0]
    for name in ("latent.png", "manifold.png", "curves.png"):
        (out / name).unlink()
    assert main(["plot", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert {Path(p).name for p in printed} == {
        "reconstructions.png",
        "samples.png",
        "latent.png",
        "manifold.png",
        "curves.png",
        "collapse.png",
    }
    assert all(Path(p).stat().st_size > 0 for p in printed)
