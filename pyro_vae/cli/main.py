"""The ``pyro-vae`` command line: ``train``, ``evaluate``, ``compare``, ``plot``, and the component listings.

``priors``, ``likelihoods`` and ``networks`` list the registered components.

Errors caused by input (a config value, a data file, a run folder) print one line and exit with
status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import signal
import sys
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pyro_vae.cli.signals import SIGNALS, exit_status
from pyro_vae.errors import ConfigError, PyroVAEError, renamed_errors
from pyro_vae.runs.config import Config, TrainConfig, apply_overrides, import_modules, presets, set_key
from pyro_vae.training.loop import TrainingInterrupted

__all__ = ["main"]


def _linear_warmup(text: str) -> dict[str, Any]:
    """``--kl-warmup EPOCHS``: the linear KL warm-up over that many epochs."""
    return {"type": "linear", "epochs": _positive_int(text)}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _counts(what: str, example: str) -> Callable[[str], list[int]]:
    """An argparse type reading comma-separated whole numbers >= 1; messages call them ``what``."""

    def parse(text: str) -> list[int]:
        try:
            counts = [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what} such as {example}, got {text!r}"
            ) from None
        if not counts or min(counts) < 1:
            raise argparse.ArgumentTypeError(f"{what} must be >= 1, got {text!r}")
        return counts

    return parse


def _names(what: str, example: str) -> Callable[[str], list[str]]:
    """An argparse type reading comma-separated names; messages call them ``what``."""

    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} such as {example}, got {text!r}")
        return names

    return parse


#: ``train``'s training flags, by the :class:`~pyro_vae.runs.config.TrainConfig` field each sets (``--batch-size``
#: sets ``train.batch_size``). argparse's type comes from the field's (a bool is a switch, a ``Literal`` gives the
#: choices, a number its type); an entry holds the rest. Values are validated by Config.from_dict.
_TRAINING_FLAGS: dict[str, dict[str, Any]] = {
    "epochs": {},
    "batch_size": {},
    "lr": {},
    "elbo": {
        "help": "the estimator: mc (Trace_ELBO, default), analytic (closed-form KL), stl (sticking the landing), "
        "iwae (importance-weighted bound of --num-particles draws), dreg (IWAE with doubly reparameterized "
        "gradients); see pyro-vae estimators",
    },
    "num_particles": {},
    "jit": {"help": "compile the ELBO with Pyro's JIT"},
    "fused": {
        "action": argparse.BooleanOptionalAction,
        "help": "compute the ELBO as plain tensor code, without Pyro's per-step tracing (exact, fastest; the "
        "default wherever it applies); --no-fused runs Pyro's traced ELBO",
    },
    "compile": {
        "help": "compile the fused ELBO with torch.compile (the first step takes seconds; a few percent faster after)"
    },
    "beta": {"help": "weight of the KL term (1: the ELBO; 0: no KL)"},
    "kl_warmup": {
        "type": _linear_warmup,
        "metavar": "EPOCHS",
        "help": "KL warm-up: the KL weight rises linearly from 0 to beta over EPOCHS epochs "
        '(train.kl_warmup = {type = "linear", epochs = EPOCHS}; steps and start in the config)',
    },
    "free_bits": {
        "metavar": "NATS",
        "help": "free bits: each latent dimension's KL term counts at least NATS nats per data point "
        "(mc and analytic; 0: off)",
    },
    "early_stopping": {
        "metavar": "EPOCHS",
        "help": "stop after EPOCHS epochs without a better validation ELBO, counted after the KL warm-up "
        "(needs --validation; 0: off)",
    },
    "seed": {},
    "checkpoint_every": {"metavar": "N", "help": "checkpoint every N epochs (0: only at the end)"},
    "clip_grad_norm": {"metavar": "C", "help": "rescale each step's gradient to a total norm of at most C (0: off)"},
    "device": {"help": "auto (CUDA when present), cpu, cuda, cuda:N"},
    "log": {
        "help": "tensorboard: also write the metrics and pictures as TensorBoard events into RUN_DIR/tensorboard "
        "(pip install 'pyro-vae[tensorboard]')"
    },
}

# command-line option -> config key; values are validated by Config.from_dict like any other source.
_TRAIN_OPTIONS: dict[str, str] = {
    "dataset": "data.dataset",
    "data_root": "data.data_root",
    "download": "data.download",
    "binarize": "data.binarize",
    "validation": "data.validation",
    "labels": "data.labels",
    "model": "model.type",
    "latent_dim": "model.latent_dim",
    "network": "model.network.type",  # before its parameters: a new type starts from that network's defaults
    "hidden": "model.network.hidden",
    "prior": "model.prior.type",
    "likelihood": "model.likelihood.type",
    **{name: f"train.{name}" for name in _TRAINING_FLAGS},
}


def _training_flag(name: str) -> dict[str, Any]:
    """argparse's keywords for the flag of TrainConfig's field ``name``: its type's, then :data:`_TRAINING_FLAGS`'s."""
    hint = typing.get_type_hints(TrainConfig)[name]  # Annotated[int, ...] is int here
    if hint is bool:
        derived: dict[str, Any] = {"action": "store_const", "const": True}
    elif typing.get_origin(hint) is Literal:
        derived = {"choices": list(typing.get_args(hint))}
    else:
        derived = {"type": hint} if hint in (int, float) else {}
    return {**derived, **_TRAINING_FLAGS[name]}


def _parser() -> argparse.ArgumentParser:
    """The ``pyro-vae`` parser; subcommands are listed in help in the order they are added here."""
    parser = argparse.ArgumentParser(prog="pyro-vae", description="Variational autoencoders as Pyro programs.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first: your own programs, priors, likelihoods, networks or estimators registered there "
        "(repeatable; a run records it in model.imports)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(commands)
    _compare_parser(commands)
    _plot_parser(commands)
    for kind in _LISTINGS:
        commands.add_parser(kind, help=f"list the registered {kind} and their parameters")
    _evaluate_parser(commands)
    _config_parser(commands)
    commands.add_parser("presets", help="list the named configurations that ship with pyro-vae (--config NAME)")
    for name, command in commands.choices.items():  # the global options work after the command too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command.add_argument(
            "--import", dest="more_imports", action="append", default=[], metavar="MODULE", help="see pyro-vae --help"
        )
        if name in ("evaluate", "compare", "plot"):  # a run whose data have moved since it was trained
            command.add_argument("--data-root", type=Path, metavar="DIR", help="where MNIST/raw is now")
            command.add_argument("--dataset", type=Path, metavar="FILE", help="where the run's data file is now")
        if name in ("train", "evaluate", "compare", "plot"):
            command.add_argument(
                "--threads",
                type=_positive_int,
                metavar="N",
                help=f"CPU threads of torch (default: torch's choice, {torch_threads()} here); "
                "give each of several jobs on one machine its share, e.g. 1 for two jobs on 2 cores",
            )
    return parser


def torch_threads() -> int:
    """The CPU threads torch uses in this process."""
    import torch

    return torch.get_num_threads()


def _train_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``train``: the run options, then the data, model and training groups."""
    train = commands.add_parser(
        "train",
        help="train a program (a VAE by default) into a run folder",
        description="Train a program (a VAE by default) into a run folder. "
        "Options override the config file, which overrides the defaults.",
    )
    train.add_argument(
        "--config", metavar="FILE|PRESET", help="a TOML configuration file, or a preset's name (pyro-vae presets)"
    )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set model.latent_dim=2 (repeatable)",
    )
    train.add_argument("--out", type=Path, help="run folder (default: runs/<dataset>-<date>-<time>)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    train.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a stopped or killed run from its checkpoint (with its own config); "
        "with --epochs N, extend a run, finished or not, to N epochs",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    g = train.add_argument_group("data")
    g.add_argument("--dataset", help="digits, mnist, or a .npy/.npz/.pt file")
    g.add_argument("--data-root", help="folder holding MNIST/raw")
    g.add_argument("--download", action="store_const", const=True, help="download MNIST if missing (needs a network)")
    g.add_argument("--binarize", choices=["none", "static", "dynamic"])
    g.add_argument(
        "--validation",
        type=int,
        metavar="N",
        help="hold N training points out as a validation set (a fixed split); the run keeps the model of the epoch "
        "with the best validation ELBO (best.pt)",
    )
    g.add_argument(
        "--labels",
        type=int,
        metavar="N",
        help="keep N training labels, balanced across classes and drawn with data.label_seed; the rest are "
        "unlabelled (default: all)",
    )
    g = train.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", help="model.type: the program to train (pyro-vae models)")
    g.add_argument("--latent-dim", type=_positive_int, help="size of the latent code")
    for kind in ("network", "prior", "likelihood"):
        g.add_argument(f"--{kind}", metavar="NAME", help=f"model.{kind}.type, with its defaults (pyro-vae {kind}s)")
    g.add_argument(
        "--hidden",
        type=_counts("layer sizes", "400,400"),
        metavar="400,400",
        help="hidden layer sizes of the MLP encoder (the decoder mirrors them)",
    )
    _training_options(train)
    _show_defaults(train)


def _training_options(train: argparse.ArgumentParser) -> None:
    """Add the ``training`` option group of ``train``: a flag for each entry of :data:`_TRAINING_FLAGS`."""
    g = train.add_argument_group("training")
    for name in _TRAINING_FLAGS:
        g.add_argument("--" + name.replace("_", "-"), **_training_flag(name))


class _WithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _show_defaults(train: argparse.ArgumentParser) -> None:
    """Append to each train option's help the default it takes from the configuration."""
    defaults = Config().to_dict()
    for action in train._actions:
        if action.dest in _TRAIN_OPTIONS and action.help is not argparse.SUPPRESS:
            value: Any = defaults
            for part in _TRAIN_OPTIONS[action.dest].split("."):
                value = value.get(part) if isinstance(value, dict) else None
            shown = json.dumps(value) if isinstance(value, (dict, list)) else value
            action.help = f"{action.help or _TRAIN_OPTIONS[action.dest]} (default: {shown})".replace("%", "%%")


def _config_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``config``."""
    config = commands.add_parser("config", help="print the resolved configuration as TOML (the defaults, or a file's)")
    config.add_argument(
        "--config", metavar="FILE|PRESET", help="a TOML configuration file, or a preset's name (default: the defaults)"
    )
    config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one key (repeatable)")


def _config(args: argparse.Namespace) -> int:
    base = Config.load(args.config) if args.config else Config()
    print(Config.from_dict(apply_overrides(base.to_dict(), args.set)).to_toml(), end="")
    return 0


def _compare_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``compare``."""
    compare = commands.add_parser(
        "compare",
        help="the estimators on a trained run: values, errors, gradient variance, cost",
        formatter_class=_WithDefaults,
    )
    compare.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    compare.add_argument(
        "--particles",
        type=_counts("numbers of particles", "1,10,100"),
        default=[1, 10, 100],
        metavar="1,10,100",
        help="numbers of particles L to compare",
    )
    compare.add_argument("--repeats", type=_positive_int, default=50, metavar="R", help="estimates per estimator and L")
    compare.add_argument("--batch-size", type=_positive_int, default=100, help="points in the fixed batch")
    compare.add_argument("--split", choices=["train", "test"], default="test", help="the split the batch is taken from")
    compare.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    compare.add_argument(
        "--estimators",
        type=_names("estimators", "mc,analytic"),
        metavar="mc,analytic",
        help="estimators to compare (default: all)",
    )
    compare.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _plot_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``plot``."""
    plot = commands.add_parser(
        "plot",
        help="draw (again) the pictures of a trained run",
        formatter_class=_WithDefaults,
    )
    plot.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    plot.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _evaluate_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``evaluate``."""
    evaluate = commands.add_parser(
        "evaluate",
        help="ELBO of a trained run by each estimator, and log p(x) with --num-samples K",
        description="The ELBO of a trained run by each estimator. log p(x) is estimated only with --num-samples K "
        "(K > 0); the default, 0, skips it.",
        formatter_class=_WithDefaults,
    )
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument("--split", choices=["train", "test"], default="test", help="the split to evaluate")
    evaluate.add_argument(
        "--num-particles", type=_positive_int, default=1, help="draws of z per point for each ELBO estimate"
    )
    evaluate.add_argument(
        "--num-samples",
        type=int,
        default=0,
        metavar="K",
        help="estimate log p(x) by importance sampling with K samples per point; 0 skips it",
    )
    evaluate.add_argument("--batch-size", type=_positive_int, default=1000, help="points per pass (memory)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")


#: Options that take no value.
_SWITCHES = {"download", "overwrite", "quiet", "json"} | {n for n in _TRAINING_FLAGS if "action" in _training_flag(n)}


def _flags(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """How this command calls the parameters named in library errors: ``{param: (name, how to set it)}``.

    A train option keeps its config key as its name and is set by its flag
    (``train.batch_size``, ``--batch-size 100``); the other options are their flags.
    """
    flag = lambda dest: "--" + dest.replace("_", "-")  # noqa: E731
    setting = lambda dest: flag(dest) if dest in _SWITCHES else f"{flag(dest)} "  # noqa: E731
    names = {dest: (flag(dest), setting(dest)) for dest in vars(args)}
    names["source"] = (flag("config"), setting("config"))  # Config.load's parameter
    if args.command == "train":
        names.update({key.rpartition(".")[2]: (key, setting(option)) for option, key in _TRAIN_OPTIONS.items()})
        names["estimator"] = names["elbo"]
        names["run_dir"] = (flag("resume"), setting("resume"))
    return names


def _presets(args: argparse.Namespace) -> int:
    print("presets (pyro-vae train --config NAME; pyro-vae config --config NAME prints one):")
    for name, description in presets().items():
        print(f"  {name:<16} {description}")
    return 0


def _train_config(args: argparse.Namespace) -> Config:
    base = Config.load(args.config) if args.config else Config()
    values = apply_overrides(base.to_dict(), args.set)
    for option, key in _TRAIN_OPTIONS.items():
        if getattr(args, option) is not None:
            set_key(values, key, getattr(args, option))
    recorded = values.setdefault("model", {}).get("imports", [])
    values["model"]["imports"] = recorded + [m for m in args.imports if m not in recorded]  # evaluate needs them too
    return Config.from_dict(values)


def _train(args: argparse.Namespace) -> int:
    from pyro_vae.cli.signals import StopSignals
    from pyro_vae.runs.folders import resume_run, train_run

    with StopSignals() as stop:  # from here on, SIGINT and SIGTERM stop at the next step with a checkpoint
        if args.resume is not None:
            given = [
                f"--{name.replace('_', '-')}"
                for name in ("config", "out", *_TRAIN_OPTIONS)
                if getattr(args, name) is not None and name != "epochs"
            ] + ["--overwrite"] * args.overwrite
            if given or args.set:
                raise ConfigError(
                    f"--resume continues {args.resume} with its own config.toml (--epochs N extends it); "
                    f"drop {', '.join(given + ['--set'] * bool(args.set))}"
                )
            summary = resume_run(args.resume, progress=not args.quiet, stop=stop, epochs=args.epochs)
        else:
            config = _train_config(args)
            out = args.out or Path("runs") / f"{Path(config.data.dataset).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
            summary = train_run(config, out, overwrite=args.overwrite, progress=not args.quiet, stop=stop)
        return _report_run(summary)  # still recording signals: a late one has nothing left to stop


def _report_run(summary: dict[str, Any]) -> int:
    """What a finished run prints: where it is, its numbers, its files, and what to do next."""
    if not summary:  # a process of a data-parallel job other than process 0, which reports for all
        return 0
    tests = ", ".join(
        f"{summary[f'test_{key}']:.2f} ± {summary[f'test_{key}_se']:.2f} ({name})"
        for name, key, _ in _reported(summary, "test_")
    )
    print(
        f"run folder: {summary['run']}\n"
        f"  {summary['dataset']}: {summary['num_train']} train / {summary['num_test']} test points, "
        f"{summary['epochs']} epochs in {summary['seconds']:.1f} s on {summary['device']} ({summary['path']} path)\n"
        f"  train {summary.get('train_objective', 'ELBO')} {summary['train_elbo']:.2f}; test ELBO {tests}, "
        "nats per point\n"
        + (f"  note: {summary['note']}\n" if summary.get("note") else "")
        + (f"  {summary['binarization']}\n" if summary.get("binarization") else "")
        + (
            f"  the model is that of epoch {summary['best_epoch']}, the best validation ELBO "
            f"({summary['validation_elbo']:.2f}): best.pt\n"
            if "best_epoch" in summary
            else ""
        )
        + f"  files: {' '.join(summary['files'])}\n"
        f"next: pyro-vae evaluate {summary['run']}"
    )
    return 0


def _reported(result: dict[str, Any], prefix: str = "") -> list[tuple[str, str, str]]:
    """``(estimator, key, bound)`` per registered estimator whose value ``result`` holds as ``<prefix>elbo_<name>``."""
    from pyro_vae.infer.estimators import BOUNDS, ESTIMATORS

    return [
        (name, f"elbo_{name}", BOUNDS[ESTIMATORS.get(name).bound])
        for name in ESTIMATORS
        if f"{prefix}elbo_{name}" in result
    ]


def _moved_data(args: argparse.Namespace) -> dict[str, Path]:
    """``--data-root`` and ``--dataset`` of evaluate, compare and plot: where a run's data are now."""
    return {key: getattr(args, key) for key in ("data_root", "dataset") if getattr(args, key) is not None}


def _evaluate(args: argparse.Namespace) -> int:
    from pyro_vae.runs.evaluation import evaluate_run

    result = evaluate_run(
        args.run_dir, args.split, args.num_particles, args.batch_size, args.device, args.num_samples, _moved_data(args)
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['run']} ({result['split']} split, {result['num_examples']} points, "
        f"{result['num_particles']} particle(s))"
    )
    from pyro_vae.infer.estimators import ESTIMATORS

    for name, key, bound in _reported(result):
        k = f", K={result['train_particles']}" if ESTIMATORS.get(name).particles_define_bound else ""
        label = f"{bound} ({name}{k})"
        print(f"  {label:<22} {result[key]:10.3f} ± {result[f'{key}_se']:.3f} nats per point")
    if "log_likelihood" in result:
        label = f"{result.get('log_likelihood_of', 'log p(x)')} (IS, K={result['num_samples']})"
        print(f"  {label:<22} {result['log_likelihood']:10.3f} ± {result['log_likelihood_se']:.3f} nats per point")
    if "accuracy" in result:
        print(
            f"  accuracy of q(y|x)     {100 * result['accuracy']:9.2f}% ± {100 * result['accuracy_se']:.2f} "
            f"({result['accuracy_points']} labelled points)"
        )
    if result.get("note"):
        print(f"note: {result['note']}")
    if result.get("binarization"):
        print(result["binarization"])
    if "active_units" in result:
        _print_usage(result)
    return 0


def _print_usage(result: dict[str, Any]) -> None:
    """Is the latent code used? The diagnostics of ``evaluate``, a few lines (a few more for each of several sites)."""
    sites = [site for site in result.get("sites", {}).values() if not site.get("label")]  # a label: no units
    units, dims = result["active_units"], result["latent_dim"]
    if len(sites) > 1:  # per layer, as Burda et al. report a hierarchy's: "units in layer 1 + units in layer 2"
        units = " + ".join(str(site["active_units"]) for site in sites) + f" = {units}"
        dims = " + ".join(str(site["latent_dim"]) for site in sites)
    print(
        f"latent code ({result['diagnostic_points']} points): {units} of {dims} "
        f"dimensions active (variance of the posterior mean > {result['threshold']:g})"
    )
    _print_site_usage(result, "  ", result.get("latent_site", "z"))
    for name, site in result.get("sites", {}).items():
        if site.get("label"):
            print(f"  site {name}: a label of {site['latent_dim']} classes")
        else:
            print(f"  site {name}: {site['active_units']} of {site['latent_dim']} dimensions active")
        _print_site_usage(site, "    ", name)


def _print_site_usage(report: dict[str, Any], indent: str, site: str) -> None:
    if report["kl_per_dim"] is not None:
        ranked = sorted(report["kl_per_dim"], reverse=True)
        shown = " ".join(f"{v:.2f}" for v in ranked[:8]) + (" ..." if len(ranked) > 8 else "")
        print(f"{indent}KL per dimension ({report['kl_method'].replace('_', ' ')}), largest first: {shown} nats")
    if report["mutual_information"] is None:
        print(f"{indent}KL {report['kl_total']:.3f} nats per point ({report['kl_total_method'].replace('_', ' ')})")
        return
    pm = lambda key: "" if report[f"{key}_se"] is None else f" ± {report[f'{key}_se']:.3f}"  # noqa: E731
    print(
        f"{indent}KL {report['kl_total']:.3f} = mutual information I(x; {site}) {report['mutual_information']:.3f}"
        f"{pm('mutual_information')} + marginal KL(q({site}) || p({site})) {report['marginal_kl']:.3f}"
        f"{pm('marginal_kl')} nats per point"
    )


def _compare(args: argparse.Namespace) -> int:
    from pyro_vae.infer.compare import format_comparison
    from pyro_vae.runs.evaluation import compare_run

    result = compare_run(
        args.run_dir,
        args.split,
        tuple(args.particles),
        args.repeats,
        args.batch_size,
        args.device,
        args.estimators,
        _moved_data(args),
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(format_comparison(result))
        if result.get("note"):
            print(f"note: {result['note']}")
        written = ", ".join(str(args.run_dir / name) for name in ("compare.json", "compare.png", "snr.png"))
        print(f"written: {written}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from pyro_vae.runs.evaluation import plot_run

    for path in plot_run(args.run_dir, args.device, _moved_data(args)):
        print(path)
    return 0


def _summary(constructor: Any) -> str:
    return (inspect.getdoc(constructor) or "").split("\n\n")[0].replace("\n", " ")


#: Listing commands: ``command -> (module, registry name, config key)``.
_LISTINGS: dict[str, tuple[str, str, str]] = {
    "models": ("pyro_vae.models.programs", "MODELS", "model.type"),
    "priors": ("pyro_vae.models.priors", "PRIORS", "model.prior.type"),
    "likelihoods": ("pyro_vae.models.likelihoods", "LIKELIHOODS", "model.likelihood.type"),
    "networks": ("pyro_vae.models.networks", "NETWORKS", "model.network.type"),
    "estimators": ("pyro_vae.infer.estimators", "ESTIMATORS", "train.elbo"),
    "optimizers": ("pyro_vae.training.optim", "OPTIMIZERS", "train.optimizer.type"),
    "schedules": ("pyro_vae.training.optim", "LR_SCHEDULES", "train.lr_schedule.type"),
    "kl-schedules": ("pyro_vae.training.annealing", "KL_SCHEDULES", "train.kl_warmup.type"),
}


def _notes(registry: Any, name: str) -> list[str]:
    """What a listing says of an entry beyond its parameters."""
    from pyro_vae.models.priors import PRIORS, has_closed_form_kl
    from pyro_vae.models.vae import make_vae

    constructor = registry.get(name)
    if registry is PRIORS:
        prior = make_vae((2, 2), latent_dim=2, network={"type": "mlp", "hidden": [2]}, prior={"type": name}).prior
        return [f"closed-form KL against the Gaussian guide: {'yes' if has_closed_form_kl(prior) else 'no, sampled'}"]
    if hasattr(constructor, "support_text"):  # a likelihood
        return [f"data in {constructor.support_text}"]
    if hasattr(constructor, "closed_form_kl"):  # an estimator
        return [
            f"KL term: {'closed form where registered' if constructor.closed_form_kl else 'sampled'}; "
            f"bound: {constructor.bound}"
        ]
    return []


def _list(args: argparse.Namespace) -> int:
    import importlib

    from pyro_vae.registry import type_name
    from pyro_vae.runs.config import toml_value

    module, attribute, key = _LISTINGS[args.command]
    registry = getattr(importlib.import_module(module), attribute)
    print(f"{args.command} ({key} = ...):")
    for name in registry:
        notes = _notes(registry, name)
        print(f"\n  {name}" + (f"  [{'; '.join(notes)}]" if notes else ""))
        print(f"    {_summary(registry.get(name))}")
        for p in registry.parameters(name):
            default = p.default
            shown = (
                "required"
                if default is inspect.Parameter.empty
                else toml_value(list(default) if isinstance(default, tuple) else default)
            )
            print(f"    {p.name}: {type_name(p.annotation)} = {shown}")
    return 0


def _lost_peer(error: RuntimeError) -> bool:
    """Whether ``error`` is a collective operation failing because another process died or hung."""
    import torch.distributed

    if isinstance(error, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(error)
    return any(
        sign in text for sign in ("gloo", "NCCL", "Connection closed", "Connection reset", "timed out", "Timed out")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pyro-vae`` and ``python -m pyro_vae``; returns the exit status."""
    args = _parser().parse_args(argv)
    args.imports += [m for m in getattr(args, "more_imports", []) if m not in args.imports]  # before or after COMMAND
    try:
        import_modules(args.imports, "--import", search_current_folder=True)
    except PyroVAEError as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        with renamed_errors(_flags(args)):
            return {
                "train": _train,
                "evaluate": _evaluate,
                "compare": _compare,
                "plot": _plot,
                "config": _config,
                "presets": _presets,
            }.get(args.command, _list)(args)
    except TrainingInterrupted as e:
        name = signal.Signals(e.signum).name if e.signum is not None else "a stop request"
        where = (
            f"checkpoint written to {e.checkpoint}; continue with: pyro-vae train --resume {e.checkpoint.parent}"
            if e.checkpoint
            else "nothing was written"
        )
        print(f"pyro-vae: {name}: {e}; {where}", file=sys.stderr)
        return exit_status(e.signum) if e.signum is not None else 1
    except PyroVAEError as e:
        if args.debug:
            raise
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # in a torchrun job: a peer died or stopped answering (a collective failed or timed out)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1 or args.debug or not _lost_peer(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        print(
            f"pyro-vae: error: process {os.environ.get('RANK', '?')} of {world_size} lost the others ({first}); "
            "the job stops. The first failing process's own message says why; continue from the last checkpoint "
            "with torchrun ... -m pyro_vae train --resume RUN_DIR",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """The process's entry (``pyro-vae``, ``python -m pyro_vae``): :func:`main`, then SIGINT and SIGTERM ignored.

    Once the command is done a signal has nothing left to stop; without this, one arriving while the
    interpreter shuts down would end a finished run's process as killed.
    """
    status = main()
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    return status


if __name__ == "__main__":
    sys.exit(entry())
