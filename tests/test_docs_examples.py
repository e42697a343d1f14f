"""The README's and the site's examples run as written, in a fresh folder, from an installed package.

Every ```python block of README.md and of each page under docs/ runs, page by page (the blocks of one page in
order, in one process, as a reader pastes them), in an empty folder. The command lines of the README and of
getting started (the lines of their ```bash blocks that start with ``pyro-vae``) run there too. A wheel built
from the repository, installed into a folder of its own, imports and finds its presets from anywhere.
"""

import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pyro_vae.cli.main import main

from helpers import site_pages

ROOT = Path(__file__).resolve().parents[1]
slow = pytest.mark.slow
#: What the site's build copies into docs/ (docs/conf.py): a link to the copy reaches the original.
COPIES = {ROOT / "docs" / "notebooks" / "tutorial.ipynb": ROOT / "examples" / "tutorial.ipynb"}
_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(page: Path, language: str) -> list[str]:
    """The fenced code blocks of ``page`` in ``language``, in order."""
    return [body for lang, body in _FENCE.findall(page.read_text(encoding="utf-8")) if lang == language]


def pages() -> list[Path]:
    """README.md and the site's Markdown pages."""
    return [ROOT / "README.md", *site_pages()]


def commands(page: Path) -> list[str]:
    """The ``pyro-vae`` command lines of ``page``'s bash blocks, continuation lines joined."""
    lines = "\n".join(blocks(page, "bash")).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip().startswith("pyro-vae ")]


def _env() -> dict[str, str]:
    """This interpreter's scripts first on PATH, one thread each, the repository not on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["MPLBACKEND"] = "Agg"
    return env


def _ran(command: list[str] | str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    shell = isinstance(command, str)
    done = subprocess.run(command, cwd=cwd, env=_env(), shell=shell, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command if shell else ' '.join(command)}\n{done.stderr[-3000:]}"
    return done


PYTHON_PAGES = [p for p in pages() if blocks(p, "python")]
#: The pages whose ``pyro-vae`` command lines run too: a reader copies these.
COMMAND_PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]


@slow
@pytest.mark.parametrize("page", sorted(set(PYTHON_PAGES) | set(COMMAND_PAGES)), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_examples_of_a_page_run_as_written_in_one_empty_folder(page, tmp_path, monkeypatch):
    """The page's Python blocks, then its command lines, in the same folder: a reader who runs both does not trip
    over a run folder the other made."""
    if page in PYTHON_PAGES:
        script = tmp_path / "page.py"
        script.write_text("\n\n".join(blocks(page, "python")), encoding="utf-8")
        _ran([sys.executable, str(script)], tmp_path)
    if page in COMMAND_PAGES:
        lines = commands(page)
        assert len(lines) >= 3, lines
        monkeypatch.chdir(tmp_path)
        for line in lines:  # in this process: the command's own entry point, without a new interpreter each time
            assert main(shlex.split(line, comments=True)[1:]) == 0, line


def test_every_page_with_code_has_been_found():
    names = {str(p.relative_to(ROOT)) for p in PYTHON_PAGES}
    assert "README.md" in names and "docs/getting-started.md" in names


@slow
def test_a_wheel_installed_elsewhere_imports_and_finds_its_presets(tmp_path):
    pytest.importorskip("setuptools")
    _ran(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", "dist"],
        tmp_path,
    )
    wheel = next((tmp_path / "dist").glob("pyro_vae-*.whl"))
    assert {"pyro_vae/runs/presets/vamp.toml"} <= set(zipfile.ZipFile(wheel).namelist())
    _ran([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", "site", str(wheel)], tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import pyro_vae; "
        "assert pyro_vae.__file__.startswith(sys.argv[1]), pyro_vae.__file__; "
        "print(pyro_vae.Config.load('vamp').model.prior['type'], len(pyro_vae.presets()))"
    )
    out = _ran([sys.executable, "-c", probe, str(tmp_path / "site")], elsewhere).stdout
    assert out.split() == ["vamp", str(len(list((ROOT / "pyro_vae/runs/presets").glob("*.toml"))))]


def test_the_readme_is_a_front_door_that_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220
    first = _FENCE.search(text)
    assert first[1] == "bash" and [line.split()[:2] for line in first[2].splitlines()] == [
        ["make", "demo"],
        ["make", "test"],
    ]


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_of_a_page_reaches_a_file(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
        if not re.match(r"[a-z]+:", target):
            path = (page.parent / target).resolve()
            path = COPIES.get(path, path)
            assert path.exists(), f"{page.name}: {target}"
