"""Latent-code diagnostics on models whose answers are known.

Probabilistic PCA, x = W z + σ ε with z ~ N(0, I_k), ε ~ N(0, I_D) and W with orthogonal columns
(WᵀW = diag(d)), has the diagonal exact posterior q(z | x) = N(M⁻¹Wᵀx, σ² M⁻¹), M = WᵀW + σ² I.
Its posterior mean m_j = w_jᵀx / M_jj has variance d_j / M_jj and its posterior variance is
s_j² = σ² / M_jj; they add up to 1, so the aggregate posterior is the prior N(0, I) and

    I(x; z) = ½ log det Cov(z) − ½ log det Cov(z | x) = ½ Σ_j log(M_jj / σ²),

which is also the average KL(q(z | x) ‖ p(z)), the marginal KL being 0.

Tolerances are 4 standard errors. Modules are built in the default dtype and then ``.double()``.
"""

import importlib
import json
import math

import pyro
import pytest
import torch
from torch import nn

from pyro_vae import ConfigError, make_vae
from pyro_vae.infer.diagnostics import (
    _log_aggregate,
    activity,
    diagnostics,
    kl_per_dim,
    kl_total,
    marginal_kl,
    mutual_information,
)

from helpers import EVENT_SHAPE, numerical_kl_from_normal, tiny_vae

# the module itself: the package exports its function diagnostics under the same name
diagnostics_module = importlib.import_module("pyro_vae.infer.diagnostics")

UNUSED = (1, 3)


class PartlyUnusedEncoder(nn.Module):
    """An encoder that returns the prior N(0, 1) for the dimensions in ``unused`` and depends on x elsewhere."""

    def __init__(self, latent_dim: int, unused: tuple[int, ...], scale: float | None = None, spread: float = 1.0):
        super().__init__()
        inputs = math.prod(EVENT_SHAPE)
        self.loc = nn.Linear(inputs, latent_dim)
        self.scale = nn.Linear(inputs, latent_dim)
        self.fixed_scale, self.spread = scale, spread
        self.register_buffer("unused", torch.isin(torch.arange(latent_dim), torch.tensor(unused)))
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        h = x.flatten(1)
        loc = self.spread * self.loc(h)
        if self.fixed_scale is None:
            scale = nn.functional.softplus(self.scale(h)) + 0.05
        else:
            scale = torch.full_like(loc, self.fixed_scale)
        return torch.where(self.unused, 0.0, loc), torch.where(self.unused, 1.0, scale)


def partly_unused(latent_dim: int = 5, unused=UNUSED, prior=None, **kwargs):
    vae = tiny_vae(latent_dim, prior=prior)
    vae.encoder = PartlyUnusedEncoder(latent_dim, unused, **kwargs).double()
    return vae


def data(n: int, seed: int = 1):
    return torch.randn(n, *EVENT_SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# Probabilistic PCA with its exact posterior as guide.

NOISE = 0.5
SQUARED_NORMS = (1.0, 0.3)  # d_j, the squared lengths of W's columns


class PPCAPosterior(nn.Module):
    """The exact posterior of probabilistic PCA with orthogonal columns: loc = Wᵀx / M_jj, scale = σ / √M_jj."""

    def __init__(self, weight, noise: float):
        super().__init__()
        precision = weight.square().sum(0) + noise**2  # the diagonal of M
        self.register_buffer("weight", weight)
        self.register_buffer("precision", precision)
        self.register_buffer("scale", noise / precision.sqrt())

    def forward(self, x):
        loc = x @ self.weight / self.precision
        return loc, self.scale.expand_as(loc)


def ppca(num_points: int, data_dim: int = 5):
    """A VAE whose guide is PPCA's exact posterior, data drawn from the model, and the model's precision diag(M)."""
    generator = torch.Generator().manual_seed(0)
    squared_norms = torch.tensor(SQUARED_NORMS, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.randn(data_dim, len(squared_norms), generator=generator, dtype=torch.float64))
    weight = basis * squared_norms.sqrt()
    z = torch.randn(num_points, len(squared_norms), generator=generator, dtype=torch.float64)
    x = z @ weight.T + NOISE * torch.randn(num_points, data_dim, generator=generator, dtype=torch.float64)
    vae = make_vae((data_dim,), len(squared_norms), network={"type": "mlp", "hidden": [4]}).double()
    vae.encoder = PPCAPosterior(weight, NOISE)
    return vae, x, squared_norms + NOISE**2


NUM_POINTS = 4000


@pytest.fixture(scope="module")
def ppca_report():
    """The diagnostics of 4,000 points from the PPCA model, with the model's precision diag(M) (computed once)."""
    vae, x, precision = ppca(NUM_POINTS)
    pyro.set_rng_seed(0)
    return diagnostics(vae, x, num_samples=2), precision


def test_ppca_mutual_information_is_its_closed_form(ppca_report):
    result, precision = ppca_report
    information = 0.5 * torch.log(precision / NOISE**2).sum().item()  # 1.199 nats
    estimate, se = result["mutual_information"], result["mutual_information_se"]
    # Given x, the estimate targets the empirical aggregate posterior q_N = (1/N) Σ q(z | x_n): it is the
    # sampled KL (unbiased for I, since q = p) minus KL(q_N ‖ p), which lies in [0, E χ²(q_N ‖ p)] on average,
    # and E χ²(q_N ‖ p) = (E[q(z|x)/q(z)] − 1) / N = (exp(2I) − 1) / N for these Gaussians. Negligible here:
    bias_bound = (math.exp(2 * information) - 1) / NUM_POINTS
    assert bias_bound < se / 4
    assert abs(estimate - information) < 4 * se, (estimate, se, information)


def test_ppca_marginal_kl_is_within_its_finite_sample_bias(ppca_report):
    result, precision = ppca_report
    information = 0.5 * torch.log(precision / NOISE**2).sum().item()
    estimate, se = result["marginal_kl"], result["marginal_kl_se"]
    # The population marginal KL is 0, but given x the estimate targets KL(q_N ‖ p) >= 0, whose expectation
    # over x is at most E χ²(q_N ‖ p) = (exp(2I) − 1) / N (about half of it to second order): a positive
    # O(1/N) bias, several times this estimate's standard error.
    bias_bound = (math.exp(2 * information) - 1) / NUM_POINTS
    assert -4 * se < estimate < bias_bound + 4 * se, (estimate, se, bias_bound)


def test_ppca_activity_and_kl_are_their_closed_forms(ppca_report):
    result, precision = ppca_report
    # Var(m_j) = d_j / M_jj; a sample variance of N Gaussian values has standard error Var · √(2 / (N − 1)).
    spread = torch.tensor(SQUARED_NORMS, dtype=torch.float64) / precision
    for variance, truth in zip(result["activity"], spread.tolist()):
        assert abs(variance - truth) < 4 * truth * math.sqrt(2 / (NUM_POINTS - 1))
    # KL(q(z|x) ‖ p) = Σ_j ½ (s_j² + m_j² − 1 − log s_j²) has mean I and, over x, standard deviation
    # √(Σ_j Var(m_j)² / 2) since m_j ~ N(0, Var(m_j)) independently.
    information = 0.5 * torch.log(precision / NOISE**2).sum().item()
    se = math.sqrt((spread.square() / 2).sum().item() / NUM_POINTS)
    assert result["kl_method"] == "closed_form"
    assert abs(result["kl_total"] - information) < 4 * se
    assert result["active_units"] == 2


# Unused dimensions.


def test_dimensions_returning_the_prior_are_inactive_and_cost_no_kl():
    latent_dim = 5
    result = diagnostics(partly_unused(latent_dim), data(200), num_samples=2)
    used = [j for j in range(latent_dim) if j not in UNUSED]
    assert result["kl_method"] == "closed_form"
    assert [result["activity"][j] for j in UNUSED] == [0.0, 0.0]
    assert [result["kl_per_dim"][j] for j in UNUSED] == [0.0, 0.0]
    assert all(result["activity"][j] > result["threshold"] for j in used)
    assert all(result["kl_per_dim"][j] > 0 for j in used)
    assert result["active_units"] == latent_dim - len(UNUSED)


def test_threshold_decides_which_dimensions_are_active():
    result = diagnostics(partly_unused(), data(200))
    middle = sorted(result["activity"])[-2]  # the second largest
    assert diagnostics(partly_unused(), data(200), threshold=middle)["active_units"] == 1


def test_distinct_sharp_posteriors_carry_log_n_nats():
    """Posteriors many scales apart: every draw's own component is all of q(z), so I = log N up to rounding.

    The aggregate log-density's expansion rounds to about 1e-16 (|z| + |μ|)² / σ² per dimension, 1e-8 here.
    """
    num_points = 50
    vae = partly_unused(3, unused=(), scale=1e-2, spread=10.0)
    result = diagnostics(vae, data(num_points), num_samples=4)
    assert result["mutual_information"] == pytest.approx(math.log(num_points), abs=1e-7)
    se = result["mutual_information_se"] + result["marginal_kl_se"]
    assert abs(result["mutual_information"] + result["marginal_kl"] - result["kl_total"]) < 4 * se


# Per-dimension and total KL.


@pytest.mark.parametrize(
    "prior",
    [{"type": "standard_normal"}, {"type": "normal", "loc": 0.3, "scale": 1.5}, {"type": "laplace", "scale": 0.7}],
    ids=lambda p: p["type"],
)
def test_closed_form_kl_per_dimension_sums_to_the_total(prior):
    result = diagnostics(tiny_vae(3, prior=prior), data(30), num_samples=2)
    assert result["kl_method"] == result["kl_total_method"] == "closed_form"
    assert result["kl_per_dim_se"] is None and result["kl_total_se"] is None
    assert sum(result["kl_per_dim"]) == pytest.approx(result["kl_total"], rel=1e-12)


def test_sampled_kl_per_dimension_is_the_numerical_integral():
    """Student-t prior: no closed form; each dimension's KL by quadrature, averaged over the points, within 4 SE."""
    prior = {"type": "student_t", "df": 3.0, "loc": 0.2, "scale": 0.8}
    vae, x = partly_unused(2, unused=(), prior=prior), data(6)
    estimate = kl_per_dim(vae, x, num_samples=400)
    assert estimate.method == "sampled"
    loc, scale = vae.encoder(x)
    factor = torch.distributions.StudentT(torch.tensor(3.0, dtype=torch.float64), 0.2, 0.8)
    for j in range(2):
        truth = sum(numerical_kl_from_normal(m, s, factor) for m, s in zip(loc[:, j].tolist(), scale[:, j].tolist()))
        assert abs(estimate.value[j].item() - truth / len(x)) < 4 * estimate.se[j].item()


@pytest.mark.parametrize("prior", [{"type": "student_t"}, {"type": "mixture", "components": 3}, {"type": "flow"}])
def test_sampled_kls_share_their_draws(prior):
    """Sampled per-dimension KLs sum to the sampled total, which is the mutual information plus the marginal KL."""
    result = diagnostics(tiny_vae(2, prior=prior), data(30), num_samples=3)
    assert result["kl_total_method"] == "sampled" and result["kl_total_se"] > 0
    assert math.isfinite(result["kl_total"])
    assert result["mutual_information"] + result["marginal_kl"] == pytest.approx(result["kl_total"], rel=1e-10)
    if prior["type"] == "student_t":
        assert result["kl_method"] == "sampled" and len(result["kl_per_dim_se"]) == 2
        assert sum(result["kl_per_dim"]) == pytest.approx(result["kl_total"], rel=1e-10)
    else:  # a mixture or a flow does not factorise over the dimensions
        assert result["kl_method"] == "not_factorised"
        assert result["kl_per_dim"] is None and result["kl_per_dim_se"] is None


def test_vamp_prior_is_not_factorised():
    vae = tiny_vae(2, prior={"type": "vamp", "components": 3})
    assert kl_per_dim(vae, data(20)) is None
    assert math.isfinite(kl_total(vae, data(20), num_samples=2).value.item())


@pytest.mark.parametrize("prior", [{"type": "standard_normal"}, {"type": "laplace"}], ids=lambda p: p["type"])
def test_elbo_surgery_adds_up_to_the_closed_form_kl(prior):
    """Average KL = I + KL(q(z) ‖ p(z)); the sum's standard error is at most the sum of both (triangle inequality)."""
    result = diagnostics(partly_unused(3, unused=(1,), prior=prior), data(300), num_samples=8)
    se = result["mutual_information_se"] + result["marginal_kl_se"]
    assert abs(result["mutual_information"] + result["marginal_kl"] - result["kl_total"]) < 4 * se


def test_single_quantities_agree_with_diagnostics():
    vae, x = partly_unused(), data(40)
    pyro.set_rng_seed(5)
    result = diagnostics(vae, x, num_samples=3)
    pyro.set_rng_seed(5)
    assert mutual_information(vae, x, num_samples=3).value.item() == pytest.approx(result["mutual_information"])
    pyro.set_rng_seed(5)
    assert marginal_kl(vae, x, num_samples=3).se.item() == pytest.approx(result["marginal_kl_se"])
    assert activity(vae, x).tolist() == pytest.approx(result["activity"])


# The aggregate posterior's log-density.


def test_log_aggregate_is_the_log_mean_of_the_guide_densities():
    """Against the log-sum-exp of the guide's log-densities, within the documented rounding of the expanded square.

    Each component's quadratic form is off by at most a few ε (|z| + |μ|)² / σ² summed over the dimensions, and a
    log-sum-exp moves by no more than the largest change of its terms.
    """
    generator = torch.Generator().manual_seed(2)
    loc = 5 * torch.randn(40, 3, generator=generator, dtype=torch.float64)
    scale = 10 ** (torch.rand(40, 3, generator=generator, dtype=torch.float64) * 5 - 4)  # 1e-4 .. 10
    z = loc + scale * torch.randn(6, 40, 3, generator=generator, dtype=torch.float64)
    q = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    expected = torch.logsumexp(q.log_prob(z.unsqueeze(-2)), -1) - math.log(40)
    rounding = ((z.abs().unsqueeze(-2) + loc.abs()) / scale).square().sum(-1).amax(-1) * torch.finfo(torch.float64).eps
    assert ((_log_aggregate(loc, scale, z) - expected).abs() <= 4 * rounding + 1e-12).all()


def test_chunking_does_not_change_the_values(monkeypatch):
    vae, x = partly_unused(), data(60)
    pyro.set_rng_seed(1)
    whole = diagnostics(vae, x, num_samples=3)
    monkeypatch.setattr(diagnostics_module, "AGGREGATE_ELEMENTS", 7)
    pyro.set_rng_seed(1)
    chunked = diagnostics(vae, x, num_samples=3, batch_size=7)
    assert chunked.keys() == whole.keys()
    for key, value in whole.items():
        assert chunked[key] == (value if value is None or isinstance(value, str) else pytest.approx(value, rel=1e-12))


# The report.


def test_report_is_json_and_reproducible():
    vae, x = partly_unused(), data(25)
    pyro.set_rng_seed(3)
    result = diagnostics(vae, x, num_samples=2)
    keys = {"active_units", "kl_per_dim", "mutual_information", "marginal_kl", "mutual_information_se"}
    assert keys | {"marginal_kl_se", "num_points", "latent_dim", "num_samples", "threshold"} <= set(result)
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert (result["num_points"], result["latent_dim"], len(result["activity"])) == (25, 5, 5)
    assert isinstance(result["active_units"], int)
    pyro.set_rng_seed(3)
    assert diagnostics(vae, x, num_samples=2) == result


@pytest.mark.parametrize("training", [True, False])
def test_runs_in_eval_mode_and_restores_the_mode(training):
    vae = partly_unused()
    vae.train(training)
    diagnostics(vae, data(10))
    assert vae.encoder.modes and not any(vae.encoder.modes)
    assert all(m.training == training for m in vae.modules())


def test_batch_size_does_not_change_closed_form_values():
    vae, x = partly_unused(), data(50)
    whole, batched = diagnostics(vae, x, batch_size=100), diagnostics(vae, x, batch_size=7)
    for key in ("activity", "kl_per_dim", "kl_total"):
        assert batched[key] == pytest.approx(whole[key], rel=1e-12)


# Bad input.


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_samples": 0}, "num_samples must be >= 1 (got 0)"),
        ({"batch_size": 0}, "batch_size must be >= 1 (got 0)"),
        ({"threshold": -0.5}, "threshold must be >= 0 (got -0.5)"),
        ({"x": torch.zeros(0, *EVENT_SHAPE, dtype=torch.float64)}, "x must hold at least 2 data points"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, message):
    arguments = {"vae": tiny_vae(), "x": data(5), **kwargs}
    with pytest.raises(ConfigError) as error:
        diagnostics(**arguments)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert error.value.params == (message.split()[0],)


@pytest.mark.parametrize("function", [kl_per_dim, kl_total, mutual_information, marginal_kl])
def test_each_quantity_checks_num_samples(function):
    with pytest.raises(ConfigError, match=r"^num_samples must be >= 1 \(got 0\)$"):
        function(tiny_vae(), data(5), num_samples=0)
