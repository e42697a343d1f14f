"""pyro-vae: variational autoencoders as readable Pyro programs.

The decoder is a Pyro model :math:`p(z)\\,p(x \\mid z)`, the encoder a guide :math:`q(z \\mid x)`;
priors, likelihoods, networks, ELBO estimators, optimisers and learning-rate schedules are
registry entries chosen by name; the ELBO is estimated by Monte Carlo (``Trace_ELBO``) or with
the closed-form Gaussian KL (``TraceMeanField_ELBO``), on Pyro's path or a fused, exact one.
"""

from pyro_vae.annealing import KL_SCHEDULES
from pyro_vae.compare import compare_estimators
from pyro_vae.config import Config
from pyro_vae.data import Dataset, load_dataset
from pyro_vae.diagnostics import diagnostics
from pyro_vae.errors import ConfigError, DataError, PyroVAEError, RunError
from pyro_vae.estimators import ESTIMATORS, Estimator
from pyro_vae.evaluation import compare_run, evaluate_run, plot_run
from pyro_vae.kl import gaussian_kl
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.marginal import iwae_bound, log_likelihood
from pyro_vae.networks import NETWORKS
from pyro_vae.objectives import Objective, elbo_per_example, evaluate_elbo, fused_loss, make_elbo
from pyro_vae.optim import LR_SCHEDULES, OPTIMIZERS
from pyro_vae.priors import PRIORS
from pyro_vae.runs import load, resume_run, train_run
from pyro_vae.train import fit
from pyro_vae.vae import VAE, make_vae

__all__ = [
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
