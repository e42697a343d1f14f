"""Quickstart: build, train, evaluate and sample a VAE from Python.

    python examples/quickstart.py            # 50 epochs on the bundled digits (about 15 s)
    python examples/quickstart.py --smoke    # one epoch, a second or two
    python examples/quickstart.py --dataset mnist --data-root ../shared/data

It prints the test ELBO by both estimators and draws samples from the prior into ``--out``.
"""

import argparse

import pyro_vae
from pyro_vae.runs.plots import plot_samples


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="one epoch with a small network")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--out", default="runs/quickstart-samples.png", help="where to draw samples from the prior")
    args = parser.parse_args(argv)

    # Data as tensors, a VAE from registry names, and SVI with the closed-form-KL ELBO.
    data = pyro_vae.load_dataset(args.dataset, data_root=args.data_root)
    vae = pyro_vae.make_vae(
        data.event_shape,
        latent_dim=10,
        network={"type": "mlp", "hidden": [64] if args.smoke else [400]},
        prior={"type": "standard_normal"},
        likelihood={"type": "bernoulli"},
    )
    history = pyro_vae.fit(vae, data, epochs=1 if args.smoke else 50, elbo="analytic", progress=not args.smoke)

    # Evaluate with both estimators: they target the same ELBO, so they agree within their errors.
    result = pyro_vae.evaluate_elbo(vae, data.test, num_particles=10)
    print(
        f"after {len(history)} epoch(s): "
        f"test ELBO {result['elbo_analytic']:.2f} ± {result['elbo_analytic_se']:.2f} (analytic), "
        f"{result['elbo_mc']:.2f} ± {result['elbo_mc_se']:.2f} (Monte Carlo) nats per image"
    )

    # Sample: decode z ~ p(z).
    plot_samples(vae.eval(), args.out, caption=f"quickstart on {args.dataset}")
    print(f"samples from the prior: {args.out}")
    return result


if __name__ == "__main__":
    main()
