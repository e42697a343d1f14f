"""Users' own components: registered from Python, then named in a config like the built-in ones."""

import pyro.distributions as dist
import pytest
import torch

from pyro_vae import PRIORS, Config, train_run
from pyro_vae.cli.main import main
from pyro_vae.errors import ConfigError
from pyro_vae.models.priors import Prior
from pyro_vae.registry import AtLeast, Registry


class Logistic(Prior):
    """A logistic prior: the standard logistic distribution on each coordinate, scaled."""

    def __init__(self, latent_dim: int, scale: float = 1.0) -> None:
        super().__init__(latent_dim)
        self.register_buffer("scale", torch.full((latent_dim,), scale))

    def forward(self):
        base = dist.Uniform(torch.zeros_like(self.scale), torch.ones_like(self.scale))
        transforms = [dist.transforms.SigmoidTransform().inv, dist.transforms.AffineTransform(0.0, self.scale)]
        return dist.TransformedDistribution(base, transforms).to_event(1)


@pytest.fixture
def logistic():
    PRIORS.register("logistic")(Logistic)
    yield
    PRIORS.unregister("logistic")


def test_user_prior_named_in_a_config_trains(logistic, tmp_path, capsys):
    config = Config.from_dict(
        {
            "model": {
                "latent_dim": 2,
                "prior": {"type": "logistic", "scale": 0.5},
                "network": {"type": "mlp", "hidden": [16]},
            },
            "train": {"epochs": 1, "batch_size": 256},
        }
    )
    summary = train_run(config, tmp_path / "run", progress=False)
    assert summary["test_elbo_mc"] < 0
    assert main(["priors"]) == 0
    assert "logistic" in capsys.readouterr().out


def test_user_prior_parameters_are_validated(logistic):
    with pytest.raises(ConfigError, match="model.prior.scale must be a number"):
        Config.from_dict({"model": {"prior": {"type": "logistic", "scale": "big"}}})


def test_context_arguments_go_only_to_constructors_that_take_them():
    registry = Registry("thing", context=("latent_dim", "encoder"))
    registry.register("plain")(lambda latent_dim, size=1: (latent_dim, size))
    assert registry.build({"type": "plain", "size": 3}, latent_dim=2, encoder=object()) == (2, 3)
    assert [p.name for p in registry.parameters("plain")] == ["size"]


def test_annotated_bounds():
    from typing import Annotated

    registry = Registry("thing")
    registry.register("bounded")(lambda count: count)
    registry.get("bounded").__annotations__["count"] = Annotated[int, AtLeast(2)]
    with pytest.raises(ConfigError, match="thing.count must be >= 2 \\(got 1\\)"):
        registry.build({"type": "bounded", "count": 1})


@pytest.mark.parametrize(
    "kind,names",
    [
        ("priors", list(PRIORS)),
        ("likelihoods", ["bernoulli", "gaussian", "continuous_bernoulli"]),
        ("networks", ["mlp", "conv"]),
    ],
)
def test_listings(kind, names, capsys):
    assert main([kind]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {name}" in out for name in names)
    if kind == "priors":
        assert "standard_normal  [closed-form KL against the Gaussian guide: yes]" in out
        assert "vamp  [closed-form KL against the Gaussian guide: no, sampled]" in out
        assert "components: int >= 1 = 10" in out
