"""The importance-weighted bound and the low-variance gradients (iwae, dreg, stl), tied to their mathematics.

Values are compared with hand-written expressions from the same draws; unbiasedness of the new
gradients is checked against the standard estimator of the same objective within 4 standard errors;
and on probabilistic PCA with the exact posterior, the sticking-the-landing and DReG encoder
gradients vanish for every draw while the standard ones do not.
"""

import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import RenyiELBO
from torch import nn

from pyro_vae import LIKELIHOODS, PRIORS, VAE, Config, Objective, fit
from pyro_vae.errors import ConfigError
from pyro_vae.infer.compare import compare_estimators, parameter_groups
from pyro_vae.infer.objectives import evaluate_bounds, evaluate_elbo, make_elbo
from pyro_vae.training.data import Dataset

from helpers import tiny_batch, tiny_vae

NUM_DATA = 60
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def hand_written_log_weights(vae, x, z):
    """log p(x|z) + log p(z) − log q(z|x) for a tiny Bernoulli VAE with a standard normal prior, written out."""
    loc, scale = vae.encoder(x)
    logits = vae.decoder(z)
    log_lik = (x * logits - F.softplus(logits)).sum((-2, -1))
    log_prior = (-0.5 * z**2 - HALF_LOG_2PI).sum(-1)
    log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - HALF_LOG_2PI).sum(-1)
    return log_lik + log_prior - log_q


def draws(vae, x, num_particles, seed):
    """The z that an estimator draws first from this seed (the guide's reparameterised sample)."""
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        q = vae.posterior(*vae.encoder(x))
        return q.rsample((num_particles,) if num_particles > 1 else ())


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("num_particles", [1, 5])
@pytest.mark.parametrize("name", ["iwae", "dreg"])
def test_iwae_value_is_the_per_point_log_mean_exp_of_the_weights(name, num_particles, fused):
    vae, x = tiny_vae(), tiny_batch()
    z = draws(vae, x, num_particles, seed=4)
    with torch.no_grad():
        log_w = hand_written_log_weights(vae, x, z).reshape(num_particles, len(x))
        expected = -(NUM_DATA / len(x)) * (torch.logsumexp(log_w, 0) - math.log(num_particles)).sum()
    pyro.set_rng_seed(4)
    loss = Objective(vae, name, num_particles, fused=fused)(x, NUM_DATA)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("fused", [False, True])
def test_one_particle_iwae_is_the_monte_carlo_elbo_and_stl_has_its_value(fused):
    vae, x = tiny_vae(), tiny_batch()
    losses = {}
    for name in ("mc", "iwae", "dreg", "stl"):
        pyro.set_rng_seed(9)
        losses[name] = Objective(vae, name, 1, fused=fused)(x, NUM_DATA)
    for name in ("iwae", "dreg", "stl"):
        torch.testing.assert_close(losses[name], losses["mc"], rtol=1e-10, atol=1e-9)


def test_pyro_renyi_elbo_is_the_iwae_bound_for_a_full_batch_but_not_under_subsampling():
    """Pyro's RenyiELBO(alpha=0) scales each point's log-weights by N/B inside the log-mean-exp."""
    vae, x = tiny_vae(), tiny_batch()
    renyi = RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    ours = make_elbo("iwae", num_particles=5)
    values = {}
    for num_data in (None, NUM_DATA):
        for name, elbo in (("renyi", renyi), ("ours", ours)):
            pyro.set_rng_seed(2)
            values[name, num_data] = elbo.loss(vae.model, vae.guide, x, num_data=num_data)
    assert values["renyi", None] == pytest.approx(values["ours", None], rel=1e-10)
    # Under subsampling Pyro's value is not N/B times the full-batch bound of the same draws.
    assert values["ours", NUM_DATA] == pytest.approx(values["ours", None] * NUM_DATA / len(x), rel=1e-10)
    assert abs(values["renyi", NUM_DATA] - values["ours", NUM_DATA]) > 1.0


@pytest.mark.parametrize("name", ["iwae", "dreg"])
def test_beta_and_jit_are_refused_for_the_importance_weighted_bound(name):
    with pytest.raises(ConfigError, match="beta is 0.5, but beta weights the KL term of the ELBO"):
        Objective(tiny_vae(), name, 3, beta=0.5)
    with pytest.raises(ConfigError, match=r"train\.beta is 2, .*use train\.beta = 1"):
        Config.from_dict({"train": {"elbo": name, "beta": 2.0}})
    with pytest.raises(ConfigError, match="has no Pyro JIT variant"):
        Objective(tiny_vae(), name, 3, jit=True)


# --- the exact posterior: probabilistic PCA ----------------------------------------------------


class LinearGaussianEncoder(nn.Module):
    """q(z|x) = N(A x + c, diag(s²)): the exact posterior family of probabilistic PCA with orthogonal W."""

    def __init__(self, A, c, s):
        super().__init__()
        self.A, self.c, self.raw = nn.Parameter(A), nn.Parameter(c), nn.Parameter(s.log())

    def forward(self, x):
        loc = x @ self.A.T + self.c
        return loc, self.raw.exp().expand_as(loc)


def ppca_with_exact_posterior(data_dim=5, latent_dim=2, sigma=0.7):
    """x = W z + b + N(0, σ² I), z ~ N(0, I), with orthogonal columns of W, and q set to p(z | x)."""
    likelihood = LIKELIHOODS.build({"type": "gaussian", "scale": sigma}, event_shape=(data_dim,)).double()
    sigma = likelihood.scale().item()  # the scale as the likelihood holds it (a float32 buffer made double)
    generator = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(data_dim, latent_dim, generator=generator, dtype=torch.float64))
    lam = torch.tensor([2.0, 0.8], dtype=torch.float64)
    W, b = Q * lam, torch.randn(data_dim, generator=generator, dtype=torch.float64)
    posterior_var = 1 / (1 + lam**2 / sigma**2)  # (I + WᵀW/σ²)⁻¹, diagonal because WᵀW is
    A = posterior_var[:, None] * W.T / sigma**2
    decoder = nn.Linear(latent_dim, data_dim).double()
    with torch.no_grad():
        decoder.weight.copy_(W)
        decoder.bias.copy_(b)
    encoder = LinearGaussianEncoder(A, -A @ b, posterior_var.sqrt())
    prior = PRIORS.build({"type": "standard_normal"}, latent_dim=latent_dim).double()
    vae = VAE(encoder, decoder, prior, likelihood)
    x = (torch.randn(8, latent_dim, generator=generator, dtype=torch.float64) @ W.T + b) + sigma * torch.randn(
        8, data_dim, generator=generator, dtype=torch.float64
    )
    return vae, x


@pytest.mark.parametrize("fused", [False, True])
def test_with_the_exact_posterior_stl_and_dreg_encoder_gradients_vanish_for_every_draw(fused):
    vae, x = ppca_with_exact_posterior()
    encoder = parameter_groups(vae)["encoder"]
    for seed in range(5):
        norms = {}
        for name in ("mc", "stl", "iwae", "dreg"):
            pyro.set_rng_seed(seed)
            loss = Objective(vae, name, 4, fused=fused)(x)
            norms[name] = torch.cat([g.flatten() for g in torch.autograd.grad(loss, encoder)]).abs().max().item()
        assert norms["stl"] < 1e-10 and norms["dreg"] < 1e-10, norms
        assert norms["mc"] > 1e-3 and norms["iwae"] > 1e-3, norms


# --- unbiasedness ----------------------------------------------------------------------------------


def gradient_draws(vae, x, name, num_particles, repeats, seed):
    """``repeats`` independent gradients of the negative bound, one row each, per parameter group."""
    pyro.set_rng_seed(seed)
    objective = Objective(vae, name, num_particles, fused=True)
    groups = parameter_groups(vae)
    rows = {g: [] for g in ("encoder", "decoder")}
    for _ in range(repeats):
        loss = objective(x)
        for g in rows:
            rows[g].append(torch.cat([d.flatten() for d in torch.autograd.grad(loss, groups[g], retain_graph=True)]))
    return {g: torch.stack(v) for g, v in rows.items()}


@pytest.mark.slow  # 4 x 3000 gradients of a tiny VAE: about 20 s
@pytest.mark.parametrize("new,standard,num_particles", [("stl", "mc", 1), ("dreg", "iwae", 4)])
def test_new_gradients_have_the_same_mean_as_the_standard_estimator(new, standard, num_particles):
    vae, x = tiny_vae(), tiny_batch()
    repeats = 3000
    a = gradient_draws(vae, x, new, num_particles, repeats, seed=1)
    b = gradient_draws(vae, x, standard, num_particles, repeats, seed=2)
    directions = torch.randn(
        3, a["encoder"].shape[1] + a["decoder"].shape[1], generator=torch.Generator().manual_seed(5)
    )
    for group in ("encoder", "decoder"):
        d = (
            directions[:, : a[group].shape[1]].double()
            if group == "encoder"
            else directions[:, -a[group].shape[1] :].double()
        )
        for direction in d:  # fixed random projections of the gradient: scalars with a standard error each
            pa, pb = a[group] @ direction, b[group] @ direction
            se = math.sqrt(pa.var().item() / repeats + pb.var().item() / repeats)
            assert abs(pa.mean().item() - pb.mean().item()) < 4 * se, (group, pa.mean().item(), pb.mean().item(), se)


# --- training and evaluation ---------------------------------------------------------------------


def test_an_iwae_run_reports_its_bound_with_its_particles():
    x = torch.rand(64, 4, 4, generator=torch.Generator().manual_seed(2))
    data = Dataset("toy", x[:48], x[48:])
    torch.manual_seed(0)
    vae = tiny_vae(double=False)
    history = fit(vae, data, epochs=2, batch_size=16, elbo="dreg", num_particles=8, progress=False)
    last = history[-1]
    assert last["test_elbo"] == last["test_elbo_iwae"] and "test_elbo_dreg" not in last
    # The ELBO by its estimators from one draw per point, the IWAE bound from its own 8 draws per point.
    torch.manual_seed(3)
    reported = evaluate_bounds(vae, data.test, "dreg", num_particles=1, train_particles=8)
    torch.manual_seed(3)
    expected = evaluate_elbo(vae, data.test, 1, estimators=("mc", "analytic"))
    expected.update(evaluate_elbo(vae, data.test, 8, estimators=("iwae",)))
    assert reported == expected


def test_compare_reports_the_gradient_snr_and_its_slopes():
    from pyro_vae.infer.compare import format_comparison, snr_slopes

    pyro.set_rng_seed(0)
    result = compare_estimators(
        tiny_vae(), tiny_batch(n=8), particles=(1, 4, 16), repeats=20, estimators=("iwae", "dreg")
    )
    for row in result["rows"]:
        assert row["grad_snr"]["encoder"] > 0 and row["grad_snr"]["decoder"] > 0
    assert set(snr_slopes(result, "encoder")) == {"iwae", "dreg"}
    text = format_comparison(result)
    assert "slope of log SNR against log L, encoder: iwae" in text and "iwae - dreg" in text
