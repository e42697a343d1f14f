"""Gradient signal-to-noise ratio of IWAE and DReG against the number of particles K.

    python examples/gradient_snr.py --run runs/mnist-analytic        # a trained run (the site's figure)
    python examples/gradient_snr.py --dataset mnist --data-root ../shared/data --epochs 5
    python examples/gradient_snr.py --smoke                          # a few seconds

Tighter bounds are not necessarily better: for the importance-weighted bound the signal-to-noise
ratio |E g| / std(g) of the encoder's gradient falls like K^(-1/2) while the decoder's rises like
K^(1/2) (Rainforth et al., 2018); the doubly reparameterized gradient's encoder SNR rises with K
instead (Tucker et al., 2019). The script measures both on a fixed batch of test images, with R
independent gradients per estimator and K, prints the table and the fitted log-log slopes, and
draws the figure (encoder and decoder side by side).
"""

import argparse
import json
from pathlib import Path

import pyro

import pyro_vae
from pyro_vae.infer.compare import compare_estimators, format_comparison, snr_slopes
from pyro_vae.runs.plots import plot_gradient_snr


def trained_model(args: argparse.Namespace):
    """The VAE of ``--run``, or one trained here for ``--epochs`` on ``--dataset``; and the test data."""
    if args.run:
        vae, config = pyro_vae.load(args.run)
        data = pyro_vae.load_dataset(
            config.data.dataset, data_root=config.data.data_root, binarize=config.data.binarize
        )
        return vae, data
    data = pyro_vae.load_dataset(args.dataset, data_root=args.data_root, binarize="dynamic")
    pyro.set_rng_seed(args.seed)
    hidden = [16] if args.smoke else [400]
    vae = pyro_vae.make_vae(data.event_shape, latent_dim=10, network={"type": "mlp", "hidden": hidden})
    pyro_vae.fit(vae, data, epochs=args.epochs, elbo="analytic", seed=args.seed, progress=False)
    return vae.eval(), data


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a small model, K up to 16, few repeats")
    parser.add_argument("--run", help="a trained run folder (default: train one here)")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--particles", default="1,3,10,30,100,300,1000", help="values of K")
    parser.add_argument("--repeats", type=int, default=100, help="gradients per estimator and K")
    parser.add_argument("--batch-size", type=int, default=16, help="test images in the fixed batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/gradient_snr", help="folder for snr.png and snr.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.particles, args.repeats, args.batch_size = 1, "1,4,16", 10, 4
    particles = [int(k) for k in args.particles.split(",")]

    vae, data = trained_model(args)
    x = data.test[: args.batch_size]
    pyro.set_rng_seed(args.seed)
    result = compare_estimators(vae, x, particles, args.repeats, estimators=("iwae", "dreg"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "snr.json").write_text(json.dumps(result, indent=2) + "\n")
    caption = f"{data.name} | {len(x)} test images | {args.repeats} gradients per estimator and K"
    plot_gradient_snr(result, out / "snr.png", caption)
    print(format_comparison(result))
    slopes = {group: snr_slopes(result, group) for group in ("encoder", "decoder")}
    print("\npublished slopes: iwae encoder -0.5, iwae decoder +0.5, dreg encoder +0.5")
    print("(Tighter Variational Bounds are Not Necessarily Better, Rainforth et al. 2018; Tucker et al. 2019)")
    print(f"written: {out / 'snr.png'}, {out / 'snr.json'}")
    return slopes


if __name__ == "__main__":
    main()
