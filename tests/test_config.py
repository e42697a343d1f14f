"""The typed configuration: round trips, overrides, and one-line errors for bad values."""

import pytest
import torch

from pyro_vae import PRIORS, Config
from pyro_vae.errors import ConfigError
from pyro_vae.runs.config import PRESETS, apply_overrides, presets


def test_defaults_are_complete_and_round_trip():
    config = Config()
    assert config.model.network == {"type": "mlp", "hidden": [400], "activation": "relu"}
    assert Config.from_toml_string(config.to_toml()) == config
    assert Config.from_dict(config.to_dict()) == config


def test_file_round_trip(tmp_path):
    text = (
        '[train]\nepochs = 3\nbeta = 0.5\nelbo = "analytic"\n\n'
        "[model]\nlatent_dim = 2\n\n"
        '[model.network]\ntype = "mlp"\nhidden = [64, 32]\n'
    )
    (tmp_path / "a.toml").write_text(text)
    config = Config.from_toml(tmp_path / "a.toml")
    assert (config.train.epochs, config.train.beta, config.model.network["hidden"]) == (3, 0.5, [64, 32])
    (tmp_path / "b.toml").write_text(config.to_toml())
    assert Config.from_toml(tmp_path / "b.toml") == config
    assert config.to_toml() == Config.from_toml(tmp_path / "b.toml").to_toml()


def test_overrides():
    values = apply_overrides(
        Config().to_dict(), ["train.epochs=5", "model.network.hidden=[32, 16]", "data.dataset=mnist", "train.lr=1e-4"]
    )
    config = Config.from_dict(values)
    assert (config.train.epochs, config.model.network["hidden"], config.data.dataset, config.train.lr) == (
        5,
        [32, 16],
        "mnist",
        1e-4,
    )


def test_a_set_list_may_be_written_as_the_flags_write_it():
    values = apply_overrides({}, ["model.network.hidden=400,400", "train.lr_schedule.milestones=3, 6", "x.y=a,b"])
    assert values["model"]["network"]["hidden"] == [400, 400] and values["train"]["lr_schedule"]["milestones"] == [3, 6]
    assert values["x"]["y"] == "a,b"  # not TOML either way: the words as given


@pytest.mark.parametrize(
    "values,message",
    [
        ({"train": {"epochs": -3}}, "train.epochs must be >= 1 (got -3)"),
        ({"train": {"epochs": 2.5}}, "train.epochs must be an integer (got 2.5)"),
        ({"train": {"lr": 0}}, "train.lr must be > 0 (got 0.0)"),
        ({"train": {"batch_size": 0}}, "train.batch_size must be >= 1 (got 0)"),
        ({"train": {"beta": -0.1}}, "train.beta must be >= 0 (got -0.1)"),
        ({"train": {"num_particles": 0}}, "train.num_particles must be >= 1 (got 0)"),
        ({"train": {"jit": "yes"}}, "train.jit must be true or false (got 'yes')"),
        ({"train": {"elbo": "exact"}}, "train.elbo: unknown estimator 'exact'; known: mc, analytic"),
        ({"train": {"device": "tpu"}}, "train.device: unknown device 'tpu'; use auto, cpu, cuda or cuda:N"),
        ({"train": {"epoch": 3}}, "train.epoch: unknown key; allowed: epochs,"),
        ({"trian": {}}, "trian: unknown table (the tables are data, model, train); the keys are data.dataset,"),
        (
            {"latent_dim": 2},
            "latent_dim: unknown table (the tables are data, model, train); did you mean model.latent_dim?",
        ),
        ({"data": {"binarize": "yes"}}, "data.binarize must be one of 'none', 'static', 'dynamic' (got 'yes')"),
        ({"model": {"latent_dim": 0}}, "model.latent_dim must be >= 1 (got 0)"),
        ({"model": {"prior": {}}}, "model.prior.type is missing; known prior types: standard_normal"),
        (
            {"model": {"likelihood": {"type": "poisson"}}},
            "model.likelihood.type: unknown likelihood type 'poisson'; known: bernoulli",
        ),
        (
            {"model": {"network": {"type": "mlp", "hiden": [3]}}},
            "model.network.hiden: unknown parameter for network 'mlp'; allowed: hidden, activation",
        ),
        ({"model": {"network": {"type": "mlp", "hidden": "400"}}}, "model.network.hidden must be a list (got '400')"),
        (
            {"model": {"network": {"type": "mlp", "hidden": [400, "a"]}}},
            "model.network.hidden[1] must be an integer (got 'a')",
        ),
        ({"model": {"network": 3}}, "model.network must be a table with a 'type' key (got 3)"),
        ({"train": 3}, "train must be a table (got 3)"),
        ({"model": {"prior": {"type": "mixture", "components": 0}}}, "model.prior.components must be >= 1 (got 0)"),
        ({"model": {"prior": {"type": "vamp", "components": -5}}}, "model.prior.components must be >= 1 (got -5)"),
        ({"model": {"prior": {"type": "student_t", "df": 0}}}, "model.prior.df must be > 0 (got 0.0)"),
        ({"model": {"prior": {"type": "normal", "scale": -1.0}}}, "model.prior.scale must be > 0 (got -1.0)"),
        (
            {"model": {"prior": {"type": "normal", "learnable": 1}}},
            "model.prior.learnable must be true or false (got 1)",
        ),
        (
            {"model": {"prior": {"type": "flow", "transform": "planar"}}},
            "model.prior.transform must be one of 'spline_autoregressive', 'affine_autoregressive', "
            "'spline_coupling', 'affine_coupling' (got 'planar')",
        ),
        ({"model": {"prior": {"type": "flow", "hidden": [32, 0]}}}, "model.prior.hidden[1] must be >= 1 (got 0)"),
        (
            {"model": {"prior": {"type": "standard_normal", "scale": 2.0}}},
            "model.prior.scale: unknown parameter for prior 'standard_normal'; allowed: none",
        ),
        (
            {"model": {"likelihood": {"type": "gaussian", "learn_scale": "pixel"}}},
            "model.likelihood.learn_scale must be one of 'none', 'global', 'per_pixel' (got 'pixel')",
        ),
        ({"model": {"likelihood": {"type": "gaussian", "scale": 0}}}, "model.likelihood.scale must be > 0 (got 0.0)"),
        ({"model": {"network": {"type": "conv", "channels": []}}}, None),
        (
            {"model": {"network": {"type": "mlp", "activation": "sigmoid"}}},
            "model.network.activation must be one of 'relu'",
        ),
        (
            {"model": {"network": {"type": "resnet"}}},
            "model.network.type: unknown network type 'resnet'; known: mlp, conv",
        ),
    ],
)
def test_bad_values_name_the_field_the_value_and_the_fix(values, message):
    if message is None:  # valid as a table; refused when the network is built (see test_networks)
        Config.from_dict(values)
        return
    with pytest.raises(ConfigError) as info:
        Config.from_dict(values)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_prior_lists_every_registered_prior():
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"model": {"prior": {"type": "vampp"}}})
    assert (
        str(info.value) == "model.prior.type: unknown prior type 'vampp'; "
        "known: standard_normal, normal, laplace, student_t, mixture, vamp, flow"
    )


@pytest.mark.parametrize("name", sorted(presets()))
def test_presets_load_by_name_validate_and_round_trip(name):
    config = Config.load(name)
    assert config == Config.from_toml(PRESETS / f"{name}.toml") == Config.load(PRESETS / f"{name}.toml")
    assert config.model.prior["type"] == name  # one preset per prior, named after it
    assert Config.from_toml_string(config.to_toml()) == config


def test_one_preset_per_prior_each_described_in_one_line():
    assert set(presets()) == set(PRIORS)
    for name, description in presets().items():
        first = (PRESETS / f"{name}.toml").read_text().splitlines()[0]
        assert first == f"# {description}" and description.endswith("."), name


def test_an_unknown_preset_names_the_presets():
    with pytest.raises(ConfigError, match="source 'vampp' is neither a file nor a preset; presets: flow, laplace"):
        Config.load("vampp")
    with pytest.raises(ConfigError, match="cannot read config file"):
        Config.load("vamp.toml")  # a file name is a file, never a preset


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="is not valid TOML"):
        Config.from_toml_string("[train\nepochs = 3")
    with pytest.raises(ConfigError, match="cannot read config file"):
        Config.from_toml(tmp_path / "nope.toml")


def test_changing_a_component_type_drops_its_old_parameters():
    values = apply_overrides({"model": {"network": {"type": "old", "depth": 3}}}, ["model.network.type=mlp"])
    assert values["model"]["network"] == {"type": "mlp"}
    values = apply_overrides({"model": {"network": {"type": "mlp", "hidden": [3]}}}, ["model.network.type=mlp"])
    assert values["model"]["network"] == {"type": "mlp", "hidden": [3]}


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        apply_overrides({}, ["train.epochs"])


class _Toy(torch.nn.Module):
    """A program with one parameter of its own, registered for the tests below."""

    def __init__(self, event_shape: tuple, latent_dim: int, width: int = 4) -> None:
        super().__init__()
        self.shape, self.latent_dim, self.width = tuple(event_shape), latent_dim, width

    def model(self, x):
        pass

    def guide(self, x):
        pass


@pytest.fixture
def toy_program():
    from pyro_vae import MODELS

    MODELS.register("toy_program")(_Toy)
    yield
    MODELS.unregister("toy_program")


def test_a_program_type_with_its_own_parameters_round_trips(toy_program):
    from pyro_vae.runs.config import build_model

    config = Config.from_dict({"model": {"type": "toy_program", "width": 7, "latent_dim": 3}})
    assert config.model.params == {"width": 7}
    assert Config.from_toml_string(config.to_toml()) == config
    assert config.to_dict()["model"]["width"] == 7 and "params" not in config.to_dict()["model"]
    program = build_model(config, (8, 8))
    assert (program.shape, program.latent_dim, program.width) == ((8, 8), 3, 7)
    assert Config.from_dict({"model": {"type": "toy_program"}}).model.params == {"width": 4}  # defaults filled in


@pytest.mark.parametrize(
    "model, message",
    [
        ({"type": "toy_program", "widht": 7}, "model.widht: unknown parameter for model 'toy_program'; allowed: width"),
        ({"type": "toy_program", "width": "wide"}, "model.width must be an integer"),
        ({"widht": 7}, "model.widht: unknown key; allowed: type, latent_dim"),
        ({"type": "no_such_program"}, "model.type: unknown model type 'no_such_program'; known: vae"),
    ],
)
def test_a_program_type_is_checked_against_its_constructor(toy_program, model, message):
    with pytest.raises(ConfigError) as error:
        Config.from_dict({"model": model})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
