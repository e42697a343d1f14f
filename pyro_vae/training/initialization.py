r"""How a new model's parameters start, beyond each layer's PyTorch default.

Two choices, both from the published code of *Importance Weighted Autoencoders* (Burda, Grosse &
Salakhutdinov, 2016), set in the config's ``[train]`` table and applied once, before the first
step of a new run (a resumed run continues from its checkpoint):

- ``weight_init = "glorot"``: every linear and convolutional layer of the program but its priors' gets
  the Glorot-uniform weights of *Understanding the difficulty of training deep feedforward neural
  networks* (Glorot & Bengio, 2010), :math:`W_{ij} \sim \mathcal U(-a, a)` with
  :math:`a = \sqrt{6 / (n_\text{in} + n_\text{out})}`, and zero biases (PyTorch's default draws
  from :math:`\mathcal U(-1/\sqrt{n_\text{in}}, 1/\sqrt{n_\text{in}})`, a narrower range for these
  layers). A layer is counted as the module it is: the encoder's last layer, which gives both the
  location and the scale, has :math:`n_\text{out} = 2 \cdot` ``latent_dim``. The prior's
  parameters (a VampPrior's pseudo-inputs, say) keep their own initialisation.
- ``output_bias_init = "data_mean"``: the bias of the decoder's last layer starts at the output
  whose :math:`p(x \mid z)` has the training data's mean (:meth:`Likelihood.output_for_mean
  <pyro_vae.models.likelihoods.Likelihood.output_for_mean>`), e.g. the logits of the mean training image
  for Bernoulli pixels, so that training does not spend its first steps learning the average image.

Example:
    >>> import torch
    >>> from pyro_vae.models.vae import make_vae
    >>> vae = make_vae((8, 8), 2)
    >>> initialize(vae, weight_init="glorot", output_bias_init="data_mean", train=torch.full((10, 8, 8), 0.25))
    >>> round(vae.decoder.net[-1].bias[0].item(), 4)  # logit(0.25)
    -1.0986
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from pyro_vae.errors import ConfigError
from pyro_vae.models.likelihoods import Likelihood
from pyro_vae.models.priors import Prior
from pyro_vae.registry import check_value

__all__ = ["WeightInit", "OutputBiasInit", "initialize", "glorot_", "output_bias_"]

#: The choices of ``train.weight_init``: PyTorch's defaults, or Glorot-uniform weights and zero biases.
WeightInit = Literal["default", "glorot"]
#: The choices of ``train.output_bias_init``: PyTorch's default, or at the training data's mean.
OutputBiasInit = Literal["default", "data_mean"]

_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def initialize(
    vae: nn.Module, weight_init: WeightInit = "default", output_bias_init: OutputBiasInit = "default", train=None
) -> None:
    """Set the starting parameters of ``vae``; ``train``, the training data, is needed for ``"data_mean"``."""
    check_value(weight_init, WeightInit, "weight_init")  # a config is checked already; a direct call here
    check_value(output_bias_init, OutputBiasInit, "output_bias_init")
    if weight_init == "glorot":
        glorot_(vae, skip=Prior)
    if output_bias_init == "data_mean":
        if train is None:
            message = "{output_bias_init}: 'data_mean' needs the training data; pass train="
            raise ConfigError(message, "output_bias_init")
        output_bias_(vae, train.float().mean(0))


def glorot_(module: nn.Module, skip: type | tuple[type, ...] = ()) -> None:
    """Glorot-uniform weights and zero biases in every linear and convolutional layer of ``module``.

    Layers inside a submodule of a ``skip`` type (a program's priors) keep their own initialisation, and so do
    frozen layers (weights that require no gradient, as M1 in :class:`~pyro_vae.models.stacked.M1M2`).
    """
    kept = {id(m) for owner in module.modules() if isinstance(owner, skip) for m in owner.modules()}
    for layer in module.modules():
        if isinstance(layer, _LAYERS) and id(layer) not in kept and layer.weight.requires_grad:
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def output_bias_(vae: nn.Module, mean: Tensor) -> None:
    """Start the decoder's last bias at the output whose likelihood has mean ``mean`` (one value per data dimension)."""
    if not isinstance(getattr(vae, "likelihood", None), Likelihood) or not isinstance(
        getattr(vae, "decoder", None), nn.Module
    ):
        raise ConfigError(
            f"{{output_bias_init}}: 'data_mean' sets the bias of a decoder's last layer from its likelihood, and "
            f"{type(vae).__name__} has no decoder and likelihood of pyro_vae's; use {{output_bias_init=}}'default'",
            "output_bias_init",
        )
    output = vae.likelihood.output_for_mean(mean)
    if output is None:
        raise ConfigError(
            f"{{output_bias_init}}: 'data_mean' is not available for the {type(vae.likelihood).__name__} "
            f"likelihood (its mean has no closed-form inverse); use {{output_bias_init=}}'default'",
            "output_bias_init",
        )
    layer = _output_layer(vae.decoder, math.prod(mean.shape))
    with torch.no_grad():
        layer.bias.copy_(output.reshape(layer.bias.shape))


def _output_layer(decoder: nn.Module, size: int) -> nn.Module:
    """The decoder's last layer, which must have one bias per data dimension (as ``mlp`` and ``gated_mlp`` do)."""
    layers = [m for m in decoder.modules() if isinstance(m, _LAYERS) and m.bias is not None]
    if not layers or layers[-1].bias.numel() != size:
        raise ConfigError(
            f"{{output_bias_init}}: 'data_mean' needs a decoder whose last layer has one bias per data dimension "
            f"({size}), but {type(decoder).__name__}'s does not (the mlp and gated_mlp networks' do); "
            f"use {{output_bias_init=}}'default'",
            "output_bias_init",
        )
    return layers[-1]
