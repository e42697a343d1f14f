"""The closed-form Gaussian KL against torch, a numerical integral, sampling, and its properties."""

import math

import pyro.distributions as dist
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions import Normal, kl_divergence

from pyro_vae import gaussian_kl
from pyro_vae.models.kl import gaussian_kl_elementwise

from helpers import numerical_kl_from_normal

# (loc_q, scale_q, loc_p, scale_p): standard and non-standard priors, tiny and huge scales.
CASES = [
    (0.0, 1.0, 0.0, 1.0),
    (0.5, 0.3, 0.0, 1.0),
    (-2.0, 3.0, 0.0, 1.0),
    (1.0, 1e-6, 0.0, 1.0),
    (0.0, 1e6, 0.0, 1.0),
    (3.0, 0.5, -1.0, 2.0),
    (0.1, 1e-4, 0.2, 1e-4),
    (1e3, 1e3, -1e3, 1e4),
    (0.0, 2.0, 0.0, 2.0 + 1e-3),
]


def numerical_kl(loc_q: float, scale_q: float, loc_p: float, scale_p: float) -> float:
    p = Normal(torch.tensor(loc_p, dtype=torch.float64), torch.tensor(scale_p, dtype=torch.float64))
    return numerical_kl_from_normal(loc_q, scale_q, p)


@pytest.mark.parametrize("loc_q,scale_q,loc_p,scale_p", CASES)
def test_matches_torch_and_numerical_integral(loc_q, scale_q, loc_p, scale_p):
    args = [torch.tensor([v], dtype=torch.float64) for v in (loc_q, scale_q, loc_p, scale_p)]
    closed = gaussian_kl(*args).item()
    reference = kl_divergence(Normal(args[0], args[1]), Normal(args[2], args[3])).sum().item()
    integral = numerical_kl(loc_q, scale_q, loc_p, scale_p)
    assert closed == pytest.approx(reference, rel=1e-6, abs=1e-12)
    assert closed == pytest.approx(integral, rel=1e-6, abs=1e-9)


def test_standard_normal_form_of_the_derivation():
    """Against N(0, I): KL = -1/2 Σ_j (1 + log σ_j² - μ_j² - σ_j²), Odaibo (2019)."""
    loc = torch.tensor([[0.3, -1.2, 2.0], [0.0, 0.5, -0.1]], dtype=torch.float64)
    scale = torch.tensor([[0.7, 1.3, 0.2], [1.0, 2.5, 0.05]], dtype=torch.float64)
    expected = -0.5 * (1 + torch.log(scale**2) - loc**2 - scale**2).sum(-1)
    torch.testing.assert_close(gaussian_kl(loc, scale), expected, rtol=1e-12, atol=0)


def test_general_form_and_broadcasting():
    loc_q = torch.randn(4, 1, 3, dtype=torch.float64)
    scale_q = torch.rand(4, 1, 3, dtype=torch.float64) + 0.1
    loc_p = torch.randn(5, 3, dtype=torch.float64)
    scale_p = torch.rand(5, 3, dtype=torch.float64) + 0.1
    expected = (torch.log(scale_p / scale_q) + (scale_q**2 + (loc_q - loc_p) ** 2) / (2 * scale_p**2) - 0.5).sum(-1)
    result = gaussian_kl(loc_q, scale_q, loc_p, scale_p)
    assert result.shape == (4, 5)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-14)


def test_registered_for_pyro_normals_used_by_the_analytic_elbo():
    q = dist.Normal(torch.tensor([0.3, 1.0]), torch.tensor([0.5, 2.0])).to_event(1)
    p = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    torch.testing.assert_close(kl_divergence(q, p), gaussian_kl(q.base_dist.loc, q.base_dist.scale))


def test_monte_carlo_estimate_agrees_within_four_standard_errors():
    loc_q, scale_q = torch.tensor([0.8, -0.3, 1.5]), torch.tensor([0.6, 1.4, 0.3])
    loc_p, scale_p = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1.0, 2.0, 0.5])
    q, p = Normal(loc_q, scale_q), Normal(loc_p, scale_p)
    torch.manual_seed(12345)
    z = q.sample((200_000,))
    samples = (q.log_prob(z) - p.log_prob(z)).sum(-1).double()
    estimate, se = samples.mean().item(), samples.std().item() / math.sqrt(len(samples))
    closed = gaussian_kl(loc_q, scale_q, loc_p, scale_p).item()
    assert abs(estimate - closed) < 4 * se


finite = st.floats(-50, 50, allow_nan=False)
positive = st.floats(1e-3, 1e3, allow_nan=False)


@given(finite, positive, finite, positive)
def test_non_negative(loc_q, scale_q, loc_p, scale_p):
    kl = gaussian_kl_elementwise(*(torch.tensor(v, dtype=torch.float64) for v in (loc_q, scale_q, loc_p, scale_p)))
    assert kl.item() >= 0


@given(finite, positive)
def test_zero_for_equal_gaussians(loc, scale):
    kl = gaussian_kl_elementwise(*(torch.tensor(v, dtype=torch.float64) for v in (loc, scale, loc, scale)))
    assert kl.item() == 0.0


@given(finite, positive, finite, positive)
def test_zero_only_for_equal_gaussians(loc_q, scale_q, loc_p, scale_p):
    # Distinct parameters (by a margin float64 resolves) give a strictly positive divergence.
    if abs(loc_q - loc_p) / scale_p < 1e-4 and abs(math.log(scale_q / scale_p)) < 1e-4:
        return
    kl = gaussian_kl_elementwise(*(torch.tensor(v, dtype=torch.float64) for v in (loc_q, scale_q, loc_p, scale_p)))
    assert kl.item() > 0


def test_not_symmetric():
    a = (torch.tensor([0.0]), torch.tensor([1.0]))
    b = (torch.tensor([1.0]), torch.tensor([2.0]))
    forward, backward = gaussian_kl(*a, *b).item(), gaussian_kl(*b, *a).item()
    assert forward == pytest.approx(math.log(2) + 2 / 8 - 0.5, rel=1e-6)
    assert backward == pytest.approx(math.log(0.5) + 5 / 2 - 0.5, rel=1e-6)
    assert abs(forward - backward) > 0.1


def test_gradients_are_finite_at_extreme_scales():
    scale = torch.tensor([1e-30, 1e-6, 1.0, 1e6], dtype=torch.float64, requires_grad=True)
    gaussian_kl(torch.zeros(4, dtype=torch.float64), scale).backward()
    assert torch.isfinite(scale.grad).all()
