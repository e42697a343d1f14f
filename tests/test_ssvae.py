"""The semi-supervised VAE (M2): its enumerated ELBO against a sum over the classes by hand, on the same draws."""

from __future__ import annotations

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.infer.estimators import log_weight
from pyro_vae.infer.objectives import Objective, enumerated_terms, evaluate_elbo
from pyro_vae.infer.program import traces
from pyro_vae.models.ssvae import SSVAE

from helpers import tiny_m1m2, tiny_m2


def _m2(alpha: float = 3.0) -> SSVAE:
    return tiny_m2(alpha)


def _by_hand(m2: SSVAE, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """sum_y q(y|x) [log p(x|y,z_y) + log p(z_y) + log p(y) - log q(z_y|x,y) - log q(y|x)], shape (particles, batch),
    with z of shape (classes, particles, batch, latent): the program's networks called directly."""
    log_q_y = torch.log_softmax(m2.classify(x), -1)  # (batch, classes)
    out = 0.0
    for c in range(m2.num_classes):
        y = torch.full((len(x),), c)
        code = torch.nn.functional.one_hot(y, 3).double()
        logits = m2.decoder(torch.cat([z[c], code.expand(*z[c].shape[:-1], 3)], -1))
        loc, scale = m2.encoder(torch.cat([x.flatten(1), code], -1))
        term = (
            dist.Bernoulli(logits=logits).to_event(2).log_prob(x)
            + dist.Normal(0.0, 1.0).log_prob(z[c]).sum(-1)
            + math.log(1 / 3)
            - dist.Normal(loc, scale).log_prob(z[c]).sum(-1)
            - log_q_y[:, c]
        )
        out = out + log_q_y[:, c].exp() * term
    return out


def _x() -> torch.Tensor:
    return torch.rand(4, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).bernoulli()


def test_the_enumerated_elbo_is_the_sum_over_classes_by_hand():
    m2, x = _m2(), _x()
    torch.manual_seed(5)
    guide_trace, _ = traces(m2, x, None, num_particles=3, enumerate=True)
    torch.manual_seed(5)
    terms, log_q = enumerated_terms(m2, x, num_particles=3, closed_form={})
    summed = (log_q.exp() * log_weight(terms)).sum(0)
    assert torch.allclose(summed, _by_hand(m2, x, guide_trace.nodes["z"]["value"]), atol=1e-10)


def test_the_training_loss_is_trace_enum_elbo_plus_the_classifier_term():
    """Unlabelled: minus the enumerated ELBO by hand (TraceEnum_ELBO's draws), scaled to num_data. Labelled: the
    ELBO of p(x, y) plus alpha times -log q(y|x), both scaled."""
    m2, x = _m2(), _x()
    pyro.clear_param_store()
    objective = Objective(m2, "mc")
    torch.manual_seed(7)
    loss = objective(x, num_data=40)
    torch.manual_seed(7)
    z = traces(m2, x, None, num_particles=1, enumerate=True)[0].nodes["z"]["value"]
    assert loss.item() == pytest.approx(-(40 / 4) * _by_hand(m2, x, z).sum().item(), abs=1e-9)

    y = torch.tensor([0, 2, 1, 1])
    torch.manual_seed(9)
    labelled = objective(x, num_data=40, y=y)
    torch.manual_seed(9)
    guide_trace, model_trace = traces(m2, x, y)
    guide_trace.compute_log_prob(), model_trace.compute_log_prob()
    elbo = sum(s["log_prob"].sum() for s in model_trace.nodes.values() if s["type"] == "sample")
    elbo = elbo - sum(s["log_prob"].sum() for s in guide_trace.nodes.values() if s["type"] == "sample")
    classifier = torch.log_softmax(m2.classify(x), -1)[torch.arange(4), y].sum()
    assert labelled.item() == pytest.approx(-(40 / 4) * (elbo + 3.0 * classifier).item(), abs=1e-9)


@pytest.mark.parametrize("labelled", [False, True])
@pytest.mark.parametrize("num_particles, beta", [(1, 1.0), (3, 1.0), (2, 0.4)])
@pytest.mark.parametrize("make", [tiny_m2, tiny_m1m2], ids=["ssvae", "m1m2"])
def test_the_fused_loss_is_trace_enum_elbo_plus_the_classifier_term(make, labelled, num_particles, beta):
    """Same draws: the fused loss and its gradient equal Pyro's path (TraceEnum_ELBO with the auxiliary term)."""
    m2, x = make(), _x()
    y = torch.tensor([0, 2, 1, 1]) if labelled else None
    losses, grads = [], []
    for fused in (False, True):
        pyro.clear_param_store()
        objective = Objective(m2, "mc", num_particles=num_particles, beta=beta, fused=fused)
        assert objective.fused == fused
        torch.manual_seed(11)
        losses.append(objective(x, num_data=40, y=y))
        grads.append(torch.autograd.grad(losses[-1], [p for p in m2.parameters() if p.requires_grad]))
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=1e-12)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_the_fused_path_refuses_an_estimator_that_cannot_sum_the_label_out():
    from pyro_vae.errors import ConfigError

    objective = Objective(_m2(), "stl", fused=True)
    with pytest.raises(ConfigError, match="enumerates site 'y'"):
        objective(_x(), num_data=40)


def test_evaluation_counts_no_classifier_term():
    m2, x = _m2(alpha=1000.0), _x()
    y = torch.tensor([0, 2, 1, 1])
    torch.manual_seed(3)
    with_alpha = evaluate_elbo(m2, x, num_particles=2, estimators=("mc",), y=y)["elbo_mc"]
    m2.alpha = 0.0
    torch.manual_seed(3)
    assert evaluate_elbo(m2, x, num_particles=2, estimators=("mc",), y=y)["elbo_mc"] == with_alpha


class _Oracle(torch.nn.Module):
    """A classifier that knows the labels of the first points (x holds each point's index) and says 0 for the rest."""

    def __init__(self, y: torch.Tensor, known: int) -> None:
        super().__init__()
        self.y, self.known = y, known

    def classify(self, x):
        index = x[:, 0].long()
        guess = torch.where(index < self.known, self.y[index], 0)
        return torch.zeros(len(x), 3).scatter(1, guess[:, None], 1.0)


def test_accuracy_counts_the_modes_that_hit_and_leaves_unlabelled_points_out():
    from pyro_vae.infer.diagnostics import accuracy

    y = torch.tensor([1, 2, 2, 1, 0, 1, 2, 1])  # of the last four only the 0 is hit
    x = torch.arange(8.0)[:, None].expand(8, 2)
    a, se = accuracy(_Oracle(y, known=4), x, y, batch_size=3)
    assert a == pytest.approx(5 / 8) and se == pytest.approx(math.sqrt(5 / 8 * 3 / 8 / 8))
    masked = y.clone()
    masked[4:] = -1  # UNLABELLED
    assert accuracy(_Oracle(y, known=4), x, masked)[0] == 1.0


def test_evaluate_reports_the_classifier_accuracy(tmp_path, capsys):
    import json

    import pyro_vae
    from pyro_vae.cli.main import main
    from pyro_vae.runs.config import load_data

    run = tmp_path / "m2"
    args = "train --model ssvae --labels 50 --binarize dynamic --epochs 1 --latent-dim 4 --hidden 16 --quiet"
    assert main([*args.split(), "--out", str(run)]) == 0
    m2, config = pyro_vae.load(run)
    data = load_data(config)
    expected = (m2.classify(data.test).argmax(-1) == data.test_labels).double().mean().item()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_a_run_on_a_users_file_records_its_number_of_classes(tmp_path):
    """Three classes read from the labels: the run's config keeps them, so the run loads without its data."""
    import numpy as np

    import pyro_vae
    from pyro_vae.cli.main import main

    rng = np.random.default_rng(0)
    path = tmp_path / "three.npz"
    np.savez(path, x=(rng.random((60, 4)) > 0.5).astype(np.float32), y=np.arange(60) % 3)
    run = tmp_path / "run"
    args = f"train --dataset {path} --model ssvae --labels 6 --epochs 1 --latent-dim 2 --hidden 8 --batch-size 12"
    assert main([*args.split(), "--out", str(run), "--quiet"]) == 0
    m2, config = pyro_vae.load(run)
    assert config.data.num_classes == 3 and m2.num_classes == 3


@pytest.mark.parametrize(
    "model, data",
    [
        ({"type": "ssvae", "hidden": [16]}, {"labels": 30, "label_batches": "mixed"}),
        ({"type": "ssvae", "hidden": [16]}, {"labels": 30, "label_batches": "ratio"}),
        ({"type": "cvae", "hidden": [16]}, {}),
    ],
    ids=["ssvae-mixed", "ssvae-ratio", "cvae"],
)
def test_a_stopped_run_with_labels_resumes_bit_for_bit(tmp_path, model, data):
    """Stopped inside its second epoch, resumed from its checkpoint: the same parameters, metrics and summary as
    the run never stopped (the label subset, the labelled and unlabelled orders and the binarization included)."""
    from pyro_vae import Config
    from pyro_vae.runs.folders import resume_run, train_run
    from pyro_vae.runs.storage import load_checkpoint
    from pyro_vae.training.loop import TrainingInterrupted

    values = {
        "data": {"binarize": "dynamic", **data},
        "model": {"latent_dim": 3, **model},
        "train": {"epochs": 2, "batch_size": 128, "checkpoint_every": 0},
    }
    config = Config.from_dict(values)
    train_run(config, tmp_path / "whole", progress=False)
    polls = iter(range(10**9))
    with pytest.raises(TrainingInterrupted):  # polls: before writing, at the start, 11 steps, epoch 1's end, 3 steps
        train_run(config, tmp_path / "stopped", progress=False, stop=lambda: 15 if next(polls) >= 17 else None)
    resume_run(tmp_path / "stopped", progress=False)
    whole, stopped = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("whole", "stopped"))
    assert whole["model"].keys() == stopped["model"].keys()
    assert all(torch.equal(whole["model"][k], stopped["model"][k]) for k in whole["model"])

    def metrics(name):
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert metrics("stopped") == metrics("whole")


def test_the_training_elbo_leaves_the_classifier_term_out():
    """With a learning rate too small to move anything, two runs that differ only in alpha record the same
    training ELBO: the loop subtracts the auxiliary terms the objective added (Objective.take_auxiliary)."""
    import pyro_vae
    from pyro_vae.training.data import load_dataset

    data = load_dataset("digits", binarize="static", labels=40)
    elbos = []
    for alpha in (0.0, 1000.0):
        m2 = SSVAE((8, 8), latent_dim=2, hidden=(8,), alpha=alpha)
        torch.manual_seed(0)
        m2.load_state_dict(SSVAE((8, 8), latent_dim=2, hidden=(8,)).state_dict())
        history = pyro_vae.fit(m2, data, epochs=1, batch_size=128, lr=1e-12, seed=3, progress=False)
        elbos.append(history[0]["train_elbo"])
    assert elbos[1] == pytest.approx(elbos[0], rel=1e-6)
    from pyro_vae.infer.diagnostics import accuracy

    assert history[0]["test_accuracy"] == accuracy(m2, data.test, data.test_labels)[0]  # recorded each epoch


def test_labels_with_unlabelled_points_are_refused_by_the_tools():
    from pyro_vae.errors import ConfigError

    m2, x = _m2(), _x()
    with pytest.raises(ConfigError, match=r"labels of SSVAE: some points are unlabelled \(-1\); pass y=None"):
        evaluate_elbo(m2, x, y=torch.tensor([0, -1, 2, 1]))


def test_a_run_written_before_the_choice_of_steps_resumes_with_the_steps_it_had(tmp_path):
    """A run's config.toml without data.label_batches (written by a release with one-kind steps only) resumes
    with "ratio" steps, as it was trained: bit for bit the run never stopped."""
    from pyro_vae import Config
    from pyro_vae.runs.folders import resume_run, train_run
    from pyro_vae.runs.storage import load_checkpoint
    from pyro_vae.training.loop import TrainingInterrupted

    values = {
        "data": {"binarize": "dynamic", "labels": 30, "label_batches": "ratio"},
        "model": {"type": "ssvae", "latent_dim": 3, "hidden": [16]},
        "train": {"epochs": 2, "batch_size": 128, "checkpoint_every": 0},
    }
    train_run(Config.from_dict(values), tmp_path / "whole", progress=False)
    polls = iter(range(10**9))
    with pytest.raises(TrainingInterrupted):
        train_run(
            Config.from_dict(values), tmp_path / "old", progress=False, stop=lambda: 15 if next(polls) >= 17 else None
        )
    path = tmp_path / "old" / "config.toml"
    path.write_text("".join(line for line in path.read_text().splitlines(True) if not line.startswith("label_batches")))
    resume_run(tmp_path / "old", progress=False)
    whole, old = (load_checkpoint(tmp_path / name / "checkpoint.pt")["model"] for name in ("whole", "old"))
    assert all(torch.equal(whole[k], old[k]) for k in whole)
