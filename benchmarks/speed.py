"""How fast pyro-vae trains and evaluates, against a hand-written PyTorch VAE with the same network.

    python benchmarks/speed.py                  # every table (make bench): about 5 minutes on 2 idle cores
    python benchmarks/speed.py --quick          # fewer rounds, steps and epochs: under a minute
    python benchmarks/speed.py --smoke          # tiny sizes on random data, seconds (the tests run this)
    python benchmarks/speed.py --only steps --batch 64 256 --repeats 7
    python benchmarks/speed.py --only hierarchical   # table 7 alone
    python benchmarks/speed.py --data-root /data --device cuda

Seven tables; the first five for the MLP 784-400-50 VAE with a Bernoulli likelihood and Adam (lr 1e-3):

1. ms per training step (forward, backward, Adam) of every estimator of the library, and of
   Pyro's ``JitTraceMeanField_ELBO`` as shipped, beside a self-contained hand-written PyTorch VAE
   started from the same weights. Targets: the default path of ``fit`` and ``pyro-vae train``
   within 1.05x of hand-written at every batch; the fastest library row within 1.10x at batch
   128 and 1.25x at batch 32.
2. seconds per MNIST training epoch (batch 256, grey values): ``pyro_vae.fit`` (default path and
   Pyro's path, finite checks included) against the hand-written loop over the same in-memory
   tensors, (a) slicing a random permutation as the library does and (b) through a shuffling
   ``DataLoader``; target 1.05x of (a).
3. peak memory after each epoch of library training (default path), in a fresh process; the peak
   after the last epoch over the peak after the first should stay within 1.05.
4. points x samples per second of ``pyro_vae.log_likelihood`` (K = 5000) against the bare
   matrix multiplies of the decoder with the same shapes and chunks; target at least half.
5. the step at batch 128 eager and under ``torch.compile``, hand-written and library (default
   path); targets: the compiled library step at most 0.90x the hand-written eager step and within
   1.05x of the hand-written VAE compiled the same way. Compiling takes a minute or two; ``--smoke``
   leaves this table out.
6. ms per training step of a user's program, the two-stochastic-layer VAE of ``examples/custom_program.py``
   (784-400-50-400-20, tanh) on Pyro's traced path (``Objective(program, "mc")``), beside the same network's
   negative ELBO written out in plain tensor code from the same weights, at batch 100. It reports; no target.
7. ms per training step of the library's hierarchical program, ``pyro_vae.MODELS["hierarchical"]`` with its
   defaults (Burda et al.'s two layers: 784-200-200-z1 (100)-100-100-z2 (50) and back, tanh, Bernoulli), at batch
   100, for ``mc`` (one draw) and ``iwae`` (K = 5): fused (``Objective(program, estimator, num_particles=K,
   fused=True)``) and on Pyro's traced path (``fused=False``), beside the same network's loss written out in
   plain tensor code from the same weights and draws. Target: the fused step within 1.10x of hand-written for
   each estimator, the factor the one-layer VAE's fastest exact estimator is held to at batch 128 (table 1).
   ``--smoke`` leaves this table out (``--smoke --only hierarchical`` runs it).
8. ms per unlabelled training step of the library's semi-supervised program, ``pyro_vae.MODELS["ssvae"]`` with its
   defaults (Kingma et al.'s M2: q(y|x) 784-500-10, q(z|x,y) 794-500-50, p(x|y,z) 60-500-784, softplus,
   Bernoulli), at batch 100 with the 10 classes summed out: fused (``Objective(program, "mc", fused=True)``) and
   on Pyro's path (``TraceEnum_ELBO``), beside a hand-written PyTorch M2 step that takes the classes in one
   batched pass, from the same weights and draws. Target: the fused step within 1.15x of hand-written.

Every timing is a median over rounds in which the configurations take turns (in a shuffled order), so a slow spell of
the machine hits all of them alike, and every ratio is the median of the ratios within a round.
Each table says how long it took and how much of that time another task waited for a CPU (Linux
pressure stall information): more than a few percent means other work skewed it. The command
reports; it never fails on a missed target.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import math
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from types import ModuleType

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import JitTraceMeanField_ELBO
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import pyro_vae
from pyro_vae import VAE, DataError, Dataset, Objective
from pyro_vae.infer.estimators import has_fused_form
from pyro_vae.infer.marginal import DECODER_ELEMENTS
from pyro_vae.models.hierarchical import Hierarchical
from pyro_vae.models.ssvae import SSVAE
from pyro_vae.training.optim import make_optimizer

REPO = Path(__file__).resolve().parents[1]
IMAGE = (28, 28)
HIDDEN, LATENT = 400, 50
LR = 1e-3
NUM_DATA = 60_000  # the minibatch loss is scaled by NUM_DATA / batch, as for MNIST
PARTS = ("steps", "program", "hierarchical", "ssvae", "epochs", "memory", "likelihood", "compile")
PROGRAM_LATENTS = (LATENT, 20)  # z1, z2 of the two-layer program (part 6)
PROGRAM_BATCH = 100  # parts 6 and 7
# pyro_vae.MODELS["hierarchical"] with its defaults, Burda et al.'s two layers (part 7): sizes of z1, z2 and the
# hidden layers of the guide's MLP to each (the model's mirror them)
HIERARCHICAL_LATENTS = (100, 50)
HIERARCHICAL_HIDDEN = ((200, 200), (100, 100))

LossFn = Callable[[Tensor, int], Tensor]


@dataclass(frozen=True)
class Sizes:
    """How much work each part does; ``--smoke`` and ``--quick`` pick smaller ones, options override."""

    batches: tuple[int, ...] = (32, 128, 512)
    steps: int = 10  # timed steps per round
    warmup: int = 3  # untimed steps at the start of each round (the JIT compiles on the first)
    # Interleaved rounds of the step timings. Many short rounds rather than a few long ones: a fresh
    # copy of the weights each round lands elsewhere in memory, which moves a step's time by a few
    # percent, and the median over many rounds averages that out.
    repeats: int = 11
    epochs: int = 5  # interleaved rounds of one training epoch each
    epoch_batch: int = 256
    memory_epochs: int = 10
    points: int = 100  # data points of the log-likelihood
    num_samples: int = 5000  # K
    likelihood_repeats: int = 3
    random_train: int = 60_000  # stand-in data when MNIST is missing (always with --smoke)
    random_test: int = 10_000


PROFILES = {
    "full": Sizes(),
    "quick": Sizes(steps=10, repeats=5, epochs=2, memory_epochs=3, likelihood_repeats=2),
    "smoke": Sizes(
        batches=(32, 128),
        steps=2,
        warmup=1,
        repeats=1,
        epochs=1,
        memory_epochs=2,
        points=4,
        num_samples=50,
        likelihood_repeats=1,
        random_train=600,
        random_test=50,
    ),
}


class HandWritten(nn.Module):
    """A hand-written VAE: ``forward`` returns the negative ELBO of a batch, summed over its points.

    Self-contained on purpose (no pyro_vae code): it is what the library is measured against.
    """

    def loss(self, x: Tensor, num_data: int) -> Tensor:
        """The minibatch estimate of the whole data set's negative ELBO, scaled like the library's."""
        return num_data / len(x) * self(x)

    @staticmethod
    def _log_normal(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """log N(z; loc, diag(scale^2)), summed over the last dimension."""
        return (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


class HandWrittenVAE(HandWritten):
    """A typical PyTorch VAE: MLP encoder and decoder, Bernoulli pixels, closed-form KL against N(0, I)."""

    def __init__(self, data_dim: int = 784, hidden: int = HIDDEN, latent_dim: int = LATENT) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, data_dim))

    def forward(self, x: Tensor) -> Tensor:
        """The negative ELBO of the batch, summed over its points (one draw of z per point)."""
        x = x.flatten(1)
        loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
        scale = F.softplus(raw_scale) + 1e-6
        z = loc + scale * torch.randn_like(loc)
        reconstruction = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        kl = -0.5 * torch.sum(1 + 2 * scale.log() - loc.pow(2) - scale.pow(2))
        return reconstruction + kl


class HandWrittenTwoLayerVAE(HandWritten):
    r"""The network of ``examples/custom_program.py`` as a PyTorch user writes it: two stochastic layers, tanh MLPs.

    .. math:: -\mathrm{ELBO} = \log q(z_1\mid x) + \log q(z_2\mid z_1) - \log p(z_2) - \log p(z_1\mid z_2)
        - \log p(x\mid z_1)

    at one reparameterised draw of :math:`z_1` then :math:`z_2`, every density written out (no closed-form KL:
    the sampled estimate, as Pyro's ``Trace_ELBO``). The layers are declared in the program's order.
    """

    def __init__(
        self, data_dim: int = 784, hidden: int = HIDDEN, latent_dims: tuple[int, int] = PROGRAM_LATENTS
    ) -> None:
        super().__init__()
        z1, z2 = latent_dims
        self.prior_z1 = self._mlp(z2, hidden, 2 * z1)
        self.decoder = self._mlp(z1, hidden, data_dim)
        self.encoder_z1 = self._mlp(data_dim, hidden, 2 * z1)
        self.encoder_z2 = self._mlp(z1, hidden, 2 * z2)

    @staticmethod
    def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))

    @staticmethod
    def _gaussian(params: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw_scale = params.chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-4

    def forward(self, x: Tensor) -> Tensor:
        """The negative ELBO of the batch, summed over its points (one draw of z1 and z2 per point)."""
        x = x.flatten(1)
        loc1, scale1 = self._gaussian(self.encoder_z1(x))
        z1 = loc1 + scale1 * torch.randn_like(loc1)
        loc2, scale2 = self._gaussian(self.encoder_z2(z1))
        z2 = loc2 + scale2 * torch.randn_like(loc2)
        log_q = self._log_normal(z1, loc1, scale1) + self._log_normal(z2, loc2, scale2)
        log_prior_z2 = (-0.5 * z2.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_p = log_prior_z2 + self._log_normal(z1, *self._gaussian(self.prior_z1(z2)))
        reconstruction = F.binary_cross_entropy_with_logits(self.decoder(z1), x, reduction="sum")
        return (log_q - log_p).sum() + reconstruction


class HandWrittenHierarchicalVAE(HandWritten):
    r"""Burda et al.'s two-stochastic-layer VAE as a PyTorch user writes it: x-200-200-z1 (100)-100-100-z2 (50), tanh.

    .. math:: \log w = \log p(x\mid z_1) + \log p(z_1\mid z_2) + \log p(z_2) - \log q(z_1\mid x) - \log q(z_2\mid z_1)

    at :math:`K` reparameterised draws per point, :math:`z_1` then :math:`z_2` (standard-normal tensors of shape
    ``(K, B, 100)`` then ``(K, B, 50)``, no ``K`` when it is 1, as Pyro's guide draws them). ``mc``: the negative
    mean of :math:`\log w` over the draws, summed over the batch; ``iwae``: the negative
    :math:`\log \frac1K \sum_k w_k`, summed over the batch. The layers are declared in the library program's order
    (the guide's networks, then the model's).
    """

    def __init__(
        self,
        estimator: str = "mc",
        num_particles: int = 1,
        data_dim: int = 784,
        latent_dims: tuple[int, int] = HIERARCHICAL_LATENTS,
        hidden: tuple[tuple[int, ...], tuple[int, ...]] = HIERARCHICAL_HIDDEN,
    ) -> None:
        super().__init__()
        (z1, z2), (h1, h2) = latent_dims, hidden
        self.encoder_z1 = self._mlp([data_dim, *h1, 2 * z1])
        self.encoder_z2 = self._mlp([z1, *h2, 2 * z2])
        self.decoder = self._mlp([z1, *reversed(h1), data_dim])
        self.prior_z1 = self._mlp([z2, *reversed(h2), 2 * z1])
        self.estimator, self.num_particles = estimator, num_particles

    @staticmethod
    def _mlp(sizes: Sequence[int]) -> nn.Sequential:
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(n_in, n_out), nn.Tanh()]
        return nn.Sequential(*layers[:-1])

    @staticmethod
    def _gaussian(params: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw_scale = params.chunk(2, dim=-1)
        return loc, F.softplus(raw_scale) + 1e-6

    def forward(self, x: Tensor) -> Tensor:
        """The negative ELBO (mc) or IWAE bound (iwae) of the batch, summed over its points."""
        K, x = self.num_particles, x.flatten(1)
        loc1, scale1 = self._gaussian(self.encoder_z1(x))
        z1 = loc1 + scale1 * torch.randn((K, *loc1.shape) if K > 1 else loc1.shape, device=x.device)
        loc2, scale2 = self._gaussian(self.encoder_z2(z1))
        z2 = loc2 + scale2 * torch.randn_like(loc2)
        log_q = self._log_normal(z1, loc1, scale1) + self._log_normal(z2, loc2, scale2)
        log_prior_z2 = (-0.5 * z2.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_p = log_prior_z2 + self._log_normal(z1, *self._gaussian(self.prior_z1(z2)))
        logits = self.decoder(z1)
        if self.estimator == "mc":
            reconstruction = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="sum")
            return ((log_q - log_p).sum() + reconstruction) / K
        bce = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_w = (log_p - log_q - bce).reshape(K, -1)
        return -(torch.logsumexp(log_w, 0) - math.log(K)).sum()


class HandWrittenM2(HandWritten):
    r"""Kingma et al.'s M2 on unlabelled data as a PyTorch user writes it: every class in one batched pass.

    .. math:: \mathrm{ELBO}(x) = \sum_y q(y\mid x)\,\big[\log p(x\mid y, z_y) + \log p(z_y) + \log p(y)
        - \log q(z_y\mid x, y) - \log q(y\mid x)\big], \qquad z_y \sim q(z\mid x, y),

    with the inputs of the encoder and decoder stacked over the classes, shape ``(C, B, ...)``, and one
    standard-normal tensor of that shape for the draws (as Pyro's enumeration draws them). The layers are
    declared in the library program's order (classifier, encoder, decoder).
    """

    def __init__(self, data_dim: int = 784, classes: int = 10, hidden: int = 500, latent_dim: int = LATENT) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Linear(data_dim, hidden), nn.Softplus(), nn.Linear(hidden, classes))
        self.encoder = nn.Sequential(
            nn.Linear(data_dim + classes, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim + classes, hidden), nn.Softplus(), nn.Linear(hidden, data_dim)
        )
        self.classes = classes

    def forward(self, x: Tensor) -> Tensor:
        """The negative ELBO of the batch with y summed out, summed over its points (one draw of z per class)."""
        x, C = x.flatten(1), self.classes
        log_q_y = self.classifier(x).log_softmax(-1).T  # (C, B)
        code = torch.eye(C, device=x.device).unsqueeze(1).expand(C, len(x), C)
        loc, raw_scale = self.encoder(torch.cat([x.expand(C, -1, -1), code], -1)).chunk(2, dim=-1)
        scale = F.softplus(raw_scale) + 1e-6
        z = loc + scale * torch.randn_like(loc)
        logits = self.decoder(torch.cat([z, code], -1))
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
        latent = log_pz - self._log_normal(z, loc, scale) - math.log(C) - log_q_y
        return -(log_q_y.exp() * (log_px + latent)).sum()


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def copy_weights(source: nn.Module, target: HandWritten) -> HandWritten:
    """``target`` with ``source``'s weights, linear layer by linear layer, so both do the same arithmetic."""
    for a, b in zip(_linears(source), _linears(target), strict=True):
        b.load_state_dict(a.state_dict())
    return target.to(next(source.parameters()).device)


def hand_written_copy(vae: VAE) -> HandWrittenVAE:
    """A hand-written VAE with the library VAE's weights."""
    return copy_weights(nn.ModuleList([vae.encoder, vae.decoder]), HandWrittenVAE())


def new_vae(state: dict[str, Tensor] | None = None, device: str = "cpu") -> VAE:
    """The benchmark's library VAE (MLP 784-400-50, Bernoulli, N(0, I) prior), with ``state`` if given."""
    vae = pyro_vae.make_vae(IMAGE, latent_dim=LATENT, network={"type": "mlp", "hidden": [HIDDEN]})
    if state is not None:
        vae.load_state_dict(state)
    return vae.to(device)


def shipped_jit_mean_field(vae: VAE) -> Objective:
    """An Objective running Pyro 1.9's ``JitTraceMeanField_ELBO`` unchanged (it re-traces at every step)."""
    objective = Objective(vae, "analytic", jit=True)
    objective.elbo = JitTraceMeanField_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
    return objective


#: Rows of the step table for the library: ``name -> objective for a VAE``. The default row trains as
#: ``fit`` does, with the library's default optimiser (Adam, torch's fused kernel); every other row, and
#: the hand-written step, with ``torch.optim.Adam``'s defaults, so that they compare the loss alone.
LIBRARY_ROWS: dict[str, Callable[[VAE], Objective]] = {
    "default of fit / pyro-vae train (mc, fused='auto', Adam fused)": partial(Objective, estimator="mc", fused="auto"),
    "mc (Trace_ELBO)": partial(Objective, estimator="mc"),
    "mc, jit": partial(Objective, estimator="mc", jit=True),
    "mc, fused": partial(Objective, estimator="mc", fused=True),
    "analytic (TraceMeanField_ELBO)": partial(Objective, estimator="analytic"),
    "analytic, jit": partial(Objective, estimator="analytic", jit=True),
    "analytic, fused": partial(Objective, estimator="analytic", fused=True),
}
DEFAULT_ROW = next(iter(LIBRARY_ROWS))
SHIPPED_ROW = "Pyro's JitTraceMeanField_ELBO as shipped"
HAND_ROW = "hand-written PyTorch VAE"
HAND_FUSED_ROW = "hand-written PyTorch VAE, Adam(fused=True)"
HAND_EPOCH = "hand-written (a): slices of a random permutation"
FUSED_EPOCH = "pyro_vae.fit, default (mc, fused='auto', Adam fused)"
MATMUL_ROW = "bare decoder matmuls (50->400->784)"
#: The fastest library row at these batches must be within this factor of the hand-written step.
STEP_TARGETS = {128: 1.10, 32: 1.25}
#: The default path (what ``pyro-vae train`` runs) must be within this factor at every batch of the table.
DEFAULT_TARGET = 1.05
EPOCH_TARGET, MEMORY_TARGET, LIKELIHOOD_TARGET = 1.05, 1.05, 0.5
#: Compiled with torch.compile: the library's step against the hand-written *eager* step, and against the
#: hand-written VAE compiled the same way.
COMPILE_TARGETS = {"eager": 0.90, "compiled": 1.05}
COMPILE_ROWS = [
    "hand-written, eager",
    "hand-written, eager, Adam(fused=True)",
    "hand-written, torch.compile",
    "hand-written, torch.compile, Adam(fused=True)",
    "library default, eager",
    "library default, torch.compile",
]
#: The hand-written VAE compiled as the library compiles: the loss under torch.compile, the fused Adam.
COMPILE_SAME_WAY = "hand-written, torch.compile, Adam(fused=True)"
#: The parts ``--smoke`` leaves out unless ``--only`` names them: compiling takes minutes whatever the sizes.
SMOKE_LEAVES_OUT = ("compile",)
#: Above this share of time with a task waiting for a CPU, a table says its timings are skewed.
CONTENTION_WARNING = 0.05


# --- measuring -------------------------------------------------------------------------------


def clock(device: str) -> float:
    """Seconds, after the device has finished its queued work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter()


def train_step(loss_fn: LossFn, optimizer: torch.optim.Optimizer, x: Tensor, num_data: int) -> float:
    """One step of the usual loop: zero the gradients, loss, backward, Adam; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(x, num_data)
    loss.backward()
    optimizer.step()
    return loss.item()


def interleaved(measurements: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each measurement's value in each of ``rounds`` rounds, in each of which every measurement runs once.

    The order within a round is shuffled (seeded): what ran just before a measurement (its caches,
    the allocator's state) must not favour one configuration in every round.
    """
    values: dict[str, list[float]] = {name: [] for name in measurements}
    for round_ in range(rounds):
        order = list(measurements)
        random.Random(round_).shuffle(order)
        for name in order:
            values[name].append(measurements[name]())
    return values


def median_ratio(values: list[float], reference: list[float]) -> float:
    """The median over rounds of ``value / reference`` within each round.

    Neighbours in time share the machine's state.
    """
    return statistics.median(v / r for v, r in zip(values, reference, strict=True))


def cpu_stall_us() -> int | None:
    """Microseconds since boot in which some runnable task waited for a CPU, or None.

    Read from Linux pressure stall information (/proc/pressure/cpu).
    """
    try:
        return int(Path("/proc/pressure/cpu").read_text().split("total=", 1)[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


class Contention:
    """How much of the time since it was made some task waited for a CPU: other work on the machine skews timings."""

    def __init__(self) -> None:
        self.start, self.stall = time.perf_counter(), cpu_stall_us()

    def report(self) -> str:
        """One line: how long the measurements took, and the share of that time with a task waiting for a CPU."""
        stall, elapsed = cpu_stall_us(), time.perf_counter() - self.start
        if stall is None or self.stall is None:
            return f"measured in {elapsed:.0f} s; CPU contention unknown (no /proc/pressure/cpu)"
        share = (stall - self.stall) / 1e6 / elapsed
        warning = "; other work competed for the CPU, so these timings are skewed" if share > CONTENTION_WARNING else ""
        return (
            f"measured in {elapsed:.0f} s; CPU contention: {share:.0%} of the time some task waited for a CPU "
            f"(Linux PSI){warning}"
        )


@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch.jit.trace's deprecation notice and the tracer warnings Pyro's JIT re-emits at every re-trace."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated")
        yield


def verdict(value: float, target: float, at_most: bool = True) -> str:
    """``value`` beside its target, and whether it meets it."""
    ok = value <= target if at_most else value >= target
    return f"{value:.2f} (target {'<=' if at_most else '>='} {target:.2f}): {'PASS' if ok else 'FAIL'}"


def print_table(title: str, note: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(f"\n== {title} ==\n{note}")
    print(line(list(header)))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for r in rows:
        print(line(r))


# --- 1. steps --------------------------------------------------------------------------------


def step_timer(
    setup: Callable[[], tuple[LossFn, torch.optim.Optimizer]], x: Tensor, sizes: Sizes, device: str
) -> Callable[[], float]:
    """A measurement: the median time of ``sizes.steps`` training steps after ``sizes.warmup`` untimed ones.

    Each measurement starts from a fresh ``setup()`` (a copy of the model and its optimiser): where in
    memory the weights land changes a step's time by a few percent, and a new copy every round turns
    that into noise shared by all rows rather than a lasting advantage of one.
    """

    def measure() -> float:
        loss_fn, optimizer = setup()
        times = []
        for step in range(sizes.warmup + sizes.steps):
            start = clock(device)
            train_step(loss_fn, optimizer, x, NUM_DATA)
            if step >= sizes.warmup:
                times.append(clock(device) - start)
        return statistics.median(times)

    return measure


def same_draws(hand: LossFn, library: LossFn, x: Tensor, name: str) -> str:
    """The hand-written and the library's loss at the same weights and the same draw of z (every latent site)."""
    # with gradients: Pyro's TraceEnum_ELBO refuses a differentiable loss under no_grad
    torch.manual_seed(1)
    expected = hand(x, NUM_DATA).item()
    torch.manual_seed(1)
    value = library(x, NUM_DATA).item()
    return (
        f"same weights, same draw of z: hand-written loss {expected:.6g}, {name} {value:.6g}, "
        f"relative difference {abs(value - expected) / abs(expected):.1e}"
    )


def same_arithmetic(state: dict[str, Tensor], x: Tensor, device: str) -> str:
    """The hand-written and the library's (analytic, fused) loss at the same weights and the same draw of z."""
    vae = new_vae(state, device)
    return same_draws(
        hand_written_copy(vae).loss, Objective(vae, "analytic", fused=True), x, "library (analytic, fused)"
    )


def time_steps(batch: int, sizes: Sizes, device: str) -> dict[str, list[float]]:
    """Seconds per step of every row at one batch size, one value per round.

    Each row, in each round, trains a fresh copy of the same initial weights.
    """
    pyro.set_rng_seed(0)
    state = new_vae().state_dict()
    x = torch.rand(batch, *IMAGE, device=device).bernoulli()
    measurements = {}
    for name in step_rows():

        def setup(name: str = name) -> tuple[LossFn, torch.optim.Optimizer]:
            vae = new_vae(state, device)
            make_loss = LIBRARY_ROWS.get(name) or (shipped_jit_mean_field if name == SHIPPED_ROW else None)
            model: nn.Module = vae if make_loss else hand_written_copy(vae)
            loss_fn = make_loss(vae) if make_loss else model.loss
            return loss_fn, row_optimizer(name, model)

        measurements[name] = step_timer(setup, x, sizes, device)
    with quiet_jit():
        return interleaved(measurements, sizes.repeats)


def step_rows() -> list[str]:
    """The rows of the step table, in the order printed."""
    return [HAND_ROW, HAND_FUSED_ROW, *LIBRARY_ROWS, SHIPPED_ROW]


def row_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    """The default row's optimiser is the library's (``make_optimizer``: Adam, fused); the others' plain Adam."""
    if name == DEFAULT_ROW or "library default" in name:
        return make_optimizer(model.parameters(), lr=LR)
    return torch.optim.Adam(model.parameters(), lr=LR, fused=True if "fused=True" in name else None)


def steps_part(sizes: Sizes, device: str) -> None:
    contention = Contention()
    rounds = {batch: time_steps(batch, sizes, device) for batch in sizes.batches}
    contention_text = contention.report()
    ratios = {
        batch: {name: median_ratio(v, times[HAND_ROW]) for name, v in times.items()} for batch, times in rounds.items()
    }
    # the fastest loss computation: among the rows stepping with the hand-written step's optimiser
    same_optimizer = [name for name in LIBRARY_ROWS if name != DEFAULT_ROW]
    fastest = {batch: min(same_optimizer, key=r.__getitem__) for batch, r in ratios.items()}
    header = ["configuration"] + [h for b in sizes.batches for h in (f"batch {b}: ms", "x hand")]
    rows = []
    for name in step_rows():
        cells = [name]
        for batch, times in rounds.items():
            mark = " *" if fastest[batch] == name else "  "
            cells += [f"{1000 * statistics.median(times[name]):.2f}", f"{ratios[batch][name]:.2f}{mark}"]
        rows.append(cells)
    note = (
        f"MLP 784-400-50, Bernoulli, Adam lr {LR:g}, loss scaled by {NUM_DATA} / batch; "
        "each row trains a fresh copy of the same initial weights each round.\n"
        "The default row steps with the library's default optimiser (Adam, torch's fused kernel), as fit does; "
        "the rows without 'fused=True' with torch.optim.Adam's default (a for-loop over the parameters),\n"
        "so that they compare the loss computations alone.\n"
        f"ms: median over {sizes.repeats} interleaved rounds of the median of {sizes.steps} steps "
        f"(after {sizes.warmup} untimed); "
        "x hand: median over the rounds of ms / hand-written ms in the same round."
    )
    print_table("ms per training step (forward, backward, Adam)", note, header, rows)
    print(
        "* the fastest exact estimator: the fastest library row at that batch with the hand-written step's "
        "optimiser (every library row computes Pyro's ELBO exactly)"
    )
    print(contention_text)
    for batch in sizes.batches:
        print(f"default path at batch {batch} vs hand-written: {verdict(ratios[batch][DEFAULT_ROW], DEFAULT_TARGET)}")
    for batch, target in STEP_TARGETS.items():
        if batch in ratios:
            print(
                f"fastest exact estimator at batch {batch} ({fastest[batch]}) vs hand-written: "
                f"{verdict(ratios[batch][fastest[batch]], target)}"
            )
        else:
            print(f"target at batch {batch}: not measured (add it to --batch)")
    pyro.set_rng_seed(0)
    state = new_vae().state_dict()  # the weights before x, so that the random draws keep their order
    x = torch.rand(sizes.batches[0], *IMAGE, device=device).bernoulli()
    print(same_arithmetic(state, x, device))


# --- 6. a user's program --------------------------------------------------------------------

PROGRAM_ROW = "two-layer program, Objective(program, 'mc') (Pyro's Trace_ELBO)"
HAND_PROGRAM_ROW = "hand-written PyTorch, same network"


@cache
def _example(name: str) -> ModuleType:
    """``examples/<name>.py`` as a module (the examples are scripts, not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def new_program(state: dict[str, Tensor] | None = None, device: str = "cpu") -> nn.Module:
    """The two-stochastic-layer program of ``examples/custom_program.py`` at MNIST size, with ``state`` if given."""
    program = _example("custom_program").TwoLayerVAE(math.prod(IMAGE), hidden=HIDDEN, latent_dims=PROGRAM_LATENTS)
    if state is not None:
        program.load_state_dict(state)
    return program.to(device)


def program_part(sizes: Sizes, device: str) -> None:
    """A training step of a user's program on Pyro's traced path, against the same network written by hand."""
    pyro.set_rng_seed(0)
    state = new_program().state_dict()
    x = torch.rand(PROGRAM_BATCH, *IMAGE, device=device).bernoulli()
    measurements = {}
    for name in (HAND_PROGRAM_ROW, PROGRAM_ROW):

        def setup(name: str = name) -> tuple[LossFn, torch.optim.Optimizer]:
            program = new_program(state, device)
            if name == PROGRAM_ROW:
                return Objective(program, "mc"), row_optimizer(name, program)
            hand = copy_weights(program, HandWrittenTwoLayerVAE())
            return hand.loss, row_optimizer(name, hand)

        measurements[name] = step_timer(setup, x, sizes, device)
    contention = Contention()
    rounds = interleaved(measurements, sizes.repeats)
    contention_text = contention.report()
    rows = [
        [name, f"{1000 * statistics.median(v):.2f}", f"{median_ratio(v, rounds[HAND_PROGRAM_ROW]):.2f}"]
        for name, v in rounds.items()
    ]
    path = Objective(new_program(state, device), "mc").path
    z1, z2 = PROGRAM_LATENTS
    note = (
        f"examples/custom_program.py's TwoLayerVAE at MNIST size: q(z1|x) 784-{HIDDEN}-{z1}, "
        f"q(z2|z1) {z1}-{HIDDEN}-{z2}, p(z1|z2) {z2}-{HIDDEN}-{z1}, p(x|z1) {z1}-{HIDDEN}-784, tanh, Bernoulli;\n"
        f"the program's objective takes path {path!r}; both step with torch.optim.Adam (lr {LR:g}), loss scaled by "
        f"{NUM_DATA} / batch; each row trains a fresh copy of the same initial weights each round.\n"
        f"ms: median over {sizes.repeats} interleaved rounds of the median of {sizes.steps} steps "
        f"(after {sizes.warmup} untimed); x hand: median over the rounds of ms / hand-written ms in the same round."
    )
    print_table(
        "ms per training step of a user's program (two stochastic layers)",
        note,
        ["configuration", f"batch {PROGRAM_BATCH}: ms", "x hand"],
        rows,
    )
    print(contention_text)
    program = new_program(state, device)
    hand = copy_weights(program, HandWrittenTwoLayerVAE())
    print(same_draws(hand.loss, Objective(program, "mc"), x, "program (mc, Pyro's path)"))


# --- 7. the hierarchical program -----------------------------------------------------------

#: The estimators of part 7 and their number of particles K.
HIERARCHICAL_ESTIMATORS = {"mc": 1, "iwae": 5}
HIERARCHICAL_FUSED_ROW = "Objective(program, estimator, num_particles=K, fused=True)"
HIERARCHICAL_PYRO_ROW = "Objective(program, estimator, num_particles=K, fused=False) (Pyro's traced path)"
#: The fused hierarchical step against the hand-written one, for each estimator: the factor the one-layer VAE's
#: fastest exact (fused) estimator is held to at batch 128 (STEP_TARGETS), the nearest batch to part 7's 100.
HIERARCHICAL_TARGET = STEP_TARGETS[128]


def new_hierarchical(state: dict[str, Tensor] | None = None, device: str = "cpu") -> Hierarchical:
    """``pyro_vae.MODELS["hierarchical"]`` at MNIST size with its defaults, with ``state`` if given."""
    program = Hierarchical(IMAGE)
    if state is not None:
        program.load_state_dict(state)
    return program.to(device)


def hierarchical_rows() -> list[str]:
    """The rows of part 7 in the order printed: the fused one only where the program declares a fused form."""
    fused = [HIERARCHICAL_FUSED_ROW] if has_fused_form(new_hierarchical()) else []
    return [HAND_PROGRAM_ROW, *fused, HIERARCHICAL_PYRO_ROW]


def hierarchical_loss(row: str, estimator: str, state: dict[str, Tensor], device: str) -> tuple[LossFn, nn.Module]:
    """A row's loss for one estimator from a fresh copy of the weights ``state``, and the module it trains."""
    program, K = new_hierarchical(state, device), HIERARCHICAL_ESTIMATORS[estimator]
    if row == HAND_PROGRAM_ROW:
        hand = copy_weights(program, HandWrittenHierarchicalVAE(estimator, K))
        return hand.loss, hand
    return Objective(program, estimator, num_particles=K, fused=row == HIERARCHICAL_FUSED_ROW), program


def time_hierarchical(
    rows: list[str], state: dict[str, Tensor], x: Tensor, sizes: Sizes, device: str
) -> dict[str, list[float]]:
    """Seconds per step of every row and estimator (keys ``'estimator: row'``), one value per round."""
    measurements = {}
    for estimator in HIERARCHICAL_ESTIMATORS:
        for row in rows:

            def setup(row: str = row, estimator: str = estimator) -> tuple[LossFn, torch.optim.Optimizer]:
                pyro.clear_param_store()  # every round's Pyro row starts from the same (empty) store
                loss_fn, module = hierarchical_loss(row, estimator, state, device)
                return loss_fn, torch.optim.Adam(module.parameters(), lr=LR)

            measurements[f"{estimator}: {row}"] = step_timer(setup, x, sizes, device)
    return interleaved(measurements, sizes.repeats)


def hierarchical_part(sizes: Sizes, device: str) -> None:
    """A training step of the library's hierarchical program, fused and on Pyro's path, against it written by hand."""
    pyro.set_rng_seed(0)
    state = new_hierarchical().state_dict()
    x = torch.rand(PROGRAM_BATCH, *IMAGE, device=device).bernoulli()
    rows = hierarchical_rows()
    contention = Contention()
    rounds = time_hierarchical(rows, state, x, sizes, device)
    contention_text = contention.report()
    ratios = {
        (row, e): median_ratio(rounds[f"{e}: {row}"], rounds[f"{e}: {HAND_PROGRAM_ROW}"])
        for row in rows
        for e in HIERARCHICAL_ESTIMATORS
    }
    table = [
        [row, *(c for e in HIERARCHICAL_ESTIMATORS for c in hierarchical_cells(rounds[f"{e}: {row}"], ratios[row, e]))]
        for row in rows
    ]
    header = ["configuration"] + [h for e, K in HIERARCHICAL_ESTIMATORS.items() for h in (f"{e} K={K}: ms", "x hand")]
    print_table("ms per training step of the hierarchical program", hierarchical_note(sizes), header, table)
    print(contention_text)
    for estimator in HIERARCHICAL_ESTIMATORS:
        if HIERARCHICAL_FUSED_ROW in rows:
            ratio = verdict(ratios[HIERARCHICAL_FUSED_ROW, estimator], HIERARCHICAL_TARGET)
        else:
            ratio = "not measured: Hierarchical declares no fused form (pyro_vae.infer.estimators.FUSED_PROGRAMS)"
        print(f"fused hierarchical step ({estimator}) vs hand-written: {ratio}")
    for estimator in HIERARCHICAL_ESTIMATORS:
        for row in rows[1:]:
            hand, library = (hierarchical_loss(r, estimator, state, device)[0] for r in (HAND_PROGRAM_ROW, row))
            path = "fused" if row == HIERARCHICAL_FUSED_ROW else "Pyro's path"
            print(same_draws(hand, library, x, f"library ({estimator}, {path})"))


def hierarchical_cells(times: list[float], ratio: float) -> list[str]:
    """A row's two cells for one estimator: ms, and the ratio to hand-written."""
    return [f"{1000 * statistics.median(times):.2f}", f"{ratio:.2f}"]


def hierarchical_note(sizes: Sizes) -> str:
    """What part 7's table measures, and how."""
    (z1, z2), (h1, h2) = HIERARCHICAL_LATENTS, HIERARCHICAL_HIDDEN
    guide = f"q(z1|x) 784-{'-'.join(map(str, h1))}-{z1}, q(z2|z1) {z1}-{'-'.join(map(str, h2))}-{z2}"
    model = f"p(z1|z2) {z2}-{'-'.join(map(str, h2[::-1]))}-{z1}, p(x|z1) {z1}-{'-'.join(map(str, h1[::-1]))}-784"
    return (
        f'pyro_vae.MODELS["hierarchical"] with its defaults (Burda et al.\'s two layers): {guide}, {model}, tanh, '
        f"N(0, I) top prior, Bernoulli; batch {PROGRAM_BATCH}.\n"
        "mc: the sampled ELBO, one draw (Trace_ELBO); iwae: the importance-weighted bound of K draws (TraceIWAE_ELBO "
        "on Pyro's path); the hand-written rows compute the same from the same draws.\n"
        f"Every row steps with torch.optim.Adam (lr {LR:g}), loss scaled by {NUM_DATA} / batch; each row trains a "
        "fresh copy of the same initial weights each round.\n"
        f"ms: median over {sizes.repeats} interleaved rounds of the median of {sizes.steps} steps "
        f"(after {sizes.warmup} untimed); x hand: median over the rounds of ms / hand-written ms of the same estimator "
        "in the same round."
    )


# --- 8. the semi-supervised program --------------------------------------------------------

SSVAE_FUSED_ROW = 'Objective(program, "mc", fused=True)'
SSVAE_PYRO_ROW = 'Objective(program, "mc", fused=False) (Pyro\'s TraceEnum_ELBO)'
#: The fused unlabelled M2 step against the hand-written one.
SSVAE_TARGET = 1.15


def new_ssvae(state: dict[str, Tensor] | None = None, device: str = "cpu") -> SSVAE:
    """``pyro_vae.MODELS["ssvae"]`` at MNIST size with its defaults, with ``state`` if given."""
    program = SSVAE(IMAGE)
    if state is not None:
        program.load_state_dict(state)
    return program.to(device)


def ssvae_loss(row: str, state: dict[str, Tensor], device: str) -> tuple[LossFn, nn.Module]:
    """A row's unlabelled loss from a fresh copy of the weights ``state``, and the module it trains."""
    program = new_ssvae(state, device)
    if row == HAND_PROGRAM_ROW:
        hand = copy_weights(program, HandWrittenM2())
        return hand.loss, hand
    return Objective(program, "mc", fused=row == SSVAE_FUSED_ROW), program


def ssvae_part(sizes: Sizes, device: str) -> None:
    """An unlabelled training step of the library's M2, fused and on Pyro's path, against it written by hand."""
    pyro.set_rng_seed(0)
    state = new_ssvae().state_dict()
    x = torch.rand(PROGRAM_BATCH, *IMAGE, device=device).bernoulli()
    rows = [HAND_PROGRAM_ROW, SSVAE_FUSED_ROW, SSVAE_PYRO_ROW]
    measurements = {}
    for row in rows:

        def setup(row: str = row) -> tuple[LossFn, torch.optim.Optimizer]:
            pyro.clear_param_store()
            loss_fn, module = ssvae_loss(row, state, device)
            return loss_fn, torch.optim.Adam(module.parameters(), lr=LR)

        measurements[row] = step_timer(setup, x, sizes, device)
    contention = Contention()
    rounds = interleaved(measurements, sizes.repeats)
    contention_text = contention.report()
    ratios = {row: median_ratio(rounds[row], rounds[HAND_PROGRAM_ROW]) for row in rows}
    table = [[row, *hierarchical_cells(rounds[row], ratios[row])] for row in rows]
    note = (
        'pyro_vae.MODELS["ssvae"] with its defaults (M2: q(y|x) 784-500-10, q(z|x,y) 794-500-50, p(x|y,z) '
        f"60-500-784, softplus, Bernoulli); an unlabelled batch of {PROGRAM_BATCH}, the 10 classes summed out.\n"
        f"Adam (lr {LR:g}), loss scaled by {NUM_DATA} / batch; ms: median over {sizes.repeats} interleaved rounds "
        f"of the median of {sizes.steps} steps (after {sizes.warmup} untimed); x hand: median ratio within a round."
    )
    print_table(
        "ms per unlabelled training step of the semi-supervised program (M2)",
        note,
        ["configuration", "ms", "x hand"],
        table,
    )
    print(contention_text)
    print(f"fused M2 step vs hand-written: {verdict(ratios[SSVAE_FUSED_ROW], SSVAE_TARGET)}")
    for row in rows[1:]:
        hand, library = (ssvae_loss(r, state, device)[0] for r in (HAND_PROGRAM_ROW, row))
        print(same_draws(hand, library, x, f"library ({'fused' if row == SSVAE_FUSED_ROW else 'Pyro path'})"))


# --- 5. torch.compile ------------------------------------------------------------------------


def compile_part(sizes: Sizes, device: str) -> None:
    """The step at one batch size, eager and under ``torch.compile``.

    For the hand-written VAE and the library's default loss.
    """
    batch = 128 if 128 in sizes.batches else sizes.batches[0]
    pyro.set_rng_seed(0)
    state = new_vae().state_dict()
    x = torch.rand(batch, *IMAGE, device=device).bernoulli()
    measurements, compile_seconds = {}, {}
    for name in COMPILE_ROWS:
        compiled = "torch.compile" in name
        vae = new_vae(state, device)
        model: nn.Module = hand_written_copy(vae) if name.startswith("hand") else vae
        if name.startswith("hand"):
            loss_fn: LossFn = torch.compile(model.loss) if compiled else model.loss
        else:  # the library compiles its own fused loss (Objective(compile=True), --compile)
            loss_fn = Objective(vae, "mc", fused="auto", compile=compiled)
        optimizer = row_optimizer(name, model)
        start = time.perf_counter()
        train_step(loss_fn, optimizer, x, NUM_DATA)  # compiles on the first call
        compile_seconds[name] = time.perf_counter() - start
        # the same compiled function every round: compiling again would take minutes
        measurements[name] = step_timer(lambda pair=(loss_fn, optimizer): pair, x, sizes, device)
    contention = Contention()
    rounds = interleaved(measurements, sizes.repeats)
    contention_text = contention.report()
    eager, hand_compiled = rounds[COMPILE_ROWS[0]], rounds[COMPILE_SAME_WAY]
    rows = [
        [
            name,
            f"{1000 * statistics.median(v):.2f}",
            f"{median_ratio(v, eager):.2f}",
            f"{median_ratio(v, hand_compiled):.2f}",
            f"{compile_seconds[name]:.1f}",
        ]
        for name, v in rounds.items()
    ]
    note = (
        f"MLP 784-400-50, batch {batch}, Adam; ms: median over {sizes.repeats} interleaved rounds of the median of "
        f"{sizes.steps} steps; first call (compilation) timed apart.\n"
        "torch.compile compiles the loss; the library rows step with its default optimiser (Adam, fused kernel)."
    )
    print_table(
        "ms per training step with torch.compile",
        note,
        ["configuration", "ms", "x hand eager", "x hand compiled (fused Adam)", "first step s"],
        rows,
    )
    print(contention_text)
    library = rounds[COMPILE_ROWS[-1]]
    print(f"library compiled / hand-written eager: {verdict(median_ratio(library, eager), COMPILE_TARGETS['eager'])}")
    print(
        "library compiled / hand-written compiled the same way (loss compiled, fused Adam): "
        f"{verdict(median_ratio(library, hand_compiled), COMPILE_TARGETS['compiled'])}"
    )


# --- data ------------------------------------------------------------------------------------


def load_data(data_root: Path, sizes: Sizes, smoke: bool, device: str) -> tuple[Dataset, str]:
    """MNIST (grey values) from ``data_root``, or a labelled random stand-in when it is missing or ``smoke``."""
    if not smoke:
        try:
            data = pyro_vae.load_dataset("mnist", data_root=data_root, device=device)
            return data, f"MNIST from {data_root} ({len(data.train)} train / {len(data.test)} test images, grey values)"
        except DataError as e:
            reason = f"MNIST not found ({e})"
    else:
        reason = "--smoke"
    generator = torch.Generator().manual_seed(0)
    train, test = (
        torch.rand(n, *IMAGE, generator=generator).to(device) for n in (sizes.random_train, sizes.random_test)
    )
    description = (
        f"RANDOM STAND-IN DATA, not MNIST: uniform grey values {len(train)}x28x28 train / {len(test)} test ({reason})"
    )
    return Dataset("random", train, test), description


# --- 2. epochs -------------------------------------------------------------------------------


def timed_epoch(
    loss_fn: LossFn, optimizer: torch.optim.Optimizer, batches: Iterable[Tensor], num_data: int, device: str
) -> float:
    """Seconds to run the training steps of one epoch (fetching the batches included), as ``fit`` counts them."""
    start = clock(device)
    for x in batches:
        train_step(loss_fn, optimizer, x, num_data)  # returns loss.item(), as loops that log the loss do (fit too)
    return clock(device) - start


def permutation_slices(train: Tensor, batch_size: int) -> Iterator[Tensor]:
    """Hand-written loop (a): slices of a random permutation of the in-memory tensor."""
    order = torch.randperm(len(train)).to(train.device)
    for start in range(0, len(train) - batch_size + 1, batch_size):
        yield train[order[start : start + batch_size]]


def data_loader(train: Tensor, batch_size: int) -> Iterator[Tensor]:
    """Hand-written loop (b): what typical code does, a shuffling DataLoader over a TensorDataset."""
    for (x,) in DataLoader(TensorDataset(train), batch_size=batch_size, shuffle=True, drop_last=True):
        yield x


def library_epoch(data: Dataset, batch_size: int, **options: object) -> Callable[[], float]:
    """A measurement: one epoch of ``pyro_vae.fit`` with ``options``, by the seconds of training it reports."""
    vae = new_vae(device=str(data.train.device))

    def measure() -> float:
        history = pyro_vae.fit(vae, data, epochs=1, batch_size=batch_size, lr=LR, progress=False, **options)
        return history[0]["seconds"]

    return measure


def hand_written_epoch(
    data: Dataset, batch_size: int, batches: Callable[[Tensor, int], Iterable[Tensor]], fused: bool | None = None
) -> Callable[[], float]:
    """A measurement: one epoch of the hand-written loop over the minibatches ``batches`` makes of ``data.train``."""
    device = str(data.train.device)
    hand = hand_written_copy(new_vae(device=device))
    optimizer = torch.optim.Adam(hand.parameters(), lr=LR, fused=fused)

    def measure() -> float:
        return timed_epoch(hand.loss, optimizer, batches(data.train, batch_size), len(data.train), device)

    return measure


def epochs_part(data: Dataset, description: str, sizes: Sizes) -> None:
    batch = sizes.epoch_batch
    # fit evaluates the test set after each epoch, outside the seconds it reports; a small test set saves the wait.
    data = Dataset(data.name, data.train, data.test[:500])
    pyro.set_rng_seed(0)
    rows = {
        HAND_EPOCH: hand_written_epoch(data, batch, permutation_slices),
        "hand-written (b): DataLoader(TensorDataset, shuffle=True)": hand_written_epoch(data, batch, data_loader),
        "hand-written (c): as (a), Adam(fused=True)": hand_written_epoch(data, batch, permutation_slices, fused=True),
        FUSED_EPOCH: library_epoch(data, batch),
        "pyro_vae.fit, Pyro path (mc, fused=False)": library_epoch(data, batch, fused=False),
    }
    contention = Contention()
    seconds = interleaved(rows, sizes.epochs)
    contention_text = contention.report()
    ratios = {name: median_ratio(v, seconds[HAND_EPOCH]) for name, v in seconds.items()}
    note = (
        f"{description}\nMLP 784-400-50, Bernoulli, batch {batch} ({len(data.train) // batch} steps), "
        f"Adam lr {LR:g}; training steps only (fit's per-epoch 'seconds'); "
        f"median of {sizes.epochs} interleaved epochs; x hand (a): median of the per-round ratios"
    )
    table = [[name, f"{statistics.median(v):.2f}", f"{ratios[name]:.2f}"] for name, v in seconds.items()]
    print_table("seconds per MNIST training epoch", note, ["configuration", "s/epoch", "x hand (a)"], table)
    print(contention_text)
    print(f"library (fit, default path) / hand-written (a): {verdict(ratios[FUSED_EPOCH], EPOCH_TARGET)}")


# --- 3. memory -------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """The process's peak resident set size (VmHWM), in MB; getrusage's maximum where /proc is missing."""
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        if sys.platform == "darwin":
            kb //= 1024
    return kb / 1024


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux's clear_refs), so the peak counts training, not loading.

    False when refused.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_part(data: Dataset, description: str, sizes: Sizes, device: str) -> None:
    cuda = device.startswith("cuda")
    pyro.set_rng_seed(0)
    vae = new_vae(device=device)
    reset = reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rows: list[list[str]] = []
    peaks: list[float] = []

    def record(metrics: dict, optimizer: torch.optim.Optimizer) -> None:
        peaks.append(peak_rss_mb())
        cells = [str(metrics["epoch"]), f"{peaks[-1]:.1f}", f"{(_status_kb('VmRSS') or 0) / 1024:.1f}"]
        rows.append(cells + ([f"{torch.cuda.max_memory_allocated() / 2**20:.1f}"] if cuda else []))

    pyro_vae.fit(
        vae, data, epochs=sizes.memory_epochs, batch_size=sizes.epoch_batch, lr=LR, progress=False, on_epoch=record
    )
    note = (
        f"{description}\npyro_vae.fit, default path (mc, fused), batch {sizes.epoch_batch}, in a fresh process; "
        "read after each epoch (fit's test evaluation included). "
        + (
            "Peak reset after loading the data, so it counts training."
            if reset
            else "The peak could not be reset: it includes loading the data."
        )
    )
    header = ["epoch", "peak RSS MB", "RSS MB"] + (["CUDA max allocated MB"] if cuda else [])
    print_table("peak memory of library training", note, header, rows)
    last = sizes.memory_epochs
    print(f"peak RSS after epoch {last} / after epoch 1: {verdict(peaks[-1] / peaks[0], MEMORY_TARGET)}")


def memory_in_subprocess(args: argparse.Namespace) -> None:
    """Run the memory part in a fresh interpreter, so that the other parts' allocations do not count in its peak."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--only",
        "memory",
        "--no-header",
        "--data-root",
        str(args.data_root),
        "--device",
        args.device,
    ]
    command += ["--memory-epochs", str(args.memory_epochs)] if args.memory_epochs else []
    command += ["--smoke"] if args.smoke else ["--quick"] if args.quick else []
    command += ["--default-malloc"] if args.default_malloc else []
    sys.stdout.flush()
    result = subprocess.run(command, cwd=REPO)
    if result.returncode:
        print(f"the memory part failed (exit status {result.returncode}): {shlex.join(command)}")


# --- 4. log-likelihood -----------------------------------------------------------------------


def decoder_rows(num_points: int, num_samples: int, batch_size: int = 100) -> list[int]:
    """Rows of each decoder call that ``log_likelihood`` makes.

    Points in batches, samples in chunks of at most DECODER_ELEMENTS outputs.
    """
    rows = []
    for start in range(0, num_points, batch_size):
        points = min(batch_size, num_points - start)
        chunk = max(1, DECODER_ELEMENTS // (points * math.prod(IMAGE)))
        rows += [points * min(chunk, num_samples - s) for s in range(0, num_samples, chunk)]
    return rows


def matmul_timer(rows: list[int], device: str) -> Callable[[], float]:
    """A measurement: the decoder's two bare matrix multiplies (50->400->784, with bias) over the same row counts."""
    shapes = [(LATENT, HIDDEN), (HIDDEN, math.prod(IMAGE))]
    weights = [
        (torch.randn(n_out, n_in, device=device) / math.sqrt(n_in), torch.zeros(n_out, device=device))
        for n_in, n_out in shapes
    ]
    z = torch.randn(max(rows), LATENT, device=device)

    def measure() -> float:
        start = clock(device)
        for n in rows:
            h = z[:n]
            for weight, bias in weights:
                h = F.linear(h, weight, bias)
        return clock(device) - start

    return measure


def likelihood_part(data: Dataset, description: str, sizes: Sizes, device: str) -> None:
    pyro.set_rng_seed(0)
    vae = new_vae(device=device)
    x = torch.bernoulli(data.test[: sizes.points], generator=torch.Generator(device=device).manual_seed(0))
    rows = decoder_rows(len(x), sizes.num_samples)

    def log_likelihood() -> float:
        start = clock(device)
        pyro_vae.log_likelihood(vae, x, num_samples=sizes.num_samples)
        return clock(device) - start

    contention = Contention()
    measurements = {"pyro_vae.log_likelihood": log_likelihood, MATMUL_ROW: matmul_timer(rows, device)}
    rounds = interleaved(measurements, sizes.likelihood_repeats)
    contention_text = contention.report()
    work = len(x) * sizes.num_samples
    flops = 2 * (LATENT * HIDDEN + HIDDEN * math.prod(IMAGE)) * sum(rows)
    seconds = {name: statistics.median(v) for name, v in rounds.items()}
    table = [[name, f"{s:.3f}", f"{work / s:,.0f}", f"{flops / s / 1e9:.1f}"] for name, s in seconds.items()]
    note = (
        f"{description}\n{len(x)} test points binarized, K = {sizes.num_samples}, untrained MLP 784-400-50 VAE; "
        f"{len(rows)} decoder calls of up to {max(rows)} rows "
        f"(points x samples per chunk); median of {sizes.likelihood_repeats} interleaved rounds.\n"
        "GFLOP/s counts the decoder's two matrix multiplies only "
        "(for log_likelihood: the rate it achieves on that work)."
    )
    print_table(
        "throughput of pyro_vae.log_likelihood",
        note,
        ["measurement", "seconds", "points x samples / s", "GFLOP/s"],
        table,
    )
    print(contention_text)
    fraction = median_ratio(rounds[MATMUL_ROW], rounds["pyro_vae.log_likelihood"])
    print(
        "log_likelihood's throughput as a fraction of the bare matmul rate (median of the per-round ratios): "
        f"{verdict(fraction, LIKELIHOOD_TARGET, at_most=False)}"
    )


# --- the command -----------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def print_header() -> None:
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
        f"load average {load_average()} at the start"
    )
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, pyro-ppl {pyro.__version__}, "
        f"pyro-vae {pyro_vae.__version__}"
    )
    print(f"command: {shlex.join(['python', *sys.argv])}")
    malloc = ", ".join(f"{k}={os.environ[k]}" for k in MALLOC_ENV if k in os.environ)
    print(f"allocator: {malloc or 'glibc defaults'} (the same for every configuration)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", help="fewer rounds, steps and epochs (under a minute)")
    profile.add_argument("--smoke", action="store_true", help="tiny sizes on random data, one round (seconds)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="the parts to run (default: all)")
    parser.add_argument("--batch", type=int, nargs="+", help="batch sizes of the step table (default 32 128 512)")
    parser.add_argument("--steps", type=int, help="timed steps per round (default 10)")
    parser.add_argument(
        "--repeats", type=int, help="interleaved rounds of the step and log-likelihood timings (default 11 and 3)"
    )
    parser.add_argument("--epochs", type=int, help="interleaved one-epoch rounds of the epoch table (default 5)")
    parser.add_argument("--memory-epochs", type=int, help="epochs of the memory part (default 10)")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="folder holding MNIST/raw (default ../shared/data of the repository)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's adaptive malloc thresholds (see MALLOC_ENV; measurements become bimodal)",
    )
    parser.add_argument("--no-header", action="store_true", help=argparse.SUPPRESS)  # the memory part's own process
    return parser.parse_args(argv)


def resolve_sizes(args: argparse.Namespace) -> Sizes:
    sizes = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    overrides = {
        "batches": tuple(args.batch) if args.batch else None,
        "steps": args.steps,
        "epochs": args.epochs,
        "memory_epochs": args.memory_epochs,
    }
    if args.repeats:
        overrides |= {"repeats": args.repeats, "likelihood_repeats": args.repeats}
    return Sizes(**{**sizes.__dict__, **{k: v for k, v in overrides.items() if v is not None}})


#: glibc's malloc hands large freed blocks back to the OS and maps them in again, page faults
#: included, under a threshold it keeps adjusting: one process of this benchmark then runs a step
#: at about 4.3 ms and the next at 5.5 ms, for any configuration. Fixed thresholds remove that
#: mode (it is the process's allocator, not the code being measured); --default-malloc keeps glibc's.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20)}


def _with_fixed_malloc(argv: list[str] | None) -> None:
    """Run this command again with :data:`MALLOC_ENV` set (glibc reads it only at start), unless it is set."""
    if platform.system() == "Linux" and not all(k in os.environ for k in MALLOC_ENV):
        os.execve(
            sys.executable,
            [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)],
            {**os.environ, **MALLOC_ENV},
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.default_malloc:
        _with_fixed_malloc(argv)
    sizes = resolve_sizes(args)
    if args.smoke and args.only == list(PARTS):
        args.only = [part for part in PARTS if part not in SMOKE_LEAVES_OUT]  # --only runs them
    if not args.no_header:
        print_header()
    start = time.perf_counter()
    memory_here = args.only == ["memory"]  # alone, this process is fresh; beside other parts it gets its own
    if "steps" in args.only:
        steps_part(sizes, args.device)
    if "program" in args.only:
        program_part(sizes, args.device)
    if "hierarchical" in args.only:
        hierarchical_part(sizes, args.device)
    if "ssvae" in args.only:
        ssvae_part(sizes, args.device)
    if "compile" in args.only:
        compile_part(sizes, args.device)
    if memory_here or {"epochs", "likelihood"} & set(args.only):
        data, description = load_data(args.data_root, sizes, args.smoke, args.device)
        if "epochs" in args.only:
            epochs_part(data, description, sizes)
        if "likelihood" in args.only:
            likelihood_part(data, description, sizes, args.device)
        if memory_here:
            memory_part(data, description, sizes, args.device)
    if "memory" in args.only and not memory_here:
        memory_in_subprocess(args)
    if not args.no_header:
        print(f"\ntotal {time.perf_counter() - start:.0f} s; load average {load_average()} at the end")


if __name__ == "__main__":
    main()
