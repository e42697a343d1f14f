r"""The fused form of a program: its guide's draws and its model's conditionals as plain tensor code.

A program whose every latent site is a diagonal Normal from the guide can declare, beside ``model`` and
``guide``, the same computations without Pyro's traces, which the estimators'
:meth:`~pyro_vae.infer.estimators.Estimator.fused_loss` turns into a loss:

- ``fused_guide(x, num_particles) -> list[Draw]``: each latent site's guide parameters and draw, in the guide's
  order, drawn as Pyro draws them (``rsample`` with the particles first, none when there is one particle);
- ``fused_model(zs) -> (priors, likelihood_input)``: the model's distribution at each latent site given the
  values ``zs`` (in the guide's order), and the input of ``likelihood`` for ``x``;
- ``fused_held_guide(x, draws, zs) -> list[(loc, scale)]``: the guide's parameters at each site with the
  guide's own parameters held fixed, at the values ``zs`` (the sticking-the-landing and DReG gradients);
- ``fused_exact``: for each site, whether its closed-form KL is exact (the model's distribution there depends
  on no draw the guide makes later; :func:`~pyro_vae.infer.program.closed_form_sites` reads the same from
  traces).

A class declares it by being in :data:`~pyro_vae.infer.estimators.FUSED_PROGRAMS`, where the tests hold its
fused loss to Pyro's reference on the same draws, for every estimator.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import pyro.distributions as dist
import torch
from torch import Tensor, nn

__all__ = ["Draw", "enumerated_label", "gaussian", "held_call", "label_elbo"]


class Draw(NamedTuple):
    """One latent site of a fused guide: its diagonal Normal's parameters and the value drawn."""

    loc: Tensor
    scale: Tensor
    z: Tensor


def gaussian(loc: Tensor, scale: Tensor) -> dist.TorchDistribution:
    """The diagonal Normal of a guide site, its last dimension the event."""
    # validate_args=False: networks return a positive scale by construction, and a NaN from a
    # diverging encoder is caught (with its epoch and step) by the training loop's finite checks.
    return dist.Normal(loc, scale, validate_args=False).to_event(1)


def held_call(module: nn.Module, *inputs: Tensor) -> Any:
    """``module(*inputs)`` with its parameters held fixed: the gradient reaches the inputs, not the parameters."""
    held = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, held, inputs)


def enumerated_label(logits: Tensor, num_particles: int) -> tuple[Tensor, Tensor]:
    """Every class of a label at once, laid out as Pyro's parallel enumeration lays them (the classes first, then
    the particles, then the points): :math:`\\log q(y\\mid x)` of shape ``(C, [L,] B)`` from ``logits`` of shape
    ``(B, C)``, and the classes, of shape ``(C, [1,] 1)``."""
    particles = [1] if num_particles > 1 else []
    classes = logits.shape[-1]
    log_q = logits.log_softmax(-1).T.reshape(classes, *particles, len(logits))
    return log_q, torch.arange(classes, device=logits.device).view(classes, *particles, 1)


def label_elbo(log_px: Tensor, latent: Tensor, log_q_y: Tensor | None, num_classes: int, beta: float) -> Tensor:
    """The ELBO, summed, of a program whose label has the uniform prior: :math:`\\log p(x\\mid\\cdot) + \\log p(y)
    + \\beta\\,\\text{latent}` where ``y`` is observed (``log_q_y`` is ``None``), else its expectation under
    :math:`q(y\\mid x)` (``log_q_y`` from :func:`enumerated_label`), with :math:`\\log p(y) - \\log q(y\\mid x)`
    among the latent terms."""
    log_p_y = -math.log(num_classes)
    if log_q_y is None:  # y observed: its log p(y) is the data's, not a latent term
        return (log_px + log_p_y + beta * latent).sum()
    return (log_q_y.exp() * (log_px + beta * (latent + log_p_y - log_q_y))).sum()
