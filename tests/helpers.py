"""Small models and data shared by the tests."""

import torch

from pyro_vae import make_vae

EVENT_SHAPE = (4, 4)


def tiny_vae(latent_dim: int = 2, hidden=(8,), double: bool = True):
    vae = make_vae(EVENT_SHAPE, latent_dim, network={"type": "mlp", "hidden": list(hidden)})
    return vae.double() if double else vae


def tiny_batch(n: int = 6, double: bool = True):
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(n, *EVENT_SHAPE, generator=generator)
    return x.double() if double else x
