r"""Data-parallel SVI on PyTorch's distributed engine: the same ``train`` command under ``torchrun``.

``torchrun --nproc_per_node=N -m pyro_vae train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`from_env` joins
them into one process group (gloo on the CPU, NCCL on CUDA, each process on GPU ``LOCAL_RANK``).
Every process holds the whole VAE and the whole data set in memory and, at every step, its own
shard of the epoch's permutation (every process draws the same permutation, process ``r`` takes
points ``r, r + N, r + 2N, ...``). The loss, the ELBO of an :class:`~pyro_vae.infer.objectives.Objective`,
is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, which all-reduces the
gradients and averages them. Since each process scales its minibatch of ``B`` points by
``num_data / B``,

.. math:: \frac1N_{\text{proc}}\sum_{r}\nabla\Big(-\frac{N}{B}\sum_{n\in\text{batch}_r}\mathcal L_n\Big)
    = \nabla\Big(-\frac{N}{N_{\text{proc}}B}\sum_{n\in\cup_r\text{batch}_r}\mathcal L_n\Big),

the gradient of one process with the union batch of ``N_proc * B`` points. Evaluation shards the
test set, and sums over processes before averaging. Process 0 alone writes files; every
process seeds its random draws with ``seed + rank``; and every collective operation times out
(:data:`TIMEOUT`), so a process that dies ends the job instead of hanging it.

Reference:
    PyTorch Distributed: Experiences on Accelerating Data Parallel Training (Li et al., 2020).
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from pyro_vae.errors import ConfigError

__all__ = ["Distributed", "from_env", "data_parallel", "TIMEOUT"]

#: Longest wait of one collective operation (gradient all-reduce, evaluation sums, barriers) before
#: the process gives up with an error: a peer that died or hangs ends the job within this time.
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("PYRO_VAE_DIST_TIMEOUT", "300")))


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Process 0, which alone writes files and shows progress."""
        return self.rank == 0

    def all_reduce(self, tensor: Tensor) -> Tensor:
        """The element-wise sum of ``tensor`` over all processes (in place, and returned)."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def mean(self, value: float) -> float:
        """The average of ``value`` over all processes."""
        return self.all_reduce(torch.tensor([value], dtype=torch.float64, device=self.device)).item() / self.world_size

    def agree(self, flag: bool) -> bool:
        """Whether any process says ``flag`` (a stop request, say), so that all act on it at the same step."""
        return bool(self.all_reduce(torch.tensor([float(flag)], device=self.device)).item())

    def close(self, wait: bool = False) -> None:
        """Leave the job.

        Args:
            wait: the normal end of a job: first wait for every process to get here (process 0 may
                still be drawing and evaluating), so that no process tears its connections down under
                a peer. After an error the peers may be anywhere; then the group is left at once.

        What still holds the group (a DistributedDataParallel wrapper in a reference cycle) is freed
        first, so it is not destroyed later, while the interpreter shuts down.
        """
        if not dist.is_initialized():
            return
        gc.collect()
        if wait:
            dist.barrier(device_ids=[self.device.index]) if self.device.type == "cuda" else dist.barrier()
        dist.destroy_process_group()


def from_env(device: torch.device) -> Distributed | None:
    """Join the job described by torchrun's environment variables, or ``None`` for a single process.

    Args:
        device: the configured device; on CUDA each process takes GPU ``LOCAL_RANK`` and NCCL,
            on the CPU gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE is {world_size} but {', '.join(missing)} not set; "
            "start data-parallel training with torchrun --nproc_per_node=N -m pyro_vae train ..."
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) here; "
                f"use --nproc_per_node={torch.cuda.device_count()} or fewer"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT, rank=rank, world_size=world_size
        )
    return Distributed(rank, world_size, local_rank, device)


class _Loss(nn.Module):
    """The loss as a module over the VAE's parameters: the form DistributedDataParallel wraps.

    It is Pyro's ELBO-as-a-module idea (``Trace_ELBO()(model, guide)``) for an
    :class:`~pyro_vae.infer.objectives.Objective`, whose model and guide are methods of one module.
    """

    def __init__(self, vae: nn.Module, objective: object) -> None:
        super().__init__()
        self.vae, self.objective = vae, objective

    def forward(self, x: Tensor, num_data: int, y: Tensor | None = None, also: tuple = ()) -> Tensor:
        return self.objective(x, num_data, y, also)


def data_parallel(
    vae: nn.Module, objective: object, context: Distributed, beta: float = 1.0, labelled: bool = False
) -> nn.Module:
    """``objective`` as a module whose backward pass averages the gradient over all processes.

    DistributedDataParallel broadcasts process 0's parameters when it is built (so every
    process starts from the same VAE) and all-reduces gradients in buckets while the backward
    pass runs. With ``beta = 0`` the prior's parameters take no part in the loss, and with ``labelled`` steps a
    classifier may take none in a step (every point labelled, no auxiliary term), which DDP must be told.
    """
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    unused = beta == 0 or labelled
    return DistributedDataParallel(_Loss(vae, objective), device_ids=device_ids, find_unused_parameters=unused)
