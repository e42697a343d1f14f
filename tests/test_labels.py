"""Labels: checked, a balanced seeded subset kept, and minibatches in the data's ratio, weighted without bias."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_vae.errors import DataError
from pyro_vae.training.data import load_dataset
from pyro_vae.training.labels import UNLABELLED, check_labels, epoch_steps, keep_labels, labelled_batches, mixed_batches


def _kept_per_class(kept: torch.Tensor, num_classes: int) -> list[int]:
    return torch.bincount(kept[kept != UNLABELLED], minlength=num_classes).tolist()


@pytest.mark.parametrize("n, expected", [(50, [5] * 10), (10, [1] * 10)])
def test_keep_labels_is_balanced(n, expected):
    data = load_dataset("digits", labels=n, label_seed=1)
    assert data.num_classes == 10 and data.num_labelled == n
    assert _kept_per_class(data.train_labels, 10) == expected
    full = load_dataset("digits").train_labels
    kept = data.train_labels != UNLABELLED
    assert torch.equal(data.train_labels[kept], full[kept])  # a kept label is the point's own


def test_keep_labels_spreads_the_remainder_and_is_seeded():
    labels = torch.arange(3).repeat(20)
    first, again, other = (keep_labels(labels, 7, 3, seed) for seed in (4, 4, 5))
    assert sorted(_kept_per_class(first, 3)) == [2, 2, 3]
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_all_labels_by_default():
    data = load_dataset("digits")
    assert data.num_labelled == len(data.train) and data.num_classes == 10


@pytest.mark.parametrize(
    "labels, classes, message",
    [
        (torch.tensor([0.0, 2.5, 1.0]), None, r"not integers: 2\.5 at index 1"),
        (torch.tensor([0.0, float("nan")]), None, r"not integers: nan at index 1"),
        (torch.tensor([0, -1, 1]), None, r"label -1 at index 1 is out of range; classes are 0 or more"),
        (torch.tensor([0, 1, 3]), 3, r"label 3 at index 2 is out of range; classes are 0\.\.2"),
        (torch.tensor([True, False]), None, r"are torch\.bool, not integer class indices"),
    ],
)
def test_bad_labels_are_refused(labels, classes, message):
    with pytest.raises(DataError, match=message):
        check_labels(labels, "labels", classes)


def test_integral_floats_are_labels():
    assert check_labels(torch.tensor([0.0, 2.0]), "labels").tolist() == [0, 2]


@pytest.mark.parametrize(
    "n, message",
    [(5, r"data\.labels = 5 is fewer than the 10 classes"), (2000, r"more than the 1438 training points")],
)
def test_label_counts_are_refused(n, message):
    with pytest.raises(DataError, match=message):
        load_dataset("digits", labels=n)


def _epoch(labels, batch_size, start=0, rank=0, world_size=1, seed=0):
    x = torch.arange(len(labels), dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    return list(labelled_batches(x, labels, batch_size, generator, start, rank, world_size))


def test_batches_keep_the_data_ratio_and_each_point_once():
    labels = torch.full((330,), UNLABELLED)
    labels[torch.arange(0, 330, 11)] = 1  # 30 labelled points, 300 unlabelled
    batches = _epoch(labels, 30)
    assert [b.y is not None for b in batches].count(True) == 1 and len(batches) == 11
    seen = torch.cat([b.x for b in batches]).long()
    assert sorted(seen.tolist()) == list(range(330))
    for b in batches:
        assert (b.y is not None) == bool((labels[b.x.long()] != UNLABELLED).all())


@pytest.mark.parametrize("num_labelled, batch_size", [(30, 30), (12, 30), (95, 20)])
def test_each_step_estimates_the_full_data_sum(num_labelled, batch_size):
    """A step's weighted sum, averaged over the steps of an epoch, is the full-data sum (exactly, when the
    batches cover every point; kinds chosen in proportion make it unbiased)."""
    n = 300 + num_labelled
    labels = torch.full((n,), UNLABELLED)
    labels[:num_labelled] = 0
    f = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    batches = _epoch(labels, batch_size)
    steps = [b.num_data / len(b.x) * f[b.x.long()].sum() for b in batches]
    covered = torch.cat([b.x for b in batches]).long()
    parts = [(labels != UNLABELLED), (labels == UNLABELLED)]
    expected = 0.0
    for mask in parts:  # each part's points seen this epoch stand for the whole part
        seen = mask[covered]
        expected += f[covered[seen]].mean() * mask.sum()
    assert torch.stack(steps).mean().item() == pytest.approx(expected.item(), rel=1e-12)


def test_resuming_inside_an_epoch_gives_its_remaining_batches():
    labels = torch.tensor([0, 1] * 20 + [UNLABELLED] * 200)
    whole, rest = _epoch(labels, 20), _epoch(labels, 20, start=4)
    assert len(rest) == len(whole) - 4
    for a, b in zip(whole[4:], rest):
        assert torch.equal(a.x, b.x) and a.num_data == b.num_data
        assert (a.y is None and b.y is None) or torch.equal(a.y, b.y)


def test_shards_of_a_job_make_the_single_process_epoch():
    labels = torch.tensor([0, 1] * 20 + [UNLABELLED] * 200)
    shards = [_epoch(labels, 10, rank=r, world_size=2) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])
    for a, b in zip(*shards):
        assert (a.y is None) == (b.y is None)  # the k-th batches are of one kind
    points = torch.cat([b.x for shard in shards for b in shard]).long()
    assert len(set(points.tolist())) == len(points) == 240


def _mixed(labels, batch_size, start=0, rank=0, world_size=1, seed=0):
    x = torch.arange(len(labels), dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    return list(mixed_batches(x, labels, batch_size, generator, start, rank, world_size))


@pytest.mark.parametrize("num_labelled, batch_size", [(30, 20), (7, 20), (200, 30), (240, 20)])
def test_mixed_steps_have_a_part_of_each_kind_standing_for_all_of_it(num_labelled, batch_size):
    n = 240
    labels = torch.full((n,), UNLABELLED)
    labels[torch.randperm(n, generator=torch.Generator().manual_seed(1))[:num_labelled]] = 3
    steps = _mixed(labels, batch_size)
    counts = [num_labelled, n - num_labelled]
    sizes = [min(batch_size, c) for c in counts]
    assert len(steps) == max(c // b for c, b in zip(counts, sizes) if b) == epoch_steps(labels, batch_size, 1, "mixed")
    seen = [torch.zeros(n, dtype=torch.long) for _ in counts]
    for step in steps:
        kinds = [0, 1] if 0 < num_labelled < n else [int(num_labelled == 0)]
        assert len(step) == len(kinds)
        for kind, part in zip(kinds, step):
            index = part.x.long()
            assert len(index) == sizes[kind] and part.num_data == counts[kind]
            assert bool(((labels[index] != UNLABELLED) == (kind == 0)).all())
            assert part.y is None if kind else torch.equal(part.y, labels[index])
            seen[kind].index_add_(0, index, torch.ones_like(index))  # a part across two rounds may repeat a point
    for kind, count in enumerate(counts):  # the larger kind once, the smaller in full rounds, as evenly as can be
        times = seen[kind][(labels != UNLABELLED) == (kind == 0)]
        if count:
            assert int(times.max()) - int(times.min()) <= 1 and int(times.sum()) == len(steps) * sizes[kind]


def test_each_mixed_step_is_an_unbiased_estimate_of_the_full_data_sum():
    """Averaged over epochs (seeds), every point of the cycled kind weighs one, as in the full-data sum: the
    mean of a step's estimate, sum_k N_k / b_k sum_(part k) f, is sum_i f_i, within 4 standard errors."""
    labels = torch.full((230,), UNLABELLED)
    labels[:13] = 1  # 13 labelled points in parts of 10: the cycle's position moves from step to step
    f = torch.randn(230, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    estimates = torch.tensor(
        [
            sum(p.num_data / len(p.x) * f[p.x.long()].sum() for p in step)
            for seed in range(60)
            for step in _mixed(labels, 10, seed=seed)
        ]
    )
    se = estimates.std() / len(estimates) ** 0.5  # steps of one epoch are dependent: a conservative check below too
    assert abs(estimates.mean() - f.sum()) < 4 * se
    per_epoch = estimates.view(60, -1).mean(1)
    assert abs(per_epoch.mean() - f.sum()) < 4 * per_epoch.std() / 60**0.5


def test_mixed_steps_resume_and_shard():
    labels = torch.tensor([0, 1] * 10 + [UNLABELLED] * 200)
    whole, rest = _mixed(labels, 20), _mixed(labels, 20, start=3)
    assert len(rest) == len(whole) - 3
    for a, b in zip(whole[3:], rest):
        assert all(torch.equal(p.x, q.x) and p.num_data == q.num_data for p, q in zip(a, b))
    shards = [_mixed(labels, 10, rank=r, world_size=2) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 10
    unlabelled = torch.cat([step[1].x for shard in shards for step in shard]).long()
    assert len(set(unlabelled.tolist())) == len(unlabelled) == 200
    first = torch.cat([shard[0][0].x for shard in shards]).long()  # the two shards of one order: all 20 labels
    assert sorted(first.tolist()) == list(range(20))
    with pytest.raises(DataError, match="cannot be shared by 3 processes"):
        _mixed(torch.tensor([0, 1] + [UNLABELLED] * 30), 4, world_size=3)


def test_dataset_batches_binarize_and_need_labels():
    data = load_dataset("digits", binarize="dynamic", labels=20)
    for scheme, parts in (("mixed", 2), ("ratio", 1)):
        data.label_batches = scheme
        step = next(data.labelled_batches(100, torch.Generator().manual_seed(0)))
        assert len(step) == parts and all(set(b.x.unique().tolist()) <= {0.0, 1.0} for b in step)
    data.train_labels = None
    with pytest.raises(DataError, match="has no labels"):
        next(data.labelled_batches(100))


class _TinyM2(torch.nn.Module):
    """A small M2-like program whose label is observed where given and latent (sampled) where not."""

    def __init__(self, d: int = 64, classes: int = 10, z: int = 2) -> None:
        super().__init__()
        self.classifier, self.encode = torch.nn.Linear(d, classes), torch.nn.Linear(d + classes, 2 * z)
        self.decode, self.classes, self.z = torch.nn.Linear(z + classes, d), classes, z
        self.calls: list[str] = []

    def _one_hot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        one_hot = torch.nn.functional.one_hot(y, self.classes).float()
        return torch.broadcast_to(
            one_hot, torch.broadcast_shapes(one_hot.shape[:-1], like.shape[:-1]) + one_hot.shape[-1:]
        )

    def model(self, x, y=None):
        import pyro
        import pyro.distributions as dist

        self.calls.append(("labelled" if y is not None else "unlabelled", len(x)))
        pyro.module("tiny_m2", self)
        x = x.reshape(len(x), -1)
        with pyro.plate("data", len(x), dim=-1):
            y = pyro.sample("y", dist.Categorical(logits=torch.zeros(self.classes)), obs=y)
            z = pyro.sample("z", dist.Normal(torch.zeros(self.z), 1.0).to_event(1))
            logits = self.decode(torch.cat([z.expand(*self._one_hot(y, z).shape[:-1], -1), self._one_hot(y, z)], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x, y=None):
        import pyro
        import pyro.distributions as dist

        pyro.module("tiny_m2", self)
        x = x.reshape(len(x), -1)
        with pyro.plate("data", len(x), dim=-1):
            if y is None:
                y = pyro.sample("y", dist.Categorical(logits=self.classifier(x)))
            code = self._one_hot(y, x)
            h = self.encode(torch.cat([x.expand(*code.shape[:-1], -1), code], -1))
            pyro.sample(
                "z", dist.Normal(h[..., : self.z], torch.nn.functional.softplus(h[..., self.z :]) + 1e-3).to_event(1)
            )


def test_labels_reach_a_program_that_takes_them():
    import pyro

    import pyro_vae

    pyro.clear_param_store()
    data = load_dataset("digits", labels=50, binarize="static")
    program = _TinyM2()
    history = pyro_vae.fit(program, data, epochs=2, batch_size=100, elbo="mc", progress=False)
    assert len(history) == 2 and all(math.isfinite(h["train_elbo"]) for h in history)
    steps = [kind for kind, size in program.calls if size in (50, 100)]  # not the checks' two-point calls
    assert steps == ["labelled", "unlabelled"] * 2 * 13  # every step: the 50 labels, then 100 unlabelled points
    data.label_batches = "ratio"
    program.calls.clear()
    pyro_vae.fit(program, data, epochs=2, batch_size=100, elbo="mc", progress=False)
    steps = [kind for kind, size in program.calls if size in (50, 100)]
    assert steps.count("labelled") == 2  # one batch of the 50 labelled points an epoch, with their labels
    assert all(size == 50 for kind, size in program.calls if kind == "labelled")


def test_a_program_that_needs_labels_at_every_call_is_refused_in_one_line():
    import pyro_vae

    class Conditional(_TinyM2):
        def model(self, x, y):
            return super().model(x, y)

    with pytest.raises(DataError, match=r"Conditional\.model\(x, y\) needs a label for every training point"):
        pyro_vae.fit(Conditional(), load_dataset("digits", labels=50), epochs=1, progress=False)


class _ConjugateLabel(torch.nn.Module):
    """y ~ Cat(1/3), z ~ N(0, 1), x ~ N(z + y, 1), with the exact posterior as its guide: every ELBO term is exact,
    log p(x, y) where y is given and log p(x) where it is latent, whatever the draws."""

    def model(self, x, y=None):
        import pyro
        import pyro.distributions as dist

        with pyro.plate("data", len(x), dim=-1):
            y = pyro.sample("y", dist.Categorical(probs=torch.full((3,), 1 / 3, dtype=x.dtype)), obs=y)
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            pyro.sample("x", dist.Normal(z + y, 1.0), obs=x)

    def guide(self, x, y=None):
        import pyro
        import pyro.distributions as dist

        with pyro.plate("data", len(x), dim=-1):
            if y is None:  # p(y | x) ∝ p(y) N(x; y, 2)
                classes = torch.arange(3, dtype=x.dtype)
                logits = dist.Normal(classes, 2**0.5).log_prob(x.unsqueeze(-1))
                y = pyro.sample("y", dist.Categorical(logits=logits))
            pyro.sample("z", dist.Normal((x - y) / 2, 0.5**0.5))


def test_evaluate_elbo_passes_labels_and_is_exact_at_the_posterior():
    import pyro.distributions as dist

    from pyro_vae.infer.objectives import evaluate_elbo

    x = torch.tensor([-0.5, 0.3, 1.1, 2.4, 3.0], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 2, 2])
    classes = torch.arange(3, dtype=torch.float64)
    log_joint = math.log(1 / 3) + dist.Normal(y.double(), 2**0.5).log_prob(x)
    log_marginal = torch.logsumexp(dist.Normal(classes, 2**0.5).log_prob(x.unsqueeze(-1)), -1) - math.log(3)
    program = _ConjugateLabel()
    labelled = evaluate_elbo(program, x, num_particles=4, estimators=("mc",), batch_size=2, y=y)
    unlabelled = evaluate_elbo(program, x, num_particles=4, estimators=("mc",), batch_size=2)
    assert labelled["elbo_mc"] == pytest.approx(log_joint.mean().item(), abs=1e-9)
    assert unlabelled["elbo_mc"] == pytest.approx(log_marginal.mean().item(), abs=1e-9)


class _EnumeratedLabel(_ConjugateLabel):
    """The same model; a guide whose q(y | x) is not the posterior, with y enumerated (summed over its 3 values),
    and a parameter (at 0) to train."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def guide(self, x, y=None):
        import pyro
        import pyro.distributions as dist

        with pyro.plate("data", len(x), dim=-1):
            if y is None:
                logits = torch.stack([x, -x, 0.5 * x], -1)
                y = pyro.sample("y", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            pyro.sample("z", dist.Normal((x - y) / 2 + self.offset, 0.5**0.5))


def _enumerated_truth(x: torch.Tensor) -> torch.Tensor:
    """sum_y q(y | x) [log p(x, y) - log q(y | x)] of :class:`_EnumeratedLabel`, per point."""
    import pyro.distributions as dist

    classes = torch.arange(3, dtype=torch.float64)
    log_q = torch.log_softmax(torch.stack([x, -x, 0.5 * x], -1), -1)
    log_joint = math.log(1 / 3) + dist.Normal(classes, 2**0.5).log_prob(x.unsqueeze(-1))
    return (log_q.exp() * (log_joint - log_q)).sum(-1)


def test_an_enumerated_label_is_summed_out_exactly():
    """With z's guide exact given y, the sampled ELBO has no noise once y is summed out: it equals the truth."""
    from pyro_vae.infer.objectives import evaluate_elbo

    x = torch.tensor([-0.5, 0.3, 1.1, 2.4, 3.0], dtype=torch.float64)
    value = evaluate_elbo(_EnumeratedLabel(), x, num_particles=3, estimators=("mc",), batch_size=2)
    assert value["elbo_mc"] == pytest.approx(_enumerated_truth(x).mean().item(), abs=1e-9)


def test_the_closed_form_kl_beside_an_enumerated_label_is_unbiased():
    """The analytic ELBO (z's KL in closed form given each y, y summed out) has noise from E_q log p(x | z, y)
    only: within 4 standard errors of the truth, per point."""
    from pyro_vae.infer.objectives import elbo_terms

    x = torch.tensor([-0.5, 0.3, 1.1, 2.4, 3.0], dtype=torch.float64)
    torch.manual_seed(0)
    terms = elbo_terms(_EnumeratedLabel(), x, num_particles=4000)
    values = terms["log_likelihood"] - terms["kl"]
    error, se = values.mean(0) - _enumerated_truth(x), values.std(0) / math.sqrt(len(values))
    assert (error.abs() < 4 * se).all() and (se > 0).all()


def test_training_sums_an_enumerated_label_with_trace_enum_elbo():
    """The loss of an enumerating guide is Pyro's TraceEnum_ELBO: at a guide exact in z given y, minus the
    exact enumerated ELBO of the batch, scaled to num_data, with no noise."""
    from pyro_vae.infer.objectives import Objective

    x = torch.tensor([-0.5, 0.3, 1.1, 2.4, 3.0], dtype=torch.float64)
    objective = Objective(_EnumeratedLabel(), "mc", num_particles=2)
    loss = objective(x, num_data=20)
    assert loss.item() == pytest.approx(-(20 / 5) * _enumerated_truth(x).sum().item(), abs=1e-9)
    assert type(objective.elbo).__name__ == "TraceEnum_ELBO"


@pytest.mark.parametrize(
    "estimator, options, message",
    [
        ("iwae", {"num_particles": 2}, r"estimator 'iwae': the guide enumerates site 'y', which only 'mc'"),
        ("analytic", {}, r"estimator 'analytic': the guide enumerates site 'y'"),
        ("mc", {"free_bits": 0.1}, r"free_bits: the guide enumerates site 'y'"),
    ],
)
def test_training_an_enumerated_label_otherwise_is_refused_in_one_line(estimator, options, message):
    from pyro_vae.errors import ConfigError
    from pyro_vae.infer.objectives import Objective

    x = torch.tensor([-0.5, 0.3, 1.1], dtype=torch.float64)
    with pytest.raises(ConfigError, match=message):
        Objective(_EnumeratedLabel(), estimator, **options)(x)


def test_the_importance_weighted_bound_of_an_enumerated_site_is_refused_in_one_line():
    from pyro_vae.errors import ConfigError
    from pyro_vae.infer.objectives import elbo_per_example, evaluate_elbo

    x = torch.tensor([-0.5, 0.3, 1.1], dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"estimator 'iwae': the guide enumerates site 'y'"):
        evaluate_elbo(_EnumeratedLabel(), x, num_particles=2, estimators=("mc", "iwae"))
    with pytest.raises(ConfigError, match=r"estimator 'dreg': the guide enumerates site 'y'"):
        elbo_per_example(_EnumeratedLabel(), x, "dreg", num_particles=2)


def test_log_likelihood_sums_an_enumerated_label_inside_each_weight():
    """With z's guide exact given y, each weight sum_y q(y|x) w(y) is p(x) itself: log p(x) exactly, whatever
    q(y | x) is (the ELBO's sum, E_q[log w], would be below it by the KL from q(y|x) to p(y|x))."""
    import pyro.distributions as dist

    from pyro_vae.infer.marginal import log_likelihood

    x = torch.tensor([-0.5, 0.3, 1.1, 2.4, 3.0], dtype=torch.float64)
    classes = torch.arange(3, dtype=torch.float64)
    exact = torch.logsumexp(dist.Normal(classes, 2**0.5).log_prob(x.unsqueeze(-1)), -1) - math.log(3)
    estimate = log_likelihood(_EnumeratedLabel(), x, num_samples=7, batch_size=2)
    assert torch.allclose(estimate, exact, atol=1e-9)
    assert (exact - _enumerated_truth(x) > 1e-3).all()  # the summed ELBO is another number


def test_a_small_unlabelled_part_is_one_batch_of_all_of_it():
    labels = torch.tensor([0, 1] * 20 + [UNLABELLED] * 7)
    batches = _epoch(labels, 20)
    unlabelled = [b for b in batches if b.y is None]
    assert len(unlabelled) == 1 and len(unlabelled[0].x) == 7


@pytest.mark.parametrize("rank", [0, 1])
def test_each_process_weights_its_steps_by_the_job_counts(rank):
    """Each process's step estimates the whole job's sum: weighted by the job's N_k, not its shard's."""
    labels = torch.full((233,), UNLABELLED)
    labels[:31] = 1
    f = torch.randn(233, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    batches = _epoch(labels, 10, rank=rank, world_size=2)
    steps = torch.stack([b.num_data / len(b.x) * f[b.x.long()].sum() for b in batches])
    covered = torch.cat([b.x for b in batches]).long()
    expected = 0.0
    for mask in (labels != UNLABELLED, labels == UNLABELLED):
        seen = covered[mask[covered]]
        expected += f[seen].mean() * mask.sum()
    assert steps.mean().item() == pytest.approx(expected.item(), rel=1e-12)


def test_fewer_labels_than_processes_are_refused():
    labels = torch.tensor([0] + [UNLABELLED] * 50)
    with pytest.raises(DataError, match=r"1 labelled points cannot be shared by 2 processes; keep at least 2"):
        _epoch(labels, 10, world_size=2)


def test_pyro_jit_is_refused_for_a_program_that_takes_labels():
    from pyro_vae.errors import ConfigError
    from pyro_vae.infer.objectives import Objective

    with pytest.raises(ConfigError, match=r"jit: _EnumeratedLabel takes labels, which Pyro's JIT cannot trace"):
        Objective(_EnumeratedLabel(), "mc", jit=True)


def test_check_program_refuses_a_program_that_needs_labels_at_every_call():
    """The check train_run makes before training says it in one line too (not the program's own error)."""
    from pyro_vae.errors import ConfigError
    from pyro_vae.infer.objectives import check_program

    class Conditional(_TinyM2):
        def model(self, x, y):
            return super().model(x, y)

    with pytest.raises(ConfigError, match=r"Conditional\.model\(x, y\) needs a label for every point, and none"):
        check_program(Conditional(), torch.rand(4, 8, 8).bernoulli())


def test_diagnostics_give_a_labels_mutual_information_exactly():
    """I(x; y) = H(mean_n q(y|x_n)) - mean_n H(q(y|x_n)) and KL(q(y) || p(y)) from the guide's probabilities, at
    every point, with no draw (the conjugate program's q(y|x) is known in closed form)."""
    import pyro.distributions as dist

    from pyro_vae.infer.diagnostics import diagnostics

    x = torch.linspace(-2.0, 4.0, 50, dtype=torch.float64)
    report = diagnostics(_ConjugateLabel(), x, batch_size=16)["sites"]["y"]
    q = torch.softmax(dist.Normal(torch.arange(3.0, dtype=torch.float64), 2**0.5).log_prob(x.unsqueeze(-1)), -1)
    entropy = lambda p: -(p * p.log()).sum(-1)  # noqa: E731
    mean = q.mean(0)
    assert report["mutual_information"] == pytest.approx((entropy(mean) - entropy(q).mean()).item(), rel=1e-12)
    assert report["marginal_kl"] == pytest.approx((mean * (mean * 3).log()).sum().item(), rel=1e-12)
    assert report["mutual_information_se"] is None and report["latent_dim"] == 3 and report["label"]
    assert report["activity"] == pytest.approx(q.var(0).tolist(), rel=1e-12)
    whole = diagnostics(_ConjugateLabel(), x, batch_size=16)  # a label's classes are not units of the code
    assert (whole["latent_dim"], whole["sites"]["z"]["label"]) == (1, False)


def test_balanced_steps_weigh_every_point_of_a_step_the_same():
    """The same steps as "mixed"; the labelled part's weight per point is the unlabelled one's, N_u / b_u, which
    weighs the labelled terms by labelled_weight against the full-data objective."""
    from pyro_vae.training.labels import labelled_weight

    labels = torch.full((230,), UNLABELLED)
    labels[:13] = 1
    x = torch.arange(230, dtype=torch.float64)
    mixed = list(mixed_batches(x, labels, 10, torch.Generator().manual_seed(0)))
    balanced = list(mixed_batches(x, labels, 10, torch.Generator().manual_seed(0), balanced=True))
    for a, b in zip(mixed, balanced, strict=True):
        assert torch.equal(a[0].x, b[0].x) and torch.equal(a[1].x, b[1].x) and a[1].num_data == b[1].num_data
        assert b[0].num_data / len(b[0].x) == b[1].num_data / len(b[1].x) == 217 / 10
    assert labelled_weight(labels, 10) == pytest.approx((217 / 10) / (13 / 10)) == balanced[0][0].num_data / 13
    assert labelled_weight(torch.zeros(20, dtype=torch.long), 10) == 1.0  # every point labelled: nothing to weigh
