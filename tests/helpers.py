"""Small models and data shared by the tests."""

import functools
from pathlib import Path

import torch

from pyro_vae import make_vae
from pyro_vae.models.hierarchical import Hierarchical
from pyro_vae.models.ssvae import SSVAE
from pyro_vae.models.stacked import M1M2

EVENT_SHAPE = (4, 4)
ROOT = Path(__file__).resolve().parents[1]


def site_pages() -> list[Path]:
    """The Markdown pages of the documentation site, docs/**/*.md (not those of a build under docs/_build)."""
    return [page for page in sorted((ROOT / "docs").rglob("*.md")) if "_build" not in page.parts]


def tiny_vae(latent_dim: int = 2, hidden=(8,), double: bool = True, prior=None, likelihood=None):
    vae = make_vae(
        EVENT_SHAPE, latent_dim, network={"type": "mlp", "hidden": list(hidden)}, prior=prior, likelihood=likelihood
    )
    return vae.double() if double else vae


def tiny_hierarchical(latent_dims=(3, 2), hidden=((8,), (4,)), double: bool = True, prior=None, likelihood=None):
    """A small :class:`~pyro_vae.models.hierarchical.Hierarchical` (two layers by default) on the tiny images."""
    program = Hierarchical(EVENT_SHAPE, latent_dims, hidden, prior=prior, likelihood=likelihood)
    return program.double() if double else program


#: The programs that declare a fused form, small: each fused-equals-reference test runs on every one.
FUSED = {
    "vae": tiny_vae,
    "hierarchical": tiny_hierarchical,
    "hierarchical-3": functools.partial(tiny_hierarchical, latent_dims=(3, 2, 2), hidden=((8,), (4,), (4,))),
}


def tiny_batch(n: int = 6, double: bool = True):
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(n, *EVENT_SHAPE, generator=generator)
    return x.double() if double else x


def numerical_kl_from_normal(loc_q: float, scale_q: float, p) -> float:
    """KL(N(loc_q, scale_q²) ‖ p) = ∫ q log(q/p) dz by the trapezoid rule over ±40 standard deviations of q.

    Substituting z = loc_q + scale_q·u keeps the grid resolved whatever the scale; log q and log p
    are evaluated pointwise from the densities (``p`` is any univariate torch distribution),
    independently of any closed form.
    """
    u = torch.linspace(-40.0, 40.0, 160_001, dtype=torch.float64)
    z = loc_q + scale_q * u
    q = torch.distributions.Normal(torch.tensor(loc_q, dtype=torch.float64), torch.tensor(scale_q, dtype=torch.float64))
    log_q, log_p = q.log_prob(z), p.log_prob(z)
    integrand = log_q.exp() * (log_q - log_p) * scale_q  # dz = scale_q du
    return torch.trapezoid(integrand, u).item()


def tiny_m2(alpha: float = 3.0) -> SSVAE:
    """M2 on points of shape (2, 3), 3 classes, float64."""
    torch.manual_seed(0)
    return SSVAE((2, 3), num_classes=3, latent_dim=2, hidden=(5,), alpha=alpha).double()


def tiny_m1m2(alpha: float = 3.0) -> M1M2:
    """M1 + M2 on points of shape (2, 3): M1 with z1 of 4, M2 with z2 of 2, 3 classes, float64."""
    torch.manual_seed(0)
    m1 = make_vae((2, 3), latent_dim=4, network={"type": "mlp", "hidden": [5]})
    return M1M2(m1, num_classes=3, latent_dim=2, hidden=(5,), alpha=alpha).double()
