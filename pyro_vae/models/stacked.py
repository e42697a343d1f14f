r"""Kingma et al.'s stacked semi-supervised model (M1 + M2): M2 on the latent code of a trained VAE, M1.

.. math:: p(x, y, z_1, z_2) = \mathrm{Cat}(y \mid \pi)\,\mathcal N(z_2 \mid 0, I)\,
    \mathcal N\big(z_1 \mid \mu(y, z_2), \operatorname{diag}\sigma^2(y, z_2)\big)\,p_1(x \mid z_1),

.. math:: q(z_1, y, z_2 \mid x) = q_1(z_1 \mid x)\,q(y \mid \mu_1(x))\,q(z_2 \mid z_1, y).

M1 (:math:`q_1(z_1 \mid x)` and :math:`p_1(x \mid z_1)`) is a VAE trained first, without labels, and held fixed:
its networks are called without gradients and are not Pyro parameters. Training the whole program then trains
M2 on draws of :math:`z_1 \sim q_1(z_1 \mid x)`, a fresh one each step, with :math:`p(z_1 \mid y, z_2)` a
diagonal Normal in place of M2's pixel likelihood, as Kingma et al. trained it; and every tool sees one program
of ``x``: its ELBO and :math:`\log p(x)` have ``y`` summed out by enumeration and :math:`z_1, z_2` importance
sampled. The classifier :math:`q(y \mid x)` reads :math:`\mu_1(x)`, the mean of :math:`q_1(z_1 \mid x)`,
rather than the draw :math:`z_1` (both are guides; at 100 MNIST labels the mean learned faster in trials), so
:meth:`M1M2.classify` is the guide's own :math:`q(y \mid x)`.

In a config, ``model.features`` names M1's run folder (relative to where the command runs); the run records
it relative to its own folder, so that the two move together, and loading the run rebuilds M1 from that
folder's configuration (the run's checkpoint holds M1's weights too). ``train.beta`` and a KL warm-up weigh
every latent site, :math:`z_1` with them: M2's fit of :math:`z_1` is inside that site's term, so train with
:math:`\beta = 1`.

Reference:
    Semi-supervised Learning with Deep Generative Models (Kingma, Rezende, Mohamed & Welling, 2014), section 3.1.3.

Example:
    >>> import torch
    >>> from pyro_vae.models.vae import make_vae
    >>> m1 = make_vae((8, 8), latent_dim=6, network={"type": "mlp", "hidden": [32]})
    >>> stacked = M1M2(m1, num_classes=10, latent_dim=4, hidden=(32,))
    >>> stacked.classify(torch.rand(5, 8, 8)).shape
    torch.Size([5, 10])
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Annotated, Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from pyro_vae.errors import ConfigError
from pyro_vae.models.cvae import one_hot_beside
from pyro_vae.models.fused import enumerated_label, gaussian, label_elbo
from pyro_vae.models.networks import Activation, MLPEncoder, Sizes, _perceptron
from pyro_vae.registry import RunFolder

__all__ = ["M1M2", "make_m1m2"]

_instances = itertools.count()


class M1M2(nn.Module):
    """M2 on the code :math:`z_1` of a fixed VAE ``m1``: a classifier :math:`q(y\\mid \\mu_1(x))`, an encoder
    :math:`q(z_2\\mid z_1, y)` and a Gaussian :math:`p(z_1\\mid y, z_2)`, MLPs with the one-hot label beside
    their input.

    Args:
        m1: a trained VAE with ``encode(x)`` (:math:`q_1(z_1\\mid x)`, event shape ``(d,)``), ``decode(z1)``
            (:math:`p_1(x\\mid z_1)`), ``latent_dim`` and ``event_shape``; it is frozen in place (its parameters
            no longer require gradients) and kept in evaluation mode.
        num_classes: the number of values of ``y``.
        latent_dim: the size of :math:`z_2`.
        hidden: the hidden layers of each of M2's three networks (Kingma et al.: one of 500).
        activation: the nonlinearity between layers (Kingma et al.: softplus).
        alpha: the weight of :math:`-\\log q(y\\mid x)` per labelled point, beside its ELBO (as
            :class:`~pyro_vae.models.ssvae.SSVAE`'s).
    """

    def __init__(
        self,
        m1: nn.Module,
        num_classes: int = 10,
        latent_dim: int = 50,
        hidden: Sizes = (500,),
        activation: Activation = "softplus",
        alpha: float = 50.0,
    ) -> None:
        super().__init__()
        self.m1 = m1.requires_grad_(False).eval()
        self.event_shape, self.num_classes, self.latent_dim = tuple(m1.event_shape), num_classes, latent_dim
        self.alpha, code = alpha, m1.latent_dim
        self.classifier = _perceptron([code, *hidden, num_classes], activation)
        self.encoder = MLPEncoder((code + num_classes,), latent_dim, hidden, activation)
        self.decoder = MLPEncoder((latent_dim + num_classes,), code, list(reversed(hidden)), activation)
        self._pyro_name = f"m1m2{next(_instances)}"

    def train(self, mode: bool = True) -> M1M2:
        """Train or evaluate M2; M1 stays in evaluation mode."""
        super().train(mode)
        self.m1.eval()
        return self

    def _m2(self) -> None:
        for name in ("classifier", "encoder", "decoder"):  # M1 is no Pyro parameter: it stays as trained
            pyro.module(f"{self._pyro_name}.{name}", getattr(self, name))

    def _q1(self, x: Tensor) -> dist.TorchDistribution:
        with torch.no_grad():
            return self.m1.encode(x)

    def classify(self, x: Tensor) -> Tensor:
        """The logits of :math:`q(y\\mid x)`, the classifier at the mean of :math:`q_1(z_1\\mid x)`, shape
        ``(batch, classes)``."""
        return self.classifier(self._q1(x).mean)

    def model(self, x: Tensor, y: Tensor | None = None) -> None:
        """y and z2 from their priors, z1 given both, x given z1 (M1's decoder); y observed where given."""
        self._m2()
        with pyro.plate("data", len(x), dim=-1):
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(self.num_classes)), obs=y)
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            loc, scale = self.decoder(one_hot_beside(z2, y, self.num_classes))
            z1 = pyro.sample("z1", dist.Normal(loc, scale).to_event(1))
            with torch.no_grad():
                likelihood = self.m1.decode(z1)
            pyro.sample("x", likelihood, obs=x)

    def guide(self, x: Tensor, y: Tensor | None = None) -> None:
        """z1 from M1's encoder, y from the classifier at its mean where not given (enumerated), z2 from z1 and y."""
        self._m2()
        with pyro.plate("data", len(x), dim=-1):
            q1 = self._q1(x)
            z1 = pyro.sample("z1", q1)
            if y is None:
                q_y = dist.Categorical(logits=self.classifier(q1.mean))
                y = pyro.sample("y", q_y, infer={"enumerate": "parallel"})
            loc, scale = self.encoder(one_hot_beside(z1, y, self.num_classes))
            pyro.sample("z2", dist.Normal(loc, scale).to_event(1))

    def fused_elbo(self, x: Tensor, y: Tensor | None = None, num_particles: int = 1, beta: float = 1.0) -> Tensor:
        """The ELBO of the batch, summed over its points and ``num_particles`` draws, as plain tensor code: z1
        drawn first, then (where ``y`` is ``None``) every class at once with its z2, as
        :meth:`SSVAE.fused_elbo <pyro_vae.models.ssvae.SSVAE.fused_elbo>` does; the value and gradient of
        ``TraceEnum_ELBO`` on the same draws (the tests hold it there)."""
        particles = (num_particles,) if num_particles > 1 else ()
        q1 = self._q1(x)
        z1 = q1.expand(torch.broadcast_shapes(q1.batch_shape, (*particles, len(x)))).rsample()
        with torch.no_grad():
            log_px, log_q1 = self.m1.decode(z1).log_prob(x), q1.log_prob(z1)
        log_q_y = None
        if y is None:
            log_q_y, y = enumerated_label(self.classify(x), num_particles)
        q2 = gaussian(*self.encoder(one_hot_beside(z1, y, self.num_classes)))
        z2 = q2.rsample()
        p1 = gaussian(*self.decoder(one_hot_beside(z2, y, self.num_classes)))
        p2 = dist.Normal(torch.zeros_like(z2), 1.0, validate_args=False).to_event(1)
        latent = p1.log_prob(z1) - log_q1 + p2.log_prob(z2) - q2.log_prob(z2)
        return label_elbo(log_px, latent, log_q_y, self.num_classes, beta)

    def auxiliary_loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """:math:`-\\alpha \\sum_n \\log q(y_n\\mid x_n)` over the labelled points of a batch (0 without labels)."""
        if y is None or not self.alpha:
            return x.new_zeros(())
        return -self.alpha * dist.Categorical(logits=self.classify(x)).log_prob(y).sum()


def make_m1m2(
    event_shape: tuple[int, ...],
    features: Annotated[str, RunFolder()],
    load_run: Callable[[str], nn.Module] | None = None,
    num_classes: int = 10,
    latent_dim: int = 50,
    hidden: Sizes = (500,),
    activation: Activation = "softplus",
    alpha: float = 50.0,
) -> M1M2:
    """M1 + M2: M2 on the code of the trained VAE in the run folder ``features``, held fixed.

    ``features`` is ``model.features``, which the library loads with ``load_run``; the data's points must be
    those M1 was trained on. See :class:`M1M2`.
    """
    if load_run is None:
        raise ConfigError("model.features: M1 + M2 is built from a config; in Python, give M1M2 the trained VAE")
    m1: Any = load_run(features)
    for method in ("encode", "decode"):
        if not callable(getattr(m1, method, None)):
            raise ConfigError(
                f"model.features = {features!r} holds a {type(m1).__name__} program, without {method}; "
                "name the run of a VAE (model.type = 'vae')"
            )
    if tuple(m1.event_shape) != tuple(event_shape):
        raise ConfigError(
            f"model.features = {features!r} was trained on points of shape {tuple(m1.event_shape)}, these are "
            f"{tuple(event_shape)}; train M1 on the same data"
        )
    return M1M2(m1, num_classes, latent_dim, hidden, activation, alpha)
