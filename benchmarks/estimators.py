"""Which estimator should I train with? The same MNIST VAE trained with each, then log p(x) of each.

    python benchmarks/estimators.py                  # the benchmark page's table: MNIST, 10 epochs each (~10 min)
    python benchmarks/estimators.py --epochs 50 --test-images 10000
    python benchmarks/estimators.py --smoke          # the digits, one epoch, a few seconds

Each estimator trains the same model (MLP 784-400-50, Bernoulli, dynamically binarized MNIST, Adam
1e-3, batch 100) from the same seed for the same number of epochs into ``runs/estimators/<name>``
(a run that already finished is reused), and the table reports the seconds per epoch, the test
ELBO, the bound each trained with, and log p(x) by importance sampling with K = 5000 samples on the
first ``--test-images`` test images, binarized once with seed 0, the same in every run (mean ± standard error).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import pyro_vae
from pyro_vae import Config
from pyro_vae.infer.marginal import log_likelihood
from pyro_vae.runs.config import load_data

REPO = Path(__file__).resolve().parents[1]
#: (estimator, particles) of the table.
ROWS = [("analytic", 1), ("iwae", 5), ("dreg", 5)]


def config(name: str, particles: int, args: argparse.Namespace) -> Config:
    dataset = "digits" if args.smoke else "mnist"
    return Config.from_dict(
        {
            "data": {"dataset": dataset, "data_root": str(args.data_root), "binarize": "dynamic"},
            "model": {"latent_dim": 50, "network": {"type": "mlp", "hidden": [16 if args.smoke else 400]}},
            "train": {"elbo": name, "num_particles": particles, "epochs": args.epochs, "batch_size": 100, "seed": 0},
        }
    )


def train(name: str, particles: int, args: argparse.Namespace) -> Path:
    out = args.out / name
    if not (out / "summary.json").is_file():
        pyro_vae.train_run(config(name, particles, args), out, overwrite=True, progress=not args.smoke)
    return out


def row(run: Path, name: str, particles: int, args: argparse.Namespace) -> dict:
    vae, cfg = pyro_vae.load(run)
    data = load_data(
        cfg
    )  # the test set binarized once, with pyro_vae.training.data.BINARIZATION_SEED, as training evaluated it
    x = data.test[: args.test_images]
    torch.manual_seed(0)
    ll = log_likelihood(vae, x, num_samples=args.num_samples).double()
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    return {
        "estimator": name,
        "num_particles": particles,
        "epochs": len(history),
        "seconds_per_epoch": statistics.mean(h["seconds"] for h in history),
        "test_elbo": summary["test_elbo_mc"],
        "test_bound": history[-1]["test_elbo"],
        "log_likelihood": ll.mean().item(),
        "log_likelihood_se": ll.std().item() / len(ll) ** 0.5,
        "per_image": ll,
        "test_images": len(x),
        "num_samples": args.num_samples,
        "run": str(run),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the digits, one epoch, K = 50")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--test-images", type=int, default=1000, help="test images for log p(x)")
    parser.add_argument("--num-samples", type=int, default=5000, help="K of the importance-sampled log p(x)")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=Path("runs") / "estimators")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.num_samples, args.test_images = 1, 50, 20
    rows = [row(train(name, k, args), name, k, args) for name, k in ROWS]
    first = rows[0]["per_image"]
    for r in rows:  # paired over the same test images, so that the spread between images cancels
        diff = r.pop("per_image") - first
        r["minus_first"], r["minus_first_se"] = diff.mean().item(), diff.std().item() / len(diff) ** 0.5
    versus = f"- {rows[0]['estimator']} (paired)"
    header = (
        f"{'estimator':<10} {'K':>3} {'epochs':>6} {'s/epoch':>8} {'test ELBO':>10} {'test bound':>11} "
        f"{'log p(x) ± SE':>17} {versus:>22}"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    for r in rows:
        ll = f"{r['log_likelihood']:.2f} ± {r['log_likelihood_se']:.2f}"
        paired = f"{r['minus_first']:+.2f} ± {r['minus_first_se']:.2f}"
        print(
            f"{r['estimator']:<10} {r['num_particles']:>3} {r['epochs']:>6} {r['seconds_per_epoch']:8.1f} "
            f"{r['test_elbo']:10.2f} {r['test_bound']:11.2f} {ll:>17} {paired:>22}"
        )
    print(f"log p(x): K = {args.num_samples} importance samples on the first {rows[0]['test_images']} test images")
    (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
