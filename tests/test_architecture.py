"""The shape of the code: functions short enough to read at once, one home for each estimator's name.

Both rules come from the style guide (shared/STYLE.md): a function tells one story, and a choice
has one source of truth — nothing outside ``pyro_vae/estimators.py`` compares an estimator's name.
"""

import ast
from pathlib import Path

import pytest

from pyro_vae import ESTIMATORS

PACKAGE = Path(__file__).resolve().parents[1] / "pyro_vae"
MAX_LINES = 60


def modules():
    return sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.name)
def test_no_function_is_longer_than_sixty_lines(path):
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_LINES
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


@pytest.mark.parametrize("path", [p for p in modules() if p.name != "estimators.py"], ids=lambda p: p.name)
def test_no_estimator_name_is_compared_outside_the_estimators_module(path):
    names = set(ESTIMATORS)
    found = [
        f"{value!r} at line {line}" for value, line in _compared_names(ast.parse(path.read_text())) if value in names
    ]
    assert not found, f"{path.name} compares estimator names: {', '.join(found)}"
