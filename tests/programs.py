"""Toy Pyro programs with closed-form answers, for ``test_programs.py``.

Every program is a plain ``torch.nn.Module`` with ``model(x)`` and ``guide(x)``, all sample sites inside
``pyro.plate("data", len(x), dim=-1)``, the observation named ``"x"`` (``obs=x``), float64 throughout.

Two programs:

- :class:`TwoLayerGaussian`: ``z2 ~ N(0, I)``, ``z1 | z2 ~ N(A z2 + a, diag s1²)``, ``x | z1 ~ N(B z1 + b, diag sx²)``
  with a two-stage linear-Gaussian guide (top-down, ``z2`` then ``z1 | z2``, or bottom-up, ``z1`` then ``z2 | z1``),
  so that the guide's joint over ``(z2, z1)`` is one Gaussian (:meth:`TwoLayerGaussian.q_joint`) and the exact
  posterior, ``log p(x)`` and ``KL(q || posterior)`` are closed forms (:class:`LinearGaussian`).
- :class:`Mixture`: ``label ~ Categorical(pi)``, ``x | label ~ N(mu_label, sigma² I)``, whose ``log p(x)`` and ELBO
  are finite sums over the three classes.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

DT = torch.float64
D2, D1, DX = 2, 3, 4  # dims of z2 (top layer), z1, x
NU = D2 + D1  # u = [z2; z1], the latent vector in the model's order


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=gen, dtype=DT)


def _rand(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(*shape, generator=gen, dtype=DT)


def gaussian_kl_full(m0: Tensor, s0: Tensor, m1: Tensor, s1: Tensor) -> Tensor:
    """KL(N(m0, s0) || N(m1, s1)) for full covariances; means (..., k), covariances (k, k)."""
    k = m0.shape[-1]
    l1 = torch.linalg.cholesky(s1)
    s1_inv = torch.cholesky_inverse(l1)
    d = m1 - m0
    maha = torch.einsum("...i,ij,...j->...", d, s1_inv, d)
    logdet1 = 2 * torch.log(torch.diagonal(l1)).sum()
    logdet0 = torch.logdet(s0)
    return 0.5 * (torch.trace(s1_inv @ s0) + maha - k + logdet1 - logdet0)


class LinearGaussian:
    """The model's parameters and its closed forms: the prior on u = [z2; z1], the marginal of x, the posterior."""

    def __init__(self, seed: int = 0) -> None:
        g = _gen(seed)
        self.A = _randn(g, D1, D2)
        self.a = 0.5 * _randn(g, D1)
        self.s1 = 0.4 + 0.4 * _rand(g, D1)
        self.B = _randn(g, DX, D1)
        self.b = 0.5 * _randn(g, DX)
        self.sx = 0.3 + 0.3 * _rand(g, DX)
        # prior on u = [z2; z1]
        self.m_u = torch.cat([torch.zeros(D2, dtype=DT), self.a])
        s_u = torch.zeros(NU, NU, dtype=DT)
        s_u[:D2, :D2] = torch.eye(D2, dtype=DT)
        s_u[D2:, :D2] = self.A
        s_u[:D2, D2:] = self.A.T
        s_u[D2:, D2:] = self.A @ self.A.T + torch.diag(self.s1**2)
        self.S_u = s_u
        self.H = torch.cat([torch.zeros(DX, D2, dtype=DT), self.B], dim=1)  # x = H u + b + noise
        # marginal of x
        self.mean_x = self.H @ self.m_u + self.b
        self.cov_x = self.H @ s_u @ self.H.T + torch.diag(self.sx**2)
        # posterior of u given x: mean = W_u x + c_u, covariance P (the same for every x)
        gain = s_u @ self.H.T @ torch.linalg.inv(self.cov_x)
        self.W_u = gain
        self.c_u = self.m_u - gain @ self.mean_x
        p = s_u - gain @ self.H @ s_u
        self.P = 0.5 * (p + p.T)

    def sample_x(self, n: int, seed: int = 1) -> Tensor:
        """n data points drawn from the model (ancestrally)."""
        g = _gen(seed)
        z2 = _randn(g, n, D2)
        z1 = z2 @ self.A.T + self.a + self.s1 * _randn(g, n, D1)
        return z1 @ self.B.T + self.b + self.sx * _randn(g, n, DX)

    def log_px(self, x: Tensor) -> Tensor:
        """log p(x): the Gaussian marginal N(B a + b, B (A Aᵀ + S1) Bᵀ + Sx)."""
        return torch.distributions.MultivariateNormal(self.mean_x, self.cov_x).log_prob(x)

    def log_joint(self, x: Tensor, z2: Tensor, z1: Tensor) -> Tensor:
        """log p(x, z1, z2) from the model's three factors (torch's Normal densities)."""
        n = torch.distributions.Normal
        return (
            n(torch.zeros(D2, dtype=DT), 1.0).log_prob(z2).sum(-1)
            + n(z2 @ self.A.T + self.a, self.s1).log_prob(z1).sum(-1)
            + n(z1 @ self.B.T + self.b, self.sx).log_prob(x).sum(-1)
        )

    def post_mean(self, x: Tensor) -> Tensor:
        return x @ self.W_u.T + self.c_u

    def posterior(self, x: Tensor) -> torch.distributions.MultivariateNormal:
        """p(u | x), u = [z2; z1]."""
        return torch.distributions.MultivariateNormal(self.post_mean(x), self.P)

    def stages(self, first: str) -> dict[str, Tensor]:
        """The exact posterior as two linear-Gaussian stages: first ``first`` ("z2" or "z1") given x, then the other.

        Returns Wf, cf, Sf (first | x: mean Wf x + cf, covariance Sf) and C, Ws, cs, Ss
        (second | first, x: mean C first + Ws x + cs, covariance Ss).
        """
        i, j = (slice(0, D2), slice(D2, NU)) if first == "z2" else (slice(D2, NU), slice(0, D2))
        W, c, P = self.W_u, self.c_u, self.P
        G = P[j, i] @ torch.linalg.inv(P[i, i])
        ss = P[j, j] - G @ P[i, j]
        return {
            "Wf": W[i].clone(),
            "cf": c[i].clone(),
            "Sf": P[i, i].clone(),
            "C": G,
            "Ws": W[j] - G @ W[i],
            "cs": c[j] - G @ c[i],
            "Ss": 0.5 * (ss + ss.T),
        }


def exact_guide(lg: LinearGaussian, order: str) -> dict:
    """The exact posterior as a two-stage guide (full-covariance MultivariateNormal sites)."""
    st = lg.stages("z2" if order == "top_down" else "z1")
    return {"order": order, "family": "mvn", **st}


def wrong_guide(lg: LinearGaussian, order: str, shift: float = 0.4, widen: float = 1.25, family: str = "diag") -> dict:
    """A wrong two-stage guide: means shifted by ``shift`` posterior sd, sd widened ``widen`` times.

    ``family="diag"``: diagonal Normal sites (the posterior's correlations within each stage are lost);
    ``family="mvn"``: MultivariateNormal sites with ``widen²`` times the exact stage covariances, so that the joint
    covariance is ``widen²·P`` and, for ``widen < √2``, the importance weights have finite variance.
    Either way the guide is linear-Gaussian, so its joint over (z2, z1) is Gaussian.
    """
    st = lg.stages("z2" if order == "top_down" else "z1")
    if family == "mvn":
        sf, ss = st["Sf"].diagonal().sqrt(), st["Ss"].diagonal().sqrt()
        return {
            **st,
            "order": order,
            "family": "mvn",
            "cf": st["cf"] + shift * sf,
            "cs": st["cs"] - shift * ss,
            "Sf": widen**2 * st["Sf"],
            "Ss": widen**2 * st["Ss"],
        }
    sf, ss = st["Sf"].diagonal().sqrt(), st["Ss"].diagonal().sqrt()
    signs_f = torch.tensor([1.0, -1.0, 1.0], dtype=DT)[: len(sf)]
    signs_s = torch.tensor([-1.0, 1.0, 1.0], dtype=DT)[: len(ss)]
    return {
        "order": order,
        "family": "diag",
        "Wf": st["Wf"],
        "cf": st["cf"] + shift * sf * signs_f,
        "Sf": torch.diag((widen * sf) ** 2),
        "C": st["C"],
        "Ws": st["Ws"],
        "cs": st["cs"] + shift * ss * signs_s,
        "Ss": torch.diag((widen * ss) ** 2),
    }


class TwoLayerGaussian(nn.Module):
    """The two-latent-layer linear-Gaussian program; ``names = (name of z1, name of z2)``."""

    def __init__(self, lg: LinearGaussian, guide: dict, names: tuple[str, str] = ("z1", "z2")) -> None:
        super().__init__()
        self.lg, self.names, self.order, self.family = lg, names, guide["order"], guide["family"]
        for key in ("A", "a", "s1", "B", "b", "sx"):
            setattr(self, key, nn.Parameter(getattr(lg, key).clone()))
        for key in ("Wf", "cf", "C", "Ws", "cs"):
            setattr(self, key, nn.Parameter(guide[key].clone()))
        if self.family == "mvn":
            self.Lf = nn.Parameter(torch.linalg.cholesky(guide["Sf"]))
            self.Ls = nn.Parameter(torch.linalg.cholesky(guide["Ss"]))
        else:
            self.Lf = nn.Parameter(guide["Sf"].diagonal().sqrt())
            self.Ls = nn.Parameter(guide["Ss"].diagonal().sqrt())

    def model(self, x: Tensor) -> None:
        n1, n2 = self.names
        with pyro.plate("data", len(x), dim=-1):
            z2 = pyro.sample(n2, dist.Normal(x.new_zeros(len(x), D2), x.new_ones(len(x), D2)).to_event(1))
            z1 = pyro.sample(n1, dist.Normal(z2 @ self.A.T + self.a, self.s1).to_event(1))
            pyro.sample("x", dist.Normal(z1 @ self.B.T + self.b, self.sx).to_event(1), obs=x)

    def _site(self, loc: Tensor, scale: Tensor) -> dist.Distribution:
        if self.family == "mvn":
            return dist.MultivariateNormal(loc, scale_tril=scale)
        return dist.Normal(loc, scale).to_event(1)

    def guide(self, x: Tensor) -> None:
        n1, n2 = self.names
        first, second = (n2, n1) if self.order == "top_down" else (n1, n2)
        with pyro.plate("data", len(x), dim=-1):
            f = pyro.sample(first, self._site(x @ self.Wf.T + self.cf, self.Lf))
            pyro.sample(second, self._site(f @ self.C.T + x @ self.Ws.T + self.cs, self.Ls))

    # closed forms of this guide -------------------------------------------------------------------------

    @torch.no_grad()
    def q_joint(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The guide's joint over u = [z2; z1] given x: mean (N, 5) and covariance (5, 5)."""
        scale = lambda L: L @ L.T if self.family == "mvn" else torch.diag(L**2)  # noqa: E731
        sf, ss = scale(self.Lf), scale(self.Ls)
        mf = x @ self.Wf.T + self.cf
        ms = mf @ self.C.T + x @ self.Ws.T + self.cs
        cov = torch.cat(
            [torch.cat([sf, sf @ self.C.T], 1), torch.cat([self.C @ sf, self.C @ sf @ self.C.T + ss], 1)], 0
        )
        mean = torch.cat([mf, ms], -1)
        if self.order == "bottom_up":  # (z1, z2) -> (z2, z1)
            perm = list(range(D1, NU)) + list(range(D1))
            mean, cov = mean[:, perm], cov[perm][:, perm]
        return mean, 0.5 * (cov + cov.T)

    @torch.no_grad()
    def true_elbo(self, x: Tensor) -> Tensor:
        """ELBO(x) = log p(x) − KL(q(z1, z2 | x) || p(z1, z2 | x)), per point."""
        mq, sq = self.q_joint(x)
        return self.lg.log_px(x) - gaussian_kl_full(mq, sq, self.lg.post_mean(x), self.lg.P)

    @torch.no_grad()
    def log_w(self, x: Tensor, num: int, seed: int = 0) -> Tensor:
        """Log importance weights log p(x, z) − log q(z | x) of ``num`` draws from the guide's joint, computed
        in the test from the closed-form joint (not by the library): shape (num, N)."""
        mq, sq = self.q_joint(x)
        q = torch.distributions.MultivariateNormal(mq, sq)
        torch.manual_seed(seed)
        u = q.sample((num,))
        return self.lg.log_joint(x, u[..., :D2], u[..., D2:]) - q.log_prob(u)


class Mixture(nn.Module):
    """``label ~ Categorical(pi)`` (3 classes), ``x | label ~ N(mu_label, sigma² I)`` (2 dims).

    ``guide="exact"``: q(label | x) = p(label | x); otherwise q's logits are ``x Wᵀ + c`` for fixed wrong W, c.
    """

    K, DX = 3, 2

    def __init__(self, guide: str = "exact", site: str = "label", seed: int = 3) -> None:
        super().__init__()
        g = _gen(seed)
        self.site, self.exact = site, guide == "exact"
        self.logits_pi = nn.Parameter(torch.tensor([0.2, -0.3, 0.5], dtype=DT))
        self.mu = nn.Parameter(torch.tensor([[-1.5, 0.0], [1.0, 1.0], [0.5, -1.2]], dtype=DT))
        self.log_sigma = nn.Parameter(torch.tensor(-0.2, dtype=DT))
        self.W = nn.Parameter(0.8 * _randn(g, self.K, self.DX))
        self.c = nn.Parameter(torch.tensor([0.3, 0.0, -0.4], dtype=DT))

    def sample_x(self, n: int, seed: int = 5) -> Tensor:
        g = _gen(seed)
        with torch.no_grad():
            y = torch.multinomial(self.logits_pi.softmax(-1), n, replacement=True, generator=g)
            return self.mu[y] + self.log_sigma.exp() * _randn(g, n, self.DX)

    def log_joint_all(self, x: Tensor) -> Tensor:
        """log p(x, label = k) for every k: shape (..., N, K)."""
        comp = dist.Normal(self.mu, self.log_sigma.exp()).to_event(1)  # batch (K,)
        return self.logits_pi.log_softmax(-1) + comp.log_prob(x.unsqueeze(-2))

    def guide_logits(self, x: Tensor) -> Tensor:
        return self.log_joint_all(x) if self.exact else x @ self.W.T + self.c

    def model(self, x: Tensor) -> None:
        with pyro.plate("data", len(x), dim=-1):
            y = pyro.sample(self.site, dist.Categorical(logits=self.logits_pi))
            pyro.sample("x", dist.Normal(self.mu[y], self.log_sigma.exp()).to_event(1), obs=x)

    def guide(self, x: Tensor) -> None:
        with pyro.plate("data", len(x), dim=-1):
            pyro.sample(self.site, dist.Categorical(logits=self.guide_logits(x)))

    @torch.no_grad()
    def log_px(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self.log_joint_all(x), -1)

    @torch.no_grad()
    def true_elbo(self, x: Tensor) -> Tensor:
        """Σ_k q(k | x) [log p(x, k) − log q(k | x)]: a finite sum."""
        log_q = self.guide_logits(x).log_softmax(-1)
        return (log_q.exp() * (self.log_joint_all(x) - log_q)).sum(-1)
