"""A user's own components: registered from their module (--import) or their package (entry points).

A run trained with a plugin records what it needs, so that evaluate, plot and compare work on it
from the command line as on any other run; a name that is taken is never replaced silently.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from pyro_vae import PRIORS
from pyro_vae.errors import ConfigError
from pyro_vae.models.priors import StandardNormal

CAUCHY = textwrap.dedent(
    """
    import pyro.distributions as dist
    import torch

    from pyro_vae.models.priors import PRIORS, Prior


    @PRIORS.register("cauchy_plugin")
    class Cauchy(Prior):
        def __init__(self, latent_dim: int, scale: float = 1.0) -> None:
            super().__init__(latent_dim)
            self.register_buffer("loc", torch.zeros(latent_dim))
            self.register_buffer("scale", torch.full((latent_dim,), scale))

        def forward(self):
            return dist.Cauchy(self.loc, self.scale).to_event(1)
    """
)
SMALL = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--batch-size", "256", "--quiet"]


def cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "pyro_vae", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow  # training in its own interpreter, as a user runs it
def test_a_run_with_an_imported_prior_is_evaluated_plotted_and_compared(tmp_path, monkeypatch):
    from pyro_vae.cli.main import main

    (tmp_path / "my_priors.py").write_text(CAUCHY)
    trained = cli("train", "--import", "my_priors", "--prior", "cauchy_plugin", *SMALL, "--out", "run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert 'imports = ["my_priors"]' in (tmp_path / "run" / "config.toml").read_text()
    monkeypatch.syspath_prepend(str(tmp_path))  # where an installed plugin would be found
    try:
        for command in (["evaluate"], ["plot"], ["compare", "--repeats", "2", "--particles", "1"]):
            assert main([command[0], str(tmp_path / "run"), *command[1:]]) == 0, command  # no --import needed
        assert main(["--import", "no_such_module", "config"]) == 2
    finally:
        PRIORS.unregister("cauchy_plugin")
        sys.modules.pop("my_priors", None)


@pytest.mark.slow  # two interpreters
def test_an_installed_package_adds_a_prior_through_its_entry_point(tmp_path):
    site = tmp_path / "site"
    (site / "cauchy_package-1.0.dist-info").mkdir(parents=True)
    (site / "cauchy_package.py").write_text(CAUCHY)
    metadata = "Metadata-Version: 2.1\nName: cauchy-package\nVersion: 1.0\n"
    (site / "cauchy_package-1.0.dist-info" / "METADATA").write_text(metadata)
    points = "[pyro_vae.priors]\ncauchy_plugin = cauchy_package\n"
    (site / "cauchy_package-1.0.dist-info" / "entry_points.txt").write_text(points)
    env = {"PYTHONPATH": str(site)}
    assert "cauchy_plugin" in cli("priors", cwd=tmp_path, env=env).stdout
    trained = cli("train", "--prior", "cauchy_plugin", *SMALL, "--out", "run", cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr  # no --import: the entry point was found


def test_a_taken_name_is_refused_unless_replacing_is_asked_for():
    class Other(StandardNormal):
        pass

    with pytest.raises(ConfigError, match=r"prior 'standard_normal' is already registered .*replace=True"):
        PRIORS.register("standard_normal")(Other)
    PRIORS.register("standard_normal")(StandardNormal)  # the same class again: nothing changes
    try:
        PRIORS.register("standard_normal", replace=True)(Other)
        assert PRIORS.get("standard_normal") is Other
    finally:
        PRIORS.register("standard_normal", replace=True)(StandardNormal)


def test_imports_before_and_after_the_command_are_all_imported(tmp_path, monkeypatch):
    from pyro_vae.cli.main import main

    for name in ("before_module", "after_module"):
        (tmp_path / f"{name}.py").write_text("IMPORTED = True\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert main(["--import", "before_module", "config", "--import", "after_module"]) == 0
    assert "before_module" in sys.modules and "after_module" in sys.modules


TWO_LAYERS = textwrap.dedent(
    """
    import pyro
    import pyro.distributions as dist
    import torch
    from torch import nn

    from pyro_vae import MODELS


    def normal(params):
        loc, scale = params.chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(scale) + 1e-3).to_event(1)


    @MODELS.register("two_layers_plugin")
    class TwoLayers(nn.Module):
        \"\"\"z2 -> z1 -> x, with a bottom-up guide: a plain Pyro program.\"\"\"

        def __init__(self, event_shape: tuple, latent_dim: int, hidden: int = 16, top: int = 2) -> None:
            super().__init__()
            size, self.top = int(torch.tensor(event_shape).prod()), top
            self.up1 = nn.Sequential(nn.Linear(size, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent_dim))
            self.up2, self.down2 = nn.Linear(latent_dim, 2 * top), nn.Linear(top, 2 * latent_dim)
            self.down1 = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, size))

        def model(self, x):
            x = x.flatten(1)
            with pyro.plate("data", len(x), dim=-1):
                z2 = pyro.sample("z2", dist.Normal(x.new_zeros(self.top), 1.0).to_event(1))
                z1 = pyro.sample("z1", normal(self.down2(z2)))
                pyro.sample("x", dist.Bernoulli(logits=self.down1(z1), validate_args=False).to_event(1), obs=x)

        def guide(self, x):
            x = x.flatten(1)
            with pyro.plate("data", len(x), dim=-1):
                z1 = pyro.sample("z1", normal(self.up1(x)))
                pyro.sample("z2", normal(self.up2(z1)))
    """
)


@pytest.mark.slow  # training in its own interpreter, as a user runs it
def test_a_plugin_program_is_trained_evaluated_compared_plotted_and_resumed(tmp_path, monkeypatch):
    import json

    from pyro_vae import MODELS
    from pyro_vae.cli.main import main

    (tmp_path / "my_programs.py").write_text(TWO_LAYERS)
    options = ["--model", "two_layers_plugin", "--set", "model.hidden=8", "--latent-dim", "3", "--epochs", "2"]
    trained = cli("train", "--import", "my_programs", *options, "--batch-size", "256", "--out", "run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "z1: sampled, z2: sampled; path: pyro" in trained.stderr
    config = (tmp_path / "run" / "config.toml").read_text()
    assert 'type = "two_layers_plugin"' in config and "hidden = 8" in config and "top = 2" in config
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "manifold.png" not in summary["files"] and "reconstructions.png" in summary["files"]
    monkeypatch.syspath_prepend(str(tmp_path))  # where an installed plugin would be found
    run = str(tmp_path / "run")
    try:
        evaluated = cli(
            "evaluate", run, "--json", "--num-samples", "20", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}
        )
        assert evaluated.returncode == 0, evaluated.stderr
        result = json.loads(evaluated.stdout)
        assert result["log_likelihood"] >= result["elbo_mc"] - 4 * result["elbo_mc_se"]
        assert set(result["sites"]) == {"z1", "z2"} and result["active_units"] == sum(
            site["active_units"] for site in result["sites"].values()
        )
        for command in (["evaluate"], ["plot"], ["compare", "--repeats", "2", "--particles", "1"]):
            assert main([command[0], run, *command[1:]]) == 0, command  # no --import needed
        assert (tmp_path / "run" / "samples.png").is_file()  # drawn by the program's own model, unconditioned
        assert main(["train", "--resume", run, "--epochs", "3", "--quiet"]) == 0
        assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    finally:
        MODELS.unregister("two_layers_plugin")
        sys.modules.pop("my_programs", None)


@pytest.mark.slow  # two interpreters
def test_an_installed_package_adds_a_program_through_its_entry_point(tmp_path):
    site = tmp_path / "site"
    (site / "two_layers_package-1.0.dist-info").mkdir(parents=True)
    (site / "two_layers_package.py").write_text(TWO_LAYERS)
    metadata = "Metadata-Version: 2.1\nName: two-layers-package\nVersion: 1.0\n"
    (site / "two_layers_package-1.0.dist-info" / "METADATA").write_text(metadata)
    points = "[pyro_vae.models]\ntwo_layers_plugin = two_layers_package\n"
    (site / "two_layers_package-1.0.dist-info" / "entry_points.txt").write_text(points)
    env = {"PYTHONPATH": str(site)}
    assert "two_layers_plugin" in cli("models", cwd=tmp_path, env=env).stdout
    options = ["--model", "two_layers_plugin", "--latent-dim", "3", "--epochs", "1", "--quiet", "--out", "run"]
    trained = cli("train", *options, cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr  # no --import: the entry point was found
    assert cli("evaluate", "run", cwd=tmp_path, env=env).returncode == 0
