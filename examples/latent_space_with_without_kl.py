"""The latent space with and without the KL term: the same 2-D VAE trained with beta = 0 and beta = 1.

    python examples/latent_space_with_without_kl.py --smoke                          # digits, seconds
    python examples/latent_space_with_without_kl.py                                  # digits, 100 epochs
    python examples/latent_space_with_without_kl.py --dataset mnist --data-root ../shared/data --epochs 20

Without the KL term (beta = 0) nothing ties the codes to the prior N(0, I): the encoder places
them wherever reconstruction is easiest, at arbitrary scales, and much of the square [-2, 2]²
that the prior samples from decodes to nothing in particular. With it (beta = 1) the codes fill
that square, so decoding prior samples gives digits. The script prints the numbers behind this
and draws both latent spaces and decoded grids side by side.
"""

import argparse

import pyro
import torch

import pyro_vae
from pyro_vae.runs.plots import latent_grid, plot_latent_spaces, posterior_means


def grid_test(vae, data) -> tuple[float, int]:
    """How much of the decoded 15×15 grid over [-2, 2]² looks like data, by a simple test.

    A decoded image passes when its Euclidean distance to the nearest training image is at most
    the median of that distance for real test images: as close to the data as a typical real
    digit is. Returns the fraction that passes, and how many digit classes (the label of the
    nearest training image) the passing images cover.
    """
    flat_train = data.train.flatten(1)

    def nearest(images):
        distances = torch.cat([torch.cdist(chunk.flatten(1), flat_train) for chunk in images.split(500)])
        return distances.min(1)

    with torch.no_grad():
        threshold = nearest(data.test).values.median()
        z, _ = latent_grid(vae)
        found = nearest(vae.decode(z.to(data.train)).mean)
    passing = found.values <= threshold
    classes = data.train_labels[found.indices[passing]].unique().numel() if data.train_labels is not None else 0
    return passing.float().mean().item(), classes


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="two epochs with a small network")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default="runs/latent_space_with_without_kl.png",
        help="where to draw the figure (runs/ is ignored by git)",
    )
    args = parser.parse_args(argv)
    epochs = 2 if args.smoke else args.epochs

    data = pyro_vae.load_dataset(args.dataset, data_root=args.data_root)
    vaes, rows = {}, []
    for beta in (0.0, 1.0):
        pyro.set_rng_seed(args.seed)
        vae = pyro_vae.make_vae(
            data.event_shape, latent_dim=2, network={"type": "mlp", "hidden": [64] if args.smoke else [512, 256]}
        )
        pyro_vae.fit(vae, data, epochs=epochs, beta=beta, elbo="analytic", seed=args.seed, progress=False)
        vae.eval()
        z = posterior_means(vae, data.test)
        result = pyro_vae.evaluate_elbo(vae, data.test, num_particles=10, estimators=("analytic",))
        rows.append(
            {
                "beta": beta,
                "std": z.std(0).tolist(),
                "min": z.min(0).values.tolist(),
                "max": z.max(0).values.tolist(),
                "inside": ((z.abs() <= 2).all(1)).float().mean().item(),
                **dict(zip(("digit_like", "classes"), grid_test(vae, data))),
                "elbo": result["elbo_analytic"],
                "elbo_se": result["elbo_analytic_se"],
            }
        )
        vaes[f"beta = {beta:g} ({'with' if beta else 'without'} KL)"] = vae

    print(f"{len(data.test)} {args.dataset} test images, 2-D latent, {epochs} epochs each")
    print(f"{'':24} {'beta = 0 (no KL)':>22} {'beta = 1 (ELBO)':>22}")
    fmt = lambda r, key: f"{r[key][0]:.2f}, {r[key][1]:.2f}"  # noqa: E731
    for name, cell in (
        ("spread (std of z1, z2)", lambda r: fmt(r, "std")),
        ("min of z1, z2", lambda r: fmt(r, "min")),
        ("max of z1, z2", lambda r: fmt(r, "max")),
        ("codes inside [-2, 2]²", lambda r: f"{100 * r['inside']:.0f}%"),
        ("digit-like grid images", lambda r: f"{100 * r['digit_like']:.0f}%"),
        ("classes among them", lambda r: f"{r['classes']}"),
        ("test ELBO (nats/image)", lambda r: f"{r['elbo']:.1f} ± {r['elbo_se']:.1f}"),
    ):
        print(f"{name:24} {cell(rows[0]):>22} {cell(rows[1]):>22}")
    plot_latent_spaces(
        vaes,
        data.test,
        data.test_labels,
        args.out,
        caption=f"{args.dataset} | mlp | latent 2 | {epochs} epochs | seed {args.seed}",
        grids=True,
    )
    print(f"figure: {args.out}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
