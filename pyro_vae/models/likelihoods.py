r"""Likelihoods :math:`p(x \mid z)`: the decoder's output turned into a distribution over data.

A likelihood is a small :class:`torch.nn.Module` whose ``forward(output)`` takes the decoder
network's output, of shape ``(..., *event_shape)``, and returns a distribution whose event covers
all data dimensions. It declares the ``support`` that data must lie in, checked when a data set
is loaded. Register a new one with ``@LIKELIHOODS.register("name")``; its constructor takes
``event_shape`` plus the parameters a config may set.

Example:
    >>> import torch
    >>> likelihood = LIKELIHOODS.build({"type": "bernoulli"}, event_shape=(8, 8))
    >>> likelihood(torch.zeros(5, 8, 8)).log_prob(torch.ones(5, 8, 8)).shape
    torch.Size([5])
"""

from __future__ import annotations

from typing import Annotated, Literal

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import Tensor, nn

from pyro_vae.models.continuous_bernoulli import StableContinuousBernoulli, continuous_bernoulli_log_norm
from pyro_vae.models.scale import Scale
from pyro_vae.registry import AtLeast, Registry

__all__ = [
    "LIKELIHOODS",
    "Likelihood",
    "Bernoulli",
    "Gaussian",
    "ContinuousBernoulli",
]

LIKELIHOODS: Registry = Registry("likelihood", context=("event_shape",), group="pyro_vae.likelihoods")


class Likelihood(nn.Module):
    """Base class: maps decoder output to :math:`p(x \\mid z)` with event shape ``event_shape``."""

    #: Values the data must take; checked once when the data are loaded.
    support: constraints.Constraint = constraints.real
    #: Human-readable form of ``support`` for messages and listings.
    support_text: str = "any real number"

    def __init__(self, event_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)

    def forward(self, output: Tensor) -> dist.TorchDistribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def total_log_prob(self, output: Tensor, x: Tensor) -> Tensor:
        r""":math:`\sum \log p(x \mid z)` over every data point and particle of ``output`` (the fused ELBO's term).

        The same value as ``self(output).log_prob(x).sum()``; a likelihood may compute it with fewer
        operations (the fused path's tests hold every entry to Pyro's value and gradient).
        """
        return self(output).log_prob(x).sum()

    def density_note(self, x: Tensor) -> str | None:
        """One line saying why the ELBO and log p(x) of ``x`` are not those of a density of the data, or ``None``."""
        return None

    def output_for_mean(self, mean: Tensor) -> Tensor | None:
        """The decoder output whose distribution has mean ``mean``; ``None`` where there is no closed form.

        Used to start the decoder's last bias at the training data's mean (``train.output_bias_init``).
        """
        return None


@LIKELIHOODS.register("bernoulli")
class Bernoulli(Likelihood):
    r"""Independent Bernoulli pixels with logits from the decoder (the binary cross-entropy loss).

    .. math:: \log p(x\mid z) = \sum_i x_i \log\pi_i + (1-x_i)\log(1-\pi_i)

    The decoder output are the logits of :math:`\pi`. For binary data this is a normalised
    likelihood. For grey values in :math:`[0, 1]` it is the binary cross-entropy loss that most VAE
    code uses, which is not a normalised density of continuous data: binarize the data
    (``binarize = "static"`` or ``"dynamic"``) to report true log-likelihoods, or use
    ``continuous_bernoulli``.
    """

    support = constraints.unit_interval
    support_text = "[0, 1]"

    def forward(self, output: Tensor) -> dist.TorchDistribution:
        # validate_args=False: grey values in [0, 1] are accepted on purpose (see the docstring).
        return dist.Bernoulli(logits=output, validate_args=False).to_event(len(self.event_shape))

    def total_log_prob(self, output: Tensor, x: Tensor) -> Tensor:
        # One fused kernel with its sum, as torch's Bernoulli.log_prob computes each term (no per-pixel buffer).
        target = x if x.shape == output.shape else x.expand_as(output)
        return -F.binary_cross_entropy_with_logits(output, target, reduction="sum")

    def density_note(self, x: Tensor) -> str | None:
        if bool(((x != 0) & (x != 1)).any()):
            return (
                "the Bernoulli likelihood of grey values (not 0 or 1) is not a density on [0, 1], so these ELBOs and "
                "log p(x) are not log-densities of the data: binarize it (--binarize dynamic) or use "
                "--set model.likelihood.type=continuous_bernoulli"
            )
        return None

    def output_for_mean(self, mean: Tensor) -> Tensor:
        # logits of the mean clamped to [0.001, 0.999], as Burda et al.'s code: pixels never on get a finite bias
        return torch.logit(mean, eps=1e-3)


@LIKELIHOODS.register("gaussian")
class Gaussian(Likelihood):
    r"""Independent Gaussian pixels around the decoder output; fixed scale 1 is the MSE loss.

    .. math:: \log p(x \mid z) = -\frac12\Big[k \log 2\pi + \sum_i \Big(2\log\sigma_i
        + \frac{(x_i - \mu_i)^2}{\sigma_i^2}\Big)\Big]

    With ``scale = 1`` and ``learn_scale = "none"`` this is
    :math:`-\tfrac12[k\log 2\pi + \|x-\mu\|^2]`: the mean-squared-error loss up to a constant.

    Args:
        scale: the fixed :math:`\sigma`, or its initial value when learned.
        learn_scale: ``"none"`` (fixed), ``"global"`` (one learned :math:`\sigma`) or
            ``"per_pixel"`` (one learned :math:`\sigma_i` per data dimension).
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        scale: Annotated[float, AtLeast(0, strict=True)] = 1.0,
        learn_scale: Literal["none", "global", "per_pixel"] = "none",
    ) -> None:
        super().__init__(event_shape)
        shape = self.event_shape if learn_scale == "per_pixel" else ()
        self.scale = Scale(scale, shape, learnable=learn_scale != "none")

    def forward(self, output: Tensor) -> dist.TorchDistribution:
        return dist.Normal(output, self.scale().expand(output.shape)).to_event(len(self.event_shape))

    def output_for_mean(self, mean: Tensor) -> Tensor:
        return mean


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulli(Likelihood):
    r"""Continuous Bernoulli: a normalised density on [0, 1] for grey-valued pixels.

    .. math:: p(x \mid \lambda) = C(\lambda)\, p^x (1-p)^{1-x}, \qquad p = \sigma(\lambda), \qquad
        C(\lambda) = \frac{2\tanh^{-1}(1-2p)}{1-2p} = \frac{\lambda}{\tanh(\lambda/2)}

    The decoder output are the logits :math:`\lambda`. The mean is not :math:`p`, so reconstructions
    and samples show the distribution's mean. The distribution is :class:`StableContinuousBernoulli`,
    which computes :math:`\log C` from the logit: torch's takes it from clamped probabilities, and in
    float32 its density integrates to 0.94 at logits ±17 and 0.40 at ±40.

    Reference:
        The continuous Bernoulli: fixing a pervasive error in variational autoencoders
        (Loaiza-Ganem & Cunningham, 2019).
    """

    support = constraints.unit_interval
    support_text = "[0, 1]"

    def forward(self, output: Tensor) -> dist.TorchDistribution:
        return StableContinuousBernoulli(logits=output).to_event(len(self.event_shape))

    def total_log_prob(self, output: Tensor, x: Tensor) -> Tensor:
        # log C depends on the logit alone, so it is summed once over the output, as is the cross-entropy.
        target = x if x.shape == output.shape else x.expand_as(output)
        cross_entropy = F.binary_cross_entropy_with_logits(output, target, reduction="sum")
        return continuous_bernoulli_log_norm(output).sum() - cross_entropy
