"""Properties of every registered likelihood; the Gaussian one reproduces the MSE loss exactly."""

import io
import math

import pyro
import pytest
import torch
from torch.distributions import constraints, kl_divergence

from pyro_vae import ESTIMATORS, LIKELIHOODS, Objective
from pyro_vae.models.continuous_bernoulli import StableContinuousBernoulli, continuous_bernoulli_log_norm

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


# --- The continuous Bernoulli's normaliser, mean and samples from the logit (StableContinuousBernoulli) ---

DTYPES = [torch.float32, torch.float64]
SWITCH = 0.5  # where log C, the mean, the variance and the entropy change from series to closed form
SPECIAL_LOGITS = [0.0, 1e-4, SWITCH, 1.0, 5.0, 10.0, 15.0, 16.0, 17.0, 20.0, 40.0, 100.0]
LOGITS = sorted({sign * v for v in SPECIAL_LOGITS for sign in (1, -1)} | {0.4999999, -0.4999999, 2.5, -7.0, 60.0})


def cb(logits, dtype=torch.float64):
    return LIKELIHOODS.build({"type": "continuous_bernoulli"}, event_shape=()).to(dtype)(
        torch.as_tensor(logits, dtype=dtype)
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_continuous_bernoulli_integrates_to_one_for_every_logit(dtype):
    """∫₀¹ p(x|λ) dx = 1 by Simpson's rule for logits over [-100, 100], in float32 as in float64.

    The density is evaluated in ``dtype`` on the grid x = i/2¹⁷ (exact in float32) and integrated in
    float64. Simpson's error on p = λe^{λx}/(e^λ − 1) is h⁴/180·(p⁽³⁾(1) − p⁽³⁾(0)) = h⁴λ⁴/180
    (p' = λp), 2e-15 at |λ| = 100. The density's own rounding, relative, is that of
    log p = xλ − softplus(λ) + log C: a few ulp of 1 + |λ|, allowed 4·eps·(1 + |λ|): 5e-7 near 0 and
    5e-5 at |λ| = 100 in float32. torch's ContinuousBernoulli is off by 5e-5 at λ = 10, 0.06 at |λ| = 17.
    """
    lam = torch.tensor(LOGITS, dtype=torch.float64)
    k = 2**17
    grid = torch.arange(k + 1, dtype=torch.float64) / k
    weights = torch.ones(k + 1, dtype=torch.float64)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    density = cb(lam, dtype).log_prob(grid.to(dtype).unsqueeze(-1)).double().exp()  # (points, logits)
    total = (weights.unsqueeze(-1) * density).sum(0) / (3 * k)
    tolerance = (lam / k) ** 4 / 180 + 4 * torch.finfo(dtype).eps * (1 + lam.abs())
    assert ((total - 1).abs() <= tolerance).all(), dict(zip(LOGITS, (total - 1).tolist()))


def test_continuous_bernoulli_agrees_with_torch_for_moderate_logits():
    """For |λ| ≤ 10 in float64 torch's clamped normaliser is accurate to ~1e-13 (its cancellation near p = ½)."""
    lam = torch.linspace(-10.0, 10.0, 2001, dtype=torch.float64)
    x = torch.rand(50, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = torch.distributions.ContinuousBernoulli(logits=lam)
    ours = cb(lam)
    torch.testing.assert_close(ours.log_prob(x), reference.log_prob(x), rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.mean, reference.mean, rtol=0, atol=1e-11)
    torch.testing.assert_close(ours.entropy(), reference.entropy(), rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.variance, reference.variance, rtol=0, atol=1e-8)
    away = lam.abs() > 0.01  # torch returns cdf(x) = x for |p - ½| < 0.001, |λ| < 0.004
    torch.testing.assert_close(ours.cdf(x)[:, away], reference.cdf(x)[:, away], rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.icdf(x)[:, away], reference.icdf(x)[:, away], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_continuous_bernoulli_log_norm_against_its_definition(dtype):
    """log C(λ) = log(λ / tanh(λ/2)) computed directly in float64 (accurate to an ulp in value), log 2 at 0."""
    lam = torch.tensor([v for v in LOGITS if v != 0] + [1e-7, -3e-3, 0.1, 0.3, 0.51, 0.7, 30.0], dtype=torch.float64)
    expected = torch.log(lam / torch.tanh(lam / 2))
    eps = torch.finfo(dtype).eps
    got = continuous_bernoulli_log_norm(lam.to(dtype)).double()
    torch.testing.assert_close(got, expected, rtol=2 * eps, atol=2 * eps)
    zero = continuous_bernoulli_log_norm(torch.zeros(1, dtype=dtype))
    assert zero.item() == pytest.approx(math.log(2), rel=eps, abs=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_continuous_bernoulli_gradients_are_finite_and_right(dtype):
    """Every quantity has a finite gradient on [-100, 100] (0, the switch, the icdf's switch at 1 included).

    d/dλ log C = 1/λ − 1/sinh λ (0 at λ = 0), computed in float64 away from 0 where it does not cancel.
    """
    lam = torch.cat([torch.linspace(-100.0, 100.0, 4001, dtype=dtype), torch.tensor(LOGITS, dtype=dtype)])
    lam = lam.requires_grad_()
    d = cb(lam, dtype)
    x = torch.rand(3, lam.numel(), generator=torch.Generator().manual_seed(1), dtype=dtype)
    pyro.set_rng_seed(0)
    u = torch.tensor([0.0, 0.3, 1 - torch.finfo(dtype).eps], dtype=dtype).unsqueeze(-1)  # icdf's extremes
    terms = [d.log_prob(x), d.mean, d.variance, d.entropy(), d.rsample((2,)), d.cdf(x), d.icdf(u)]
    for term in terms:
        assert torch.isfinite(term).all()
        (grad,) = torch.autograd.grad(term.sum(), lam)
        assert torch.isfinite(grad).all()
    (grad,) = torch.autograd.grad(continuous_bernoulli_log_norm(lam).sum(), lam)
    exact = lam.detach().double()
    exact = torch.where(exact == 0, 0.0, 1 / exact - 1 / torch.sinh(exact))
    moderate = lam.detach().abs() > 0.1  # 1/λ − 1/sinh λ loses eps/λ² to cancellation below
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(grad.double()[moderate], exact[moderate], rtol=0, atol=4 * eps)
    assert grad[lam == 0].eq(0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_continuous_bernoulli_mean_and_samples_for_large_logits(dtype):
    """mean(λ) = 1/(1 − e^{−λ}) − 1/λ, which torch's clamped probabilities stop at 0.937 beyond |λ| ≈ 16."""
    lam = torch.tensor([-100.0, -40.0, -17.0, -2.0, 2.0, 17.0, 20.0, 40.0, 100.0], dtype=torch.float64)
    d = cb(lam, dtype)
    expected = 1 / (1 - torch.exp(-lam)) - 1 / lam
    torch.testing.assert_close(d.mean.double(), expected, rtol=4 * torch.finfo(dtype).eps, atol=0)
    pyro.set_rng_seed(0)
    samples = d.sample((100_000,)).double()
    assert ((samples >= 0) & (samples <= 1)).all()
    stderr = d.stddev.double() / math.sqrt(100_000)
    assert ((samples.mean(0) - expected).abs() < 5 * stderr).all()
    # F(x) = expm1(λx)/expm1(λ) and F⁻¹(u) = log1p(u·expm1(λ))/λ, direct in float64 (no overflow at |λ| ≤ 100);
    # their own error is that of rounding λx, up to 100·eps64.
    x = torch.tensor([[0.0], [1e-3], [0.2], [0.5], [0.9], [0.999], [1.0]], dtype=dtype)
    eps = torch.finfo(dtype).eps
    atol = 4 * eps + 200 * torch.finfo(torch.float64).eps
    cdf = torch.expm1(lam * x.double()) / torch.expm1(lam)
    torch.testing.assert_close(d.cdf(x).double(), cdf, rtol=4 * eps, atol=atol)
    icdf = torch.where(x == 1, 1.0, torch.log1p(x.double() * torch.expm1(lam)) / lam)  # log1p(-1) at u = 1, λ < 0
    torch.testing.assert_close(d.icdf(x).double(), icdf, rtol=4 * eps, atol=atol)


def test_continuous_bernoulli_is_a_pyro_distribution():
    """Sample sites, expand, to_event, the fused ELBO's total and the KL keep working with the stable class."""
    lam = torch.tensor([[-40.0, 0.0], [3.0, 20.0]], dtype=torch.float64, requires_grad=True)
    likelihood = LIKELIHOODS.build({"type": "continuous_bernoulli"}, event_shape=(2,)).double()
    d = likelihood(lam)
    assert isinstance(d.base_dist, StableContinuousBernoulli) and d.event_shape == (2,)
    expanded = d.base_dist.expand((3, 2, 2))
    assert isinstance(expanded, StableContinuousBernoulli) and expanded.batch_shape == (3, 2, 2)
    with pyro.plate("data", 2):
        x = pyro.sample("x", d).detach()
    assert x.shape == (2, 2)
    total = likelihood.total_log_prob(lam.expand(3, 2, 2), x)
    reference = d.expand((3, 2)).log_prob(x).sum()
    torch.testing.assert_close(total, reference, rtol=1e-14, atol=0)
    grads = [torch.autograd.grad(t, lam)[0] for t in (total, reference)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)
    # KL(p ‖ q) = E_p[log p − log q], here by the trapezoid rule (p and q are smooth at these logits).
    p, q = cb([1.5, -3.0]), cb([-0.5, 4.0])
    grid = torch.linspace(0.0, 1.0, 100_001, dtype=torch.float64).unsqueeze(-1)
    integrand = p.log_prob(grid).exp() * (p.log_prob(grid) - q.log_prob(grid))
    torch.testing.assert_close(kl_divergence(p, q), torch.trapezoid(integrand, grid, dim=0), rtol=0, atol=1e-8)
