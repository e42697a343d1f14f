"""Train the same VAE with the Monte Carlo and the analytic-KL ELBO from the same seed, and compare.

    python examples/analytic_vs_mc.py                    # digits, 60 epochs each (about 20 s)
    python examples/analytic_vs_mc.py --smoke            # two epochs, seconds
    python examples/analytic_vs_mc.py --dataset mnist --data-root ../shared/data --epochs 20

Both estimators are unbiased for the same ELBO, so the curves should end at the same place; the
analytic one has a less noisy encoder gradient (see ``pyro-vae compare``), which may help the
optimiser early on. The script prints the final test ELBOs, their difference paired over the
test images with its standard error, how soon each run got close to the end, and draws the
train/test ELBO of both runs per epoch on one figure.
"""

import argparse
import math

import pyro
import torch

import pyro_vae
from pyro_vae.runs.plots import plot_curves


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="two epochs with a small network")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default="runs/analytic_vs_mc.png", help="where to draw the figure (runs/ is ignored by git)"
    )
    args = parser.parse_args(argv)
    epochs = 2 if args.smoke else args.epochs

    data = pyro_vae.load_dataset(args.dataset, data_root=args.data_root)
    histories, per_image = {}, {}
    for estimator in ("mc", "analytic"):
        pyro.set_rng_seed(args.seed)  # the same initial weights (and, in fit, data order) for both
        vae = pyro_vae.make_vae(
            data.event_shape, latent_dim=10, network={"type": "mlp", "hidden": [64] if args.smoke else [400]}
        )
        histories[estimator] = pyro_vae.fit(vae, data, epochs=epochs, elbo=estimator, seed=args.seed, progress=False)
        # Both models are scored by the same estimator (analytic, 10 particles) on the same test images.
        with torch.no_grad():
            per_image[estimator] = torch.cat(
                [pyro_vae.elbo_per_example(vae.eval(), x, "analytic", num_particles=10) for x in data.test.split(500)]
            ).double()
        seconds = sum(h["seconds"] for h in histories[estimator])
        elbo = per_image[estimator]
        print(
            f"{estimator:>8}: test ELBO {elbo.mean():8.3f} ± {elbo.std() / math.sqrt(len(elbo)):.3f} nats per image "
            f"after {epochs} epochs, {seconds:.1f} s of training"
        )

    # Paired over test images: the spread of the images cancels, leaving the difference between the models.
    diff = per_image["analytic"] - per_image["mc"]
    gap, se = diff.mean().item(), diff.std().item() / math.sqrt(len(diff))
    verdict = (
        "no difference beyond noise"
        if abs(gap) < 2 * se
        else ("the analytic-KL model is better" if gap > 0 else "the Monte Carlo model is better")
    )
    print(
        f"analytic - mc = {gap:+.3f} ± {se:.3f} nats per image, "
        f"paired over the test images ({gap / se:+.1f} SE): {verdict}."
    )
    # Speed of learning: the first epoch at which each run's test ELBO is within 1 nat of the better final value.
    target = max(h[-1]["test_elbo"] for h in histories.values()) - 1.0
    reached = {e: next((h["epoch"] for h in hs if h["test_elbo"] >= target), None) for e, hs in histories.items()}
    print(
        "first epoch within 1 nat of the best final test ELBO: "
        + ", ".join(f"{e} {r if r else f'not within {epochs}'}" for e, r in reached.items())
    )
    plot_curves(
        histories,
        args.out,
        title=f"Analytic vs Monte Carlo KL on {args.dataset}",
        caption=f"{args.dataset} | mlp | latent 10 | seed {args.seed}",
    )
    print(f"figure: {args.out}")
    return {"histories": histories, "gap": gap, "se": se}


if __name__ == "__main__":
    main()
