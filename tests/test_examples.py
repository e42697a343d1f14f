"""Every example runs in --smoke mode, and every example file is listed here."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMOKE_RUNS = {
    "quickstart.py": [],
    "analytic_vs_mc.py": [],
    "latent_space_with_without_kl.py": [],
    "swap_priors.py": [],
    "custom_prior.py": [],
    "gradient_snr.py": ["--out", "snr"],
    "posterior_collapse.py": ["--out", "collapse"],
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
