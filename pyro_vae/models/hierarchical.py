r"""A VAE with several stochastic layers: the model top-down, the guide bottom-up.

With :math:`L` layers of latent variables the generative model is

.. math:: p(z_L)\,p(z_{L-1} \mid z_L) \cdots p(z_1 \mid z_2)\,p(x \mid z_1),

and the guide :math:`q(z_1 \mid x)\,q(z_2 \mid z_1) \cdots q(z_L \mid z_{L-1})`. Each conditional between two
layers is a diagonal Gaussian whose location and scale come from an MLP; the top prior :math:`p(z_L)` comes from
:data:`~pyro_vae.models.priors.PRIORS` and :math:`p(x \mid z_1)` from
:data:`~pyro_vae.models.likelihoods.LIKELIHOODS`. Sites are named per layer, ``z1`` .. ``zL``, and ``x``.

The defaults are the two-layer architecture of Burda et al. (appendix C, and ``hidden_units_q`` in the authors'
code): x → 200 → 200 → z1 (100) → 100 → 100 → z2 (50), mirrored in the model, tanh between layers.

The guide draws :math:`z_1` before :math:`z_2`, while the model's :math:`p(z_1 \mid z_2)` depends on
:math:`z_2`: the analytic estimator takes the closed-form KL of the top layer only and samples the others
(:func:`~pyro_vae.infer.program.closed_form_sites`).

Reference:
    Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, 2016), section 5 and appendix.

Example:
    >>> program = Hierarchical((8, 8), latent_dims=(4, 2), hidden=((16,), (8,)))
    >>> [layer.net[-1].out_features for layer in program.encoders]  # loc and scale of z1, z2
    [8, 4]
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any

import pyro
import pyro.distributions as dist
from torch import Tensor, nn

from pyro_vae.errors import ConfigError
from pyro_vae.models.fused import Draw, gaussian, held_call
from pyro_vae.models.likelihoods import LIKELIHOODS
from pyro_vae.models.networks import Activation, MLPDecoder, MLPEncoder, _loc_scale
from pyro_vae.models.priors import PRIORS
from pyro_vae.registry import AtLeast

__all__ = ["Hierarchical"]

_instances = itertools.count()

Dims = tuple[Annotated[int, AtLeast(1)], ...]


class _Top(nn.Module):
    """The guide's path from x to the top layer through each layer's mean: what a VampPrior encodes its
    pseudo-inputs with (held apart from the module tree, as the VampPrior holds the VAE's encoder)."""

    def __init__(self, encoders: nn.ModuleList) -> None:
        super().__init__()
        self._encoders = (encoders,)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x
        for encoder in self._encoders[0]:
            loc, scale = encoder(h)
            h = loc
        return loc, scale


class Hierarchical(nn.Module):
    """Stochastic layers z1 .. zL: the model top-down, the guide bottom-up (Burda et al.'s two layers by default).

    Args:
        event_shape: the shape of one data point.
        latent_dims: the size of each layer, bottom (nearest x) first.
        hidden: for each layer, the sizes of the hidden layers of the MLP from the layer below (x for the
            first) to it in the guide; the model's MLP back down mirrors them.
        activation: the nonlinearity between hidden layers.
        prior: the top layer's prior, a :data:`~pyro_vae.models.priors.PRIORS` table (``model.prior``).
        likelihood: :math:`p(x \\mid z_1)`, a :data:`~pyro_vae.models.likelihoods.LIKELIHOODS` table.
    """

    def __init__(
        self,
        event_shape: tuple[int, ...],
        latent_dims: Dims = (100, 50),
        hidden: tuple[Dims, ...] = ((200, 200), (100, 100)),
        activation: Activation = "tanh",
        prior: dict[str, Any] | None = None,
        likelihood: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(hidden) != len(latent_dims):
            raise ConfigError(
                f"model.hidden has {len(hidden)} lists of layer sizes for {len(latent_dims)} stochastic layers "
                "(model.latent_dims); give one list per stochastic layer"
            )
        event_shape, dims = tuple(event_shape), list(latent_dims)
        inputs = [event_shape] + [(d,) for d in dims[:-1]]
        self.encoders = nn.ModuleList(
            MLPEncoder(shape, d, list(h), activation) for shape, d, h in zip(inputs, dims, hidden)
        )
        outputs = [event_shape] + [(2 * d,) for d in dims[:-1]]  # x's likelihood input, or a layer's loc and scale
        self.decoders = nn.ModuleList(
            MLPDecoder(shape, d, list(reversed(h)), activation) for shape, d, h in zip(outputs, dims, hidden)
        )
        self.prior = PRIORS.build(
            prior or {"type": "standard_normal"},
            "model.prior",
            latent_dim=dims[-1],
            encoder=_Top(self.encoders),
            event_shape=event_shape,
        )
        self.likelihood = LIKELIHOODS.build(
            likelihood or {"type": "bernoulli"}, "model.likelihood", event_shape=event_shape
        )
        self.event_shape = event_shape
        self._pyro_name = f"hierarchical{next(_instances)}"  # one param-store namespace per instance

    @property
    def decoder(self) -> nn.Module:
        """The MLP from :math:`z_1` to the likelihood's input (whose output bias ``data_mean`` sets)."""
        return self.decoders[0]

    def model(self, x: Tensor) -> None:
        r"""The generative model, top-down: sites ``zL`` .. ``z1``, then ``x`` observed."""
        pyro.module(self._pyro_name, self)
        layers = len(self.encoders)
        with pyro.plate("data", len(x), dim=-1):
            z = pyro.sample(f"z{layers}", self.prior())
            for layer in range(layers - 1, 0, -1):
                z = pyro.sample(f"z{layer}", gaussian(*_loc_scale(self.decoders[layer](z))))
            pyro.sample("x", self.likelihood(self.decoders[0](z)), obs=x)

    def guide(self, x: Tensor) -> None:
        r"""The guide, bottom-up: ``z1`` from x, then each layer from the one below."""
        pyro.module(self._pyro_name, self)
        with pyro.plate("data", len(x), dim=-1):
            h = x
            for layer, encoder in enumerate(self.encoders, 1):
                h = pyro.sample(f"z{layer}", gaussian(*encoder(h)))

    # --- the fused form (pyro_vae.models.fused): the same program as plain tensor code ---

    @property
    def fused_exact(self) -> tuple[bool, ...]:
        """Only the top layer's closed-form KL is exact: each lower layer's prior depends on the draw above it,
        which the bottom-up guide makes later."""
        return (False,) * (len(self.encoders) - 1) + (True,)

    def fused_guide(self, x: Tensor, num_particles: int) -> list[Draw]:
        """The guide's draws, bottom-up, as :meth:`guide` makes them: the particles enter at ``z1``."""
        draws, h = [], x
        for layer, encoder in enumerate(self.encoders):
            loc, scale = encoder(h)
            h = gaussian(loc, scale).rsample((num_particles,) if layer == 0 and num_particles > 1 else ())
            draws.append(Draw(loc, scale, h))
        return draws

    def fused_model(self, zs: list[Tensor]) -> tuple[list[dist.TorchDistribution], Tensor]:
        """The top prior, each lower layer's :math:`p(z_l \\mid z_{l+1})` at ``zs``, and the likelihood's input."""
        priors = [gaussian(*_loc_scale(decoder(z))) for decoder, z in zip(self.decoders[1:], zs[1:])]
        return priors + [self.prior()], self.decoders[0](zs[0])

    def fused_held_guide(self, x: Tensor, draws: list[Draw], zs: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Each layer's guide parameters with the encoders' parameters held fixed, at the layer below's value in
        ``zs``: the dependence on the draw below stays (:func:`~pyro_vae.models.fused.held_call`)."""
        first = (draws[0].loc.detach(), draws[0].scale.detach())
        return [first] + [held_call(encoder, z) for encoder, z in zip(self.encoders[1:], zs)]
