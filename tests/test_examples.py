"""Every example runs in --smoke mode, and every example file is listed here."""

import subprocess
import sys
from pathlib import Path

import nbclient  # the test extra: pip install -e '.[test]'
import nbformat
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMOKE_RUNS = {
    "quickstart.py": [],
    "analytic_vs_mc.py": [],
    "latent_space_with_without_kl.py": [],
    "swap_priors.py": [],
    "custom_prior.py": [],
    "custom_program.py": [],
    "gradient_snr.py": ["--out", "snr"],
    "posterior_collapse.py": ["--out", "collapse"],
    "semi_supervised.py": [],
}


def test_every_example_is_listed():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(SMOKE_RUNS)


@pytest.mark.slow  # subprocesses: a few seconds each
@pytest.mark.parametrize("name", sorted(SMOKE_RUNS))
def test_example_runs_in_smoke_mode(name, tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--smoke", *SMOKE_RUNS[name]],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    # what an example writes goes under runs/ (ignored by git), or where --out says
    assert {p.name for p in tmp_path.iterdir()} <= {"runs", *SMOKE_RUNS[name][1:]}


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(EXAMPLES / "tutorial.ipynb", as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow  # the tutorial trains five small models on the digits: about half a minute
def test_notebook_runs_top_to_bottom(tmp_path):
    notebook = nbformat.read(EXAMPLES / "tutorial.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    pictures = {p.name for p in (tmp_path / "runs" / "tutorial").iterdir()}
    assert pictures == {"curves.png", "latent_spaces.png", "vamp_samples.png", "m2_analogies.png"}
    printed = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "closed form - sampled" in printed and "K = 1000" in printed and "M2:" in printed
    warned = [o["text"] for cell in notebook.cells for o in cell.get("outputs", []) if o.get("name") == "stderr"]
    assert not any("Warning" in text for text in warned), warned  # tqdm's IProgress warning, say
