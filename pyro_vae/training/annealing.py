r"""KL schedules: the weight of the KL term, step by step (KL warm-up, annealing).

A schedule is a small object whose call ``schedule(t)`` gives the weight :math:`w_t \in [0, 1]` of
the KL term at training step :math:`t` (counted from 0 over the whole run); the objective at that
step weights the KL by :math:`\beta\,w_t`, with :math:`\beta` = ``train.beta``. A schedule is a
function of the step alone, so a resumed run takes the same weights without saving anything.
``train.kl_warmup = {type = "linear", epochs = 10}`` (``--kl-warmup 10``) picks one from
:data:`KL_SCHEDULES`; register another (cyclical annealing, say) with ``@KL_SCHEDULES.register``:
its constructor takes ``steps_per_epoch`` plus the parameters a config may set.

Example:
    >>> warmup = KL_SCHEDULES.build({"type": "linear", "epochs": 2}, steps_per_epoch=5)
    >>> [round(warmup(t), 2) for t in range(12)]
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

from typing import Annotated, Any

from pyro_vae.errors import ConfigError
from pyro_vae.infer.estimators import ESTIMATORS
from pyro_vae.registry import AtLeast, AtMost, Registry

__all__ = ["KL_SCHEDULES", "KLSchedule", "Constant", "LinearWarmup", "make_kl_schedule", "check_kl_schedule"]

#: KL schedules by name; the library supplies ``steps_per_epoch``.
KL_SCHEDULES: Registry = Registry("KL schedule", context=("steps_per_epoch",))

Count = Annotated[int, AtLeast(0)]


class KLSchedule:
    """Base class: the KL term's weight at each training step."""

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch

    def __call__(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


@KL_SCHEDULES.register("constant")
class Constant(KLSchedule):
    """Weight 1 throughout: the KL term weighted by ``train.beta`` alone (no warm-up)."""

    def __call__(self, step: int) -> float:
        return 1.0


@KL_SCHEDULES.register("linear")
class LinearWarmup(KLSchedule):
    r"""KL warm-up: the weight rises linearly from ``start`` to 1 over ``epochs`` epochs or ``steps`` steps.

    .. math:: w_t = s + (1 - s)\,\min\Big(1, \frac{t + 1}{T}\Big), \qquad t = 0, 1, \dots

    with :math:`T` the warm-up's length in steps; the last step of the warm-up has weight 1, and
    the first a little above ``start`` (so that the KL's parameters take part from the first step).

    Args:
        start: the weight the warm-up starts from, in [0, 1].
        epochs: the warm-up's length in epochs (``epochs * steps_per_epoch`` steps), or
        steps: its length in steps; set exactly one of the two.

    Reference:
        Ladder Variational Autoencoders (Sønderby et al., 2016); Generating Sentences from a
        Continuous Space (Bowman et al., 2016).
    """

    def __init__(
        self,
        steps_per_epoch: int,
        start: Annotated[float, AtLeast(0), AtMost(1)] = 0.0,
        epochs: Count = 0,
        steps: Count = 0,
    ) -> None:
        super().__init__(steps_per_epoch)
        if (epochs > 0) == (steps > 0):
            raise ConfigError(
                f"{{kl_warmup}} needs its length: epochs or steps, exactly one of them above 0 "
                f"(got epochs={epochs}, steps={steps})",
                "kl_warmup",
            )
        self.start = float(start)
        self.length = epochs * steps_per_epoch if epochs else steps

    def __call__(self, step: int) -> float:
        return self.start + (1.0 - self.start) * min(1.0, (step + 1) / self.length)


def make_kl_schedule(spec: dict[str, Any] | None, steps_per_epoch: int) -> KLSchedule:
    """The KL schedule ``spec`` names (default ``constant``: no warm-up)."""
    return KL_SCHEDULES.build(spec or {"type": "constant"}, "kl_warmup", steps_per_epoch=steps_per_epoch)


def check_kl_schedule(kl_schedule: KLSchedule, estimator: str, compile: bool) -> None:
    """A :class:`ConfigError` for a KL warm-up where it has no meaning (IWAE) or would recompile at every step."""
    if isinstance(kl_schedule, Constant):
        return
    if not ESTIMATORS.get(estimator).weights_kl:
        raise ConfigError(
            f"{{kl_warmup}} weights the KL term of the ELBO, and the {estimator} bound has none; "
            "use an ELBO estimator (mc, analytic, stl) or no warm-up",
            "kl_warmup",
        )
    if compile:
        raise ConfigError(
            "{kl_warmup} changes the KL weight at every step, and torch.compile would compile the loss again "
            "for each; drop {compile=} (the fused path is exact and nearly as fast)",
            "kl_warmup",
            "compile=True",
        )
