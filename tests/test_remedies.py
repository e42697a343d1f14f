"""Remedies for posterior collapse: KL warm-up and free bits, against values computed by hand."""

import json

import pyro
import pytest
import torch

from pyro_vae import KL_SCHEDULES, Config, Objective, fit
from pyro_vae.cli.main import main
from pyro_vae.errors import ConfigError
from pyro_vae.training.data import Dataset
from pyro_vae.training.loop import TrainingInterrupted, training_objective

from helpers import tiny_batch, tiny_vae

NUM_DATA = 60


def analytic_free_bits_loss(vae, x, free_bits, beta=1.0):
    """The free-bits loss of the analytic ELBO written out: Gaussian KL per dimension against N(0, 1), one draw."""
    loc, scale = vae.encoder(x)
    z = loc + scale * torch.randn_like(loc)
    reconstruction = vae.decode(z).log_prob(x).sum()
    kl = -0.5 * (1 + 2 * scale.log() - loc**2 - scale**2)  # (batch, latent_dim)
    floored = torch.maximum(kl.mean(0), torch.tensor(free_bits, dtype=kl.dtype))
    return -NUM_DATA / len(x) * (reconstruction - beta * len(x) * floored.sum())


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("free_bits,beta", [(0.02, 1.0), (0.3, 1.0), (0.3, 2.0), (50.0, 1.0)])
def test_free_bits_is_the_floored_kl_of_each_dimension(free_bits, beta, fused, float64):
    vae, x = tiny_vae(double=False), tiny_batch()
    pyro.set_rng_seed(0)
    expected = analytic_free_bits_loss(vae, x, free_bits, beta)
    pyro.set_rng_seed(0)
    loss = Objective(vae, "analytic", beta=beta, fused=fused, free_bits=free_bits)(x, NUM_DATA)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-9)


def test_a_floor_above_every_dimension_takes_the_kl_out_of_the_gradient(float64):
    """Every dimension below the floor counts the floor: the encoder learns from the reconstruction alone."""
    vae, x = tiny_vae(double=False), tiny_batch()
    params = list(vae.encoder.parameters())
    grads = []
    for objective in (Objective(vae, "analytic", free_bits=1e3, fused=True), Objective(vae, "analytic", beta=0)):
        pyro.set_rng_seed(1)
        grads.append(torch.autograd.grad(objective(x, NUM_DATA), params))
    for floored, reconstruction_only in zip(*grads):
        torch.testing.assert_close(floored, reconstruction_only, rtol=1e-10, atol=1e-10)


def test_a_floor_below_every_dimension_changes_nothing(float64):
    vae, x = tiny_vae(double=False), tiny_batch()
    losses = []
    for free_bits in (1e-12, 0.0):
        pyro.set_rng_seed(2)
        losses.append(Objective(vae, "analytic", free_bits=free_bits, fused=True)(x, NUM_DATA))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"estimator": "iwae", "free_bits": 0.5}, r"free_bits \(0.5\) is a floor .* mc and analytic"),
        ({"estimator": "stl", "free_bits": 0.5}, r"implemented for the estimators mc and analytic"),
        ({"free_bits": -1.0}, r"free_bits must be >= 0 \(got -1.0\)"),
        ({"free_bits": 0.5, "jit": True}, r"free_bits has no Pyro JIT variant"),
    ],
)
def test_free_bits_is_refused_where_it_is_not_defined(options, message):
    with pytest.raises(ConfigError, match=message):
        Objective(tiny_vae(), **options)


@pytest.mark.parametrize("prior", ["mixture", "vamp", "flow"])
def test_free_bits_needs_a_prior_that_is_a_product_over_dimensions(prior):
    with pytest.raises(ConfigError, match=f"prior '{prior}' is not a product over dimensions"):
        Objective(tiny_vae(prior={"type": prior}), "analytic", free_bits=0.5)


def test_linear_warmup_rises_to_one_over_its_epochs_or_steps():
    by_epochs = KL_SCHEDULES.build({"type": "linear", "epochs": 2}, steps_per_epoch=3)
    by_steps = KL_SCHEDULES.build({"type": "linear", "steps": 6, "start": 0.4}, steps_per_epoch=3)
    assert [by_epochs(t) for t in range(8)] == pytest.approx([1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1, 1, 1])
    assert [by_steps(t) for t in (0, 5, 9)] == pytest.approx([0.4 + 0.6 / 6, 1, 1])
    assert KL_SCHEDULES.build({"type": "constant"}, steps_per_epoch=3)(0) == 1


@pytest.mark.parametrize(
    "train,message",
    [
        ({"kl_warmup": {"type": "linear"}}, r"train.kl_warmup needs its length: epochs or steps"),
        ({"kl_warmup": {"type": "linear", "epochs": 2, "steps": 5}}, r"exactly one of them"),
        ({"kl_warmup": {"type": "linear", "epochs": 2, "start": 1.5}}, r"train.kl_warmup.start must be <= 1"),
        (
            {"kl_warmup": {"type": "cyclic"}},
            r"train.kl_warmup.type: unknown KL schedule type 'cyclic'; known: constant, linear",
        ),
        ({"kl_warmup": {"type": "linear", "epochs": 2}, "elbo": "iwae"}, r"the iwae bound has none"),
        ({"kl_warmup": {"type": "linear", "epochs": 2}, "compile": True}, r"would compile the loss again"),
        ({"free_bits": 0.5, "elbo": "dreg"}, r"train.free_bits \(0.5\) is a floor"),
    ],
)
def test_bad_remedy_settings_name_the_key(train, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"train": train})


def small_data():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(64, 4, 4, generator=generator).round()
    return Dataset("tiny", x[:48], x[48:])


def test_warmup_weights_each_step_and_the_metrics_show_it():
    """With 3 steps an epoch and a 2-epoch warm-up, the weight reaches 1 at the last step of epoch 2."""
    seen = []
    vae = tiny_vae(double=False)
    original = Objective.__call__

    def spy(self, x, num_data=None):
        seen.append(self.beta)
        return original(self, x, num_data)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Objective, "__call__", spy)
        history = fit(vae, small_data(), epochs=3, batch_size=16, beta=2.0, kl_warmup={"type": "linear", "epochs": 2})
    assert seen == pytest.approx([2 * (t + 1) / 6 for t in range(6)] + [2.0] * 3)
    assert [m["beta"] for m in history] == pytest.approx([1.0, 2.0, 2.0])


@pytest.mark.parametrize("fused", [False, True])
def test_a_run_with_warmup_and_free_bits_resumes_bit_for_bit(fused):
    options = dict(
        epochs=3, batch_size=16, elbo="analytic", fused=fused, kl_warmup={"type": "linear", "steps": 5}, free_bits=0.2
    )
    whole_vae = tiny_vae(double=False)
    start = {k: v.clone() for k, v in whole_vae.state_dict().items()}
    whole = fit(whole_vae, small_data(), progress=False, **options)
    calls = iter(range(100))
    vae = tiny_vae(double=False)
    vae.load_state_dict(start)
    with pytest.raises(TrainingInterrupted) as stopped:
        fit(vae, small_data(), progress=False, stop=lambda: 15 if next(calls) == 4 else None, **options)
    resumed = fit(vae, small_data(), progress=False, resume=stopped.value.state, **options)
    strip = lambda history: [{k: v for k, v in m.items() if k != "seconds"} for m in history]  # noqa: E731
    assert strip(resumed) == strip(whole)
    for a, b in zip(vae.state_dict().values(), whole_vae.state_dict().values()):
        assert torch.equal(a, b)


def test_cli_trains_with_warmup_and_free_bits(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--epochs", "2", "--kl-warmup", "1", "--free-bits", "0.1", "--out", str(run), "--quiet"]
    assert main([*args, "--set", "data.dataset=digits", "--latent-dim", "3", "--hidden", "16"]) == 0
    config = Config.from_toml(run / "config.toml").train
    assert config.kl_warmup == {"type": "linear", "start": 0.0, "epochs": 1, "steps": 0} and config.free_bits == 0.1
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["beta"] for m in metrics] == [1.0, 1.0]
    assert all(0 <= m["active_units"] <= 3 and len(m["kl_per_dim"]) == 3 for m in metrics)
    assert (run / "collapse.png").exists()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"active_units", "kl_per_dim", "mutual_information", "marginal_kl"} <= set(result)
    assert len(result["kl_per_dim"]) == 3 and result["kl_method"] == "closed_form" and result["latent_dim"] == 3
    assert sum(result["kl_per_dim"]) == pytest.approx(result["kl_total"], rel=1e-6)
    assert result["note"] and "continuous_bernoulli" in result["note"]  # the digits are grey values


@pytest.mark.parametrize(
    "options,grey",
    [([], True), (["--binarize", "static"], False), (["--set", "model.likelihood.type=continuous_bernoulli"], False)],
)
def test_a_bernoulli_likelihood_of_grey_values_is_flagged(tmp_path, capsys, options, grey):
    run = tmp_path / "run"
    assert (
        main(["train", "--epochs", "1", "--latent-dim", "2", "--hidden", "8", "--out", str(run), "--quiet", *options])
        == 0
    )
    trained = capsys.readouterr().out
    assert ("note: the Bernoulli likelihood of grey values" in trained) == grey
    assert bool(json.loads((run / "summary.json").read_text())["note"]) == grey
    assert main(["evaluate", str(run), "--json"]) == 0
    assert bool(json.loads(capsys.readouterr().out)["note"]) == grey


@pytest.mark.parametrize(
    "settings,name",
    [
        (("mc",), "ELBO"),
        (("iwae",), "IWAE bound"),
        (("analytic", 4.0), "objective (ELBO with beta 4)"),
        (("mc", 1.0, {"type": "linear", "epochs": 2}, 0.5), "objective (ELBO with KL warm-up, free bits 0.5)"),
        (("mc", 1.0, {"type": "constant"}), "ELBO"),
    ],
)
def test_the_training_loss_is_named_for_what_it_estimates(settings, name):
    assert training_objective(*settings) == name
