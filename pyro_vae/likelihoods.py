r"""Likelihoods :math:`p(x \mid z)`: the decoder's output turned into a distribution over data.

A likelihood is a small :class:`torch.nn.Module` whose ``forward(output)`` takes the decoder
network's output, of shape ``(..., *event_shape)``, and returns a distribution whose event covers
all data dimensions. It also declares the ``support`` that data must lie in, which is checked
when a data set is loaded. Register a new one with ``@LIKELIHOODS.register("name")``.

Example:
    >>> import torch
    >>> likelihood = LIKELIHOODS.build({"type": "bernoulli"}, event_shape=(8, 8))
    >>> likelihood(torch.zeros(5, 8, 8)).log_prob(torch.ones(5, 8, 8)).shape
    torch.Size([5])
"""

from __future__ import annotations

import pyro.distributions as dist
from pyro.distributions import constraints
from torch import Tensor, nn

from pyro_vae.registry import Registry

__all__ = ["LIKELIHOODS", "Likelihood", "Bernoulli"]

LIKELIHOODS: Registry = Registry("likelihood", context=("event_shape",))


class Likelihood(nn.Module):
    """Base class: maps decoder output to :math:`p(x \\mid z)` with event shape ``event_shape``."""

    #: Values the data must take; checked once when the data are loaded.
    support: constraints.Constraint = constraints.real
    #: Human-readable form of ``support`` for error messages.
    support_text: str = "real numbers"

    def __init__(self, event_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)

    def forward(self, output: Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError


@LIKELIHOODS.register("bernoulli")
class Bernoulli(Likelihood):
    r"""Independent Bernoulli pixels, :math:`\log p(x\mid z) = \sum_i x_i \log\pi_i + (1-x_i)\log(1-\pi_i)`.

    The decoder output are the logits of :math:`\pi`. For binary data this is a normalised
    likelihood. For grey values in :math:`[0, 1]` it is the binary cross-entropy loss that most VAE
    code uses, which is not a normalised density of continuous data: binarize the data
    (``binarize = "static"`` or ``"dynamic"``) to report true log-likelihoods.
    """

    support = constraints.unit_interval
    support_text = "[0, 1]"

    def forward(self, output: Tensor) -> dist.TorchDistribution:
        # validate_args=False: grey values in [0, 1] are accepted on purpose (see the docstring).
        base = dist.Bernoulli(logits=output, validate_args=False)
        return base.to_event(len(self.event_shape))
