"""Registries: components chosen by name, with their parameters validated from the signature.

A prior, a likelihood or a network is registered once under a name; a configuration then names
it as ``{"type": "<name>", **params}``. The parameters a component accepts, their defaults and
their types are read from the signature of the registered callable, so registering a new
component needs no other change anywhere.

Example:
    >>> from pyro_vae.registry import Registry
    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(side: float = 1.0) -> float:
    ...     return side * side
    >>> shapes.build({"type": "square", "side": 3.0})
    9.0
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from pyro_vae.errors import ConfigError

__all__ = ["Registry", "Parameter", "AtLeast", "AtMost", "RunFolder", "check_value", "names_run_folder", "type_name"]

T = TypeVar("T", bound=Callable[..., Any])


class AtLeast(typing.NamedTuple):
    """A lower bound on a number, used as ``Annotated[int, AtLeast(1)]`` in a signature."""

    bound: float
    strict: bool = False

    def check(self, value: float, path: str) -> None:
        if (value <= self.bound if self.strict else value < self.bound) or value != value:  # value != value: NaN
            raise ConfigError(f"{path} must be {'>' if self.strict else '>='} {self.bound:g} (got {value})")


class AtMost(typing.NamedTuple):
    """An upper bound on a number, used as ``Annotated[int, AtMost(2**32 - 1)]`` in a signature."""

    bound: int

    def check(self, value: float, path: str) -> None:
        if value > self.bound:
            raise ConfigError(f"{path} must be <= {self.bound} (got {value})")


class RunFolder(typing.NamedTuple):
    """Marks a parameter naming a run folder, used as ``Annotated[str, RunFolder()]`` in a signature: a run
    records it made absolute, as it records its data's paths, so that it loads from any folder."""


def names_run_folder(annotation: Any) -> bool:
    """Whether a parameter's annotation marks it as naming a run folder (:class:`RunFolder`)."""
    metadata = getattr(annotation, "__metadata__", ())
    return any(isinstance(rule, RunFolder) for rule in metadata)


class Parameter(typing.NamedTuple):
    """A configurable parameter of a registered component."""

    name: str
    annotation: Any
    default: Any  # inspect.Parameter.empty when required


class Registry(Generic[T]):
    """A mapping from names to component constructors of one kind.

    Args:
        kind: what the registry holds, used in messages (``"prior"``, ``"likelihood"``).
        context: constructor arguments supplied by the library rather than the config
            (for example ``latent_dim``), hidden from users and listings.
        group: the entry-point group through which installed packages add entries (``"pyro_vae.priors"``):
            each entry point names a module (or object) whose import registers them. They are loaded
            the first time a name is not found, or the entries are listed.
    """

    def __init__(self, kind: str, context: tuple[str, ...] = (), group: str | None = None) -> None:
        self.kind = kind
        self.context = context
        self.group = group
        self._entries: dict[str, T] = {}
        self._plugins_loaded = group is None

    def register(self, name: str, replace: bool = False) -> Callable[[T], T]:
        """Decorator registering a constructor under ``name``.

        A name that is taken by another constructor is refused unless ``replace=True``; registering
        the same constructor again (a module imported twice) changes nothing.
        """

        def decorator(constructor: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and not replace and _where(existing) != _where(constructor):
                raise ConfigError(
                    f"{self.kind} {name!r} is already registered ({_where(existing)}); "
                    f"choose another name, or register({name!r}, replace=True) to replace it"
                )
            self._entries[name] = constructor
            return constructor

        return decorator

    def load_plugins(self) -> None:
        """Import what the installed packages' entry points of :attr:`group` name (once)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        for point in entry_points(group=self.group):
            try:
                point.load()
            except Exception as e:  # any failure of a third party's import means the same to the user
                raise ConfigError(
                    f"the {self.group} plugin {point.name!r} ({point.value}) failed to load: "
                    f"{type(e).__name__}: {e}; fix or uninstall the package that provides it"
                ) from None

    def unregister(self, name: str) -> None:
        """Remove an entry (a no-op if there is none)."""
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and name not in self._entries:
            self.load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self.load_plugins()
        return iter(list(self._entries))

    def names(self) -> list[str]:
        return list(self)

    def get(self, name: str, path: str = "type") -> T:
        """The constructor registered under ``name``; a :class:`ConfigError` naming the known ones otherwise."""
        if isinstance(name, str) and name not in self._entries:
            self.load_plugins()
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(f"{path}: unknown {self.kind} type {name!r}; known: {', '.join(self._entries)}")
        return self._entries[name]

    def parameters(self, name: str) -> list[Parameter]:
        """The user-settable parameters of a component, from its signature."""
        constructor = self.get(name)
        target = constructor.__init__ if inspect.isclass(constructor) else constructor
        hints = typing.get_type_hints(target, include_extras=True)
        out = []
        for p in inspect.signature(constructor).parameters.values():
            if p.name in self.context or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out.append(Parameter(p.name, hints.get(p.name, Any), p.default))
        return out

    def validate(self, spec: Any, path: str) -> dict[str, Any]:
        """Check a ``{"type": name, **params}`` table and return it with defaults filled in."""
        if isinstance(spec, str):
            spec = {"type": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"{path} must be a table with a 'type' key (got {spec!r})")
        if "type" not in spec:
            raise ConfigError(f"{path}.type is missing; known {self.kind} types: {', '.join(self._entries)}")
        name = spec["type"]
        self.get(name, f"{path}.type")
        params = {p.name: p for p in self.parameters(name)}
        unknown = sorted(set(spec) - set(params) - {"type"})
        if unknown:
            allowed = ", ".join(params) or "none"
            raise ConfigError(f"{path}.{unknown[0]}: unknown parameter for {self.kind} {name!r}; allowed: {allowed}")
        resolved: dict[str, Any] = {"type": name}
        for p in params.values():
            if p.name in spec:
                resolved[p.name] = check_value(spec[p.name], p.annotation, f"{path}.{p.name}")
            elif p.default is inspect.Parameter.empty:
                raise ConfigError(f"{path}.{p.name} is required for {self.kind} {name!r}")
            else:
                resolved[p.name] = _plain(p.default)
        return resolved

    def build(self, spec: Any, path: str = "", **context: Any) -> Any:
        """Validate ``spec`` and call the registered constructor with it and the ``context`` it accepts.

        Context arguments (``latent_dim``, ``event_shape``, ...) are passed only to constructors
        whose signature names them, so a component asks for just what it needs.
        """
        spec = self.validate(spec, path or self.kind)
        constructor = self._entries[spec["type"]]
        accepted = inspect.signature(constructor).parameters
        context = {k: v for k, v in context.items() if k in accepted}
        params = {k: v for k, v in spec.items() if k != "type"}
        return constructor(**context, **params)


def _where(constructor: Any) -> str:
    """Where a constructor is defined, ``module.qualname``: the same for the same code imported twice."""
    return f"{getattr(constructor, '__module__', '?')}.{getattr(constructor, '__qualname__', repr(constructor))}"


def _plain(value: Any) -> Any:
    """Defaults as they appear in a config file (tuples become lists, nested ones too)."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def check_value(value: Any, annotation: Any, path: str) -> Any:
    """Check ``value`` against a type annotation, converting ints to floats where floats are expected.

    Supports ``bool``, ``int``, ``float``, ``str``, ``Optional[...]``/unions,
    ``Literal[...]``, ``tuple[T, ...]``/``list[T]`` (returned as lists), and
    ``Annotated[T, AtLeast(bound)]`` and ``AtMost(bound)`` (a bound applies to each item of a
    list). Floats must be finite.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is typing.Annotated:
        value = check_value(value, args[0], path)
        for rule in annotation.__metadata__:
            if isinstance(rule, (AtLeast, AtMost)):
                for item in value if isinstance(value, list) else [value]:
                    rule.check(item, path)
        return value
    if origin is typing.Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{path} must be one of {allowed} (got {value!r})")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return check_value(value, option, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path} has an unsupported value {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list (got {value!r})")
        # tuple[float, float]: a fixed length
        if origin is tuple and args and Ellipsis not in args and len(value) != len(args):
            raise ConfigError(f"{path} must be a list of {len(args)} items (got {list(value)!r})")
        item = args[0] if args else Any
        return [check_value(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    return _check_scalar(value, annotation, path)


def _check_scalar(value: Any, annotation: Any, path: str) -> Any:
    """:func:`check_value` for a plain ``bool``, ``int``, ``float`` or ``str`` annotation."""
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false (got {value!r})")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer (got {value!r})")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number (got {value!r})")
        if not math.isfinite(value):
            raise ConfigError(f"{path} must be a finite number (got {value})")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string (got {value!r})")
        return value
    raise TypeError(f"{path}: unsupported annotation {annotation!r}")  # a bug in a component, not user input


def type_name(annotation: Any) -> str:
    """A short, user-facing name of an annotation, for listings: ``int >= 1``, ``list[int]``, ``'a' | 'b'``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        rules = [
            f"{'>' if r.strict else '>='} {r.bound:g}" if isinstance(r, AtLeast) else f"<= {r.bound}"
            for r in annotation.__metadata__
            if isinstance(r, (AtLeast, AtMost))
        ]
        return " ".join([type_name(args[0]), *rules])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (tuple, list):
        return f"list[{type_name(args[0]) if args else 'Any'}]"
    return getattr(annotation, "__name__", str(annotation))
