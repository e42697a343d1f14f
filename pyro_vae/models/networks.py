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
from collections.abc import Sequence
from typing import Annotated, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from pyro_vae.errors import ConfigError
from pyro_vae.registry import AtLeast, Registry

__all__ = [
    "NETWORKS",
    "ACTIVATIONS",
    "MLPEncoder",
    "MLPDecoder",
    "GatedLinear",
    "GatedMLPEncoder",
    "GatedMLPDecoder",
    "ConvEncoder",
    "ConvDecoder",
    "mlp",
    "gated_mlp",
    "conv",
]

NETWORKS: Registry = Registry("network", context=("event_shape", "latent_dim"), group="pyro_vae.networks")

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


Activation = Literal["relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "tanh"]
Sizes = tuple[Annotated[int, AtLeast(1)], ...]


def _loc_scale(h: Tensor) -> tuple[Tensor, Tensor]:
    """Split the encoder's last layer into the guide's location and a positive scale."""
    loc, raw_scale = h.chunk(2, dim=-1)
    # softplus keeps the scale positive and, unlike exp, grows linearly for large inputs.
    return loc, F.softplus(raw_scale) + 1e-6


class MLPEncoder(nn.Module):
    """Fully connected encoder: flattened ``x`` → hidden layers → ``(loc, scale)``."""

    def __init__(self, event_shape: tuple[int, ...], latent_dim: int, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.net = _perceptron([math.prod(event_shape), *hidden, 2 * latent_dim], activation)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.net(x.flatten(-len(self.event_shape)))
        return _loc_scale(h)


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
    hidden: Sizes = (400,),
    activation: Activation = "relu",
) -> tuple[MLPEncoder, MLPDecoder]:
    """Multilayer perceptrons; the decoder mirrors the encoder's hidden sizes in reverse order.

    Args:
        hidden: sizes of the hidden layers of the encoder, e.g. ``[400, 400]``.
        activation: the nonlinearity between layers.
    """
    return (
        MLPEncoder(event_shape, latent_dim, hidden, activation),
        MLPDecoder(event_shape, latent_dim, list(reversed(hidden)), activation),
    )


def _image_layout(event_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(channels, height, width)`` of image data given as ``(H, W)`` or ``(C, H, W)``."""
    if len(event_shape) == 2:
        return (1, *event_shape)
    if len(event_shape) == 3:
        return event_shape  # type: ignore[return-value]
    raise ConfigError(
        f"model.network: the conv network needs images of shape (H, W) or (C, H, W), "
        f"but the data points have shape {event_shape}; use the mlp network"
    )


class ConvEncoder(nn.Module):
    """Strided 3×3 convolutions (each halves height and width), then a linear layer to ``(loc, scale)``."""

    def __init__(self, event_shape: tuple[int, ...], latent_dim: int, channels: Sequence[int], activation: str) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        c, h, w = _image_layout(self.event_shape)
        layers: list[nn.Module] = []
        for c_in, c_out in zip([c, *channels[:-1]], channels):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), ACTIVATIONS[activation]()]
            h, w = (h + 1) // 2, (w + 1) // 2
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(channels[-1] * h * w, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        batch = x.shape[: x.dim() - len(self.event_shape)]
        images = x.reshape(-1, *_image_layout(self.event_shape))
        return _loc_scale(self.head(self.conv(images)).reshape(*batch, -1))


class ConvDecoder(nn.Module):
    """A linear layer to a small feature map, then transposed convolutions that double it back to the image size."""

    def __init__(self, event_shape: tuple[int, ...], latent_dim: int, channels: Sequence[int], activation: str) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        c, h, w = _image_layout(self.event_shape)
        sizes = [(h, w)]
        for _ in channels:
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        self.start = (channels[-1], *sizes[-1])
        self.head = nn.Linear(latent_dim, math.prod(self.start))
        layers: list[nn.Module] = []
        outs = [*reversed(channels[:-1]), c]
        for i, (c_in, c_out) in enumerate(zip(reversed(channels), outs)):
            (h_in, w_in), (h_out, w_out) = sizes[-1 - i], sizes[-2 - i]
            # output_padding picks the exact size: 2n or 2n - 1 (an odd size was rounded up on the way down).
            padding = (h_out - 2 * h_in + 1, w_out - 2 * w_in + 1)
            layers += [
                ACTIVATIONS[activation](),
                nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=padding),
            ]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        batch = z.shape[:-1]
        out = self.deconv(self.head(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start))
        return out.reshape(*batch, *self.event_shape)


@NETWORKS.register("conv")
def conv(
    event_shape: tuple[int, ...],
    latent_dim: int,
    channels: Sizes = (32, 64),
    activation: Activation = "relu",
) -> tuple[ConvEncoder, ConvDecoder]:
    """A small convolutional encoder/decoder for images of shape (H, W) or (C, H, W).

    Each of the encoder's layers is a 3×3 convolution with stride 2 (8×8 → 4×4 → 2×2 for the
    digits, 28×28 → 14×14 → 7×7 for MNIST); the decoder mirrors it with transposed convolutions.

    Args:
        channels: output channels of the encoder's convolutions, e.g. ``[32, 64]``.
        activation: the nonlinearity between layers.
    """
    if not channels:
        raise ConfigError("model.network.channels must list at least one layer (got [])")
    return (
        ConvEncoder(event_shape, latent_dim, channels, activation),
        ConvDecoder(event_shape, latent_dim, channels, activation),
    )


class GatedLinear(nn.Module):
    r"""A gated dense layer, :math:`h = (Wx + b) \odot \sigma(Vx + c)`, as one linear map to both halves.

    Reference:
        Language Modeling with Gated Convolutional Networks (Dauphin et al., 2017).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * out_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.glu(self.linear(x), dim=-1)  # the first half times the sigmoid of the second


def _gated_perceptron(sizes: Sequence[int]) -> nn.Sequential:
    """Gated layers to each hidden size, then a plain linear layer to the last size."""
    layers: list[nn.Module] = [GatedLinear(n_in, n_out) for n_in, n_out in zip(sizes[:-2], sizes[1:-1])]
    return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))


class GatedMLPEncoder(MLPEncoder):
    """:class:`MLPEncoder` with gated hidden layers (:class:`GatedLinear`)."""

    def __init__(self, event_shape: tuple[int, ...], latent_dim: int, hidden: Sequence[int]) -> None:
        nn.Module.__init__(self)
        self.event_shape = tuple(event_shape)
        self.net = _gated_perceptron([math.prod(event_shape), *hidden, 2 * latent_dim])


class GatedMLPDecoder(MLPDecoder):
    """:class:`MLPDecoder` with gated hidden layers (:class:`GatedLinear`)."""

    def __init__(self, event_shape: tuple[int, ...], latent_dim: int, hidden: Sequence[int]) -> None:
        nn.Module.__init__(self)
        self.event_shape = tuple(event_shape)
        self.net = _gated_perceptron([latent_dim, *hidden, math.prod(event_shape)])


@NETWORKS.register("gated_mlp")
def gated_mlp(
    event_shape: tuple[int, ...], latent_dim: int, hidden: Sizes = (300, 300)
) -> tuple[GatedMLPEncoder, GatedMLPDecoder]:
    r"""Perceptrons of gated layers, :math:`h = (Wx + b) \odot \sigma(Vx + c)`: the VampPrior paper's networks.

    Two gated layers of 300 units each way by default; the encoder's last layer gives the guide's
    location and, through a softplus, its scale (the paper's encoder has a hard-tanh log-variance).

    Args:
        hidden: sizes of the encoder's gated layers; the decoder mirrors them.

    Reference:
        VAE with a VampPrior (Tomczak & Welling, 2018).
    """
    return (
        GatedMLPEncoder(event_shape, latent_dim, hidden),
        GatedMLPDecoder(event_shape, latent_dim, list(reversed(hidden))),
    )
