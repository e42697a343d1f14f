r"""Encoder and decoder networks.

A network entry builds an ``(encoder, decoder)`` pair for data of shape ``event_shape`` and a
latent code of size ``latent_dim``:

- the encoder maps ``x`` of shape ``(..., *event_shape)`` to the parameters ``(loc, scale)`` of
  the Gaussian guide :math:`q(z \mid x) = \mathcal N(\mu(x), \operatorname{diag}\sigma(x)^2)`;
- the decoder maps ``z`` of shape ``(..., latent_dim)`` to a tensor of shape
  ``(..., *event_shape)`` that the likelihood turns into :math:`p(x \mid z)`.

Register a new pair with ``@NETWORKS.register("name")``.

Example:
    >>> import torch
    >>> encoder, decoder = NETWORKS.build({"type": "mlp", "hidden": [32]}, event_shape=(8, 8), latent_dim=2)
    >>> loc, scale = encoder(torch.rand(5, 8, 8))
    >>> decoder(loc).shape
    torch.Size([5, 8, 8])
"""

from __future__ import annotations

import math
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from pyro_vae.errors import ConfigError
from pyro_vae.registry import Registry

__all__ = ["NETWORKS", "ACTIVATIONS", "MLPEncoder", "MLPDecoder", "mlp"]

NETWORKS: Registry = Registry("network", context=("event_shape", "latent_dim"))

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
}


def _perceptron(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Fully connected encoder: flattened ``x`` → hidden layers → ``(loc, scale)``."""

    def __init__(self, event_shape: tuple[int, ...], latent_dim: int, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.net = _perceptron([math.prod(event_shape), *hidden, 2 * latent_dim], activation)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.net(x.flatten(-len(self.event_shape)))
        loc, raw_scale = h.chunk(2, dim=-1)
        # softplus keeps the scale positive and, unlike exp, grows linearly for large inputs.
        return loc, F.softplus(raw_scale) + 1e-6


class MLPDecoder(nn.Module):
    """Fully connected decoder: ``z`` → hidden layers → a tensor of shape ``(..., *event_shape)``."""

    def __init__(self, event_shape: tuple[int, ...], latent_dim: int, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.net = _perceptron([latent_dim, *hidden, math.prod(event_shape)], activation)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).unflatten(-1, self.event_shape)


@NETWORKS.register("mlp")
def mlp(
    event_shape: tuple[int, ...],
    latent_dim: int,
    hidden: tuple[int, ...] = (400,),
    activation: str = "relu",
) -> tuple[MLPEncoder, MLPDecoder]:
    """Multilayer perceptrons; the decoder mirrors the encoder's ``hidden`` sizes in reverse order.

    Args:
        hidden: sizes of the hidden layers of the encoder, e.g. ``[400, 400]``.
        activation: one of ``relu``, ``leaky_relu``, ``elu``, ``gelu``, ``silu``, ``softplus``, ``tanh``.
    """
    if activation not in ACTIVATIONS:
        raise ConfigError(f"model.network.activation: unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
    if any(h < 1 for h in hidden):
        raise ConfigError(f"model.network.hidden sizes must be >= 1 (got {list(hidden)})")
    return (
        MLPEncoder(event_shape, latent_dim, hidden, activation),
        MLPDecoder(event_shape, latent_dim, list(reversed(hidden)), activation),
    )
