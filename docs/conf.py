"""Sphinx configuration of the pyro-vae site: ``make site`` builds it into docs/_build/html, warnings as errors.

Offline: no intersphinx, and MathJax is served from the site itself (sphinx-mathjax-offline).
"""

import shutil
import sys
from pathlib import Path

import pyro_vae

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

project = "pyro-vae"
author = "the pyro-vae authors"
copyright = "the pyro-vae authors"
release = version = pyro_vae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax copied into _static: the math renders without a network
    "sphinxarg.ext",
    "myst_nb",
    "pyro_vae_docs",  # docs/_ext: the API by subpackage, the registries' tables, dead references
]

exclude_patterns = ["_build", "**.ipynb_checkpoints"]
smartquotes_action = "qe"  # quotes and ellipses; "--" stays two hyphens, as in the command line's options
nitpicky = True  # every cross-reference must resolve (pyro_vae_docs lets one to an existing, undocumented name pass)

# The tutorial lives beside the examples (examples/tutorial.ipynb, run by the tests); the site renders a copy,
# refreshed here when the original changes. It is ignored by git.
_TUTORIAL = DOCS.parent / "examples" / "tutorial.ipynb"
_COPY = DOCS / "notebooks" / "tutorial.ipynb"
if not _COPY.exists() or _COPY.read_bytes() != _TUTORIAL.read_bytes():
    _COPY.parent.mkdir(exist_ok=True)
    shutil.copyfile(_TUTORIAL, _COPY)

# Autodoc: Google-style docstrings with reST math and cross-references.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
python_use_unqualified_type_names = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Reference", "References")]

# Markdown pages and notebooks. A notebook runs when its code changed since the cached run (docs/_build/.jupyter_cache),
# in a temporary folder, and an error in a cell fails the build.
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "cache"
nb_execution_in_temp = True
nb_execution_timeout = 1800  # seconds per cell: the tutorial trains a few small models
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

html_theme = "furo"
html_title = f"pyro-vae {version}"
html_static_path: list[str] = []
html_show_sourcelink = False
