"""The training settings have one source of truth, :class:`~pyro_vae.runs.config.TrainConfig`.

``fit``'s training keywords, what a run folder passes to ``fit``, and the command line's training
flags are its fields, under the same names and with the same defaults.
"""

import dataclasses
import inspect

import pytest

from pyro_vae.cli.main import _TRAIN_OPTIONS, _TRAINING_FLAGS, _parser, _train_config
from pyro_vae.runs.config import TrainConfig
from pyro_vae.runs.folders import _fit_options
from pyro_vae.training.loop import fit

#: How a caller drives ``fit`` (progress, callbacks, resumption, stops, a job), not what the training is.
HOOKS = {"progress", "on_epoch", "on_checkpoint", "resume", "stop", "distributed"}
FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def settings_of_fit() -> list[inspect.Parameter]:
    parameters = inspect.signature(fit).parameters.values()
    return [p for p in parameters if p.kind is p.KEYWORD_ONLY and p.name not in HOOKS]


def training_group():
    train = _parser()._subparsers._group_actions[0].choices["train"]
    return next(g for g in train._action_groups if g.title == "training")


def test_every_setting_of_fit_is_a_train_config_field_with_its_default():
    config = TrainConfig()
    assert len(settings_of_fit()) >= 16
    for p in settings_of_fit():
        assert p.name in FIELDS, f"fit's keyword {p.name} is no field of TrainConfig"
        registry = TrainConfig.components.get(p.name)  # fit names a component; the config holds its table
        default = registry.validate(p.default, p.name) if registry else p.default
        assert default == getattr(config, p.name), p.name


def test_a_run_passes_fit_every_training_setting_it_takes():
    config = TrainConfig(epochs=3, seed=7)
    options = _fit_options(config)
    assert set(options) == {p.name for p in settings_of_fit()}
    assert all(value == getattr(config, name) for name, value in options.items())


def test_every_training_flag_is_a_train_config_field():
    dests = [action.dest for action in training_group()._group_actions]
    assert dests == list(_TRAINING_FLAGS) and set(dests) <= FIELDS
    assert all(_TRAIN_OPTIONS[name] == f"train.{name}" for name in dests)


def sample(action) -> list[str]:
    """A command line that sets ``action``'s field to something other than its default."""
    flag = action.option_strings[-1]  # --no-fused of --fused
    if action.nargs == 0:
        return [flag]
    if action.choices:
        return [flag, action.choices[-1]]
    return [
        flag,
        {int: "3", float: "0.5"}.get(action.type, {"elbo": "analytic", "device": "cpu"}.get(action.dest, "2")),
    ]


@pytest.mark.parametrize("action", training_group()._group_actions, ids=lambda action: action.dest)
def test_every_training_flag_sets_its_field(action):
    args = _parser().parse_args(["train", "--validation", "100", *sample(action)])
    assert getattr(_train_config(args).train, action.dest) != getattr(TrainConfig(), action.dest)
