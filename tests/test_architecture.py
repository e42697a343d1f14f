"""The shape of the code: rooms whose imports flow one way, short functions, one home for each estimator's name.

The rules come from the style guide (shared/STYLE.md): the file tree shows the architecture, with imports
flowing one way (models <- infer <- training <- runs <- cli, over the base modules ``errors`` and
``registry``); a function tells one story; and a choice has one source of truth — nothing outside
``pyro_vae/infer/estimators.py`` compares an estimator's name.
"""

import ast
from pathlib import Path

import pytest

from pyro_vae import ESTIMATORS

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vae"
MAX_LINES = 60


#: The package's rooms, lowest first: a module may import from its own room, the ones below, and the base.
ROOMS = ("models", "infer", "training", "runs", "cli")
BASE = ("errors", "registry")


def modules():
    return sorted(PACKAGE.rglob("*.py"))


def _room(module: str) -> int | None:
    """The rank of a ``pyro_vae.*`` module's room: 0 for the base, 1.. for the rooms; None for the package itself."""
    parts = module.split(".")
    if parts[0] != "pyro_vae" or len(parts) < 2:
        return None
    return 0 if parts[1] in BASE else ROOMS.index(parts[1]) + 1


def _imports(tree):
    """Every ``pyro_vae`` module a module imports, at its top or inside a function, with the line."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)


def test_every_module_lives_in_a_room_or_the_base():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.stem not in BASE + ("__init__", "__main__")]
    assert not loose, f"modules outside the rooms {ROOMS}: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ROOMS)


@pytest.mark.parametrize(
    "path", [p for p in modules() if p.parent != PACKAGE], ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_imports_flow_one_way(path):
    own = ROOMS.index(path.parent.name) + 1
    upward = [
        f"{module} (line {line})"
        for module, line in _imports(ast.parse(path.read_text()))
        if module.startswith("pyro_vae") and (_room(module) is None or _room(module) > own)
    ]
    assert not upward, f"{path.parent.name}/{path.name} imports from a room above its own: {', '.join(upward)}"


@pytest.mark.parametrize("path", [PACKAGE / f"{name}.py" for name in BASE], ids=lambda p: p.name)
def test_the_base_imports_no_room(path):
    found = [m for m, _ in _imports(ast.parse(path.read_text())) if m.startswith("pyro_vae") and _room(m) != 0]
    assert not found, f"{path.name} imports {found}"


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines without its docstring: the story is the code's (the reference asks docstrings to
    document every parameter, with an example, however long that makes them)."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_longer_than_sixty_lines(path):
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name} ({_code_lines(node)} lines without the docstring, line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > MAX_LINES
    ]
    assert not long, f"{path.name}: {', '.join(long)}"


def _compared_names(tree):
    """String constants compared with ``==``, ``!=``, ``in`` or ``not in`` anywhere in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                items = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                for item in items:
                    if isinstance(item, ast.Constant) and isinstance(item.value, str):
                        yield item.value, node.lineno


@pytest.mark.parametrize(
    "path", [p for p in modules() if p.name != "estimators.py"], ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_estimator_name_is_compared_outside_the_estimators_module(path):
    names = set(ESTIMATORS)
    found = [
        f"{value!r} at line {line}" for value, line in _compared_names(ast.parse(path.read_text())) if value in names
    ]
    assert not found, f"{path.name} compares estimator names: {', '.join(found)}"
