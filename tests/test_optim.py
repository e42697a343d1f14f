"""Optimisers and learning-rate schedules from the config: every entry builds and steps, bad settings
are refused with the key path, and a stopped run resumes its schedule bit for bit."""

import signal

import pytest
import torch

from pyro_vae import LR_SCHEDULES, OPTIMIZERS, Config, make_vae
from pyro_vae.errors import ConfigError
from pyro_vae.training.data import Dataset
from pyro_vae.training.loop import TrainingInterrupted, TrainState, fit
from pyro_vae.training.optim import fused_if_supported, make_lr_schedule, make_optimizer, staged_epochs


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_takes_a_step(name):
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = make_optimizer([weight], lr=0.1, spec={"type": name})
    weight.sum().backward()
    optimizer.step()
    assert (weight < 1).all()
    assert optimizer.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("name", list(LR_SCHEDULES))
def test_every_schedule_starts_at_the_rate_and_never_raises_it(name):
    optimizer = make_optimizer([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    schedule = make_lr_schedule(optimizer, {"type": name}, epochs=30)
    rates = []
    for _ in range(30):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == 0.1 and all(b <= a for a, b in zip(rates, rates[1:]))


def test_multistep_schedule_follows_its_milestones():
    optimizer = make_optimizer([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    schedule = make_lr_schedule(optimizer, {"type": "multistep", "milestones": [1, 4], "gamma": 0.5})
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates == [1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize(
    "train,message",
    [
        ({"optimizer": {"type": "adagrad"}}, "train.optimizer.type: unknown optimizer type 'adagrad'; known: adam"),
        (
            {"optimizer": {"type": "adam", "betas": [0.9]}},
            r"train.optimizer.betas must be a list of 2 items \(got \[0.9\]\)",
        ),
        ({"optimizer": {"type": "adam", "eps": 0}}, r"train.optimizer.eps must be > 0 \(got 0"),
        (
            {"optimizer": {"type": "sgd", "betas": [0.9, 0.99]}},
            "train.optimizer.betas: unknown parameter for optimizer 'sgd'",
        ),
        ({"lr_schedule": {"type": "step", "gamma": -1}}, r"train.lr_schedule.gamma must be > 0 \(got -1"),
        (
            {"lr_schedule": {"type": "multistep", "milestones": [0]}},
            r"train.lr_schedule.milestones\[0\] must be >= 1 \(got 0\)",
        ),
    ],
)
def test_bad_settings_name_the_key(train, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"train": train})


def test_config_round_trips_the_optimizer_and_schedule():
    config = Config.from_dict(
        {"train": {"optimizer": {"type": "adam", "betas": [0.5, 0.9], "eps": 1e-4}, "lr_schedule": {"type": "cosine"}}}
    )
    assert config.train.optimizer == {
        "type": "adam",
        "betas": [0.5, 0.9],
        "eps": 1e-4,
        "weight_decay": 0.0,
        "amsgrad": False,
        "fused": True,
    }
    assert Config.from_toml_string(config.to_toml()) == config


def test_a_scheduled_run_resumes_bit_for_bit():
    x = torch.rand(100, 4, 4, generator=torch.Generator().manual_seed(2))
    data = Dataset("toy", x[:80], x[80:])
    kwargs = dict(
        epochs=4,
        batch_size=10,
        progress=False,
        seed=1,
        optimizer={"type": "adamw", "weight_decay": 0.1},
        lr_schedule={"type": "multistep", "milestones": [1, 3], "gamma": 0.5},
        lr=0.01,
    )

    def vae(seed=0):
        torch.manual_seed(seed)
        return make_vae((4, 4), latent_dim=2, network={"type": "mlp", "hidden": [8]})

    reference_vae = vae()
    reference = fit(reference_vae, data, **kwargs)
    assert [h["lr"] for h in reference] == pytest.approx([0.01, 0.005, 0.005, 0.0025])
    polls = iter(range(100))
    stopped = vae()
    with pytest.raises(
        TrainingInterrupted
    ) as info:  # 8 steps an epoch: poll 13 is step 3 of epoch 2, after the first milestone
        fit(stopped, data, stop=lambda: signal.SIGTERM if next(polls) >= 13 else None, **kwargs)
    resumed_vae = vae(seed=5)
    resumed_vae.load_state_dict(stopped.state_dict())
    resumed = fit(resumed_vae, data, resume=TrainState.from_dict(info.value.state.to_dict()), **kwargs)
    strip = lambda hs: [{k: v for k, v in h.items() if k != "seconds"} for h in hs]  # noqa: E731
    assert strip(resumed) == strip(reference)
    for name, value in reference_vae.state_dict().items():
        assert torch.equal(resumed_vae.state_dict()[name], value), name


def test_a_scheduled_run_folder_resumes_through_its_checkpoint(tmp_path):
    """The schedule's state passes the safe checkpoint loader (weights_only) and continues exactly."""
    import json

    from pyro_vae import train_run
    from pyro_vae.runs.folders import resume_run
    from pyro_vae.runs.storage import load_checkpoint

    train = {
        "epochs": 3,
        "batch_size": 256,
        "checkpoint_every": 0,
        "lr_schedule": {"type": "multistep", "milestones": [1, 2]},
    }
    config = Config.from_dict({"model": {"latent_dim": 2, "network": {"type": "mlp", "hidden": [8]}}, "train": train})
    train_run(config, tmp_path / "whole", progress=False)
    polls = iter(range(100))
    with pytest.raises(TrainingInterrupted):  # 5 steps an epoch: poll 9 is step 2 of epoch 2
        train_run(
            config, tmp_path / "stopped", progress=False, stop=lambda: signal.SIGTERM if next(polls) >= 9 else None
        )
    resume_run(tmp_path / "stopped", progress=False)
    whole, stopped = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("whole", "stopped"))
    for name, value in whole["model"].items():
        assert torch.equal(stopped["model"][name], value), name

    def rates(name):
        return [json.loads(line)["lr"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    assert rates("stopped") == rates("whole") == pytest.approx([1e-3, 1e-4, 1e-5])


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_optimizers_take_the_same_steps(name):
    """The fused kernel (the default where torch has one) runs the same update rule as the for-loop one."""
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(3)]
    runs = []
    for fused in (True, False):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = make_optimizer(params, lr=0.1, spec={"type": name, "fused": fused})
        assert optimizer.defaults.get("fused") == (fused or None)
        for step in range(20):
            optimizer.zero_grad()
            sum(((p - step / 10) ** 2).sum() for p in params).backward()
            optimizer.step()
        runs.append(params)
    for fused, looped in zip(*runs):
        torch.testing.assert_close(fused, looped, rtol=1e-6, atol=1e-6)


def test_optimizers_fall_back_where_no_fused_kernel_exists():
    class NoFusedKernel(torch.optim.Adam):  # as torch answers for a device without one
        def __init__(self, params, fused=None, **options):
            if fused:
                raise RuntimeError(
                    "`fused=True` requires all the params to be floating point Tensors of supported devices"
                )
            super().__init__(params, **options)

    params = (p for p in [torch.nn.Parameter(torch.zeros(2))])  # an iterator is read once, whichever kernel is used
    optimizer = fused_if_supported(NoFusedKernel, params, lr=0.1)
    assert len(optimizer.param_groups[0]["params"]) == 1
    assert not optimizer.defaults["fused"]


def test_staged_schedule_is_burdas_by_default():
    """lr 10^(-i/7) for 3^i epochs, i = 0..7: 3,280 epochs; the rate of each epoch is read before it runs."""
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = make_optimizer(params, lr=1.0, spec={"type": "sgd"})
    schedule = make_lr_schedule(optimizer, {"type": "staged"}, epochs=3280)
    rates = []
    for _ in range(3280):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    lengths = [3**i for i in range(8)]
    expected = [10 ** (-i / 7) for i, n in enumerate(lengths) for _ in range(n)]
    assert staged_epochs() == sum(lengths) == len(expected) == 3280
    assert rates == pytest.approx(expected, rel=1e-12)


def test_staged_schedule_compresses_with_a_smaller_base():
    """base 1.5: stages of 1, 2, 3, 4, 6, 8, 12, 18 epochs (1.5^i rounded up), 54 in all."""
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = make_optimizer(params, lr=1.0, spec={"type": "sgd"})
    schedule = make_lr_schedule(optimizer, {"type": "staged", "base": 1.5, "gamma": 0.5}, epochs=54)
    rates = []
    for _ in range(60):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    lengths = [1, 2, 3, 4, 6, 8, 12, 18 + 6]  # the last stage's rate stays after the schedule's 54 epochs
    assert staged_epochs(stages=8, base=1.5) == 54
    assert rates == [0.5**i for i, n in enumerate(lengths) for _ in range(n)]
