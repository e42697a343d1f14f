"""Typed run configuration: validated at the edge, round-tripping to and from TOML.

A configuration has three tables, ``data``, ``model`` and ``train``. Components of the model
(``model.network``, ``model.prior``, ``model.likelihood``) are tables ``{type = "<name>", ...}``
checked against their registries, so a component registered from Python can be named in a file.
Unknown keys are errors; every message names the key path, the value and what is allowed.

Example:
    >>> config = Config.from_dict({"train": {"epochs": 5}, "model": {"prior": {"type": "standard_normal"}}})
    >>> config.train.epochs, config.model.network["type"]
    (5, 'mlp')
    >>> Config.from_toml_string(config.to_toml()) == config
    True
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import os
import sys
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import nn

from pyro_vae.errors import ConfigError, RunError, renamed_errors
from pyro_vae.infer.estimators import ESTIMATORS, check_estimator
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.networks import NETWORKS
from pyro_vae.models.priors import PRIORS
from pyro_vae.models.programs import MODELS, build_program
from pyro_vae.registry import AtLeast, AtMost, Registry, check_value
from pyro_vae.training.annealing import KL_SCHEDULES, check_kl_schedule, make_kl_schedule
from pyro_vae.training.data import NUM_CLASSES, Dataset, load_dataset
from pyro_vae.training.initialization import OutputBiasInit, WeightInit
from pyro_vae.training.optim import LR_SCHEDULES, OPTIMIZERS

__all__ = [
    "Config",
    "presets",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "set_key",
    "resolve_device",
    "toml_value",
    "config_names",
    "load_data",
    "build_model",
]


@dataclass
class DataConfig:
    """Where the data come from and how they are prepared (see :func:`pyro_vae.training.data.load_dataset`)."""

    dataset: str = "digits"
    data_root: str = "data"
    download: bool = False
    binarize: Literal["none", "static", "dynamic"] = "none"
    # training points held out as a validation set (fixed split); for early stopping and the best model
    validation: Annotated[int, AtLeast(0)] = 0
    # training labels kept, balanced across classes and chosen with label_seed; the rest unlabelled (0: all)
    labels: Annotated[int, AtLeast(0)] = 0
    label_seed: int = 0
    # how labelled and unlabelled points form a step: both in every step, each part standing for its kind
    # ("mixed": the full-data objective), both, every point weighing the same ("balanced": the labelled terms
    # weighted up), or one kind a step in the data's ratio ("ratio")
    label_batches: Literal["mixed", "balanced", "ratio"] = "mixed"
    # the number of classes of the labels (0: 10 for digits and mnist, else one more than the largest label)
    num_classes: Annotated[int, AtLeast(0)] = 0


@dataclass
class ModelConfig:
    """The program: its name in :data:`~pyro_vae.models.programs.MODELS`, and what it is built from.

    ``latent_dim`` and the component tables are the context a program's constructor may declare (the VAE
    takes them all). The ``[model]`` table's other keys are the parameters of the program ``type`` names,
    checked against its constructor's signature; they are held in ``params`` and written back flat.
    """

    type: str = "vae"
    latent_dim: Annotated[int, AtLeast(1)] = 10
    network: dict = field(default_factory=lambda: {"type": "mlp"})
    prior: dict = field(default_factory=lambda: {"type": "standard_normal"})
    likelihood: dict = field(default_factory=lambda: {"type": "bernoulli"})
    # modules imported before the components are looked up: the user's own, registered there (plugins)
    imports: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)

    #: The field that collects the table's other keys (the program's own parameters).
    extra_keys: ClassVar[str] = "params"
    #: The settings that name a registry entry, ``{type = name, ...}``, with the registry that checks them.
    components: ClassVar[dict[str, Registry]] = {"network": NETWORKS, "prior": PRIORS, "likelihood": LIKELIHOODS}

    def __post_init__(self) -> None:
        import_modules(self.imports)
        # Components are resolved with their defaults filled in, so a saved config is complete.
        for name, registry in self.components.items():
            setattr(self, name, registry.validate(getattr(self, name), f"model.{name}"))
        MODELS.get(self.type, "model.type")  # an unknown name is refused with the known ones
        if self.params and not MODELS.parameters(self.type):  # a program without parameters: the VAE's own keys
            unknown = sorted(self.params)[0]
            allowed = ", ".join(f.name for f in dataclasses.fields(self) if f.name != self.extra_keys)
            raise ConfigError(f"model.{unknown}: unknown key; allowed: {allowed}")
        spec = MODELS.validate({**self.params, "type": self.type}, "model")
        self.params = {k: v for k, v in spec.items() if k != "type"}


@dataclass
class TrainConfig:
    """Stochastic variational inference: objective, optimiser and schedule.

    This is the one list of training settings: :func:`~pyro_vae.training.loop.fit` takes those of them
    that shape the training itself as keyword arguments of the same names and defaults, and the
    command line's training flags are named after them (``--batch-size`` sets ``batch_size``).

    Attributes:
        epochs: passes over the training set; each is a random permutation in batches of exactly ``batch_size``.
        batch_size: points per step (per process, in a data-parallel job).
        lr: the learning rate, which ``lr_schedule`` multiplies.
        elbo: the estimator of the objective, an entry of :data:`~pyro_vae.ESTIMATORS` (``pyro-vae estimators``).
        num_particles: draws of the latent code per point and step.
        jit: compile Pyro's ELBO with ``torch.jit``.
        fused: compute the estimator as plain tensor code (exact, fastest); ``"auto"``: wherever it is
            exact and ``jit`` is not asked for.
        compile: compile the fused estimator with ``torch.compile`` (seconds to start, a few percent a step after).
        optimizer: ``{type = name, ...}``, an entry of :data:`~pyro_vae.training.optim.OPTIMIZERS`.
        lr_schedule: ``{type = name, ...}``, an entry of :data:`~pyro_vae.training.optim.LR_SCHEDULES`,
            stepped after each epoch.
        beta: the weight of the KL term (1: the ELBO; 0: no KL).
        kl_warmup: ``{type = name, ...}``, an entry of :data:`~pyro_vae.training.annealing.KL_SCHEDULES`: a
            step's KL weight is ``beta`` times the schedule's (``{type = "linear", epochs = 10}`` warms up).
        free_bits: a floor in nats under each latent dimension's KL term (0: off).
        early_stopping: stop after this many epochs (counted after the KL warm-up) without a better
            validation ELBO (0: off); needs ``data.validation``. With a validation set, the run keeps the
            model of its best epoch.
        seed: the seed of Pyro, torch, NumPy and the data order (32 bits, as NumPy takes).
        checkpoint_every: epochs between checkpoints (0: only at the end).
        snapshots: epochs after which the model's parameters are kept as ``snapshots/epoch-NNNNN.pt``
            (learning curves).
        clip_grad_norm: the largest total gradient norm of a step (0: no clipping).
        weight_init: the networks' starting weights: PyTorch's, or Glorot-uniform weights and zero biases
            (:mod:`pyro_vae.training.initialization`).
        output_bias_init: ``"data_mean"``: the decoder's last bias starts where p(x|z) has the training
            data's mean (Burda et al., 2016).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        log: ``"tensorboard"``: the metrics and pictures as TensorBoard events too.
    """

    #: The settings that name a registry entry, ``{type = name, ...}``, with the registry that checks them.
    components: ClassVar[dict[str, Registry]] = {
        "optimizer": OPTIMIZERS,
        "lr_schedule": LR_SCHEDULES,
        "kl_warmup": KL_SCHEDULES,
    }

    epochs: Annotated[int, AtLeast(1)] = 50
    batch_size: Annotated[int, AtLeast(1)] = 128
    lr: Annotated[float, AtLeast(0, strict=True)] = 1e-3
    elbo: str = "mc"
    num_particles: Annotated[int, AtLeast(1)] = 1
    jit: bool = False
    fused: bool | Literal["auto"] = "auto"
    compile: bool = False
    optimizer: dict = field(default_factory=lambda: {"type": "adam"})
    lr_schedule: dict = field(default_factory=lambda: {"type": "constant"})
    beta: Annotated[float, AtLeast(0)] = 1.0
    kl_warmup: dict = field(default_factory=lambda: {"type": "constant"})
    free_bits: Annotated[float, AtLeast(0)] = 0.0
    early_stopping: Annotated[int, AtLeast(0)] = 0
    seed: Annotated[int, AtLeast(0), AtMost(2**32 - 1)] = 0
    checkpoint_every: Annotated[int, AtLeast(0)] = 10
    snapshots: list[Annotated[int, AtLeast(1)]] = field(default_factory=list)
    clip_grad_norm: Annotated[float, AtLeast(0)] = 0.0
    weight_init: WeightInit = "default"
    output_bias_init: OutputBiasInit = "default"
    device: str = "auto"
    log: Literal["none", "tensorboard"] = "none"

    def __post_init__(self) -> None:
        # Components are resolved with their defaults filled in, so a saved config is complete.
        for name, registry in self.components.items():
            setattr(self, name, registry.validate(getattr(self, name), f"train.{name}"))


def import_modules(names: list[str], path: str = "model.imports", search_current_folder: bool = False) -> None:
    """Import modules that register components (a user's plugins).

    ``search_current_folder`` (``--import``, the user's own request) looks in the current folder
    too; a config's ``model.imports`` alone does not, so that a run folder received from someone
    else cannot make ``evaluate`` run a ``.py`` file shipped beside it.
    """
    for name in names:
        added = search_current_folder and os.getcwd() not in sys.path
        if added:
            sys.path.insert(0, os.getcwd())
        try:
            importlib.import_module(name)
        except Exception as e:  # whatever the module raises, the user's fix is in that module or its installation
            raise ConfigError(
                f"{path}: cannot import {name!r} ({type(e).__name__}: {e}); "
                "install it, or put it on PYTHONPATH or in the current folder"
            ) from None
        finally:
            if added:
                sys.path.remove(os.getcwd())


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _key_paths() -> str:
    """Every key a config has, as ``data.dataset, ..., train.device``."""
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
    return ", ".join(f"{name}.{key}" for name, cls in sections.items() for key in _field_names(cls))


def _section(cls: type, values: Any, path: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must be a table (got {values!r})")
    extra = getattr(cls, "extra_keys", None)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != extra}
    unknown = sorted(set(values) - set(fields))
    if unknown and extra is None:
        raise ConfigError(f"{path}.{unknown[0]}: unknown key; allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    resolved: dict[str, Any] = {extra: {k: values[k] for k in unknown}} if extra else {}
    for name, value in ((k, v) for k, v in values.items() if k in fields):
        # Component tables (dict) are checked by their registry when the section is built.
        resolved[name] = value if hints[name] is dict else check_value(value, hints[name], f"{path}.{name}")
    return cls(**resolved)


@dataclass
class Config:
    """A complete, validated run configuration.

    Build it with :meth:`from_dict`, :meth:`from_toml`, :meth:`from_toml_string` or :meth:`load` (all validate,
    and fill in every default); write it with :meth:`to_dict` or :meth:`to_toml`, which round-trip.

    Args:
        data: the ``[data]`` table (:class:`~pyro_vae.runs.config.DataConfig`): where the data come from and how
            they are prepared.
        model: the ``[model]`` table (:class:`~pyro_vae.runs.config.ModelConfig`): the program and its components.
        train: the ``[train]`` table (:class:`~pyro_vae.runs.config.TrainConfig`): the settings of training.

    Example:
        >>> config = Config.from_dict({"train": {"epochs": 5}, "model": {"prior": {"type": "standard_normal"}}})
        >>> config.train.epochs, config.model.network["type"], config.data.dataset
        (5, 'mlp', 'digits')
        >>> Config.from_toml_string(config.to_toml()) == config
        True
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Validate a nested dict (as read from TOML) into a config; missing keys take defaults."""
        if not isinstance(values, dict):
            raise ConfigError(f"a configuration must be a table (got {values!r})")
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        unknown = sorted(set(values) - set(sections))
        if unknown:
            within = [f"{name}.{unknown[0]}" for name, sc in sections.items() if unknown[0] in _field_names(sc)]
            hint = f"did you mean {within[0]}?" if within else f"the keys are {_key_paths()}"
            raise ConfigError(f"{unknown[0]}: unknown table (the tables are {', '.join(sections)}); {hint}")
        config = cls(**{name: _section(sc, values.get(name, {}), name) for name, sc in sections.items()})
        with renamed_errors(config_names()):
            check_estimator(config.train.elbo)
            t = config.train
            ESTIMATORS.get(t.elbo).check_options(t.beta, t.jit, t.free_bits)
            check_kl_schedule(make_kl_schedule(t.kl_warmup, steps_per_epoch=1), t.elbo, t.compile)
        t = config.train
        if t.compile and t.jit:
            raise ConfigError(
                "train.compile and train.jit cannot both be true: compile compiles the fused path; drop --jit"
            )
        if config.train.fused is True and config.train.jit:
            raise ConfigError(
                "train.fused and train.jit cannot both be true: fused is the faster of the two; "
                "drop --jit (train.jit = false)"
            )
        if t.early_stopping and not config.data.validation:
            raise ConfigError(
                f"train.early_stopping ({t.early_stopping}) watches the ELBO of a validation set, and there is none; "
                "hold one out of the training set with data.validation = 10000 (points), or set it to 0"
            )
        with renamed_errors(config_names()):
            resolve_device(config.train.device)
        return config

    def to_dict(self) -> dict[str, Any]:
        """The config as nested tables, as a TOML file holds it (a program's own parameters in ``[model]``)."""
        values = dataclasses.asdict(self)
        values["model"].update(values["model"].pop(ModelConfig.extra_keys))
        return values

    @classmethod
    def from_toml_string(cls, text: str, source: str = "config") -> Config:
        return cls.from_dict(_parse_toml(text, source))

    @classmethod
    def load(cls, source: str | Path) -> Config:
        """The configuration in a TOML file, or the preset of that name (:func:`presets`).

        A path to an existing file is read; otherwise a name without a suffix is looked up among
        the presets, as ``pyro-vae train --config vamp`` does.

        Example:
            >>> Config.load("vamp").model.prior["type"]
            'vamp'
        """
        path = Path(source)
        if path.exists() or path.suffix:  # a file, or what is meant to be one
            return cls.from_toml(path)
        if str(source) in presets():
            return cls.from_toml(PRESETS / f"{source}.toml")
        raise ConfigError(
            f"{{source}} {str(source)!r} is neither a file nor a preset; presets: {', '.join(presets())} "
            "(pyro-vae presets), or give the path of a TOML file",
            "source",
        )

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        """Read and validate a TOML file; every message names the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = (e.strerror or str(e)) if isinstance(e, OSError) else f"not UTF-8 text (byte {e.start})"
            raise ConfigError(f"cannot read config file {path}: {reason}; give the path of a TOML file") from None
        values = _parse_toml(text, str(path))
        try:
            return cls.from_dict(values)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_toml(self) -> str:
        return _to_toml(self.to_dict())


#: The folder of the named configurations that ship with the package (``pyro-vae presets``).
PRESETS = Path(__file__).resolve().parent / "presets"


def presets() -> dict[str, str]:
    """The named configurations that ship with pyro-vae, each with what its file's first comment line says.

    ``pyro-vae train --config NAME`` and :meth:`Config.load` take a name; ``pyro-vae presets``
    lists them; ``pyro-vae config --config NAME`` prints one as a file to start from.

    Returns:
        ``{name: description}``, sorted by name.

    Example:
        >>> "vamp" in presets()
        True
    """
    found = {}
    for path in sorted(PRESETS.glob("*.toml")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        found[path.stem] = first.removeprefix("#").strip()
    return found


def _parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source} is not valid TOML: {e}; correct the syntax there") from None


def toml_value(value: Any) -> str:
    """``value`` written as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if not isinstance(value, float) or math.isfinite(value) else str(value)  # inf, nan
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def _to_toml(table: dict[str, Any], prefix: str = "") -> str:
    scalars = [f"{k} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    lines = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    out = "\n".join(lines) + ("\n\n" if lines else "")
    for k, v in table.items():
        if isinstance(v, dict):
            out += _to_toml(v, f"{prefix}.{k}" if prefix else k)
    return out


def set_key(values: dict[str, Any], key: str, value: Any) -> None:
    """Set ``values["a"]["b"] = value`` for ``key = "a.b"``, creating tables on the way.

    Setting a component's ``type`` to a new name drops the old component's parameters (not the ``[model]``
    table's: a new program keeps the latent size, components and imports it is given).
    """
    *parents, leaf = key.split(".")
    table = values
    for i, part in enumerate(parents):
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            where = ".".join(parents[: i + 1])
            raise ConfigError(f"{key}: {where} is {table!r}, not a table; set {where} itself")
    if leaf == "type" and parents != ["model"] and table.get("type", value) != value:
        table.clear()
    table[leaf] = value


def apply_overrides(values: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """A copy of a nested dict with ``key.sub=value`` assignments applied (TOML values, bare words as strings).

    Example:
        >>> apply_overrides({"train": {"epochs": 3}}, ["train.epochs=5", "model.prior.type=standard_normal"])
        {'train': {'epochs': 5}, 'model': {'prior': {'type': 'standard_normal'}}}
    """
    values = copy.deepcopy(values)
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {assignment!r}: expected key.sub=value, e.g. --set train.epochs=5")
        set_key(values, key.strip(), _override_value(text))
    return values


def _override_value(text: str) -> Any:
    """A ``--set`` value: TOML (``5``, ``[400, 400]``, ``{type = "linear"}``), a comma list (``400,400``), or a word."""
    for candidate in (text, f"[{text}]" if "," in text else None):
        try:
            return tomllib.loads(f"v = {candidate}")["v"] if candidate is not None else text.strip()
        except tomllib.TOMLDecodeError:
            continue
    return text.strip()


def config_names() -> dict[str, tuple[str, str]]:
    """How the config calls each library parameter: ``{"lr": ("train.lr", "train.lr = "), ...}``.

    Library functions name their parameters in their errors (see :mod:`pyro_vae.errors`); a run
    built from a config re-words them with these key paths.
    """
    names = {}
    for section, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
        for f in dataclasses.fields(cls):
            names[f.name] = (f"{section}.{f.name}", f"{section}.{f.name} = ")
    names["estimator"] = names["elbo"]  # Objective(estimator=...) is train.elbo
    return names


def load_data(config: Config, device: str | torch.device = "cpu") -> Dataset:
    """The data set a config names, checked against the support of its likelihood."""
    likelihood = LIKELIHOODS.get(config.model.likelihood["type"], "model.likelihood.type")
    d = config.data
    return load_dataset(
        d.dataset,
        data_root=d.data_root,
        download=d.download,
        binarize=d.binarize,
        support=likelihood.support,
        support_text=likelihood.support_text,
        device=device,
        seed=config.train.seed,
        validation=d.validation,
        labels=d.labels,
        label_seed=d.label_seed,
        label_batches=d.label_batches,
        num_classes=d.num_classes,
    )


def build_model(config: Config, event_shape: tuple[int, ...], num_classes: int | None = None) -> nn.Module:
    """The (untrained) program a config describes (``model.type``), for data points of shape ``event_shape``
    and labels of ``num_classes`` classes (by default ``data.num_classes``, or the built-in data set's)."""
    m = config.model
    context = {"latent_dim": m.latent_dim, "network": m.network, "prior": m.prior, "likelihood": m.likelihood}
    context["load_run"] = _trained_program
    classes = num_classes or config.data.num_classes or NUM_CLASSES.get(config.data.dataset)
    if classes:
        context["num_classes"] = classes
    return build_program({**m.params, "type": m.type}, "model", event_shape=tuple(event_shape), **context)


def _trained_program(run: str) -> nn.Module:
    """The trained program of the run folder ``run`` (a program built on another's names its run)."""
    from pyro_vae.runs.folders import load  # folders builds programs with this module

    try:
        return load(run)[0]
    except (RunError, ConfigError) as e:
        raise ConfigError(f"model.features = {run!r}, the run the program is built on: {e}") from None


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; otherwise ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{{device}}: unknown device {name!r}; use auto, cpu, cuda or cuda:N", "device") from None
    if device.type not in ("cpu", "cuda"):  # torch knows meta, mps, xpu, ...; pyro-vae runs on these two
        raise ConfigError(f"{{device}}: unsupported device {name!r}; use auto, cpu, cuda or cuda:N", "device")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{{device}} is {name!r} but CUDA is not available here; use auto or cpu", "device")
    return device
