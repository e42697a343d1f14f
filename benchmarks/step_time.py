"""Milliseconds per SVI step for each ELBO estimator, with and without JIT, beside Pyro's shipped JIT classes.

    python benchmarks/step_time.py                 # MLP 784-400-50, Bernoulli, Adam, batches 32, 128, 512
    python benchmarks/step_time.py --batch 256 --repeats 5

Each configuration is timed in rounds interleaved with the others (so that a slow spell of the
machine hits all of them alike); the table shows the median over rounds of the median step time
in each round, and the ratio to the un-jitted ``mc`` estimator.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import pyro
import torch
from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO

from pyro_vae import Objective, make_vae


def _shipped(cls: type, vae) -> Objective:
    """An Objective that runs one of Pyro's own JIT classes unchanged, for timing only.

    (Pyro 1.9's ``JitTrace_ELBO.differentiable_loss`` doubles the gradient; the step costs the same.)
    """
    objective = Objective(vae, "mc", jit=True)
    objective.elbo = cls(max_plate_nesting=1, ignore_jit_warnings=True)
    return objective


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, pyro-ppl {pyro.__version__}, {torch.get_num_threads()} threads; MLP 784-400-50, Bernoulli, Adam")
    print(f"{'batch':>5}  {'estimator':<34} {'ms/step':>8} {'vs mc':>6}")
    for batch in args.batch:
        pyro.set_rng_seed(0)
        vae = make_vae((28, 28), latent_dim=50, network={"type": "mlp", "hidden": [400]})
        optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
        x = torch.rand(batch, 28, 28).bernoulli()
        objectives = {
            "mc (Trace_ELBO)": Objective(vae, "mc"),
            "mc, jit": Objective(vae, "mc", jit=True),
            "analytic (TraceMeanField_ELBO)": Objective(vae, "analytic"),
            "analytic, jit": Objective(vae, "analytic", jit=True),
            "Pyro's JitTraceMeanField_ELBO": _shipped(JitTraceMeanField_ELBO, vae),
            "Pyro's JitTrace_ELBO": _shipped(JitTrace_ELBO, vae),
        }
        rounds: dict[str, list[float]] = {name: [] for name in objectives}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings of the shipped classes, re-emitted at every re-trace
            for _ in range(args.repeats):
                for name, objective in objectives.items():
                    times = []
                    for step in range(args.steps + 3):
                        start = time.perf_counter()
                        optimizer.zero_grad()
                        objective(x, 60_000).backward()
                        optimizer.step()
                        if step >= 3:  # the first steps compile
                            times.append(time.perf_counter() - start)
                    rounds[name].append(statistics.median(times))
        reference = statistics.median(rounds["mc (Trace_ELBO)"])
        for name, values in rounds.items():
            ms = statistics.median(values)
            print(f"{batch:>5}  {name:<34} {1000 * ms:8.2f} {ms / reference:6.2f}")


if __name__ == "__main__":
    main()
