r"""Few labels, many images: Kingma et al.'s semi-supervised VAE (M2), its label summed out by enumeration.

    python examples/semi_supervised.py             # the bundled digits, 50 labels of 1,438 (half a minute)
    python examples/semi_supervised.py --smoke     # a few epochs, a few seconds
    python examples/semi_supervised.py --dataset mnist --data-root ../shared/data --labels 100 --epochs 50

.. math:: p(x, y, z) = \mathrm{Cat}(y \mid \tfrac1C)\,\mathcal N(z \mid 0, I)\,p(x \mid y, z), \qquad
    q(y, z \mid x) = q(y \mid x)\,q(z \mid x, y).

Where an image's label is kept, y is observed; where not, the guide's y site is enumerated and Pyro's
``TraceEnum_ELBO`` sums it out exactly, :math:`\sum_y q(y \mid x)\,[\mathrm{ELBO}(x, y) - \log q(y \mid x)]`, so
the classifier :math:`q(y \mid x)` learns from every image, labelled or not, and from the labels directly
(:math:`-\alpha \log q(y \mid x)` on labelled ones). The example trains the classifier alone on the labels as
the baseline, then M2 on everything, and compares their test accuracy; it reports the unlabelled test ELBO and
log p(x) with y summed out, I(x; y), and draws samples by class, Kingma et al.'s analogies and the confusion matrix.

Reference: Semi-supervised Learning with Deep Generative Models (Kingma, Rezende, Mohamed & Welling, 2014).
"""

import argparse
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F

import pyro_vae
from pyro_vae.infer.diagnostics import accuracy, diagnostics
from pyro_vae.models.ssvae import SSVAE
from pyro_vae.runs.class_plots import class_pictures
from pyro_vae.training.labels import UNLABELLED


def classifier_alone(program: SSVAE, data: pyro_vae.Dataset, steps: int) -> float:
    """The baseline: M2's classifier network trained on the kept labels only (cross-entropy, Adam)."""
    kept = data.train_labels != UNLABELLED
    x, y = data.train[kept], data.train_labels[kept]
    optimizer = torch.optim.Adam(program.classifier.parameters(), lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(program.classify(x), y).backward()
        optimizer.step()
    return accuracy(program, data.test, data.test_labels)[0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few epochs, small evaluations (seconds)")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--labels", type=int, default=50, help="training labels kept, balanced across classes")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument(
        "--label-batches", default="mixed", choices=("mixed", "balanced", "ratio"), help="data.label_batches"
    )
    parser.add_argument("--num-samples", type=int, default=1000, help="K of the importance-sampled log p(x)")
    parser.add_argument("--out", default="runs/semi_supervised", help="where the pictures go")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs, num_samples = (3, 20) if args.smoke else (args.epochs, args.num_samples)

    data = pyro_vae.load_dataset(
        args.dataset,
        data_root=args.data_root,
        binarize="dynamic",
        labels=args.labels,
        label_seed=args.seed,
        label_batches=args.label_batches,
    )
    print(f"{data.name}: {data.num_labelled} of {len(data.train)} training images labelled, {len(data.test)} test")
    size = dict(latent_dim=8, hidden=(256,)) if data.name == "digits" else {}

    pyro.set_rng_seed(args.seed)
    baseline = classifier_alone(SSVAE(data.event_shape, **size), data, steps=30 if args.smoke else 500)
    print(f"the classifier alone, on the labels:      test accuracy {100 * baseline:.2f}%")

    pyro.set_rng_seed(args.seed)
    m2 = SSVAE(data.event_shape, **size)
    pyro_vae.fit(m2, data, epochs=epochs, batch_size=100, lr=1e-3, seed=args.seed, progress=not args.smoke)
    hit, se = accuracy(m2, data.test, data.test_labels)
    print(f"M2, on the labels and the unlabelled images: test accuracy {100 * hit:.2f}% ± {100 * se:.2f}")

    # evaluation sums y out (enumeration): the unlabelled ELBO, and log p(x) = log sum_y p(y) p(x | y)
    elbo = pyro_vae.evaluate_elbo(m2, data.test, estimators=("mc",))["elbo_mc"]
    log_px = pyro_vae.log_likelihood(m2, data.test, num_samples=num_samples).mean().item()
    information = diagnostics(m2, data.test)["sites"]["y"]["mutual_information"]
    print(f"unlabelled test ELBO {elbo:.2f}, log p(x) {log_px:.2f} (K = {num_samples}) nats; I(x; y) {information:.3f}")

    out = Path(args.out)
    drawn, _ = class_pictures(m2, data, out, f"M2 | {data.name} | {data.num_labelled} labels | {epochs} epochs")
    print("pictures:", ", ".join(str(out / name) for name in drawn))
    return {"baseline": baseline, "accuracy": hit, "elbo": elbo, "log_px": log_px, "information": information}


if __name__ == "__main__":
    main()
