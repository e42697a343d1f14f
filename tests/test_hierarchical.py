"""The hierarchical program: several stochastic layers, top-down model, bottom-up guide, on every tool.

Its exactness on a closed form is the two-layer linear-Gaussian case of ``test_programs.py`` (the same site
structure, the same rule for the analytic KL); here: its architecture, its registry entry, and each tool.
"""

import math
import re

import pyro
import pytest
import torch

import pyro_vae
from pyro_vae import Config, ConfigError
from pyro_vae.infer.objectives import kl_methods
from pyro_vae.models.hierarchical import Hierarchical
from pyro_vae.runs.config import build_model
from pyro_vae.training.initialization import initialize

SMALL = {"latent_dims": [4, 2], "hidden": [[16], [8]]}


def digits():
    return pyro_vae.load_dataset("digits")


def small(**kwargs):
    pyro.set_rng_seed(0)
    return Hierarchical((8, 8), **{**SMALL, **kwargs})


def test_the_default_is_burda_et_al_two_layer_architecture():
    program = build_model(Config.from_dict({"model": {"type": "hierarchical"}}), (28, 28))
    sizes = lambda mlp: [(m.in_features, m.out_features) for m in mlp.net if isinstance(m, torch.nn.Linear)]  # noqa: E731
    assert sizes(program.encoders[0]) == [(784, 200), (200, 200), (200, 200)]  # x -> 200 -> 200 -> z1 (100)
    assert sizes(program.encoders[1]) == [(100, 100), (100, 100), (100, 100)]  # z1 -> 100 -> 100 -> z2 (50)
    assert sizes(program.decoders[1]) == [(50, 100), (100, 100), (100, 200)]  # z2 -> 100 -> 100 -> z1
    assert sizes(program.decoders[0]) == [(100, 200), (200, 200), (200, 784)]  # z1 -> 200 -> 200 -> x
    assert all(isinstance(m, torch.nn.Tanh) for mlp in program.encoders for m in mlp.net[1::2])


def test_its_config_round_trips_with_the_defaults_filled_in():
    config = Config.from_dict({"model": {"type": "hierarchical"}})
    assert config.model.params == {"latent_dims": [100, 50], "hidden": [[200, 200], [100, 100]], "activation": "tanh"}
    assert Config.from_toml_string(config.to_toml()) == config


def test_one_list_of_hidden_sizes_per_layer_or_a_one_line_refusal():
    with pytest.raises(ConfigError, match="model.hidden has 1 lists of layer sizes for 2 stochastic layers"):
        build_model(Config.from_dict({"model": {"type": "hierarchical", "hidden": [[10]]}}), (8, 8))


@pytest.mark.parametrize("layers", [2, 3])
def test_sites_per_layer_and_the_analytic_kl_of_the_top_layer_alone(layers):
    program = small(latent_dims=[4, 3, 2][:layers], hidden=[[16], [8], [8]][:layers])
    x = digits().test[:5]
    methods = kl_methods(program, x, "analytic")
    assert list(methods) == [f"z{i}" for i in range(1, layers + 1)]  # the guide's order: bottom-up
    top = f"z{layers}"
    assert methods == {name: "closed_form" if name == top else "sampled" for name in methods}


@pytest.mark.parametrize("fused,path", [(False, "pyro"), ("auto", "fused")])
@pytest.mark.parametrize("estimator", ["mc", "analytic", "stl", "iwae", "dreg"])
def test_every_estimator_trains_on_both_paths(estimator, fused, path):
    program, x = small(), digits().train[:32]
    objective = pyro_vae.Objective(program, estimator, num_particles=3, fused=fused)
    assert objective.path == path
    loss = objective(x, num_data=1000)
    loss.backward()
    assert math.isfinite(loss.item()) and all(p.grad is not None for p in program.parameters())


def test_fit_evaluate_log_likelihood_and_diagnostics_per_layer():
    data, program = digits(), small()
    initialize(program, "glorot", "data_mean", train=data.train)
    history = pyro_vae.fit(program, data, epochs=3, batch_size=128, progress=False)
    assert history[-1]["kl"] == {"z1": "sampled", "z2": "sampled"} and set(history[-1]["sites"]) == {"z1", "z2"}
    assert history[-1]["active_units"] == sum(s["active_units"] for s in history[-1]["sites"].values())
    scores = pyro_vae.evaluate_elbo(program, data.test, num_particles=5)
    log_px = pyro_vae.log_likelihood(program, data.test, num_samples=50).mean().item()
    assert log_px > scores["elbo_mc"] - 4 * scores["elbo_mc_se"]
    report = pyro_vae.diagnostics(program, data.test)
    assert [s["latent_dim"] for s in report["sites"].values()] == [4, 2]


def test_a_vamp_prior_on_the_top_layer():
    program = small(prior={"type": "vamp", "components": 5})
    x = digits().train[:16]
    assert kl_methods(program, x, "analytic") == {"z1": "sampled", "z2": "sampled"}  # no closed form for a mixture
    pyro_vae.Objective(program, "mc")(x).backward()
    assert program.prior.pseudo_inputs.grad is not None


def test_evaluate_says_the_active_units_of_each_layer(tmp_path, capsys):
    from pyro_vae.cli.main import main

    out = tmp_path / "run"
    shape = ["--set", "model.latent_dims=4,2", "--set", "model.hidden=[[16],[8]]"]
    assert main(["train", "--model", "hierarchical", *shape, "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    text = capsys.readouterr().out
    line = next(line for line in text.splitlines() if line.startswith("latent code"))
    units = re.search(r": (\d+) \+ (\d+) = (\d+) of 4 \+ 2 dimensions active", line)
    assert units and int(units[1]) + int(units[2]) == int(units[3]), line
