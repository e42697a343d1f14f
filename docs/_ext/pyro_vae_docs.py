"""Pages generated from the library at build time, so that they cannot go stale (the ``pyro_vae_docs`` extension).

- ``.. pyro-vae-api:: pyro_vae.models`` documents every name of ``pyro_vae.__all__`` defined in that subpackage
  (under its public id, ``pyro_vae.fit``), after the subpackage's docstring.
- ``.. pyro-vae-components:: priors`` is the table of one registry (the ``pyro-vae priors`` listing): each
  component with its summary, its parameters (types and defaults read from the signature) and notes.
- ``.. pyro-vae-registered:: priors`` documents each constructor of that registry.

The pages holding them, and the command-line reference, are read again on every build. When reading ends, a name
of ``__all__`` or a registry that no directive showed is a warning (an error in ``make site``); so is a Python
cross-reference to a name that does not exist, and an attribute docstring that napoleon would misread. Signatures
show ``Annotated[int, AtLeast(1)]`` as ``int``: the tables give the bounds.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

import pyro_vae
from pyro_vae.cli.main import _LISTINGS, _notes, _summary
from pyro_vae.registry import Registry, type_name
from pyro_vae.runs.config import toml_value

logger = logging.getLogger(__name__)

#: Where each directive records what it showed, per document: ``{kind: {docname: {name, ...}}}``.
_SHOWN = "pyro_vae_shown"
#: What :func:`_lookup` answers for a name that means nothing.
_MISSING = object()


def _registry(listing: str) -> Registry:
    module, attribute, _ = _LISTINGS[listing]
    return getattr(importlib.import_module(module), attribute)


def _home(name: str) -> str:
    """The module that defines a public name: where a function or class was written, where a registry lives."""
    obj = getattr(pyro_vae, name)
    if inspect.isclass(obj) or inspect.isfunction(obj):
        return obj.__module__
    homes = {
        module.__name__
        for key, module in list(sys.modules.items())
        if key.startswith("pyro_vae.") and name in getattr(module, "__all__", ()) and getattr(module, name) is obj
    }
    return min(homes, key=len) if homes else "pyro_vae"


def _public_name(obj: Any) -> str | None:
    """``pyro_vae.<name>`` when ``obj`` is exported from the top, else ``None``."""
    return next((f"pyro_vae.{n}" for n in pyro_vae.__all__ if getattr(pyro_vae, n) is obj), None)


def _target(constructor: Any) -> str:
    """The id under which a registered constructor is documented."""
    return _public_name(constructor) or f"{constructor.__module__}.{constructor.__qualname__}"


def _documented_here(constructor: Any) -> bool:
    """Whether the reference documents a registered constructor itself (ours, public, not already in ``__all__``)."""
    module = getattr(constructor, "__module__", "") or ""
    return (
        module.split(".")[0] == "pyro_vae"
        and not constructor.__qualname__.startswith("_")
        and _public_name(constructor) is None
    )


def _default(parameter: Any) -> str:
    if parameter.default is inspect.Parameter.empty:
        return "required"
    default = parameter.default
    return toml_value(list(default) if isinstance(default, tuple) else default)


class _Generated(SphinxDirective):
    """A directive whose reST is written by :meth:`lines` and parsed in place."""

    required_arguments = 1
    kind = ""

    def lines(self) -> list[str]:
        raise NotImplementedError

    def record(self, names: list[str]) -> None:
        shown = getattr(self.env, _SHOWN, None)
        if shown is None:
            shown = {}
            setattr(self.env, _SHOWN, shown)
        shown.setdefault(self.kind, {}).setdefault(self.env.docname, set()).update(names)

    def run(self) -> list[nodes.Node]:
        lines = self.lines()
        if _in_markdown(self.state):  # MyST parses a directive's content as Markdown: say it is reST
            lines = ["````{eval-rst}", *lines, "````"]
        text = StringList()
        source = f"<{self.name} {self.arguments[0]}>"
        for i, line in enumerate(lines):
            text.append(line, source, i)
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, text, node)
        return node.children


def _in_markdown(state: Any) -> bool:
    try:
        from myst_parser.mocking import MockState
    except ImportError:
        return False
    return isinstance(state, MockState)


class ApiDirective(_Generated):
    """Every name of ``pyro_vae.__all__`` defined in the subpackage given, documented under ``pyro_vae.<name>``."""

    kind = "api"

    def lines(self) -> list[str]:
        package = self.arguments[0]
        names = [n for n in pyro_vae.__all__ if _home(n) == package or _home(n).startswith(package + ".")]
        if not names:
            raise self.error(f"no name of pyro_vae.__all__ is defined in {package}")
        self.record(names)
        out = [f".. automodule:: {package}", "   :no-members:", "   :no-index:", ""]
        for name in names:
            obj = getattr(pyro_vae, name)
            if isinstance(obj, Registry):
                out += _registry_entry(name, obj)
            elif inspect.isclass(obj):
                out += [f".. autoclass:: pyro_vae.{name}", "   :members:", "   :show-inheritance:", ""]
            else:
                out += [f".. autofunction:: pyro_vae.{name}", ""]
        return out


def _listing_of(registry: Registry) -> str:
    return next(listing for listing in _LISTINGS if _registry(listing) is registry)


def _registry_entry(name: str, registry: Registry) -> list[str]:
    listing = _listing_of(registry)
    key = _LISTINGS[listing][2]
    entries = ", ".join(f":py:obj:`{n} <{_target(registry.get(n))}>`" for n in registry)
    return [
        f".. py:data:: {name}",
        "   :module: pyro_vae",
        "   :type: ~pyro_vae.registry.Registry",
        "",
        f"   The {registry.kind}s by name: a configuration names one in ``{key}``, and ``pyro-vae {listing}``",
        f"   lists them with their parameters (:ref:`the table <components-{listing}>`). Registered here: {entries}.",
        "",
    ]


class _ListingDirective(_Generated):
    """A directive whose argument names a registry by its listing (``priors``)."""

    def listed(self) -> tuple[str, Registry]:
        """The listing and its registry, recorded as shown; an error for an unknown one."""
        listing = self.arguments[0]
        if listing not in _LISTINGS:
            raise self.error(f"unknown registry {listing!r}; known: {', '.join(_LISTINGS)}")
        self.record([listing])
        return listing, _registry(listing)


class ComponentsDirective(_ListingDirective):
    """The table of a registry's components, as ``pyro-vae <listing>`` prints it."""

    kind = "components"

    def lines(self) -> list[str]:
        listing, registry = self.listed()
        out = [
            f".. _components-{listing}:",
            "",
            f".. list-table:: ``{_LISTINGS[listing][2]} = ...``",
            "   :header-rows: 1",
            "   :widths: 15 40 45",
            "",
            "   * - name",
            "     - parameters",
            "     - what it is",
        ]
        for name in registry:
            constructor = registry.get(name)
            parameters = [f"``{p.name}: {type_name(p.annotation)} = {_default(p)}``" for p in registry.parameters(name)]
            notes = "; ".join(_notes(registry, name))
            out += [f"   * - :py:obj:`{name} <{_target(constructor)}>`"]
            # a line block: one parameter a line
            out += [f"     - | {parameters[0]}" if parameters else "     - none"]
            out += [f"       | {p}" for p in parameters[1:]]
            out += [f"     - {_summary(constructor)}" + (f" *{notes}*" if notes else "")]
        return out


class RegisteredDirective(_ListingDirective):
    """The reference of each constructor registered in a registry (those not exported from the top)."""

    kind = "registered"

    def lines(self) -> list[str]:
        _, registry = self.listed()
        out = []
        for name in registry:
            constructor = registry.get(name)
            if not _documented_here(constructor):
                continue
            what = "autoclass" if inspect.isclass(constructor) else "autofunction"
            out += [f".. {what}:: {_target(constructor)}"]
            out += ["   :show-inheritance:", ""] if what == "autoclass" else [""]
        return out


def _purge(app: Sphinx, env: BuildEnvironment, docname: str) -> None:
    for by_doc in getattr(env, _SHOWN, {}).values():
        by_doc.pop(docname, None)


def _merge(app: Sphinx, env: BuildEnvironment, docnames: set[str], other: BuildEnvironment) -> None:
    shown = getattr(env, _SHOWN, None)
    if shown is None:
        shown = {}
        setattr(env, _SHOWN, shown)
    for kind, by_doc in getattr(other, _SHOWN, {}).items():
        for docname in docnames:
            if docname in by_doc:
                shown.setdefault(kind, {})[docname] = by_doc[docname]


def _generated_pages(app: Sphinx, env: BuildEnvironment, added: set, changed: set, removed: set) -> list[str]:
    """Pages generated from the library are read on every build, since the library may change under an unchanged page:
    those of these directives and the command-line reference (sphinx-argparse)."""
    pages = set().union(*(by_doc.keys() for by_doc in getattr(env, _SHOWN, {}).values()))
    pages |= {
        docname
        for docname in env.found_docs
        if re.search(r"^(\.\. |```\{)argparse", Path(env.doc2path(docname)).read_text(encoding="utf-8"), re.MULTILINE)
    }
    return sorted(pages & env.found_docs - added - changed - removed)


def _check_complete(app: Sphinx, env: BuildEnvironment) -> None:
    """Every public name and every registry appears: a new one fails the build until a page shows it."""
    shown = {kind: set().union(*by_doc.values()) for kind, by_doc in getattr(env, _SHOWN, {}).items()}
    expected = {"api": set(pyro_vae.__all__), "components": set(_LISTINGS), "registered": set(_LISTINGS)}
    for kind, names in expected.items():
        for missing in sorted(names - shown.get(kind, set())):
            logger.warning(f"{missing} is not shown by any pyro-vae-{kind} directive", type="pyro_vae")


def _dead_reference(app: Sphinx, env: BuildEnvironment, node: nodes.Element, contnode: nodes.Node) -> Any:
    """A Python cross-reference left unresolved: link a name exported from the top to its public entry, let a name
    that exists but has no entry (torch's, a private helper's) stand as code, and warn of one that names nothing."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    if any(char in target for char in "[]()'\"=") and not any(char.isspace() for char in target):
        return contnode  # a piece of an annotation split for links, not a name
    for candidate in _candidates(target, node):
        obj = _lookup(candidate)
        if obj is _MISSING:
            continue
        public = _public_name(obj) if not isinstance(obj, (str, int, float, bool, type(None))) else None
        if public is not None and public != candidate:
            resolved = env.get_domain("py").resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], public, node, contnode
            )
            if resolved is not None:
                return resolved
        return contnode
    if node["reftype"] in ("obj", "class", "func", "meth", "data", "attr", "exc", "mod", "const"):
        logger.warning(f"{node['reftype']} reference to {target!r} names nothing", location=node, type="pyro_vae")
        return contnode
    return None


def _candidates(target: str, node: nodes.Element) -> list[str]:
    """Full names a reference may mean: from its module and class, from the documented object's own module."""
    scopes = []
    module, cls = node.get("py:module"), node.get("py:class")
    if module and cls:
        scopes.append(f"{module}.{cls}")
    if module:
        scopes.append(module)
    documented = _enclosing_object(node)
    if documented is not None:
        home = getattr(documented, "__module__", None)
        if inspect.isclass(documented):
            scopes.append(f"{documented.__module__}.{documented.__qualname__}")
        if home:
            parts = home.split(".")
            scopes += [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
    return [f"{scope}.{target}" for scope in scopes] + [target, f"builtins.{target}"]


def _enclosing_object(node: nodes.Element) -> Any:
    """The Python object of the description that holds a reference (``pyro_vae.fit`` for a word in its docstring)."""
    parent = node.parent
    while parent is not None:
        if isinstance(parent, addnodes.desc):
            for signature in parent.findall(addnodes.desc_signature):
                module, fullname = signature.get("module"), signature.get("fullname")
                obj = _lookup(f"{module}.{fullname}" if module else fullname) if fullname else _MISSING
                obj = obj.fget if isinstance(obj, property) else obj
                if inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj):
                    return obj
                break  # an attribute, or one set on instances: the class around it
        parent = parent.parent
    return None


def _lookup(name: str) -> Any:
    """The object a dotted name means (importing the longest module prefix), or ``_MISSING``."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except Exception:  # not a module (or not importable): try a shorter prefix
            continue
        for attribute in parts[i:]:
            owner, obj = obj, getattr(obj, attribute, _MISSING)
            if obj is _MISSING:
                return _instance_attribute(owner, attribute) if attribute == parts[-1] else _MISSING
        return obj
    return _MISSING


def _instance_attribute(cls: Any, name: str) -> Any:
    """``name`` when a class sets it on its instances (``self.name = ...``), which the class itself does not hold."""
    if not inspect.isclass(cls):
        return _MISSING
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return _MISSING
    return name if re.search(rf"\bself\.{re.escape(name)}\s*[:=]", source) else _MISSING


_ANNOTATED = re.compile(r"(~?typing\.)?Annotated\[")


def _strip_annotated(text: str) -> str:
    """``Annotated[int, AtLeast(bound=1)]`` written as ``int`` in a signature."""
    while match := _ANNOTATED.search(text):
        depth, first, i = 1, None, match.end()
        while depth:
            char = text[i]
            if char in "[(":
                depth += 1
            elif char in "])":
                depth -= 1
            elif char == "," and depth == 1 and first is None:
                first = i
            i += 1
        text = text[: match.start()] + text[match.end() : first if first is not None else i - 1] + text[i:]
    return text


def _signature(app: Sphinx, what: str, name: str, obj: Any, options: Any, signature: str | None, returns: str | None):
    if signature is None or "Annotated[" not in signature + (returns or ""):
        return None
    return _strip_annotated(signature), _strip_annotated(returns) if returns else returns


def _inline_attribute_type(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Napoleon reads an attribute docstring's first line up to a colon (outside code) as its type: say so."""
    from sphinx.ext.napoleon.docstring import _single_colon_regex, _xref_or_code_regex

    if what != "attribute" or not lines:
        return
    outside_code = [piece for piece in _xref_or_code_regex.split(lines[0]) if not _xref_or_code_regex.match(piece)]
    if any(_single_colon_regex.search(piece) for piece in outside_code):
        logger.warning(
            f"the first line of {name}'s docstring has a colon, so napoleon shows the text before it as its type; "
            "rephrase it (a semicolon, or a second sentence)",
            type="pyro_vae",
        )


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-signature", _signature)
    app.connect("autodoc-process-docstring", _inline_attribute_type, priority=400)  # before napoleon reads it
    app.add_directive("pyro-vae-api", ApiDirective)
    app.add_directive("pyro-vae-components", ComponentsDirective)
    app.add_directive("pyro-vae-registered", RegisteredDirective)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-get-outdated", _generated_pages)
    app.connect("env-check-consistency", _check_complete)
    app.connect("missing-reference", _dead_reference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
