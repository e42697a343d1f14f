"""Every registered prior, trained on the same data with the same budget, in one table.

    python examples/swap_priors.py --smoke                                    # digits, seconds
    python examples/swap_priors.py                                            # digits, 50 epochs each
    python examples/swap_priors.py --dataset mnist --data-root ../shared/data --epochs 10

For each prior the table gives the test ELBO by both estimators (the analytic one samples the KL
where the prior has no closed form: marked "sampled"), log p(x) by importance sampling, and the
training time per epoch. The figure shows every model's latent space side by side. Everything
but the prior (network, likelihood, optimiser, seed, epochs) is the same for all.
"""

import argparse

import pyro
import torch

import pyro_vae
from pyro_vae.infer.objectives import kl_methods
from pyro_vae.runs.plots import plot_latent_spaces


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="one epoch, a small network, few importance samples")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--latent-dim", type=int, default=2, help="2 shows each latent space as it is")
    parser.add_argument("--num-samples", type=int, default=200, help="importance samples per test point for log p(x)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default="runs/swap_priors.png", help="where to draw the figure (runs/ is ignored by git)"
    )
    args = parser.parse_args(argv)
    epochs, num_samples = (1, 10) if args.smoke else (args.epochs, args.num_samples)
    hidden = [64] if args.smoke else [512, 256]

    data = pyro_vae.load_dataset(args.dataset, data_root=args.data_root)
    rows, vaes = [], {}
    for name in pyro_vae.PRIORS:
        pyro.set_rng_seed(args.seed)
        vae = pyro_vae.make_vae(
            data.event_shape,
            latent_dim=args.latent_dim,
            network={"type": "mlp", "hidden": hidden},
            prior={"type": name},
        )
        history = pyro_vae.fit(vae, data, epochs=epochs, elbo="analytic", seed=args.seed, progress=False)
        vae.eval()
        torch.manual_seed(args.seed)
        elbo = pyro_vae.evaluate_elbo(vae, data.test, num_particles=10)
        log_px = pyro_vae.log_likelihood(vae, data.test, num_samples=num_samples).double()
        rows.append(
            {
                "prior": name,
                "kl": kl_methods(vae, data.test[:2], "analytic")["z"],
                **elbo,
                "log_likelihood": log_px.mean().item(),
                "log_likelihood_se": log_px.std().item() / len(log_px) ** 0.5,
                "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history),
            }
        )
        vaes[name] = vae
        r = rows[-1]
        print(f"  trained {name}: log p(x) {r['log_likelihood']:.2f}", flush=True)

    print(
        f"\n{args.dataset}: {len(data.train)} train / {len(data.test)} test images; "
        f"mlp {hidden}, latent {args.latent_dim}, Bernoulli, Adam 1e-3, {epochs} epochs, analytic ELBO; "
        f"test ELBO with 10 particles, log p(x) with K = {num_samples}; nats per image"
    )
    print()
    print("| prior | KL | test ELBO (mc) | test ELBO (analytic) | log p(x) | s / epoch |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['prior']} | {r['kl'].replace('_', ' ')} | {r['elbo_mc']:.2f} ± {r['elbo_mc_se']:.2f} "
            f"| {r['elbo_analytic']:.2f} ± {r['elbo_analytic_se']:.2f} "
            f"| {r['log_likelihood']:.2f} ± {r['log_likelihood_se']:.2f} | {r['seconds_per_epoch']:.2f} |"
        )
    plot_latent_spaces(
        vaes,
        data.test,
        data.test_labels,
        args.out,
        caption=f"{args.dataset} | mlp {hidden} | latent {args.latent_dim} | {epochs} epochs | seed {args.seed}",
    )
    print(f"figure: {args.out}")
    return rows


if __name__ == "__main__":
    main()
