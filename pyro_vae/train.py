"""Stochastic variational inference: fit a VAE to a data set, epoch by epoch.

One SVI step draws a minibatch, evaluates the differentiable negative ELBO of
:class:`~pyro_vae.objectives.Objective` (a Pyro ELBO applied to the model/guide pair),
back-propagates, and takes an optimiser step over the VAE's parameters.

Example:
    >>> from pyro_vae import load_dataset, make_vae
    >>> data = load_dataset("digits")
    >>> vae = make_vae(data.event_shape, latent_dim=2, network={"type": "mlp", "hidden": [32]})
    >>> history = fit(vae, data, epochs=1, progress=False)
    >>> sorted(history[0])
    ['epoch', 'kl', 'seconds', 'test_elbo', 'test_elbo_analytic', 'test_elbo_mc', 'train_elbo']
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.objectives import Objective, evaluate_elbo, kl_methods
from pyro_vae.vae import VAE

__all__ = ["fit", "svi_step", "check_batch_size", "TrainingDiverged"]


class TrainingDiverged(PyroVAEError):
    """The loss or a gradient became NaN or infinite."""


def check_batch_size(batch_size: int, num_data: int) -> None:
    """Batches have exactly ``batch_size`` points, so there must be at least that many."""
    if batch_size > num_data:
        raise ConfigError(f"train.batch_size ({batch_size}) is larger than the training set ({num_data} points); use --batch-size {num_data} or less")


def svi_step(objective: Objective, optimizer: torch.optim.Optimizer, x: torch.Tensor, num_data: int) -> float:
    """One SVI step on minibatch ``x``; returns the loss (negative ELBO estimate of all ``num_data`` points)."""
    optimizer.zero_grad(set_to_none=True)
    loss = objective(x, num_data)
    loss.backward()
    optimizer.step()
    return loss.item()


def fit(
    vae: VAE,
    data: Dataset,
    *,
    epochs: int = 50,
    batch_size: int = 128,
    lr: float = 1e-3,
    elbo: str = "mc",
    num_particles: int = 1,
    jit: bool = False,
    beta: float = 1.0,
    fused: bool = False,
    seed: int = 0,
    progress: bool = True,
    on_epoch: Callable[[dict, torch.optim.Optimizer], None] | None = None,
) -> list[dict]:
    """Train ``vae`` on ``data.train`` with Adam and report the ELBO per epoch.

    Args:
        vae: the model/guide pair, on the same device as ``data``.
        data: the data set; its test split is evaluated after every epoch.
        epochs, batch_size, lr: the schedule; each epoch is one random permutation of the
            training set in batches of exactly ``batch_size``.
        elbo, num_particles, jit, beta, fused: the objective (see :class:`~pyro_vae.objectives.Objective`).
        seed: seeds Pyro, torch, numpy and the data order; the same seed gives the same run.
        progress: show a progress bar.
        on_epoch: called after each epoch with that epoch's metrics and the optimiser
            (the run folder uses it to write metrics and checkpoints).

    Returns:
        One dict per epoch: ``epoch``; ``train_elbo``, the mean per-point training objective
        (the ELBO when ``beta = 1``, the beta-weighted ELBO otherwise) over the epoch's steps;
        ``test_elbo``, the ELBO (beta = 1) of the test set by the same estimator, and
        ``test_elbo_mc``, ``test_elbo_analytic`` by each (from the same draws); ``seconds``
        of training in the epoch; ``kl``, how each latent site's KL term was estimated
        (``closed_form`` or ``sampled``, see :func:`~pyro_vae.objectives.kl_methods`). ELBOs are
        in nats per data point.
    """
    num_data = len(data.train)
    check_batch_size(batch_size, num_data)
    pyro.set_rng_seed(seed)
    order = torch.Generator().manual_seed(seed)
    objective = Objective(vae, elbo, num_particles, jit, beta, fused)
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    steps = num_data // batch_size
    kl = kl_methods(vae, data.test[:2], elbo)
    if progress:
        print(f"KL term ({elbo} ELBO): " + ", ".join(f"{site}: {how.replace('_', ' ')}" for site, how in kl.items()), file=sys.stderr)
    history = []
    # disable=None: a bar on terminals only; logs get one line per epoch instead.
    bar = tqdm(total=epochs * steps, disable=None if progress else True, unit="step", dynamic_ncols=True, leave=False)
    try:
        for epoch in range(1, epochs + 1):
            vae.train()
            start, total = time.perf_counter(), 0.0
            for step, x in enumerate(data.batches(batch_size, order), 1):
                loss = svi_step(objective, optimizer, x, num_data)
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"the loss became {loss} at epoch {epoch}, step {step}; lower --lr, check the data "
                        "for extreme values, or use a likelihood whose support fits the data"
                    )
                total += loss
                bar.update()
            seconds = time.perf_counter() - start
            test = evaluate_elbo(vae, data.test)
            metrics = {
                "epoch": epoch,
                "train_elbo": -total / (steps * num_data),
                "test_elbo": test[f"elbo_{elbo}"],
                "test_elbo_mc": test["elbo_mc"],
                "test_elbo_analytic": test["elbo_analytic"],
                "seconds": seconds,
                "kl": kl,
            }
            history.append(metrics)
            if progress and (epoch % max(1, epochs // 10) == 0 or epoch in (1, epochs)):  # about ten lines a run
                tqdm.write(f"epoch {epoch:4d}  train ELBO {metrics['train_elbo']:9.3f}  test ELBO {metrics['test_elbo']:9.3f}  {seconds:6.2f} s", file=sys.stderr)
            if on_epoch is not None:
                on_epoch(metrics, optimizer)
    finally:
        bar.close()
    return history
