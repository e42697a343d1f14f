"""The class-conditional VAE, and every tool on a program that needs a label at every call (model(x, y))."""

from __future__ import annotations

import json

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer.diagnostics import diagnostics
from pyro_vae.infer.marginal import log_likelihood
from pyro_vae.infer.objectives import evaluate_elbo
from pyro_vae.models.cvae import CVAE
from pyro_vae.training.data import load_dataset


class _LinearGaussian(torch.nn.Module):
    """p(z) = N(0, 1), p(x | y, z) = N(w z + b_y, s^2 I): p(x | y) = N(b_y, w w^T + s^2 I) in closed form, and the
    guide is the exact posterior q(z | x, y), so every importance weight is p(x | y) exactly."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(3, generator=g, dtype=torch.float64)
        self.b = torch.randn(4, 3, generator=g, dtype=torch.float64)  # one mean per class
        self.s = 0.7

    def model(self, x, y):
        with pyro.plate("data", len(x), dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1) * self.w + self.b[y], self.s).to_event(1), obs=x)

    def guide(self, x, y):
        precision = 1 + self.w @ self.w / self.s**2
        loc = ((x - self.b[y]) @ self.w / self.s**2) / precision
        with pyro.plate("data", len(x), dim=-1):
            pyro.sample("z", dist.Normal(loc, precision**-0.5))

    def log_marginal(self, x, y):
        covariance = torch.outer(self.w, self.w) + self.s**2 * torch.eye(3, dtype=torch.float64)
        return dist.MultivariateNormal(self.b[y], covariance).log_prob(x)


def _toy_data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, generator=g, dtype=torch.float64), torch.tensor([0, 3, 1, 1, 2, 0])


def test_log_likelihood_is_log_p_of_x_given_y_in_closed_form():
    program, (x, y) = _LinearGaussian(), _toy_data()
    estimate = log_likelihood(program, x, num_samples=7, batch_size=4, y=y)
    assert torch.allclose(estimate, program.log_marginal(x, y), atol=1e-9)


def test_the_elbo_of_an_exact_guide_is_log_p_of_x_given_y():
    program, (x, y) = _LinearGaussian(), _toy_data()
    scores = evaluate_elbo(program, x, num_particles=3, batch_size=4, y=y)
    assert scores["elbo_mc"] == pytest.approx(program.log_marginal(x, y).mean().item(), abs=1e-9)


def test_diagnostics_read_the_conditioned_guide():
    program, (x, y) = _LinearGaussian(), _toy_data()
    report = diagnostics(program, x, batch_size=4, y=y)
    precision = 1 + program.w @ program.w / program.s**2
    loc = ((x - program.b[y]) @ program.w / program.s**2) / precision
    assert report["activity"][0] == pytest.approx(loc.var().item(), rel=1e-9)


@pytest.mark.parametrize("labels", [None, torch.tensor([0, 3, -1, 1, 2, 0])])
def test_a_tool_without_every_label_refuses_in_one_line(labels):
    program, (x, _) = _LinearGaussian(), _toy_data()
    with pytest.raises(ConfigError, match=r"_LinearGaussian\.model\(x, y\) needs a label for every point") as e:
        log_likelihood(program, x, num_samples=2, y=labels)
    assert "\n" not in str(e.value)


def test_training_needs_every_label():
    import pyro_vae

    data = load_dataset("digits", labels=100)
    with pytest.raises(DataError, match="needs a label for every training point, and data set digits has 100 of 1438"):
        pyro_vae.fit(CVAE((8, 8), latent_dim=2, hidden=(16,)), data, epochs=1, progress=False)


def test_the_cvae_trains_on_every_label_and_samples_the_class_asked_for():
    import pyro_vae

    pyro.set_rng_seed(0)
    data = load_dataset("digits", binarize="static")
    cvae = CVAE((8, 8), latent_dim=2, hidden=(64,))
    history = pyro_vae.fit(cvae, data, epochs=15, batch_size=64, lr=3e-3, progress=False)
    assert history[-1]["test_elbo"] > history[0]["test_elbo"]
    # the decoder uses the label: the class means of its samples are nearest the data's own class means
    means = torch.stack([data.train[data.train_labels == c].mean(0) for c in range(10)]).flatten(1)
    samples = torch.stack([cvae.sample(torch.full((200,), c)).mean(0) for c in range(10)]).flatten(1)
    assert torch.equal(torch.cdist(samples, means).argmin(1), torch.arange(10))


def test_train_and_evaluate_a_cvae_from_the_command_line(tmp_path, capsys):
    from pyro_vae.cli.main import main

    run = tmp_path / "cvae"
    train = ["train", "--model", "cvae", "--epochs", "2", "--binarize", "dynamic", "--out", str(run), "--quiet"]
    assert main(train) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--num-samples", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["log_likelihood_of"] == "log p(x | y)" and result["log_likelihood"] >= result["elbo_mc"] - 1.0
    assert (run / "samples_by_class.png").is_file() and (run / "analogies.png").is_file()
    assert not (run / "confusion.png").exists() and "accuracy" not in result  # no classifier


def test_class_pictures_decode_the_code_they_are_given(tmp_path):
    """decode_with_labels reads p(x | y, z) from the model's trace with z held (poutine.condition): the CVAE's own
    decoder at the same z and y; and the pictures a run draws for a program with labels."""
    from pyro_vae.runs.class_plots import class_pictures, decode_with_labels

    torch.manual_seed(0)
    cvae = CVAE((8, 8), latent_dim=3, hidden=(16,))
    y, z = torch.tensor([0, 4, 9, 4]), torch.randn(4, 3)
    x = torch.zeros(4, 8, 8)
    assert torch.allclose(decode_with_labels(cvae, x, y, z), cvae.sample(y, z))
    data = load_dataset("digits", binarize="static")
    drawn, skipped = class_pictures(cvae, data, tmp_path, "")
    assert drawn == ["samples_by_class.png", "analogies.png"] and not skipped
    assert all((tmp_path / name).read_bytes().startswith(b"\x89PNG") for name in drawn)
