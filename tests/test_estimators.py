"""Every registered estimator: its fused loss is its Pyro reference, its per-example value is its loss.

The tests iterate over :data:`pyro_vae.infer.estimators.ESTIMATORS`, so a new estimator is covered by
registering it (one row of each parametrized test).
"""

import pyro
import pytest
import torch
from pyro.infer import ELBO

from pyro_vae import ESTIMATORS, LIKELIHOODS, PRIORS, Estimator, Objective, make_elbo
from pyro_vae.cli.main import main
from pyro_vae.errors import ConfigError
from pyro_vae.infer.objectives import choose_path, elbo_per_example, evaluate_elbo, kl_methods

from helpers import FUSED, tiny_batch, tiny_vae

NUM_DATA = 60


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_entry_is_an_estimator_with_pyro_references(name):
    cls = ESTIMATORS.get(name)
    assert issubclass(cls, Estimator)
    assert issubclass(cls.reference, ELBO)
    assert cls.jit_reference is None or issubclass(cls.jit_reference, ELBO)
    elbo = cls(num_particles=3).pyro_elbo()
    assert isinstance(elbo, cls.reference) and elbo.num_particles == 3 and elbo.vectorize_particles


#: Every estimator with every KL weight it accepts (the importance-weighted bound has no KL to weight).
WEIGHTS = [
    (name, beta) for name in ESTIMATORS for beta in (1.0, 0.5, 0.0) if beta == 1 or ESTIMATORS.get(name).weights_kl
]


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("prior", list(PRIORS))
@pytest.mark.parametrize("name,beta", WEIGHTS)
@pytest.mark.parametrize("program", list(FUSED))
def test_fused_loss_equals_the_pyro_reference(program, name, beta, prior, num_particles, float64):
    vae, x = FUSED[program](prior={"type": prior}, double=False), tiny_batch()
    assert_fused_equals_reference(vae, x, name, num_particles, beta)


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS) + ["gaussian-learned"])
@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("program", list(FUSED))
def test_fused_loss_equals_the_pyro_reference_for_every_likelihood(program, name, likelihood, float64):
    spec = (
        {"type": "gaussian", "learn_scale": "per_pixel"} if likelihood == "gaussian-learned" else {"type": likelihood}
    )
    assert_fused_equals_reference(FUSED[program](likelihood=spec, double=False), tiny_batch(), name, 2, 1.0)


@pytest.mark.parametrize("program", list(FUSED))
def test_a_fused_form_declares_the_closed_forms_that_the_traces_find_exact(program):
    vae = FUSED[program]()
    methods = kl_methods(vae, tiny_batch(), "analytic")
    assert list(methods.values()) == ["closed_form" if exact else "sampled" for exact in vae.fused_exact]


#: Free bits with every estimator that implements it, every prior that is a product over dimensions,
#: a floor below and one above the dimensions' KL terms.
FREE_BITS = [
    (name, prior, free_bits)
    for name in ESTIMATORS
    if ESTIMATORS.get(name).free_bits
    for prior in ("standard_normal", "normal", "laplace", "student_t")
    for free_bits in (0.05, 20.0)
]


@pytest.mark.parametrize("num_particles,beta", [(1, 1.0), (3, 0.5)])
@pytest.mark.parametrize("name,prior,free_bits", FREE_BITS)
@pytest.mark.parametrize("program", list(FUSED))
def test_fused_free_bits_equals_the_pyro_reference(program, name, prior, free_bits, num_particles, beta, float64):
    vae, x = FUSED[program](prior={"type": prior}, double=False), tiny_batch()
    assert_fused_equals_reference(vae, x, name, num_particles, beta, free_bits)


def assert_fused_equals_reference(vae, x, name, num_particles, beta, free_bits=0.0):
    params = [p for p in vae.parameters() if p.requires_grad]
    results = []
    for fused in (False, True):
        pyro.set_rng_seed(3)
        loss = Objective(vae, name, num_particles, beta=beta, fused=fused, free_bits=free_bits)(x, NUM_DATA)
        results.append((loss, torch.autograd.grad(loss, params, allow_unused=True)))
    (reference, reference_grads), (loss, grads) = results
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-9)
    for g, r in zip(grads, reference_grads):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("num_particles", [1, 4])
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_per_example_values_sum_to_the_pyro_loss(name, num_particles):
    vae, x = tiny_vae(), tiny_batch()
    pyro.set_rng_seed(5)
    loss = make_elbo(name, num_particles).loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(5)
    per_example = elbo_per_example(vae, x, name, num_particles)
    assert per_example.shape == (len(x),)
    assert loss == pytest.approx(-per_example.sum().item(), rel=1e-10)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_evaluate_reports_the_estimators_asked_for(name):
    result = evaluate_elbo(tiny_vae(), tiny_batch(n=20), estimators=(name,))
    assert set(result) == {f"elbo_{name}", f"elbo_{name}_se", "num_examples"}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_kl_method_follows_the_estimator(name):
    expected = "closed_form" if ESTIMATORS.get(name).closed_form_kl else "sampled"
    assert kl_methods(tiny_vae(), tiny_batch(), name) == {"z": expected}


def test_the_fastest_exact_path_is_chosen_unless_asked_otherwise():
    from pyro_vae import VAE

    class Redefined(VAE):
        def guide(self, x, num_data=None, beta=1.0):
            return super().guide(x, num_data, beta)

    vae = tiny_vae()
    other = Redefined(vae.encoder, vae.decoder, vae.prior, vae.likelihood)
    assert choose_path(vae) == "fused" and choose_path(other) == "pyro"
    assert choose_path(vae, jit=True) == "jit" and choose_path(vae, fused=False) == "pyro"
    assert Objective(vae).path == "pyro"  # the Objective's own default is the reference
    assert choose_path(vae, compile=True) == "compiled"
    with pytest.raises(ConfigError, match="compile and jit cannot both be true"):
        choose_path(vae, jit=True, compile=True)
    with pytest.raises(ConfigError, match="fused: Redefined redefines the model or guide"):
        choose_path(other, compile=True)


def test_listing_shows_every_estimator(capsys):
    assert main(["estimators"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("estimators (train.elbo = ...)")
    for name in ESTIMATORS:
        assert f"\n  {name}  [" in text


@pytest.mark.slow  # each case compiles the loss and its gradient (seconds)
# torch.compile's tracer reads .grad of intermediate tensors where it resumes after a graph break (a
# sampled KL's distribution code), which warns; the warning is about the tracer, not about this code.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor is being accessed")
@pytest.mark.parametrize("prior", [{"type": "standard_normal"}, {"type": "student_t"}])
@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("program", ["vae", "hierarchical"])
def test_compiled_loss_equals_the_pyro_reference(program, name, prior, float64):
    vae, x = FUSED[program](prior=prior, double=False), tiny_batch()
    params = [p for p in vae.parameters() if p.requires_grad]
    reference, compiled = Objective(vae, name, 2), Objective(vae, name, 2, compile=True)
    assert compiled.path == "compiled"
    for seed in (3, 4):  # the second call runs the compiled code without compiling
        results = []
        for objective in (reference, compiled):
            pyro.set_rng_seed(seed)
            loss = objective(x, NUM_DATA)
            results.append((loss, torch.autograd.grad(loss, params)))
        (expected, expected_grads), (loss, grads) = results
        torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-9)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor is being accessed")
def test_a_compiled_run_trains_and_says_so(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--batch-size", "256", "--compile"]
    assert main([*args, "--quiet", "--out", str(out)]) == 0
    import json

    assert json.loads((out / "summary.json").read_text())["path"] == "compiled"
    assert "compile = true" in (out / "config.toml").read_text()
