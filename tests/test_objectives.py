"""The ELBO estimators tied to the hand-written expression they stand for.

The analytic estimator is E_q[log p(x|z)] − β·KL(q‖p), the Monte Carlo one
E_q[log p(x|z) + β(log p(z) − log q(z|x))], both scaled by num_data / batch.
"""

import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from pyro_vae import Objective, elbo_per_example, evaluate_elbo, gaussian_kl, make_elbo
from pyro_vae.errors import ConfigError
from pyro_vae.infer.objectives import kl_methods

from helpers import tiny_batch, tiny_vae

NUM_DATA = 60


def hand_written(vae, x, z, estimator, beta):
    """The negative ELBO of the minibatch, written out from the encoder's outputs and the draws z."""
    loc, scale = vae.encoder(x)
    eps = ((z - loc) / scale).detach()  # the same standard-normal draws, re-parameterised by hand
    z = loc + scale * eps
    logits = vae.decoder(z)
    log_lik = (x * logits - F.softplus(logits)).sum((-2, -1))  # Bernoulli, written out
    if estimator == "analytic":
        kl = gaussian_kl(loc, scale)
    else:
        log_q = (-0.5 * eps**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_p = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        kl = log_q - log_p
    return -(NUM_DATA / len(x)) * (log_lik - beta * kl).sum()


@pytest.mark.parametrize("beta", [1.0, 0.5, 2.0, 0.0])
@pytest.mark.parametrize("estimator", ["analytic", "mc"])
def test_estimator_and_gradient_equal_hand_written_expression(estimator, beta):
    vae, x = tiny_vae(), tiny_batch()
    params = list(vae.parameters())
    elbo = make_elbo(estimator)
    pyro.set_rng_seed(11)
    loss = elbo.differentiable_loss(vae.model, vae.guide, x, num_data=NUM_DATA, beta=beta)
    grads = torch.autograd.grad(loss, params)

    pyro.set_rng_seed(11)  # the estimator's first random draw is the guide's z: replay it
    z = poutine.trace(vae.guide).get_trace(x, num_data=NUM_DATA, beta=beta).nodes["z"]["value"].detach()
    expected = hand_written(vae, x, z, estimator, beta)
    expected_grads = torch.autograd.grad(expected, params)

    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


def test_monte_carlo_elbo_agrees_with_analytic_within_four_standard_errors():
    vae, x = tiny_vae(), tiny_batch()
    repeats, particles = 200, 20
    values = {}
    for name in ("mc", "analytic"):
        elbo = make_elbo(name, num_particles=particles)
        samples = torch.tensor([-elbo.loss(vae.model, vae.guide, x) for _ in range(repeats)], dtype=torch.float64)
        values[name] = (samples.mean().item(), samples.std().item() / math.sqrt(repeats))
    (mc, se_mc), (analytic, se_analytic) = values["mc"], values["analytic"]
    assert se_mc > se_analytic  # the sampled KL adds variance
    assert abs(mc - analytic) < 4 * math.hypot(se_mc, se_analytic)


def test_vectorized_particles_average_the_per_particle_estimates():
    vae, x = tiny_vae(), tiny_batch()
    pyro.set_rng_seed(5)
    loss = make_elbo("mc", num_particles=4).loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(5)
    per_example = elbo_per_example(vae, x, "mc", num_particles=4)
    assert loss == pytest.approx(-per_example.sum().item(), rel=1e-10)


@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_jit_compiles_once_and_matches_the_reference(estimator):
    vae, x = tiny_vae(double=False), tiny_batch(double=False)
    reference, compiled = Objective(vae, estimator), Objective(vae, estimator, jit=True)
    compiled(x, NUM_DATA)  # compilation runs the program several times, drawing extra random numbers
    for step in range(3):
        pyro.set_rng_seed(step)
        expected = reference(x, NUM_DATA)
        expected_grads = torch.autograd.grad(expected, list(vae.parameters()))
        pyro.set_rng_seed(step)
        loss = compiled(x, NUM_DATA)
        grads = torch.autograd.grad(loss, list(vae.parameters()))
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    cache = compiled.elbo._loss_and_surrogate_loss if estimator == "mc" else compiled.elbo._differentiable_loss
    assert len(cache.compiled) == 1, "the JIT objective was traced more than once"


def test_evaluate_reports_both_estimators_with_standard_errors():
    vae, x = tiny_vae(), tiny_batch(n=50)
    result = evaluate_elbo(vae, x, num_particles=3, batch_size=16)
    assert result["num_examples"] == 50
    for e in ("mc", "analytic"):
        assert result[f"elbo_{e}"] < 0 and result[f"elbo_{e}_se"] > 0
    assert abs(result["elbo_mc"] - result["elbo_analytic"]) < 4 * math.hypot(
        result["elbo_mc_se"], result["elbo_analytic_se"]
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"estimator": "exact"}, "unknown estimator 'exact'; known: mc, analytic"),
        ({"num_particles": 0}, "num_particles must be >= 1"),
    ],
)
def test_bad_estimator_options(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_elbo(**kwargs)


def test_negative_beta_is_refused():
    with pytest.raises(ConfigError, match="beta must be >= 0"):
        Objective(tiny_vae(), beta=-1.0)


@pytest.mark.parametrize(
    "prior,estimator,expected",
    [
        ({"type": "standard_normal"}, "analytic", "closed_form"),
        ({"type": "normal"}, "analytic", "closed_form"),
        ({"type": "student_t"}, "analytic", "sampled"),
        ({"type": "standard_normal"}, "mc", "sampled"),
    ],
)
def test_kl_methods_per_latent_site(prior, estimator, expected):
    vae = tiny_vae(prior=prior)
    assert kl_methods(vae, tiny_batch(), estimator) == {"z": expected}
