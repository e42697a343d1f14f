"""Every public function and class holds up in the API reference, as the style guide asks (shared/STYLE.md).

For each function and class of ``pyro_vae.__all__`` (the registries are documented by their entries): a
one-line summary ending with a period; an ``Args:`` section with an entry for every parameter (a class's
constructor's, or a dataclass's fields; not ``self``, ``*args`` or ``**kwargs``); ``Returns:`` where the
function returns something; and an ``Example:`` that doctest runs (``pytest --doctest-modules`` over the
package). The docstring read is the object's own: a class does not inherit its base's.
"""

import dataclasses
import inspect
import re

import pytest

import pyro_vae
from pyro_vae.registry import Registry

#: A Google-style section header: a line of its own, unindented, ending with a colon.
_SECTION = re.compile(r"^([A-Z][A-Za-z ]*):\s*$")
#: An entry of an ``Args:`` section: ``name: ...`` or ``name (type): ...``, at the section's first indentation.
_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(\([^)]*\))?\s*:")


def _documented():
    """The public names this module checks: every function and class of ``pyro_vae.__all__``."""
    return [name for name in pyro_vae.__all__ if _is_documented_kind(getattr(pyro_vae, name))]


def _is_documented_kind(obj):
    return inspect.isclass(obj) or inspect.isfunction(obj)


def _docstring(obj):
    """The object's own docstring, dedented (``inspect.getdoc`` would hand a class its base's)."""
    return inspect.cleandoc(obj.__doc__ or "")


def _sections(doc):
    """``{header: [lines of its body, dedented]}`` of a Google-style docstring."""
    sections, current = {}, None
    for line in doc.splitlines():
        match = _SECTION.match(line)
        if match:
            current = sections.setdefault(match[1], [])
        elif current is not None and (not line.strip() or line.startswith((" ", "\t"))):
            current.append(line)
        else:
            current = None
    return {header: inspect.cleandoc("\n".join(body)).splitlines() for header, body in sections.items()}


def _arg_names(lines):
    """The parameter names an ``Args:`` section documents, one entry each."""
    return [m[1] for line in lines if not line.startswith((" ", "\t")) and (m := _ENTRY.match(line))]


def _parameters(obj):
    """The parameters a caller passes, ``(named, variadic)``: a function's, a class constructor's (a dataclass's
    fields). The named ones must be documented; ``*args`` and ``**kwargs`` may be."""
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        return [f.name for f in dataclasses.fields(obj) if f.init], []
    signature = inspect.signature(obj)  # a class: its constructor's, without self
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = [p for p in signature.parameters.values() if p.name != "self"]
    return [p.name for p in parameters if p.kind not in variadic], [p.name for p in parameters if p.kind in variadic]


def _returns_something(function):
    annotation = inspect.signature(function).return_annotation
    return annotation not in (None, "None", type(None))


def test_every_public_name_is_checked_or_a_registry():
    unchecked = [
        name
        for name in pyro_vae.__all__
        if not _is_documented_kind(getattr(pyro_vae, name)) and not isinstance(getattr(pyro_vae, name), Registry)
    ]
    assert not unchecked, f"public names neither a function, a class nor a registry (check them here): {unchecked}"


@pytest.mark.parametrize("name", _documented())
def test_docstring_has_the_sections_of_the_reference(name):
    obj = getattr(pyro_vae, name)
    doc = _docstring(obj)
    assert doc, f"{name} has no docstring of its own"
    lines = doc.splitlines()
    summary = lines[0].strip()
    assert summary.endswith("."), f"{name}: the summary line does not end with a period: {summary!r}"
    assert len(lines) == 1 or not lines[1].strip(), f"{name}: the summary is more than one line"

    sections = _sections(doc)
    parameters, variadic = _parameters(obj)
    if parameters:
        assert "Args" in sections, f"{name} takes {', '.join(parameters)} and has no Args: section"
    documented = _arg_names(sections.get("Args", []))
    missing = [p for p in parameters if p not in documented]
    assert not missing, f"{name}: Args: has no entry for {', '.join(missing)}"
    unknown = [p for p in documented if p not in parameters + variadic]
    assert not unknown, f"{name}: Args: documents {', '.join(unknown)}, which it does not take"

    if inspect.isfunction(obj) and _returns_something(obj):
        assert "Returns" in sections, f"{name} returns a value and has no Returns: section"

    examples = sections.get("Example", []) + sections.get("Examples", [])
    assert any(line.lstrip().startswith(">>>") for line in examples), f"{name} has no Example: with a doctest (>>>)"
