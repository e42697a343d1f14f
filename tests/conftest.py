"""Every test starts from the same state: empty param store, fixed seeds, validation on."""

import os

import pyro
import pytest
import torch
from hypothesis import settings

# Property tests are reproducible: the same examples on every run and machine.
settings.register_profile("pyro_vae", derandomize=True, deadline=None, max_examples=200)
settings.load_profile("pyro_vae")

# Under pytest-xdist (make test runs two workers) each worker takes one thread: two workers of two
# threads each on two cores slow each other down several times over. The processes a test starts (an example
# script, the notebook's kernel, the site's build) take one too.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _fresh_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    pyro.clear_param_store()


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
