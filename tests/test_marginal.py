"""log p(x) by importance sampling and the IWAE bound, on models whose log p(x) is known.

Probabilistic PCA, x = W z + b + ε with z ~ N(0, I) and ε ~ N(0, σ² I), is a VAE with linear
networks and a Gaussian likelihood whose marginal is p(x) = N(b, W Wᵀ + σ² I) and whose posterior
is N(M⁻¹ Wᵀ (x − b), σ² M⁻¹) with M = Wᵀ W + σ² I: diagonal when W has orthogonal columns, so the
diagonal-Gaussian guide can be exact.
"""

import math

import pyro
import pytest
import torch

from pyro_vae import ConfigError, compare_estimators, make_vae
from pyro_vae.infer.marginal import iwae_bound, log_likelihood, log_weights
from pyro_vae.infer.objectives import elbo_per_example
from pyro_vae.training.optim import make_optimizer

SIGMA = 0.5


@pytest.fixture(autouse=True)
def _float64(float64):
    """Exactness checks in float64."""


def ppca(perturb: float = 0.0):
    """A PPCA VAE (latent 2, data 3) with its exact posterior as guide, optionally perturbed; and its marginal."""
    vae = make_vae(
        (3,), latent_dim=2, network={"type": "mlp", "hidden": []}, likelihood={"type": "gaussian", "scale": SIGMA}
    )
    q, _ = torch.linalg.qr(torch.tensor([[1.0, 0.2], [0.3, -1.0], [0.5, 0.4]]))
    w = q * torch.tensor([1.5, 0.8])  # orthogonal columns
    b = torch.tensor([0.3, -0.2, 1.0])
    m = w.T @ w + SIGMA**2 * torch.eye(2)
    a = torch.linalg.solve(m, w.T)
    post_scale = (SIGMA**2 * torch.linalg.inv(m)).diagonal().sqrt()
    encoder, decoder = vae.encoder.net[0], vae.decoder.net[0]
    with torch.no_grad():
        decoder.weight.copy_(w)
        decoder.bias.copy_(b)
        encoder.weight.zero_()
        encoder.weight[:2] = a + perturb * torch.tensor([[0.5, -1.0, 0.3], [0.2, 0.4, -0.6]])
        encoder.bias[:2] = -a @ b
        raw = (post_scale * (1 + perturb) - 1e-6).expm1().log()  # softplus⁻¹, less the encoder's 1e-6 floor
        encoder.bias[2:] = raw
    marginal = torch.distributions.MultivariateNormal(b, w @ w.T + SIGMA**2 * torch.eye(3))
    return vae, marginal


def data(marginal, n=5):
    pyro.set_rng_seed(1)
    return marginal.sample((n,))


def test_exact_posterior_gives_log_p_x_with_zero_variance():
    vae, marginal = ppca()
    x = data(marginal)
    weights = log_weights(vae, x, 50)  # every weight equals p(x)
    torch.testing.assert_close(weights, marginal.log_prob(x).expand(50, -1), rtol=0, atol=1e-10)
    torch.testing.assert_close(log_likelihood(vae, x, num_samples=7), marginal.log_prob(x), rtol=0, atol=1e-10)


def test_imperfect_guide_converges_to_log_p_x():
    vae, marginal = ppca(perturb=0.4)
    x = data(marginal)
    exact = marginal.log_prob(x)
    ses = {}
    for k in (100, 20_000):
        with torch.no_grad():
            lw = log_weights(vae, x, k)
        estimate = torch.logsumexp(lw, 0) - math.log(k)
        w = (lw - lw.max(0).values).exp()
        ses[k] = w.std(0) / (math.sqrt(k) * w.mean(0))  # delta method: se of log(mean w)
        assert (estimate - exact).abs().lt(4 * ses[k]).all()
    # ...and the error bound shrinks like 1/sqrt(K): by sqrt(200) ≈ 14 here, at least 5 allowing for noise.
    assert (ses[20_000] < ses[100] / 5).all()


def test_elbo_below_iwae_bounds_that_rise_with_k_in_expectation():
    vae, marginal = ppca(perturb=0.6)
    x = data(marginal, n=4)
    exact = marginal.log_prob(x).sum().item()
    repeats = 300
    means, ses = {}, {}
    for k in (1, 5, 50):
        draws = torch.stack([iwae_bound(vae, x, k).sum() for _ in range(repeats)])
        means[k], ses[k] = draws.mean().item(), draws.std().item() / math.sqrt(repeats)
    with torch.no_grad():
        elbo = elbo_per_example(vae, x, "analytic", num_particles=20_000).sum().item()
    assert abs(means[1] - elbo) < 4 * ses[1] + 0.01  # IWAE_1 is the ELBO
    for small, large in ((1, 5), (5, 50)):
        assert means[large] - means[small] > -4 * math.hypot(ses[small], ses[large])
    assert means[50] - means[1] > 4 * math.hypot(ses[1], ses[50])  # it does rise
    assert means[50] < exact + 4 * ses[50]


def test_two_dimensional_latent_against_numerical_integration():
    """log p(x) = log ∫ p(x|z) p(z) dz on a fine grid over [-7, 7]², against IS with 20,000 samples."""
    pyro.set_rng_seed(2)
    vae = make_vae((6,), latent_dim=2, network={"type": "mlp", "hidden": [8], "activation": "tanh"})
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])
    axis = torch.linspace(-7, 7, 561)
    z = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        log_joint = vae.decode(z.unsqueeze(1)).log_prob(x) + vae.prior().log_prob(z).unsqueeze(1)  # (grid, 2)
    step = (axis[1] - axis[0]).item()
    grid = torch.logsumexp(log_joint, 0) + 2 * math.log(step)
    k = 20_000
    with torch.no_grad():
        lw = log_weights(vae, x, k)
    estimate = torch.logsumexp(lw, 0) - math.log(k)
    w = (lw - lw.max(0).values).exp()
    se = w.std(0) / (math.sqrt(k) * w.mean(0))
    assert (estimate - grid).abs().lt(4 * se).all()


def test_a_redefined_guide_is_evaluated_through_its_own_program():
    """A subclass's densities come from Pyro traces of its program.

    With the exact posterior, every weight is still p(x).
    """
    from pyro_vae import VAE

    class Traced(VAE):
        def guide(self, x, num_data=None, beta=1.0):
            return super().guide(x, num_data, beta)

    vae, marginal = ppca()
    other = Traced(vae.encoder, vae.decoder, vae.prior, vae.likelihood)
    x = data(marginal)
    torch.testing.assert_close(log_likelihood(other, x, num_samples=7), marginal.log_prob(x), rtol=0, atol=1e-10)


def test_chunks_do_not_change_the_estimate(monkeypatch):
    """With the exact posterior every weight is p(x), so any chunking must return log p(x) exactly."""
    vae, marginal = ppca()
    x = data(marginal)
    monkeypatch.setattr("pyro_vae.infer.marginal.DECODER_ELEMENTS", 2 * 3 * 7)  # chunks of 7 samples for batches of 2
    torch.testing.assert_close(
        log_likelihood(vae, x, num_samples=64, batch_size=2), marginal.log_prob(x), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda vae, x: log_likelihood(vae, x, num_samples=0), r"^num_samples must be >= 1 \(got 0\)$"),
        (
            lambda vae, x: compare_estimators(vae, x, repeats=1),
            r"^repeats must be >= 2 to estimate a variance \(got 1\)$",
        ),
        (lambda vae, x: make_optimizer(vae.parameters(), lr=0.0), r"^lr must be > 0 \(got 0\.0\)$"),
    ],
    ids=["log_likelihood-num_samples", "compare_estimators-repeats", "make_optimizer-lr"],
)
def test_a_library_call_with_a_bad_value_raises_the_librarys_error_naming_its_parameter(call, message):
    vae = make_vae((2, 2), latent_dim=2, network={"type": "mlp", "hidden": [4]})
    with pytest.raises(ConfigError, match=message):
        call(vae, torch.rand(3, 2, 2))
