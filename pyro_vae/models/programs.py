r"""Programs by name: ``model.type`` in a config, ``--model NAME`` on the command line.

A program is a :class:`torch.nn.Module` with ``model(x)`` and ``guide(x)`` methods (the contract is written in
:mod:`pyro_vae.infer.program`). :data:`MODELS` builds one from ``{"type": name, **params}`` like every other
registry: its parameters are read from the constructor's signature, and the library passes the context keywords
the constructor declares:

- ``event_shape``, the shape of one data point;
- ``latent_dim``, ``model.latent_dim``;
- ``network``, ``prior``, ``likelihood``: the tables ``model.network``, ``model.prior``, ``model.likelihood``
  (``{"type": name, **params}``, to be built with :data:`~pyro_vae.models.networks.NETWORKS`,
  :data:`~pyro_vae.models.priors.PRIORS` and :data:`~pyro_vae.models.likelihoods.LIKELIHOODS`);
- ``num_classes``, the number of values of a label;
- ``load_run``, a function from a run folder to its trained program (for a program built on another's).

A plugin registers its own program as it registers a prior: in a module named by ``model.imports`` (or
``--import``), or through the entry-point group ``pyro_vae.models``.

Example:
    >>> import pyro, pyro.distributions as dist, torch
    >>> @MODELS.register("doc_mixture")
    ... class DocMixture(torch.nn.Module):
    ...     def __init__(self, event_shape: tuple, components: int = 3):
    ...         super().__init__()
    ...         self.loc = torch.nn.Parameter(torch.randn(components, *event_shape))
    ...     def model(self, x):
    ...         with pyro.plate("data", len(x), dim=-1):
    ...             y = pyro.sample("y", dist.Categorical(logits=torch.zeros(len(self.loc))))
    ...             pyro.sample("x", dist.Normal(self.loc[y], 1.0).to_event(1), obs=x)
    ...     def guide(self, x):
    ...         with pyro.plate("data", len(x), dim=-1):
    ...             pyro.sample("y", dist.Categorical(logits=torch.zeros(len(x), len(self.loc))))
    >>> program = build_program({"type": "doc_mixture", "components": 2}, event_shape=(4,))
    >>> len(program.loc)
    2
    >>> MODELS.unregister("doc_mixture")
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.models.cvae import CVAE
from pyro_vae.models.hierarchical import Hierarchical
from pyro_vae.models.ssvae import SSVAE
from pyro_vae.models.stacked import make_m1m2
from pyro_vae.models.vae import make_vae
from pyro_vae.registry import Registry

__all__ = ["MODELS", "build_program", "check_methods", "label_use"]

#: Programs by name; each entry is a constructor of an ``nn.Module`` with ``model`` and ``guide`` methods.
MODELS: Registry = Registry(
    "model",
    context=("event_shape", "latent_dim", "network", "prior", "likelihood", "num_classes", "load_run"),
    group="pyro_vae.models",
)
MODELS.register("vae")(make_vae)
MODELS.register("hierarchical")(Hierarchical)
MODELS.register("ssvae")(SSVAE)
MODELS.register("cvae")(CVAE)
MODELS.register("m1m2")(make_m1m2)


def check_methods(program: Any) -> None:
    """A :class:`ConfigError` unless ``program`` is an ``nn.Module`` with ``model`` and ``guide`` methods."""
    name = type(program).__name__
    if not isinstance(program, nn.Module):
        raise ConfigError(f"a program is a torch.nn.Module with model and guide methods; got a {name}")
    for method in ("model", "guide"):
        if not callable(getattr(program, method, None)):
            raise ConfigError(
                f"{name} has no {method} method: a program is an nn.Module with model(x) and guide(x); add {method}"
            )


def label_use(program: Any) -> str:
    """How a program takes labels, read from its ``model``'s signature: ``"none"`` (``model(x)``), ``"optional"``
    (``model(x, y=None)``: ``y`` is observed where given and latent where ``None``) or ``"required"``
    (``model(x, y)``: always observed)."""
    y = inspect.signature(program.model).parameters.get("y")
    if y is None:
        return "none"
    return "optional" if y.default is None else "required"


def build_program(spec: dict[str, Any], path: str = "model", **context: Any) -> nn.Module:
    """The program ``spec`` names (``{"type": name, **params}``), given the ``context`` its constructor declares.

    A :class:`ConfigError` naming ``path`` for an unknown name or parameter, and for a constructor that does
    not return a program.
    """
    program = MODELS.build(spec, path, **context)
    try:
        check_methods(program)
    except ConfigError as e:
        raise ConfigError(f"{path}.type {spec['type']!r}: {e}") from None
    return program
