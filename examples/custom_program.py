r"""Your own Pyro program, trained and examined by pyro_vae: a VAE with two stochastic layers.

    python examples/custom_program.py              # 500 epochs on the bundled digits (under a minute)
    python examples/custom_program.py --smoke      # a few epochs, a few seconds
    python examples/custom_program.py --dataset mnist --data-root ../shared/data

The program is a plain ``nn.Module`` with ``model(x)`` and ``guide(x)``, as a Pyro user writes one:

.. math:: p(x, z_1, z_2) = \mathcal N(z_2; 0, I)\,\mathcal N(z_1; \mu(z_2), \sigma^2(z_2))\,
    \mathrm{Bernoulli}(x; \pi(z_1)), \qquad q(z_1, z_2 \mid x) = q(z_1 \mid x)\,q(z_2 \mid z_1)

with no ``num_data`` or ``beta`` argument: the library scales the minibatch by N/B and the KL term by
beta from outside, with Pyro's effect handlers. Every tool follows the program's sites: the ELBO by
both estimators, log p(x) by importance sampling over the guide's joint, which KL terms have a closed
form (z2's; not z1's, whose prior depends on z2, drawn by the guide after z1), the estimators' noise,
and the active units and KL of each latent site.

Reference: Importance Weighted Autoencoders (Burda et al., 2016), the two-stochastic-layer architecture.
"""

import argparse
import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pyro_vae
from pyro_vae.infer.compare import format_comparison
from pyro_vae.infer.objectives import kl_methods


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))


class ConditionalNormal(nn.Module):
    """A diagonal Gaussian whose ``loc`` and ``scale`` an MLP computes from its input."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden, 2 * out_dim)

    def forward(self, h: Tensor) -> dist.TorchDistribution:
        loc, raw_scale = self.net(h).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(raw_scale) + 1e-4).to_event(1)


class TwoLayerVAE(nn.Module):
    """z2 ~ N(0, I), z1 | z2 ~ N(mlp(z2)), x | z1 ~ Bernoulli(mlp(z1)); the guide runs bottom-up, x -> z1 -> z2."""

    def __init__(self, data_dim: int, hidden: int = 128, latent_dims: tuple[int, int] = (16, 4)) -> None:
        super().__init__()
        z1_dim, z2_dim = latent_dims
        self.decoder = nn.ModuleDict(
            {"z1": ConditionalNormal(z2_dim, hidden, z1_dim), "x": mlp(z1_dim, hidden, data_dim)}
        )
        self.encoder = nn.ModuleDict(
            {"z1": ConditionalNormal(data_dim, hidden, z1_dim), "z2": ConditionalNormal(z1_dim, hidden, z2_dim)}
        )
        self.register_buffer("z2_loc", torch.zeros(z2_dim))

    def model(self, x: Tensor) -> None:
        pyro.module("two_layer_vae", self)
        x = x.flatten(1)
        with pyro.plate("data", len(x), dim=-1):
            z2 = pyro.sample("z2", dist.Normal(self.z2_loc, 1.0).to_event(1))
            z1 = pyro.sample("z1", self.decoder["z1"](z2))
            # validate_args=False: the digits are grey levels in [0, 1], a relaxed Bernoulli observation
            pyro.sample("x", dist.Bernoulli(logits=self.decoder["x"](z1), validate_args=False).to_event(1), obs=x)

    def guide(self, x: Tensor) -> None:
        pyro.module("two_layer_vae", self)
        x = x.flatten(1)
        with pyro.plate("data", len(x), dim=-1):
            z1 = pyro.sample("z1", self.encoder["z1"](x))
            pyro.sample("z2", self.encoder["z2"](z1))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few epochs, small evaluations (seconds)")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=1000, help="K of the importance-sampled log p(x)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs, num_samples = (3, 50) if args.smoke else (args.epochs, args.num_samples)
    particles, repeats = ((1, 5), 5) if args.smoke else ((1, 10), 50)

    pyro.set_rng_seed(args.seed)
    data = pyro_vae.load_dataset(args.dataset, data_root=args.data_root)
    program = TwoLayerVAE(math.prod(data.event_shape))
    history = pyro_vae.fit(program, data, epochs=epochs, elbo="analytic", seed=args.seed, progress=not args.smoke)
    print(f"trained {len(history)} epochs on {args.dataset}, path {history[-1]['path']!r} (Pyro's traced ELBO)")

    x = data.test
    print("KL terms of the analytic ELBO:", kl_methods(program, x[:2], "analytic"))
    result = pyro_vae.evaluate_elbo(program, x, num_particles=10, estimators=("mc", "analytic"))
    ll = pyro_vae.log_likelihood(program, x, num_samples=num_samples)
    print(
        f"test ELBO {result['elbo_mc']:.2f} ± {result['elbo_mc_se']:.2f} (mc), "
        f"{result['elbo_analytic']:.2f} ± {result['elbo_analytic_se']:.2f} (analytic); "
        f"log p(x) {ll.mean():.2f} ± {ll.std() / len(ll) ** 0.5:.2f} (K = {num_samples}) nats per image"
    )

    print("\nthe estimators on 100 test images:")
    comparison = pyro_vae.compare_estimators(program, x[:100], particles=particles, repeats=repeats)
    print(format_comparison(comparison))

    report = pyro_vae.diagnostics(program, x)
    print(f"\nactive units {report['active_units']} of {report['latent_dim']}, KL {report['kl_total']:.2f} nats:")
    for name, site in report["sites"].items():
        print(
            f"  {name}: {site['active_units']} of {site['latent_dim']} active, KL {site['kl_total']:.2f} nats "
            f"({site['kl_total_method']}), per dimension {[round(v, 2) for v in site['kl_per_dim']]}"
        )
    print("(a site's KL is its share E_q[log q - log p] of the joint's; only their sum is a KL, >= 0)")
    return {**result, "log_likelihood": ll.mean().item(), "diagnostics": report}


if __name__ == "__main__":
    main()
