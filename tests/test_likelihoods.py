"""Properties of every registered likelihood; the Gaussian one reproduces the MSE loss exactly."""

import io
import math

import pyro
import pytest
import torch
from torch.distributions import constraints

from pyro_vae import ESTIMATORS, LIKELIHOODS, Objective

from helpers import EVENT_SHAPE, tiny_vae

SPECS = [{"type": name} for name in LIKELIHOODS] + [
    {"type": "gaussian", "scale": 0.3},
    {"type": "gaussian", "learn_scale": "global"},
    {"type": "gaussian", "learn_scale": "per_pixel", "scale": 0.5},
]
IDS = [",".join(f"{k}={v}" for k, v in spec.items()) for spec in SPECS]


def build(spec, event_shape=EVENT_SHAPE):
    return LIKELIHOODS.build(spec, event_shape=event_shape).double()


def data_for(likelihood, shape):
    """Data in the likelihood's support (grey values in [0, 1] for the unit interval)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(shape, generator=generator, dtype=torch.float64)
    return x if likelihood.support is constraints.unit_interval else 4 * x - 2


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_shapes(spec):
    likelihood = build(spec)
    d = likelihood(torch.randn(3, 5, *EVENT_SHAPE, dtype=torch.float64))
    assert d.event_shape == EVENT_SHAPE and d.batch_shape == (3, 5)
    x = data_for(likelihood, (5, *EVENT_SHAPE))
    assert d.log_prob(x).shape == (3, 5) and torch.isfinite(d.log_prob(x)).all()
    assert d.mean.shape == (3, 5, *EVENT_SHAPE)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_density_normalised(spec):
    """Sum (binary support) or integrate (trapezoid rule, 200,001 points) p(x|z) over one pixel."""
    likelihood = build(spec, event_shape=(1,))
    d = likelihood(torch.tensor([[0.7], [-1.3]], dtype=torch.float64))  # two decoder outputs
    support = d.base_dist.support
    if support is constraints.boolean:
        total = sum(d.log_prob(torch.full((2, 1), v, dtype=torch.float64)).exp() for v in (0.0, 1.0))
    else:
        low, high = (0.0, 1.0) if support is constraints.unit_interval else (-60.0, 60.0)
        grid = torch.linspace(low, high, 200_001, dtype=torch.float64)
        density = d.log_prob(grid.reshape(-1, 1, 1)).exp()  # (points, 2)
        total = torch.trapezoid(density, grid, dim=0)
    # The trapezoid rule's error is O(h²·max|p''|) < 1e-6 on these smooth densities.
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_gradients_reach_every_parameter_and_no_nan(spec, estimator):
    vae = tiny_vae(likelihood=spec)
    x = data_for(vae.likelihood, (6, *EVENT_SHAPE))
    loss = Objective(vae, estimator)(x, num_data=60)
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in vae.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_save_load_round_trip(spec):
    vae = tiny_vae(likelihood=spec)
    with torch.no_grad():
        for p in vae.likelihood.parameters():
            p.add_(0.1)  # a learned state differs from the initial one
    buffer = io.BytesIO()
    torch.save(vae.state_dict(), buffer)
    pyro.set_rng_seed(99)
    other = tiny_vae(likelihood=spec)
    other.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    z = torch.randn(4, 2, dtype=torch.float64)
    x = data_for(vae.likelihood, (4, *EVENT_SHAPE))
    torch.testing.assert_close(other.decode(z).log_prob(x), vae.decode(z).log_prob(x), rtol=0, atol=0)


def test_gaussian_with_unit_scale_is_the_mse_loss():
    """log p(x|z) = −½[k log 2π + ‖x − μ‖²] exactly (blog-kl-latent-space: the MSE loss up to a constant)."""
    likelihood = build({"type": "gaussian"})
    mu = torch.randn(7, *EVENT_SHAPE, dtype=torch.float64)
    x = torch.randn(7, *EVENT_SHAPE, dtype=torch.float64)
    k = math.prod(EVENT_SHAPE)
    expected = -0.5 * (k * math.log(2 * math.pi) + ((x - mu) ** 2).sum((-2, -1)))
    torch.testing.assert_close(likelihood(mu).log_prob(x), expected, rtol=1e-14, atol=1e-12)


def test_learned_scale_shapes():
    assert build({"type": "gaussian", "learn_scale": "global"}).scale().shape == ()
    assert build({"type": "gaussian", "learn_scale": "per_pixel"}).scale().shape == EVENT_SHAPE
    fixed = build({"type": "gaussian", "scale": 0.25})
    assert not list(fixed.parameters()) and fixed.scale().item() == 0.25


def test_continuous_bernoulli_differs_from_bernoulli_on_grey_values():
    """The continuous Bernoulli adds the normalising constant log C(λ) per pixel."""
    logits = torch.tensor([[1.5]], dtype=torch.float64)
    x = torch.tensor([[0.3]], dtype=torch.float64)
    lam = torch.sigmoid(logits)
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    bernoulli = build({"type": "bernoulli"}, (1,))(logits).log_prob(x)
    continuous = build({"type": "continuous_bernoulli"}, (1,))(logits).log_prob(x)
    torch.testing.assert_close(continuous, bernoulli + log_c.squeeze(-1), rtol=1e-10, atol=1e-10)
