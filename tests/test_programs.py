"""The library's tools follow ANY Pyro program: checks against closed forms.

Programs (``programs.py``): a two-latent-layer linear-Gaussian program, whose log p(x), exact posterior and
KL(q || posterior) for a linear-Gaussian guide are closed forms, and a three-class Gaussian mixture with a
discrete latent, whose log p(x) and ELBO are finite sums. Site names vary, so that code reading a fixed name
("z") fails.

Statistical checks: |estimate − truth| < 4·SE, where SE is the standard error computed from the spread of
independent draws (per data point: x repeated R times, one estimate per row; or per call). Exact checks (an exact
posterior as the guide makes every log-weight equal log p(x)): 1e-8.
"""

from __future__ import annotations

import math
import re
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from programs import D2, DX, LinearGaussian, Mixture, TwoLayerGaussian, exact_guide, gaussian_kl_full, wrong_guide
from pyro import poutine
from torch import nn
from torch.distributions import kl_divergence

import pyro_vae
from pyro_vae import PyroVAEError
from pyro_vae.errors import ConfigError

DT = torch.float64
ESTIMATORS = ("mc", "analytic", "stl", "iwae", "dreg")
ELBO_ESTIMATORS = ("mc", "analytic", "stl")  # their expectation is the ELBO for any num_particles
NAMES = [("z1", "z2"), ("z", "z2"), ("h", "z")]  # (name of z1, name of z2)
N = 5  # data points
LG = LinearGaussian(seed=0)
EXACT = 1e-8


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def data(n: int = N, seed: int = 1) -> torch.Tensor:
    return LG.sample_x(n, seed)


def per_point(values: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error per data point of per-row values for x.repeat_interleave(R) (n points)."""
    v = values.detach().to(DT).reshape(n, -1)
    return v.mean(1), v.std(1) / math.sqrt(v.shape[1])


def assert_within(mean: torch.Tensor, se: torch.Tensor, truth: torch.Tensor, what: str, k: float = 4.0) -> None:
    mean, se, truth = (torch.as_tensor(t, dtype=DT) for t in (mean, se, truth))
    assert torch.isfinite(mean).all() and (se > 0).all(), f"{what}: estimate {mean}, SE {se}"
    z = (mean - truth).abs() / se
    assert (z < k).all(), f"{what}: estimate {mean.tolist()} vs truth {truth.tolist()}, |diff|/SE {z.tolist()}"


def assert_exact(values: torch.Tensor, truth: torch.Tensor, what: str) -> None:
    diff = (values.detach().to(DT) - truth).abs().max().item()
    assert diff < EXACT, f"{what}: max |value − log p(x)| = {diff:.3g}"


def assert_one_line_naming(err: pytest.ExceptionInfo, site: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg.strip(), f"message is not one line: {msg!r}"
    assert re.search(rf"\b{re.escape(site)}\b", msg), f"message does not name the site {site!r}: {msg!r}"


def mvn_kl_registered() -> bool:
    """Whether kl_divergence(MultivariateNormal, Normal.to_event(1)) has a closed form in this process."""
    q = dist.MultivariateNormal(torch.zeros(2, dtype=DT), torch.eye(2, dtype=DT))
    p = dist.Normal(torch.zeros(2, dtype=DT), torch.ones(2, dtype=DT)).to_event(1)
    try:
        kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True


def elbo_draws(program, x, estimator, num_particles, reps):
    """Per-point mean and SE of ``elbo_per_example`` over ``reps`` independent estimates per point."""
    values = pyro_vae.elbo_per_example(program, x.repeat_interleave(reps, 0), estimator, num_particles=num_particles)
    assert values.shape == (len(x) * reps,)
    return per_point(values, len(x))


# ------------------------------------------------------------------------------------------------------------
# The closed forms themselves, checked independently of the library
# ------------------------------------------------------------------------------------------------------------


def test_closed_forms_verified():
    x = data()
    log_px = LG.log_px(x)
    # log p(x, z) − log p(z | x) is the same, log p(x), at every z (drawn anywhere, not only from the posterior):
    # this pins both the Gaussian marginal and the Gaussian-conditioning posterior against the model's three factors.
    g = torch.Generator().manual_seed(11)
    for _ in range(3):
        u = 2.0 * torch.randn(N, 5, generator=g, dtype=DT)
        identity = LG.log_joint(x, u[:, :D2], u[:, D2:]) - LG.posterior(x).log_prob(u)
        assert (identity - log_px).abs().max() < 1e-10
    # the exact two-stage guides (either order) have the posterior as their joint
    for order in ("top_down", "bottom_up"):
        mq, sq = TwoLayerGaussian(LG, exact_guide(LG, order)).q_joint(x)
        assert (mq - LG.post_mean(x)).abs().max() < 1e-10 and (sq - LG.P).abs().max() < 1e-10
    # the Gaussian KL formula against torch's
    prog = TwoLayerGaussian(LG, wrong_guide(LG, "bottom_up"))
    mq, sq = prog.q_joint(x)
    ref = kl_divergence(
        torch.distributions.MultivariateNormal(mq, sq), torch.distributions.MultivariateNormal(LG.post_mean(x), LG.P)
    )
    assert (gaussian_kl_full(mq, sq, LG.post_mean(x), LG.P) - ref).abs().max() < 1e-10


@pytest.mark.parametrize("order", ["top_down", "bottom_up"])
def test_closed_form_elbo_matches_the_program_by_brute_force(order):
    """The closed-form ELBO of a wrong guide against log p(x, z) − log q(z | x) averaged over draws made by running
    the program's own guide under Pyro (no library code): this verifies q_joint, the KL and the site wiring."""
    x = data()
    prog = TwoLayerGaussian(LG, wrong_guide(LG, order), names=("z1", "z2"))
    reps = 4000
    xr = x.repeat_interleave(reps, 0)
    with torch.no_grad():
        gt = poutine.trace(prog.guide).get_trace(xr)
        mt = poutine.trace(poutine.replay(prog.model, trace=gt)).get_trace(xr)
        gt.compute_log_prob()
        mt.compute_log_prob()
        log_w = sum(mt.nodes[s]["log_prob"] for s in ("z1", "z2", "x")) - sum(
            gt.nodes[s]["log_prob"] for s in ("z1", "z2")
        )
    mean, se = per_point(log_w, N)
    assert_within(mean, se, prog.true_elbo(x), f"brute-force ELBO, {order}")


def test_mixture_closed_forms_verified():
    m = Mixture("wrong")
    x = m.sample_x(6)
    with torch.no_grad():
        ref = dist.MixtureSameFamily(
            dist.Categorical(logits=m.logits_pi), dist.Normal(m.mu, m.log_sigma.exp()).to_event(1)
        ).log_prob(x)
    assert (m.log_px(x) - ref).abs().max() < 1e-12
    # the ELBO by enumeration, against log p(x) minus the enumerated KL(q(y|x) || p(y|x))
    with torch.no_grad():
        log_q, log_post = m.guide_logits(x).log_softmax(-1), m.log_joint_all(x).log_softmax(-1)
        kl = (log_q.exp() * (log_q - log_post)).sum(-1)
    assert (m.true_elbo(x) - (m.log_px(x) - kl)).abs().max() < 1e-12
    assert (kl > 0.1).all()


# ------------------------------------------------------------------------------------------------------------
# 1. Two latent layers, exact posterior as the guide: every estimator returns log p(x), draw by draw
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_particles", [1, 5])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("order", ["top_down", "bottom_up"])
@pytest.mark.parametrize("names", NAMES, ids="-".join)
def test_exact_guide_every_estimator_is_log_px(names, order, estimator, num_particles):
    x = data()
    prog = TwoLayerGaussian(LG, exact_guide(LG, order), names=names)
    reps = 20
    if estimator == "analytic" and mvn_kl_registered():
        # A closed-form KL replaces a sampled term by its expectation: exact in expectation, not draw by draw.
        mean, se = elbo_draws(prog, x, estimator, num_particles, 2000)
        assert_within(mean, se, LG.log_px(x), f"{estimator} (closed-form KL registered), exact guide")
        return
    values = pyro_vae.elbo_per_example(prog, x.repeat_interleave(reps, 0), estimator, num_particles=num_particles)
    assert values.shape == (N * reps,)
    assert_exact(values, LG.log_px(x).repeat_interleave(reps), f"elbo_per_example {estimator} L={num_particles}")


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("order", ["top_down", "bottom_up"])
@pytest.mark.parametrize("names", NAMES, ids="-".join)
def test_exact_guide_log_likelihood_and_iwae_bound_are_log_px(names, order, k):
    x = data()
    prog = TwoLayerGaussian(LG, exact_guide(LG, order), names=names)
    xr = x.repeat_interleave(10, 0)
    truth = LG.log_px(x).repeat_interleave(10)
    ll = pyro_vae.log_likelihood(prog, xr, num_samples=k)
    assert ll.shape == (len(xr),)
    assert_exact(ll, truth, f"log_likelihood K={k}")
    assert_exact(pyro_vae.iwae_bound(prog, xr, num_samples=k), truth, f"iwae_bound K={k}")


# ------------------------------------------------------------------------------------------------------------
# 1. A wrong top-down guide: ELBO = log p(x) − KL(q || posterior)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("names", NAMES, ids="-".join)
@pytest.mark.parametrize("order, first", [("top_down", "closed_form"), ("bottom_up", "sampled")])
def test_kl_methods(order, first, names):
    """p(z2) depends on nothing; p(z1 | z2) on z2, drawn by a top-down guide before z1 (closed form exact), by a
    bottom-up one after it (sampled)."""
    n1, n2 = names
    prog = TwoLayerGaussian(LG, wrong_guide(LG, order), names=names)
    x = data()
    assert pyro_vae.infer.objectives.kl_methods(prog, x, "analytic") == {n1: first, n2: "closed_form"}
    assert pyro_vae.infer.objectives.kl_methods(prog, x, "mc") == {n1: "sampled", n2: "sampled"}


@pytest.mark.parametrize("num_particles,reps", [(1, 2000), (5, 400)])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("names", NAMES[:2], ids="-".join)
@pytest.mark.parametrize("order", ["top_down", "bottom_up"])
def test_wrong_guide_elbo(order, names, estimator, num_particles, reps):
    """Every estimator within 4 SE of log p(x) - KL(q || posterior); bottom-up, the analytic one samples z1's term."""
    x = data()
    prog = TwoLayerGaussian(LG, wrong_guide(LG, order), names=names)
    elbo, log_px = prog.true_elbo(x), LG.log_px(x)
    mean, se = elbo_draws(prog, x, estimator, num_particles, reps)
    if estimator in ("iwae", "dreg") and num_particles > 1:
        # E[L_K] lies between the ELBO and log p(x)
        assert (mean > elbo - 4 * se).all() and (mean < log_px + 4 * se).all(), (mean, se, elbo, log_px)
        return
    assert_within(mean, se, elbo, f"{estimator} L={num_particles}, wrong {order} guide")
    # the check discriminates: the ELBO is many SE below log p(x)
    assert ((log_px - elbo) > 10 * se).all()


# ------------------------------------------------------------------------------------------------------------
# 1. A wrong bottom-up guide: z1 first, then z2 | z1; the model's p(z1 | z2) depends on a later guide draw
# ------------------------------------------------------------------------------------------------------------


def test_pyro_mean_field_elbo_is_biased_on_the_bottom_up_guide():
    """Informative: Pyro's TraceMeanField_ELBO takes KL(q(z1|x) || p(z1|z2)) in closed form with z2 drawn after z1
    (dependent on it), which is biased here; Trace_ELBO from the same harness is not. The library's analytic
    estimator must not do what TraceMeanField_ELBO does (see test_wrong_bottom_up_guide_elbo)."""
    x0 = data()[:1]
    prog = TwoLayerGaussian(LG, wrong_guide(LG, "bottom_up"), names=("z1", "z2"))
    truth = prog.true_elbo(x0).item()
    reps, calls = 100, 100

    def batch_means(elbo):
        out = []
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the mean-field ordering warning
            for _ in range(calls):
                out.append(-elbo.loss(prog.model, prog.guide, x0.expand(reps, DX)) / reps)
        v = torch.tensor(out, dtype=DT)
        return v.mean().item(), v.std().item() / math.sqrt(calls)

    mc_mean, mc_se = batch_means(pyro.infer.Trace_ELBO())
    assert abs(mc_mean - truth) < 4 * mc_se, (mc_mean, mc_se, truth)
    mf_mean, mf_se = batch_means(pyro.infer.TraceMeanField_ELBO())
    # THE BIASED VALUE: more than 4 SE (in fact tens of SE) from the true ELBO
    assert abs(mf_mean - truth) > 4 * mf_se, (mf_mean, mf_se, truth)


# ------------------------------------------------------------------------------------------------------------
# evaluate_elbo, log_likelihood and iwae_bound with wrong guides
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["top_down", "bottom_up"])
@pytest.mark.parametrize("names", NAMES[:2], ids="-".join)
def test_evaluate_elbo_matches_the_closed_form(names, order):
    x = data(200, seed=2)
    prog = TwoLayerGaussian(LG, wrong_guide(LG, order), names=names)
    out = pyro_vae.evaluate_elbo(prog, x, num_particles=20, estimators=("mc", "analytic"))
    truth = prog.true_elbo(x).mean().item()
    for e in ("mc", "analytic"):
        assert abs(out[f"elbo_{e}"] - truth) < 4 * out[f"elbo_{e}_se"], (e, out, truth)


@pytest.mark.parametrize("names", NAMES[:2], ids="-".join)
def test_log_likelihood_wrong_guide_uses_the_joint_proposal(names):
    """A wrong full-covariance guide (joint covariance 1.2²·P: importance weights of finite variance)."""
    x = data(3)
    prog = TwoLayerGaussian(LG, wrong_guide(LG, "top_down", shift=0.5, widen=1.2, family="mvn"), names=names)
    reps, k = 50, 2000
    mean, se = per_point(pyro_vae.log_likelihood(prog, x.repeat_interleave(reps, 0), num_samples=k), len(x))
    assert_within(mean, se, LG.log_px(x), f"log_likelihood K={k}")
    assert ((LG.log_px(x) - prog.true_elbo(x)) > 10 * se).all()  # a one-site or mean-field proposal would be off
    # K = 1: one importance weight, an unbiased estimate of the ELBO
    mean1, se1 = per_point(pyro_vae.iwae_bound(prog, x.repeat_interleave(2000, 0), num_samples=1), len(x))
    assert_within(mean1, se1, prog.true_elbo(x), "iwae_bound K=1")


# ------------------------------------------------------------------------------------------------------------
# 2. A discrete latent: a three-class mixture
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_particles", [1, 5])
def test_mixture_exact_guide_mc_elbo_is_log_px(num_particles):
    m = Mixture("exact")
    x = m.sample_x(6)
    values = pyro_vae.elbo_per_example(m, x.repeat_interleave(20, 0), "mc", num_particles=num_particles)
    assert_exact(values, m.log_px(x).repeat_interleave(20), f"mixture mc L={num_particles}")


@pytest.mark.parametrize("k", [1, 7])
def test_mixture_exact_guide_log_likelihood_is_log_px(k):
    m = Mixture("exact")
    x = m.sample_x(6)
    xr = x.repeat_interleave(20, 0)
    truth = m.log_px(x).repeat_interleave(20)
    assert_exact(pyro_vae.log_likelihood(m, xr, num_samples=k), truth, f"mixture log_likelihood K={k}")
    assert_exact(pyro_vae.iwae_bound(m, xr, num_samples=k), truth, f"mixture iwae_bound K={k}")


def test_mixture_wrong_guide_log_likelihood():
    m = Mixture("wrong")
    x = m.sample_x(4)
    reps, k = 50, 2000
    mean, se = per_point(pyro_vae.log_likelihood(m, x.repeat_interleave(reps, 0), num_samples=k), len(x))
    assert_within(mean, se, m.log_px(x), f"mixture log_likelihood K={k}")


@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_mixture_wrong_guide_elbo(estimator):
    m = Mixture("wrong")
    x = m.sample_x(4)
    methods = pyro_vae.infer.objectives.kl_methods(m, x, estimator)
    assert methods == {"label": "closed_form" if estimator == "analytic" else "sampled"}
    mean, se = elbo_draws(m, x, estimator, 1, 4000)
    assert_within(mean, se, m.true_elbo(x), f"mixture {estimator}")


@pytest.mark.parametrize("estimator", ["stl", "iwae", "dreg"])
def test_mixture_reparameterized_estimators_refused(estimator):
    """Refused at either point (the Objective, built and called once, or elbo_per_example), with a one-line
    PyroVAEError naming the site; where one of the two does not refuse, it must return a finite value."""
    m = Mixture("wrong")
    x = m.sample_x(4)
    refused = 0
    for attempt in (
        lambda: pyro_vae.Objective(m, estimator, num_particles=2)(x),
        lambda: pyro_vae.elbo_per_example(m, x, estimator, num_particles=2),
    ):
        try:
            value = attempt()
        except PyroVAEError as e:
            refused += 1
            msg = str(e)
            assert "\n" not in msg.strip(), f"message is not one line: {msg!r}"
            assert re.search(r"\blabel\b", msg), f"message does not name the site 'label': {msg!r}"
        else:
            assert torch.isfinite(value).all()
    assert refused, f"{estimator} on a discrete guide site was refused neither by Objective nor by elbo_per_example"


# ------------------------------------------------------------------------------------------------------------
# 3. Every estimator runs on Pyro's path for the two-latent program
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("names", NAMES[:2], ids="-".join)
def test_objective_exact_guide(names, estimator, num_particles):
    x = data()
    prog = TwoLayerGaussian(LG, exact_guide(LG, "top_down"), names=names)
    objective = pyro_vae.Objective(prog, estimator, num_particles=num_particles)
    assert objective.path == "pyro"
    loss = objective(x)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in prog.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if estimator == "analytic" and mvn_kl_registered():
        return  # exact only in expectation then; the wrong-guide test below checks the expectation
    total = -LG.log_px(x).sum().item()
    assert abs(loss.item() - total) < EXACT * max(1.0, abs(total)), (loss.item(), total)
    scaled = objective(x, num_data=10 * len(x))
    assert abs(scaled.item() - 10 * total) < EXACT * max(1.0, abs(10 * total)), (scaled.item(), 10 * total)


@pytest.mark.parametrize(
    "estimator,num_particles", [(e, 1) for e in ESTIMATORS] + [(e, 3) for e in ELBO_ESTIMATORS], ids=str
)
def test_objective_wrong_guide_is_minus_the_elbo_in_expectation(estimator, num_particles):
    x = data()
    prog = TwoLayerGaussian(LG, wrong_guide(LG, "bottom_up"), names=("z", "z2"))
    reps, calls = 50, 20
    xr = x.repeat(reps, 1)
    objective = pyro_vae.Objective(prog, estimator, num_particles=num_particles)
    values = []
    for _ in range(calls):
        loss = objective(xr)
        assert torch.isfinite(loss)
        values.append(loss.item() / reps)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in prog.parameters() if p.grad is not None)
    v = torch.tensor(values, dtype=DT)
    truth = -prog.true_elbo(x).sum()
    assert_within(v.mean(), v.std() / math.sqrt(calls), truth, f"Objective {estimator} L={num_particles}")


# ------------------------------------------------------------------------------------------------------------
# 4. Bad programs are refused with a one-line PyroVAEError naming the site
# ------------------------------------------------------------------------------------------------------------


class _OneLatent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2, dtype=DT))

    def model(self, x):
        with pyro.plate("data", len(x), dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), x.new_ones(len(x), 2)).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", len(x), dim=-1):
            pyro.sample("z", dist.Normal(0.5 * x + self.loc, 0.8).to_event(1))


class _ExtraGuideSite(_OneLatent):
    def guide(self, x):
        with pyro.plate("data", len(x), dim=-1):
            pyro.sample("z", dist.Normal(0.5 * x + self.loc, 0.8).to_event(1))
            pyro.sample("w_extra", dist.Normal(x.new_zeros(len(x)), 1.0))


class _GlobalLatent(_OneLatent):
    def model(self, x):
        g = pyro.sample("g_global", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
        with pyro.plate("data", len(x), dim=-1):
            z = pyro.sample("z", dist.Normal(g + x.new_zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(self, x):
        pyro.sample("g_global", dist.Normal(torch.tensor(0.1, dtype=DT), 0.9))
        with pyro.plate("data", len(x), dim=-1):
            pyro.sample("z", dist.Normal(0.5 * x + self.loc, 0.8).to_event(1))


class _NoGuide(nn.Module):
    def model(self, x):
        with pyro.plate("data", len(x), dim=-1):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def _x2():
    return torch.randn(4, 2, dtype=DT, generator=torch.Generator().manual_seed(0))


def test_good_one_latent_program_runs():
    """The control for the refusals below: the same program without the defect is accepted."""
    x = _x2()
    assert pyro_vae.elbo_per_example(_OneLatent(), x, "mc").shape == (4,)
    assert pyro_vae.log_likelihood(_OneLatent(), x, num_samples=3).shape == (4,)


@pytest.mark.parametrize(
    "program,site", [(_ExtraGuideSite, "w_extra"), (_GlobalLatent, "g_global")], ids=["guide-only-site", "global"]
)
@pytest.mark.parametrize("tool", ["elbo_per_example", "log_likelihood"])
def test_bad_program_refused(program, site, tool):
    x = _x2()
    with pytest.raises(PyroVAEError) as err:
        if tool == "elbo_per_example":
            pyro_vae.elbo_per_example(program(), x, "mc")
        else:
            pyro_vae.log_likelihood(program(), x, num_samples=3)
    assert_one_line_naming(err, site)


@pytest.mark.parametrize("tool", ["Objective", "evaluate_elbo"])
def test_program_without_guide_refused(tool):
    x = _x2()
    with pytest.raises(PyroVAEError) as err:
        if tool == "Objective":
            pyro_vae.Objective(_NoGuide(), "mc")(x)
        else:
            pyro_vae.evaluate_elbo(_NoGuide(), x)
    msg = str(err.value)
    assert "\n" not in msg.strip() and "guide" in msg, msg


# ------------------------------------------------------------------------------------------------------------
# 5. Scaling from outside: N/B and beta by effect handlers equal a program that scales itself
# ------------------------------------------------------------------------------------------------------------


class SelfScaling(TwoLayerGaussian):
    """The same program, declaring ``num_data`` and ``beta`` and applying them itself, as ``VAE`` does."""

    def model(self, x, num_data=None, beta=1.0):
        with poutine.scale(scale=(num_data or len(x)) / len(x)), _latent_weight(beta):
            super().model(x)

    def guide(self, x, num_data=None, beta=1.0):
        with poutine.scale(scale=(num_data or len(x)) / len(x)), _latent_weight(beta):
            super().guide(x)


def _latent_weight(beta):
    """Scale (or mask, at 0) the latent sites by hand, with Pyro's own handlers applied to them alone."""
    return _LatentOnly(poutine.mask(mask=False) if beta == 0 else poutine.scale(scale=beta))


class _LatentOnly(poutine.messenger.Messenger):
    """Passes latent sample sites (not the observed one, nor the plate's subsample site) to ``handler``."""

    def __init__(self, handler):
        super().__init__()
        self.handler = handler

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and msg["name"] != "data":
            self.handler._process_message(msg)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("estimator", ("mc", "analytic", "stl"))
def test_scaling_from_outside_equals_a_program_that_scales_itself(estimator, beta):
    x, guide = data(), wrong_guide(LG, "bottom_up")
    plain, declared = TwoLayerGaussian(LG, guide), SelfScaling(LG, guide)
    losses = []
    for program in (plain, declared):
        pyro.set_rng_seed(11)
        loss = pyro_vae.Objective(program, estimator, num_particles=2, beta=beta)(x, num_data=7 * len(x))
        grads = torch.autograd.grad(loss, list(program.parameters()), allow_unused=True)
        losses.append((loss, grads))
    (a, grads_a), (b, grads_b) = losses
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)
    for g, h in zip(grads_a, grads_b):
        assert (g is None) == (h is None) and (g is None or torch.allclose(g, h, rtol=1e-10, atol=1e-12))


def test_a_bad_program_is_refused_before_a_run_folder_is_written(tmp_path):
    from pyro_vae.runs.config import Config
    from pyro_vae.runs.folders import train_run

    class Global(nn.Module):
        def __init__(self, event_shape: tuple) -> None:
            super().__init__()
            self.loc = nn.Parameter(torch.zeros(()))

        def model(self, x):
            g = pyro.sample("g_global", dist.Normal(self.loc, 1.0))
            with pyro.plate("data", len(x), dim=-1):
                pyro.sample("x", dist.Normal(g, 1.0).expand([len(x), x[0].numel()]).to_event(1), obs=x.flatten(1))

        def guide(self, x):
            pyro.sample("g_global", dist.Normal(self.loc, 1.0))

    pyro_vae.MODELS.register("global_latent_test")(Global)
    try:
        config = Config.from_dict({"model": {"type": "global_latent_test"}, "train": {"epochs": 1}})
        with pytest.raises(PyroVAEError) as error:
            train_run(config, tmp_path / "run", progress=False)
        assert "'g_global' is outside the data plate" in str(error.value) and "\n" not in str(error.value)
        assert not (tmp_path / "run").exists()
    finally:
        pyro_vae.MODELS.unregister("global_latent_test")


@pytest.mark.parametrize("order, defined", [("top_down", "z2"), ("bottom_up", None)])
def test_diagnostics_per_site_and_where_the_mutual_information_is_defined(order, defined):
    """Per-site reports; I(x; z) only for a site whose guide and prior depend on x alone (not on another draw)."""
    x = data(200, seed=3)
    prog = TwoLayerGaussian(LG, wrong_guide(LG, order))
    report = pyro_vae.diagnostics(prog, x, num_samples=2)
    assert set(report["sites"]) == {"z1", "z2"}
    assert report["latent_dim"] == sum(site["latent_dim"] for site in report["sites"].values())
    assert report["kl_total"] == pytest.approx(sum(site["kl_total"] for site in report["sites"].values()))
    for name, site in report["sites"].items():
        assert (site["mutual_information"] is not None) == (name == defined), (name, site["mutual_information"])


# ------------------------------------------------------------------------------------------------------------
# 6. The other tools on programs: compare, pictures' posterior means, Pyro's JIT
# ------------------------------------------------------------------------------------------------------------


def test_compare_skips_the_estimators_a_program_cannot_take_and_counts_unused_parameters_as_zero():
    m = Mixture("wrong")
    m.unused = nn.Parameter(torch.zeros(3, dtype=DT))  # reached by no site: a zero gradient, not a crash
    result = pyro_vae.compare_estimators(m, m.sample_x(20), particles=(1,), repeats=3)
    assert [row["estimator"] for row in result["rows"]] == ["mc"]
    assert set(result["skipped"]) == {"analytic", "stl", "iwae", "dreg"}
    assert all("'label'" in why for why in result["skipped"].values())
    with pytest.raises(PyroVAEError, match="'label'"):  # asked for by name: refused in one line
        pyro_vae.compare_estimators(m, m.sample_x(20), particles=(1,), repeats=3, estimators=["stl"])


def test_posterior_means_of_a_program_with_several_latent_sites_are_refused_in_one_line():
    from pyro_vae.runs.plots import posterior_means

    with pytest.raises(PyroVAEError, match="one latent site; this one has 2"):
        posterior_means(TwoLayerGaussian(LG, wrong_guide(LG, "top_down")), data())


class _Registered(TwoLayerGaussian):
    """Registers its parameters with Pyro under a fixed name, as many user programs do."""

    def model(self, x):
        pyro.module("fixed_name", self)
        super().model(x)

    def guide(self, x):
        pyro.module("fixed_name", self)
        super().guide(x)


def test_the_jit_refuses_a_param_store_holding_another_modules_parameters_under_the_same_name():
    pyro.clear_param_store()
    guide = wrong_guide(LG, "top_down")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values taken from tensors
        pyro_vae.Objective(_Registered(LG, guide), "mc", jit=True)(data())
        with pytest.raises(PyroVAEError, match="param store holds 'fixed_name\\$\\$\\$"):
            pyro_vae.Objective(_Registered(LG, guide), "mc", jit=True)(data())
    pyro.clear_param_store()


# ------------------------------------------------------------------------------------------------------------
# 4. Sticking the landing and DReG keep a guide site's dependence on an earlier draw
# ------------------------------------------------------------------------------------------------------------

GUIDE_PARAMS = ("Wf", "cf", "Lf", "C", "Ws", "cs", "Ls")


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("estimator", ["stl", "dreg"])
@pytest.mark.parametrize("order", ["top_down", "bottom_up"])
def test_gradients_without_a_score_term_vanish_at_the_exact_posterior_for_every_draw(order, estimator, num_particles):
    """At the exact posterior log p(x, z) - log q(z|x) = log p(x) for every z, so the path derivative is zero at
    every draw. The guide's second site is drawn from the first (its mean is C f + ...): holding the guide's
    parameters by detaching each site's distribution would drop that dependence and leave a gradient."""
    prog = TwoLayerGaussian(LG, exact_guide(LG, order))
    params = [getattr(prog, name) for name in GUIDE_PARAMS]
    for seed in range(3):
        pyro.set_rng_seed(seed)
        loss = pyro_vae.Objective(prog, estimator, num_particles=num_particles)(data())
        for name, grad in zip(GUIDE_PARAMS, torch.autograd.grad(loss, params)):
            assert grad.abs().max() < 1e-8, (name, grad)


@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_a_guide_of_pyro_params_is_held_too(estimator):
    """A guide written with ``pyro.param`` (no module): its parameters are held by the same handler."""
    pyro.clear_param_store()
    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):  # the exact posterior N(x/2, 1/2), through parameters a * x and s
        a = pyro.param("a", torch.tensor(0.5, dtype=torch.float64))
        s = pyro.param("s", torch.tensor(0.5, dtype=torch.float64).sqrt())
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(a * x, s))

    elbo = pyro_vae.make_elbo(estimator, num_particles=3)
    loss = elbo.differentiable_loss(model, guide, x)
    params = [pyro.param("a").unconstrained(), pyro.param("s").unconstrained()]
    for grad in torch.autograd.grad(loss, params):
        assert grad.abs().max() < 1e-10, grad


def test_a_guide_that_hides_its_module_is_refused_rather_than_half_held():
    """A guide that is not the module's own method (wrapped by a handler) cannot have the module's parameters
    held: stl and dreg refuse it in one line instead of returning the full gradient."""
    prog = TwoLayerGaussian(LG, exact_guide(LG, "bottom_up"))

    def guide(x):  # the module's parameters reached through pyro.module, from a plain function
        pyro.module("two_layer", prog)
        prog.guide(x)

    def model(x):
        pyro.module("two_layer", prog)
        prog.model(x)

    for estimator in ("stl", "dreg"):
        with pytest.raises(ConfigError, match="hold them fixed only where the guide is a method"):
            pyro_vae.make_elbo(estimator, num_particles=2).differentiable_loss(model, guide, data())


def test_dreg_guesses_the_plate_nesting_as_pyro_does():
    from pyro_vae.infer.references import TraceDReG_ELBO

    prog = TwoLayerGaussian(LG, exact_guide(LG, "bottom_up"))
    loss = TraceDReG_ELBO(num_particles=3, vectorize_particles=True).differentiable_loss(prog.model, prog.guide, data())
    assert torch.isfinite(loss)
