"""Properties of every registered prior, and the closed forms the analytic ELBO relies on.

A new prior is tested by adding it to the registry (and, for a variant of its parameters, one
row to SPECS).
"""

import io
import math

import pyro
import pytest
import torch
from torch.distributions import kl_divergence

from pyro_vae import ESTIMATORS, PRIORS, Objective
from pyro_vae.models.priors import has_closed_form_kl

from helpers import numerical_kl_from_normal, tiny_batch, tiny_vae

SPECS = [{"type": name} for name in PRIORS] + [
    {"type": "normal", "learnable": False, "loc": 1.0, "scale": 2.0},
    {"type": "student_t", "df": 1.5, "learnable": True},
    {"type": "mixture", "components": 3, "init_spread": 0.1},
    {"type": "flow", "transform": "affine_coupling", "num_transforms": 3},
    {"type": "flow", "transform": "affine_autoregressive"},
    {"type": "flow", "transform": "spline_coupling"},
]
IDS = [",".join(f"{k}={v}" for k, v in spec.items()) for spec in SPECS]
CLOSED_FORM = {"standard_normal", "normal", "laplace"}


@pytest.fixture(autouse=True)
def _float64(float64):
    """Priors are built in float64 (Pyro's autoregressive inverse allocates in the default dtype)."""


def vae_with(spec, latent_dim=2):
    return tiny_vae(latent_dim=latent_dim, prior=spec, double=False)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_shapes(spec):
    prior = vae_with(spec, latent_dim=3).prior()
    assert prior.event_shape == (3,) and prior.batch_shape == ()
    z = prior.sample((7, 5))
    assert z.shape == (7, 5, 3) and prior.log_prob(z).shape == (7, 5)
    assert torch.isfinite(prior.log_prob(z)).all()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_density_integrates_to_one(spec):
    """Importance sampling: E_r[p(z)/r(z)] = ∫p = 1, within 4 standard errors.

    The proposal r = ½·prior + ½·Cauchy is defensive: the weights are at most 2, whatever the
    shape of an untrained flow. A log-density off by a constant factor k gives E[w] ≠ 1, and so
    does a sampler that disagrees with the log-density.
    """
    prior = vae_with(spec).prior()
    cauchy = torch.distributions.Independent(torch.distributions.Cauchy(torch.zeros(2), 3.0 * torch.ones(2)), 1)
    n = 100_000
    with torch.no_grad():
        z = torch.cat([prior.sample((n,)), cauchy.sample((n,))])
        log_p = prior.log_prob(z)
        log_r = torch.logaddexp(log_p, cauchy.log_prob(z)) - math.log(2)
    weights = (log_p - log_r).exp()
    estimate, se = weights.mean().item(), weights.std().item() / math.sqrt(len(weights))
    assert se < 0.01  # the check has power: a density off by a few percent fails
    assert abs(estimate - 1.0) < 4 * se


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_gradients_reach_every_parameter_and_no_nan(spec, estimator):
    vae, x = vae_with(spec), tiny_batch()
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    loss = Objective(vae, estimator, num_particles=2)(x, num_data=60)
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in vae.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in vae.parameters())


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_save_load_round_trip(spec):
    vae = vae_with(spec)
    z = torch.randn(9, 2, dtype=torch.float64)
    buffer = io.BytesIO()
    torch.save(vae.state_dict(), buffer)
    pyro.set_rng_seed(99)  # a different initialisation, overwritten by the loaded state
    other = vae_with(spec)
    other.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    torch.testing.assert_close(other.prior().log_prob(z), vae.prior().log_prob(z), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(PRIORS))
def test_closed_form_availability(name):
    assert has_closed_form_kl(vae_with({"type": name}).prior) == (name in CLOSED_FORM)


def test_closed_form_kl_against_learnable_normal_is_the_general_formula():
    vae, x = vae_with({"type": "normal"}), tiny_batch()
    with torch.no_grad():
        vae.prior.loc.copy_(torch.tensor([0.7, -1.2]))
        vae.prior.scale.raw.copy_(torch.tensor([0.3, 2.0]))
    q, p = vae.encode(x), vae.prior()
    loc_q, scale_q = vae.encoder(x)
    loc_p, scale_p = vae.prior.loc, vae.prior.scale()
    general = (torch.log(scale_p / scale_q) + (scale_q**2 + (loc_q - loc_p) ** 2) / (2 * scale_p**2) - 0.5).sum(-1)
    torch.testing.assert_close(kl_divergence(q, p), general, rtol=1e-12, atol=1e-12)
    # ...and the gradient reaches the prior's parameters through it.
    kl_divergence(q, p).sum().backward()
    assert vae.prior.loc.grad.abs().sum() > 0 and vae.prior.scale.raw.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "loc_q,scale_q,loc_p,scale_p",
    [(0.0, 1.0, 0.0, 1.0), (0.5, 0.3, 0.0, 1.0), (-2.0, 3.0, 1.0, 0.5), (1.0, 1e-3, 0.0, 2.0)],
)
def test_normal_laplace_closed_form_matches_numerical_integral(loc_q, scale_q, loc_p, scale_p):
    """The analytic ELBO uses torch's KL(Normal ‖ Laplace); check it against ∫ q log(q/p)."""
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    closed = kl_divergence(
        torch.distributions.Normal(f64(loc_q), f64(scale_q)), torch.distributions.Laplace(f64(loc_p), f64(scale_p))
    ).item()
    integral = numerical_kl_from_normal(loc_q, scale_q, torch.distributions.Laplace(f64(loc_p), f64(scale_p)))
    assert closed == pytest.approx(integral, rel=1e-6, abs=1e-9)


def test_vamp_prior_follows_the_encoder():
    vae = vae_with({"type": "vamp", "components": 3})
    loc, _ = vae.encoder(vae.prior.pseudo_inputs)
    torch.testing.assert_close(vae.prior().component_distribution.base_dist.loc, loc)
    assert not any(name.startswith("prior._encoder") or name.startswith("prior.encoder") for name in vae.state_dict())


def test_flow_needs_two_latent_dimensions():
    from pyro_vae.errors import ConfigError

    with pytest.raises(ConfigError, match="a flow prior needs model.latent_dim >= 2 \\(got 1\\)"):
        vae_with({"type": "flow"}, latent_dim=1)


def _mixture(dtype, components=50, dim=6):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(components, generator=g, dtype=dtype).requires_grad_()
    loc = torch.randn(components, dim, generator=g, dtype=dtype).requires_grad_()
    scale = (0.02 + torch.rand(components, dim, generator=g, dtype=dtype)).requires_grad_()
    z = loc.detach()[torch.randint(components, (3, 7), generator=g)] + 0.05 * torch.randn(3, 7, dim, generator=g)
    return logits, loc, scale, z.to(dtype)


@pytest.mark.parametrize("batch", [(), (7,)])
def test_diagonal_normal_mixture_is_mixture_same_family(batch):
    """Its matrix-product density and gradients equal the broadcast form's, expanded or not (float64)."""
    from pyro.distributions import Categorical, MixtureSameFamily, Normal

    from pyro_vae.models.priors import DiagonalNormalMixture

    logits, loc, scale, z = _mixture(torch.float64)
    fast = DiagonalNormalMixture(logits, loc, scale).expand(batch)
    slow = MixtureSameFamily(Categorical(logits=logits), Normal(loc, scale).to_event(1)).expand(batch)
    assert fast.batch_shape == slow.batch_shape and fast.event_shape == slow.event_shape
    a, b = fast.log_prob(z), slow.log_prob(z)
    assert a.shape == b.shape == (3, 7)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    ga = torch.autograd.grad(a.sum(), (logits, loc, scale))
    gb = torch.autograd.grad(b.sum(), (logits, loc, scale))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
    assert fast.sample((5,)).shape == (5, *batch, 6)


def test_diagonal_normal_mixture_is_accurate_in_float32():
    """Forming the quadratic terms in float64 keeps float32 densities as close to the truth as float32 allows."""
    from pyro_vae.models.priors import DiagonalNormalMixture

    logits, loc, scale, z = (t.detach().float() for t in _mixture(torch.float64, components=500, dim=40))
    truth = DiagonalNormalMixture(logits.double(), loc.double(), scale.double()).log_prob(z.double())
    single = DiagonalNormalMixture(logits, loc, scale).log_prob(z)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), truth, rtol=1e-6, atol=1e-6)  # the float32 rounding of the result
