"""The documentation site builds with warnings as errors, offline, and holds what a reader comes for (``make site``)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pyro_vae
from pyro_vae.cli.main import _LISTINGS

from helpers import site_pages

ROOT = Path(__file__).resolve().parents[1]
_MISSING = [name for name in ("sphinx", "furo", "myst_nb", "sphinxarg") if importlib.util.find_spec(name) is None]


@pytest.mark.slow
@pytest.mark.skipif(
    bool(_MISSING), reason=f"the docs extra is not installed ({', '.join(_MISSING)}): pip install -e '.[docs]'"
)
def test_site_builds_offline_with_every_public_name_and_the_tutorial(tmp_path):
    """Every public name and registered component has its entry, the notebook its figures, and no script is fetched
    from the network (the math included). A fresh cache: the tutorial runs, a minute or two."""
    html = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"), str(html)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the notebook's kernel takes one core, as a test worker does
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
    assert result.returncode == 0, result.stderr[-5000:]

    pages = {path.relative_to(html).as_posix(): path.read_text() for path in html.rglob("*.html")}
    ids = set(re.findall(r'\bid="([^"]+)"', "\n".join(pages.values())))
    assert [name for name in pyro_vae.__all__ if f"pyro_vae.{name}" not in ids] == []
    public = {id(getattr(pyro_vae, name)): f"pyro_vae.{name}" for name in pyro_vae.__all__}
    for module, attribute, _ in _LISTINGS.values():
        registry = getattr(importlib.import_module(module), attribute)
        for name in registry:
            constructor = registry.get(name)
            target = public.get(id(constructor), f"{constructor.__module__}.{constructor.__qualname__}")
            assert target in ids, f"{attribute} entry {name!r} has no entry {target} in the API reference"

    written = [page.relative_to(ROOT / "docs").with_suffix(".html").as_posix() for page in site_pages()]
    assert [page for page in written if page not in pages] == [], "pages of docs/ the site does not show"
    assert {"guide/programs.html", "benchmarks/quality.html", "notes.html", "getting-started.html"} <= set(pages)

    notebook = json.loads((ROOT / "examples" / "tutorial.ipynb").read_text())
    shown = sum("".join(cell["source"]).count("display(Image(") for cell in notebook["cells"])
    figures = re.findall(r'<img [^>]*src="[^"]*_images/[^"]+"', pages["notebooks/tutorial.html"])
    assert shown > 0 and len(figures) >= shown, f"{len(figures)} figures rendered of the {shown} the notebook shows"

    remote = [
        (page, tag)
        for page, text in pages.items()
        for tag in re.findall(r"<(?:script|link)\b[^>]*(?:src|href)=\"(?:https?:)?//[^\"]*\"[^>]*>", text)
        if tag.startswith("<script") or "stylesheet" in tag
    ]
    assert remote == [], "pages load scripts or styles from the network"
    assert "_static/mathjax/tex-chtml.js" in pages["api.html"] and (html / "_static/mathjax/tex-chtml.js").exists()
