r"""Optimisers and learning-rate schedules, chosen by name like the model's components.

``train.optimizer = {type = "adam", betas = [0.9, 0.999], eps = 1e-8}`` picks an optimiser from
:data:`OPTIMIZERS`, ``train.lr_schedule = {type = "multistep", milestones = [10, 20], gamma = 0.1}``
a schedule from :data:`LR_SCHEDULES`. Each entry is a thin constructor over :mod:`torch.optim` or
:mod:`torch.optim.lr_scheduler` whose signature declares the settable parameters, so the config
checks them like any other component. The learning rate itself stays ``train.lr``; a schedule
multiplies it and steps once at the end of every epoch. Both state dicts are saved in
checkpoints, so a resumed run continues the same schedule.

Example:
    >>> import torch
    >>> params = [torch.nn.Parameter(torch.zeros(2))]
    >>> optimizer = make_optimizer(params, lr=1e-3, spec={"type": "adam", "eps": 1e-4})
    >>> schedule = make_lr_schedule(optimizer, {"type": "multistep", "milestones": [1, 4], "gamma": 0.5}, epochs=10)
    >>> for _ in range(4):  # four epochs of (here, no) training steps
    ...     optimizer.step()
    ...     schedule.step()
    >>> optimizer.param_groups[0]["lr"]
    0.00025
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable
from typing import Annotated, Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from pyro_vae.errors import ConfigError
from pyro_vae.registry import AtLeast, AtMost, Registry

__all__ = [
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "fused_if_supported",
    "make_optimizer",
    "make_lr_schedule",
    "shaped_by_length",
    "schedule_state",
    "load_schedule_state",
]

#: Optimisers by name; the library supplies ``params`` and ``lr`` (``train.lr``).
OPTIMIZERS: Registry = Registry("optimizer", context=("params", "lr"))
#: Learning-rate schedules by name; the library supplies ``optimizer`` and ``epochs`` (``train.epochs``).
LR_SCHEDULES: Registry = Registry("learning-rate schedule", context=("optimizer", "epochs"))

Positive = Annotated[float, AtLeast(0, strict=True)]
Fraction = Annotated[float, AtLeast(0), AtMost(1)]


@OPTIMIZERS.register("adam")
def adam(
    params: Iterable[torch.Tensor],
    lr: float,
    betas: tuple[Fraction, Fraction] = (0.9, 0.999),
    eps: Positive = 1e-8,
    weight_decay: Annotated[float, AtLeast(0)] = 0.0,
    amsgrad: bool = False,
    fused: bool = True,
) -> Optimizer:
    """Adam (:class:`torch.optim.Adam`): A Method for Stochastic Optimization (Kingma & Ba, 2015).

    ``fused``: torch's single-kernel update where the parameters' device has one (see :func:`fused_if_supported`).
    """
    options = dict(lr=lr, betas=_pair(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
    return fused_if_supported(torch.optim.Adam, params, fused, **options)


@OPTIMIZERS.register("adamw")
def adamw(
    params: Iterable[torch.Tensor],
    lr: float,
    betas: tuple[Fraction, Fraction] = (0.9, 0.999),
    eps: Positive = 1e-8,
    weight_decay: Annotated[float, AtLeast(0)] = 0.01,
    fused: bool = True,
) -> Optimizer:
    """AdamW (:class:`torch.optim.AdamW`): Decoupled Weight Decay Regularization (Loshchilov & Hutter, 2019)."""
    options = dict(lr=lr, betas=_pair(betas), eps=eps, weight_decay=weight_decay)
    return fused_if_supported(torch.optim.AdamW, params, fused, **options)


@OPTIMIZERS.register("sgd")
def sgd(
    params: Iterable[torch.Tensor],
    lr: float,
    momentum: Annotated[float, AtLeast(0)] = 0.0,
    nesterov: bool = False,
    weight_decay: Annotated[float, AtLeast(0)] = 0.0,
    fused: bool = True,
) -> Optimizer:
    """Stochastic gradient descent with optional (Nesterov) momentum (:class:`torch.optim.SGD`)."""
    options = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    return fused_if_supported(torch.optim.SGD, params, fused, **options)


@OPTIMIZERS.register("rmsprop")
def rmsprop(
    params: Iterable[torch.Tensor],
    lr: float,
    alpha: Fraction = 0.99,
    eps: Positive = 1e-8,
    momentum: Annotated[float, AtLeast(0)] = 0.0,
) -> Optimizer:
    """RMSprop (:class:`torch.optim.RMSprop`)."""
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, momentum=momentum)


def fused_if_supported(cls: type[Optimizer], params: Iterable[Any], fused: bool = True, **options: Any) -> Optimizer:
    """``cls(params, fused=True, **options)`` where torch has a fused kernel for the parameters, else the usual one.

    The fused kernel updates every parameter in one call (on a 2-core CPU, Adam's update of a
    784-400-50 MLP takes 0.98 ms instead of 2.37 ms); it runs the same update rule, so results differ
    only by float rounding.
    Devices or dtypes without one (or ``fused=False``) get torch's default implementation.
    """
    params = list(params)
    if fused:
        try:
            return cls(params, fused=True, **options)
        except RuntimeError:  # "`fused=True` requires all the params to be floating point Tensors of supported devices"
            pass
    return cls(params, **options)


def _pair(betas: tuple[float, float] | list[float]) -> tuple[float, float]:
    first, second = betas  # a config's list, checked to hold two numbers
    return float(first), float(second)


@LR_SCHEDULES.register("constant")
def constant(optimizer: Optimizer, epochs: int) -> LRScheduler:
    """The learning rate ``train.lr`` throughout."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _one)


def _one(epoch: int) -> float:  # a module-level function: LambdaLR's state_dict leaves it out
    return 1.0


@LR_SCHEDULES.register("step")
def step(
    optimizer: Optimizer, epochs: int, step_size: Annotated[int, AtLeast(1)] = 10, gamma: Positive = 0.1
) -> LRScheduler:
    """Multiply the rate by ``gamma`` every ``step_size`` epochs (:class:`~torch.optim.lr_scheduler.StepLR`)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


@LR_SCHEDULES.register("multistep")
def multistep(
    optimizer: Optimizer, epochs: int, milestones: list[Annotated[int, AtLeast(1)]] = (), gamma: Positive = 0.1
) -> LRScheduler:
    """Multiply the rate by ``gamma`` after each epoch in ``milestones`` (torch's ``MultiStepLR``)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)


@LR_SCHEDULES.register("exponential")
def exponential(optimizer: Optimizer, epochs: int, gamma: Positive = 0.99) -> LRScheduler:
    """Multiply the rate by ``gamma`` after every epoch (:class:`~torch.optim.lr_scheduler.ExponentialLR`)."""
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)


@LR_SCHEDULES.register("cosine")
class Cosine(torch.optim.lr_scheduler.CosineAnnealingLR):
    r"""Cosine annealing from ``train.lr`` to ``eta_min`` over the run's epochs (``CosineAnnealingLR``).

    .. math:: \eta_t = \eta_{\min} + \tfrac12(\eta_0 - \eta_{\min})(1 + \cos(\pi t / T))

    Reference:
        SGDR: Stochastic Gradient Descent with Warm Restarts (Loshchilov & Hutter, 2017).
    """

    #: Its shape is drawn over the run's ``epochs``: a run extended later would raise the rate again.
    shaped_by_length = True

    def __init__(self, optimizer: Optimizer, epochs: int, eta_min: Annotated[float, AtLeast(0)] = 0.0) -> None:
        super().__init__(optimizer, T_max=epochs, eta_min=eta_min)


@LR_SCHEDULES.register("staged")
def staged(
    optimizer: Optimizer,
    epochs: int,
    stages: Annotated[int, AtLeast(1)] = 8,
    base: Annotated[float, AtLeast(1)] = 3.0,
    gamma: Positive = 10 ** (-1 / 7),
) -> LRScheduler:
    r"""Stage :math:`i = 0, 1, \dots` lasts :math:`\lceil b^i \rceil` epochs at rate :math:`\eta_0\,\gamma^i`.

    The defaults are the schedule of the Importance Weighted Autoencoders paper: :math:`\eta_0 10^{-i/7}`
    for :math:`3^i` epochs, :math:`i = 0, \dots, 7` (3,280 epochs in all); a smaller ``base`` compresses
    it. After the last stage the rate stays at the last stage's.

    Reference:
        Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2016).
    """
    lengths = [math.ceil(base**i - 1e-9) for i in range(stages)]
    milestones = list(itertools.accumulate(lengths))[:-1]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)


def staged_epochs(stages: int = 8, base: float = 3.0) -> int:
    """The length in epochs of :func:`staged` with these settings (3,280 for the defaults)."""
    return sum(math.ceil(base**i - 1e-9) for i in range(stages))


def shaped_by_length(spec: dict[str, Any]) -> bool:
    """Whether the schedule ``spec`` names is drawn over the run's length (an entry's ``shaped_by_length``).

    Such a schedule cannot be extended: more epochs would change the rates of those already trained.
    """
    return getattr(LR_SCHEDULES.get(spec["type"]), "shaped_by_length", False)


def make_optimizer(params: Iterable[torch.Tensor], lr: float, spec: dict[str, Any] | None = None) -> Optimizer:
    """The optimiser ``spec`` names (default Adam with torch's defaults) over ``params`` at rate ``lr``."""
    if not lr > 0:
        raise ConfigError(f"{{lr}} must be > 0 (got {lr})", "lr")
    return OPTIMIZERS.build(spec or {"type": "adam"}, "optimizer", params=params, lr=lr)


def make_lr_schedule(optimizer: Optimizer, spec: dict[str, Any] | None = None, epochs: int = 1) -> LRScheduler:
    """The learning-rate schedule ``spec`` names (default constant), stepped once per epoch of ``epochs``."""
    return LR_SCHEDULES.build(spec or {"type": "constant"}, "lr_schedule", optimizer=optimizer, epochs=epochs)


def schedule_state(schedule: LRScheduler) -> dict[str, Any]:
    """The schedule's ``state_dict()`` as plain data, for a checkpoint read with ``weights_only=True``.

    ``MultiStepLR`` keeps its milestones in a :class:`collections.Counter`, which a safe load refuses
    (and :func:`dataclasses.asdict` garbles): it is saved as a plain dict.
    """
    return {key: dict(value) if isinstance(value, Counter) else value for key, value in schedule.state_dict().items()}


def load_schedule_state(schedule: LRScheduler, state: dict[str, Any]) -> None:
    """Restore what :func:`schedule_state` saved, with each attribute's own type."""
    current = vars(schedule)
    schedule.load_state_dict({k: Counter(v) if isinstance(current.get(k), Counter) else v for k, v in state.items()})
