"""Every registered network on the digits' and MNIST's image shapes."""

import pytest
import torch

from pyro_vae import NETWORKS
from pyro_vae.errors import ConfigError
from pyro_vae.models.networks import GatedLinear

SPECS = [{"type": name} for name in NETWORKS] + [
    {"type": "mlp", "hidden": [16, 8], "activation": "tanh"},
    {"type": "conv", "channels": [8], "activation": "elu"},
    {"type": "conv", "channels": [4, 8, 8]},
]
IDS = [",".join(f"{k}={v}" for k, v in spec.items()) for spec in SPECS]


@pytest.mark.parametrize("event_shape", [(8, 8), (28, 28), (1, 9, 7)])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_shapes_with_particle_dimensions(spec, event_shape):
    encoder, decoder = NETWORKS.build(spec, event_shape=event_shape, latent_dim=3)
    x = torch.rand(2, 5, *event_shape)
    loc, scale = encoder(x)
    assert loc.shape == scale.shape == (2, 5, 3) and (scale > 0).all()
    assert decoder(loc).shape == (2, 5, *event_shape)
    assert encoder(x[0, 0])[0].shape == (3,)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_gradients_reach_every_parameter(spec):
    encoder, decoder = NETWORKS.build(spec, event_shape=(8, 8), latent_dim=3)
    loc, scale = encoder(torch.rand(4, 8, 8))
    decoder(loc + scale).sum().backward()
    for module in (encoder, decoder):
        for name, param in module.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_conv_needs_images():
    with pytest.raises(
        ConfigError, match=r"the conv network needs images of shape \(H, W\) or \(C, H, W\).*use the mlp network"
    ):
        NETWORKS.build({"type": "conv"}, event_shape=(64,), latent_dim=2)


def test_a_gated_layer_is_a_linear_map_times_the_sigmoid_of_another():
    layer, x = GatedLinear(5, 3), torch.randn(4, 5)
    w, v = layer.linear.weight.split(3), layer.linear.bias.split(3)
    expected = (x @ w[0].T + v[0]) * torch.sigmoid(x @ w[1].T + v[1])
    torch.testing.assert_close(layer(x), expected)
