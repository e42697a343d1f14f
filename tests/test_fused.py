"""The fused ELBO is Pyro's ELBO: same value and gradient from the same draws, for every component.

``Objective(..., fused=True)`` computes the estimator as plain tensor code instead of tracing the
model and guide. These tests hold it to Pyro's ``Trace_ELBO`` / ``TraceMeanField_ELBO``, run on
the same random state, in float64, for every registered prior and likelihood, both estimators,
several numbers of particles and KL weights: a new component is covered by registering it.
"""

import pyro
import pytest
import torch

from pyro_vae import LIKELIHOODS, PRIORS, VAE, Objective, fused_loss, make_vae
from pyro_vae.errors import ConfigError
from pyro_vae.training.loop import fit

from helpers import tiny_batch, tiny_vae

NUM_DATA = 60


def assert_same_loss_and_gradients(vae, x, estimator, num_particles=1, beta=1.0, seed=3):
    params = [p for p in vae.parameters() if p.requires_grad]
    pyro.set_rng_seed(seed)
    reference = Objective(vae, estimator, num_particles, beta=beta)(x, NUM_DATA)
    reference_grads = torch.autograd.grad(reference, params, allow_unused=True)
    pyro.set_rng_seed(seed)
    fused = Objective(vae, estimator, num_particles, beta=beta, fused=True)(x, NUM_DATA)
    fused_grads = torch.autograd.grad(fused, params, allow_unused=True)
    torch.testing.assert_close(fused, reference, rtol=1e-10, atol=1e-9)
    for (name, _), g, r in zip(vae.named_parameters(), fused_grads, reference_grads):
        assert (g is None) == (r is None), name
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("beta", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("estimator", ["mc", "analytic"])
@pytest.mark.parametrize("prior", list(PRIORS))
def test_equals_pyro_for_every_prior(prior, estimator, beta, num_particles, float64):
    vae = tiny_vae(prior={"type": prior}, double=False)
    assert_same_loss_and_gradients(vae, tiny_batch(), estimator, num_particles, beta)


@pytest.mark.parametrize("estimator", ["mc", "analytic"])
@pytest.mark.parametrize("likelihood", list(LIKELIHOODS) + ["gaussian-learned"])
def test_equals_pyro_for_every_likelihood(likelihood, estimator, float64):
    spec = (
        {"type": "gaussian", "learn_scale": "per_pixel"} if likelihood == "gaussian-learned" else {"type": likelihood}
    )
    vae = tiny_vae(likelihood=spec, double=False)
    assert_same_loss_and_gradients(vae, tiny_batch(), estimator, num_particles=2)


@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_equals_pyro_for_the_conv_network(estimator, float64):
    vae = make_vae((8, 8), 3, network={"type": "conv", "channels": [4, 8]}, prior={"type": "normal", "learnable": True})
    x = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(1))
    assert_same_loss_and_gradients(vae, x, estimator, num_particles=2)


def test_full_batch_needs_no_num_data(float64):
    vae, x = tiny_vae(), tiny_batch()
    pyro.set_rng_seed(0)
    reference = Objective(vae, "mc")(x)
    pyro.set_rng_seed(0)
    torch.testing.assert_close(fused_loss(vae, x), reference, rtol=1e-10, atol=1e-10)


def test_training_follows_the_same_path_as_pyro():
    """Same seed, same draws: ten epochs of fused and of Pyro's SVI end at the same parameters.

    Equal up to float32 rounding.
    """
    from pyro_vae.training.data import Dataset

    x = torch.rand(64, 4, 4, generator=torch.Generator().manual_seed(2))
    data = Dataset("toy", x[:48], x[48:])
    runs = []
    for fused in (False, True):
        pyro.set_rng_seed(0)
        vae = tiny_vae(double=False)
        history = fit(vae, data, epochs=10, batch_size=16, elbo="analytic", fused=fused, progress=False)
        runs.append((vae.state_dict(), history[-1]["train_elbo"]))
    (reference, reference_elbo), (fused, fused_elbo) = runs
    assert fused_elbo == pytest.approx(reference_elbo, rel=1e-4)
    for name in reference:
        torch.testing.assert_close(fused[name], reference[name], rtol=1e-4, atol=1e-5)


def test_fused_and_jit_do_not_go_together():
    with pytest.raises(ConfigError, match="fused and jit cannot both be true"):
        Objective(tiny_vae(), jit=True, fused=True)


def test_a_redefined_model_is_not_fused():
    class TwoLatents(VAE):
        def model(self, x, num_data=None, beta=1.0):  # a different program than the one fused_loss writes out
            return super().model(x, num_data, beta)

    vae = tiny_vae()
    other = TwoLatents(vae.encoder, vae.decoder, vae.prior, vae.likelihood)
    with pytest.raises(ConfigError, match="redefines the model or guide"):
        Objective(other, fused=True)
