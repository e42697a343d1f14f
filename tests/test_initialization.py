"""Starting parameters: Glorot-uniform weights, and the decoder's output bias at the data's mean."""

import math

import pytest
import torch

from pyro_vae import LIKELIHOODS, Config, load, make_vae, train_run
from pyro_vae.errors import ConfigError
from pyro_vae.training.initialization import glorot_, initialize

from helpers import EVENT_SHAPE

MEAN = torch.linspace(0.05, 0.95, math.prod(EVENT_SHAPE)).reshape(EVENT_SHAPE)


@pytest.mark.parametrize("network", [{"type": "mlp", "hidden": [300, 30]}, {"type": "gated_mlp", "hidden": [300]}])
def test_glorot_weights_fill_their_range_uniformly_and_biases_are_zero(network):
    torch.manual_seed(0)
    vae = make_vae(EVENT_SHAPE, 2, network=network)
    glorot_(vae.decoder)
    layers = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) >= 2
    for layer in layers:
        bound = math.sqrt(6 / (layer.in_features + layer.out_features))
        w = layer.weight.detach().flatten().double()
        assert w.abs().max() <= bound
        # the variance of U(-a, a) is a²/3; w² has variance 4a⁴/45, so the mean of w² has SE a²·√(4/45/n)
        se = bound**2 * math.sqrt(4 / 45 / w.numel())
        assert abs((w**2).mean().item() - bound**2 / 3) < 4 * se
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


@pytest.mark.parametrize("name", ["bernoulli", "gaussian"])
def test_data_mean_bias_makes_the_likelihood_mean_that_of_the_data(name):
    vae = make_vae(EVENT_SHAPE, 2, network={"type": "mlp", "hidden": [8]}, likelihood={"type": name})
    train = torch.bernoulli(MEAN.expand(20000, *EVENT_SHAPE), generator=torch.Generator().manual_seed(1))
    initialize(vae, output_bias_init="data_mean", train=train)
    decoder = vae.decoder.net[-1]
    decoder.weight.data.zero_()  # the output is then the bias alone
    mean = vae.likelihood(vae.decoder(torch.zeros(1, 2))).mean[0]
    torch.testing.assert_close(mean, train.mean(0))


def test_data_mean_bias_stays_finite_for_pixels_never_on():
    vae = make_vae(EVENT_SHAPE, 2, network={"type": "mlp", "hidden": [8]})
    train = torch.zeros(10, *EVENT_SHAPE)
    train[:, 0, 0] = 1.0
    initialize(vae, output_bias_init="data_mean", train=train)
    bias = vae.decoder.net[-1].bias
    assert torch.isfinite(bias).all()
    logit = math.log(0.999 / 1e-3)  # the means clamped to [0.001, 0.999]
    assert (bias.min().item(), bias.max().item()) == pytest.approx((-logit, logit), rel=1e-5)  # float32


def test_likelihoods_without_a_closed_form_inverse_mean_are_refused():
    assert LIKELIHOODS.build({"type": "continuous_bernoulli"}, event_shape=EVENT_SHAPE).output_for_mean(MEAN) is None
    vae = make_vae(EVENT_SHAPE, 2, likelihood={"type": "continuous_bernoulli"})
    message = r"^output_bias_init: 'data_mean' .* ContinuousBernoulli .* use output_bias_init='default'$"
    with pytest.raises(ConfigError, match=message):
        initialize(vae, output_bias_init="data_mean", train=MEAN[None])


def test_a_decoder_without_one_output_bias_per_dimension_is_refused():
    vae = make_vae((8, 8), 2, network={"type": "conv"})
    with pytest.raises(ConfigError, match=r"^output_bias_init: .* one bias per data dimension \(64\)"):
        initialize(vae, output_bias_init="data_mean", train=torch.rand(3, 8, 8))


def test_unknown_choices_and_missing_data_are_refused_when_called_directly():
    vae = make_vae(EVENT_SHAPE, 2)
    with pytest.raises(ConfigError, match=r"^weight_init must be one of 'default', 'glorot' \(got 'xavier'\)$"):
        initialize(vae, weight_init="xavier")
    with pytest.raises(ConfigError, match=r"^output_bias_init: 'data_mean' needs the training data"):
        initialize(vae, output_bias_init="data_mean")


def test_a_run_refuses_an_impossible_output_bias_naming_the_config_key_and_writes_nothing(tmp_path):
    values = {
        "model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}},
        "train": {"epochs": 1, "output_bias_init": "data_mean"},
    }
    values["model"]["likelihood"] = {"type": "continuous_bernoulli"}
    message = r"^train.output_bias_init: .* ContinuousBernoulli .* use train.output_bias_init = 'default'$"
    with pytest.raises(ConfigError, match=message):
        train_run(Config.from_dict(values), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_defaults_leave_pytorch_initialisation_alone():
    torch.manual_seed(0)
    vae = make_vae(EVENT_SHAPE, 2)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    initialize(vae)
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())


def test_a_run_starts_from_the_configured_initialisation(tmp_path):
    values = {
        "model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [16]}},
        "train": {"epochs": 1, "batch_size": 256, "lr": 1e-12},
    }
    values["train"].update(weight_init="glorot", output_bias_init="data_mean")
    train_run(Config.from_dict(values), tmp_path / "run", progress=False)
    vae, config = load(tmp_path / "run")
    assert (config.train.weight_init, config.train.output_bias_init) == ("glorot", "data_mean")
    first = vae.encoder.net[0]
    assert first.weight.abs().max() <= math.sqrt(6 / (first.in_features + first.out_features)) + 1e-6
    assert first.bias.abs().max() < 1e-6  # zero, moved at most by lr per step
    corner = vae.decoder.net[-1].bias.min().item()  # the digits' corners are never on
    assert corner == pytest.approx(math.log(1e-3 / 0.999))


@pytest.mark.parametrize(("key", "value"), [("weight_init", "xavier"), ("output_bias_init", "mean")])
def test_unknown_initialisations_are_refused_naming_the_field(key, value):
    with pytest.raises(ConfigError, match=f"train.{key}"):
        Config.from_dict({"train": {key: value}})
