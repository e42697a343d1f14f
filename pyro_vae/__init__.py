"""pyro-vae: variational autoencoders as readable Pyro programs.

A VAE is a Pyro program: the decoder is a model :math:`p(z)\\,p(x \\mid z)`, the encoder a guide :math:`q(z \\mid x)`,
and every tool follows any program's sites (:mod:`pyro_vae.infer.program`; programs by name in ``MODELS``);
priors, likelihoods, networks, ELBO estimators, optimisers and learning-rate schedules are
registry entries chosen by name; the ELBO is estimated by Monte Carlo (``Trace_ELBO``) or with
the closed-form Gaussian KL (``TraceMeanField_ELBO``), on Pyro's path or a fused, exact one.
"""

import importlib
import sys
import warnings

with warnings.catch_warnings():
    # Pyro imports tqdm.auto, which warns "IProgress not found" in a notebook without ipywidgets; pyro-vae draws
    # tqdm's text bar there instead (pyro_vae.training.loop.progress_bar_class), so the warning is noise.
    warnings.filterwarnings("ignore", message="IProgress not found")
    import pyro.infer  # noqa: F401

from pyro_vae.errors import ConfigError, DataError, PyroVAEError, RunError
from pyro_vae.infer.compare import compare_estimators
from pyro_vae.infer.diagnostics import diagnostics
from pyro_vae.infer.estimators import ESTIMATORS, Estimator
from pyro_vae.infer.marginal import iwae_bound, log_likelihood
from pyro_vae.infer.objectives import Objective, elbo_per_example, evaluate_elbo, fused_loss, make_elbo
from pyro_vae.models.kl import gaussian_kl
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.networks import NETWORKS
from pyro_vae.models.priors import PRIORS
from pyro_vae.models.programs import MODELS
from pyro_vae.models.vae import VAE, make_vae
from pyro_vae.runs.config import Config, presets
from pyro_vae.runs.evaluation import compare_run, evaluate_run, plot_run
from pyro_vae.runs.folders import load, resume_run, train_run
from pyro_vae.training.annealing import KL_SCHEDULES
from pyro_vae.training.data import Dataset, load_dataset
from pyro_vae.training.loop import fit
from pyro_vae.training.optim import LR_SCHEDULES, OPTIMIZERS

__all__ = [
    "MODELS",
    "VAE",
    "make_vae",
    "PRIORS",
    "LIKELIHOODS",
    "NETWORKS",
    "ESTIMATORS",
    "Estimator",
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "KL_SCHEDULES",
    "gaussian_kl",
    "make_elbo",
    "fused_loss",
    "Objective",
    "elbo_per_example",
    "evaluate_elbo",
    "log_likelihood",
    "diagnostics",
    "iwae_bound",
    "compare_estimators",
    "compare_run",
    "Dataset",
    "load_dataset",
    "fit",
    "Config",
    "presets",
    "train_run",
    "resume_run",
    "load",
    "evaluate_run",
    "plot_run",
    "PyroVAEError",
    "ConfigError",
    "DataError",
    "RunError",
]

__version__ = "0.1.0"

# Where each module lived before the package was grouped into rooms (0.1): the old paths stay importable,
# so that a plugin's ``from pyro_vae.priors import Prior`` keeps working.
_MOVED = {
    **{name: f"models.{name}" for name in ("vae", "priors", "likelihoods", "networks", "kl", "scale")},
    "continuous_bernoulli": "models.continuous_bernoulli",
    **{name: f"infer.{name}" for name in ("estimators", "references", "objectives", "marginal", "compare")},
    "diagnostics": "infer.diagnostics",
    **{name: f"training.{name}" for name in ("optim", "annealing", "initialization", "distributed", "data")},
    "train": "training.loop",
    **{name: f"runs.{name}" for name in ("config", "storage", "evaluation", "plots", "tensorboard")},
    "signals": "cli.signals",
}
for _old, _new in _MOVED.items():
    sys.modules.setdefault(f"{__name__}.{_old}", importlib.import_module(f"{__name__}.{_new}"))
del _old, _new
