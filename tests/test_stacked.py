"""M1 + M2: its enumerated ELBO against a sum over the classes by hand, and M1 held fixed through training."""

from __future__ import annotations

import math
import shutil

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_vae
from pyro_vae.cli.main import main
from pyro_vae.infer.estimators import log_weight
from pyro_vae.infer.objectives import Objective, enumerated_terms
from pyro_vae.infer.program import traces
from pyro_vae.models.stacked import M1M2
from pyro_vae.training.initialization import initialize

from helpers import tiny_m1m2

C = 3  # classes


def _stacked() -> M1M2:
    return tiny_m1m2()


def _x() -> torch.Tensor:
    return torch.rand(4, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).bernoulli()


def _by_hand(m: M1M2, x: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """sum_y q(y|x) [log p(x|z1) + log p(z1|y,z2_y) + log p(z2_y) + log p(y) - log q(z1|x) - log q(z2_y|z1,y)
    - log q(y|x)], shape (particles, batch): z1 (particles, batch, 4), z2 (classes, particles, batch, 2)."""
    loc1, scale1 = m.m1.encoder(x)
    log_q_y = torch.log_softmax(m.classifier(loc1), -1)
    out = 0.0
    for c in range(C):
        code = torch.nn.functional.one_hot(torch.full((len(x),), c), C).double()
        p_loc, p_scale = m.decoder(torch.cat([z2[c], code.expand(*z2[c].shape[:-1], C)], -1))
        q_loc, q_scale = m.encoder(torch.cat([z1, code.expand(*z1.shape[:-1], C)], -1))
        term = (
            dist.Bernoulli(logits=m.m1.decoder(z1)).to_event(2).log_prob(x)
            + dist.Normal(p_loc, p_scale).log_prob(z1).sum(-1)
            + dist.Normal(0.0, 1.0).log_prob(z2[c]).sum(-1)
            + math.log(1 / C)
            - dist.Normal(loc1, scale1).log_prob(z1).sum(-1)
            - dist.Normal(q_loc, q_scale).log_prob(z2[c]).sum(-1)
            - log_q_y[:, c]
        )
        out = out + log_q_y[:, c].exp() * term
    return out


def test_the_enumerated_elbo_is_the_sum_over_classes_by_hand():
    m, x = _stacked(), _x()
    torch.manual_seed(5)
    guide_trace, _ = traces(m, x, None, num_particles=3, enumerate=True)
    torch.manual_seed(5)
    terms, log_q = enumerated_terms(m, x, num_particles=3, closed_form={})
    summed = (log_q.exp() * log_weight(terms)).sum(0)
    z1, z2 = guide_trace.nodes["z1"]["value"], guide_trace.nodes["z2"]["value"]
    assert torch.allclose(summed, _by_hand(m, x, z1, z2), atol=1e-10)


def test_classify_is_the_guides_q_y_given_x():
    m, x = _stacked(), _x()
    guide_trace, _ = traces(m, x, None, num_particles=1, enumerate=True)
    assert torch.allclose(guide_trace.nodes["y"]["fn"].logits, m.classify(x).log_softmax(-1), atol=1e-12)


@pytest.mark.parametrize("labelled", [False, True])
def test_m1_takes_no_gradient_and_no_pyro_parameter(labelled):
    pyro.clear_param_store()
    m, x = _stacked(), _x()
    y = torch.tensor([0, 1, 2, 0]) if labelled else None
    Objective(m, "mc")(x, num_data=100, y=y).backward()
    assert all(p.grad is None and not p.requires_grad for p in m.m1.parameters())
    m2 = [p for name, p in m.named_parameters() if not name.startswith("m1.")]
    assert m2 and all(p.grad is not None for p in m2)
    assert len(pyro.get_param_store().keys()) == len(m2)


def test_a_run_on_the_digits_keeps_m1_as_trained(tmp_path):
    """From the command line: M1 (a VAE), then M1 + M2 on it; the run's M1 weights are M1's run's, every one."""
    common = ["--epochs", "2", "--hidden", "16", "--quiet"]
    assert main(["train", *common, "--latent-dim", "6", "--out", str(tmp_path / "m1")]) == 0
    args = ["--model", "m1m2", "--labels", "50", "--set", f"model.features={tmp_path / 'm1'}"]
    args += ["--set", "model.hidden=[16]"]
    assert main(["train", *common, *args, "--latent-dim", "3", "--out", str(tmp_path / "m1m2")]) == 0
    m1, _ = pyro_vae.load(tmp_path / "m1")
    stacked, config = pyro_vae.load(tmp_path / "m1m2")
    assert config.model.type == "m1m2" and stacked.m1.latent_dim == 6
    for (name, p), q in zip(stacked.m1.state_dict().items(), m1.state_dict().values()):
        assert torch.equal(p, q), name
    data = pyro_vae.load_dataset("digits")
    assert 0.1 <= pyro_vae.infer.diagnostics.accuracy(stacked, data.test, data.test_labels)[0] <= 1
    assert torch.isfinite(pyro_vae.log_likelihood(stacked, data.test[:5], num_samples=10)).all()


def test_glorot_initialization_leaves_m1_as_trained():
    m = _stacked()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    initialize(m, "glorot")
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("m1."))
    assert not torch.equal(before["encoder.net.0.weight"], after["encoder.net.0.weight"])


def test_a_run_and_its_m1_move_together(tmp_path, monkeypatch):
    """The run records M1's folder relative to itself: copied elsewhere beside its M1, it loads from any folder."""
    old = tmp_path / "old"
    common = ["--epochs", "1", "--hidden", "8", "--quiet", "--latent-dim", "3"]
    monkeypatch.chdir(tmp_path)
    assert main(["train", *common, "--out", "old/m1"]) == 0
    args = ["--model", "m1m2", "--labels", "20", "--set", "model.features=old/m1", "--set", "model.hidden=[8]"]
    assert main(["train", *common, *args, "--out", "old/runs/m1m2"]) == 0
    assert 'features = "../../m1"' in (old / "runs" / "m1m2" / "config.toml").read_text()
    shutil.copytree(old, tmp_path / "new")
    shutil.rmtree(old)
    monkeypatch.chdir(tmp_path / "new" / "runs")
    stacked, _ = pyro_vae.load(tmp_path / "new" / "runs" / "m1m2")
    m1, _ = pyro_vae.load("../m1")
    assert all(torch.equal(a, b) for a, b in zip(stacked.m1.state_dict().values(), m1.state_dict().values()))
