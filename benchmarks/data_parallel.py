"""Seconds per MNIST epoch with 1 and 2 processes under torchrun, and the compute/communication split of a step.

    python benchmarks/data_parallel.py                       # MNIST from ../shared/data, MLP 784-400-50, 3 epochs
    python benchmarks/data_parallel.py --epochs 5 --batch-size 128 --nproc 1 2 4

Every row is a real ``torchrun --standalone --nproc_per_node=N -m pyro_vae train`` job; its seconds per
epoch are the median of the epochs' training times (``seconds`` in metrics.jsonl; evaluation
excluded). ``--batch-size`` is per process, so N processes take global batches of N × that size:
the table also shows one process with the same global batch, which takes the same number of steps.

The second table splits one step: the time of the forward/backward/Adam step alone (one thread, as
each torchrun process has) against the time of an all-reduce of a gradient-sized tensor between two
gloo processes: what DistributedDataParallel adds to every step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
LATENT, HIDDEN = 50, 400


def _run(nproc: int, batch_size: int, args: argparse.Namespace, folder: Path) -> float:
    out = folder / f"n{nproc}-b{batch_size}"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "pyro_vae",
        "train",
        "--dataset",
        args.dataset,
        "--data-root",
        str(args.data_root),
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(batch_size),
        "--hidden",
        str(HIDDEN),
        "--latent-dim",
        str(LATENT),
        "--elbo",
        "analytic",
        "--checkpoint-every",
        "0",
        "--quiet",
        "--out",
        str(out),
    ]
    if args.fused:
        command.append("--fused")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc))),
    }
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    seconds = [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(seconds)


def _step_ms(batch_size: int, steps: int = 40) -> tuple[float, int]:
    """Median ms of one fused analytic-ELBO training step (one thread), and the gradient's number of elements."""
    from pyro_vae import Objective, make_vae

    torch.set_num_threads(1)
    vae = make_vae((28, 28), latent_dim=LATENT, network={"type": "mlp", "hidden": [HIDDEN]})
    objective = Objective(vae, "analytic", fused=True)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    x = torch.rand(batch_size, 28, 28)
    times = []
    for i in range(steps + 5):
        start = time.perf_counter()
        optimizer.zero_grad()
        objective(x, 60_000).backward()
        optimizer.step()
        if i >= 5:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), sum(p.numel() for p in vae.parameters())


def _all_reduce_worker(rank: int, numel: int, port: int, result: str, rounds: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    tensor = torch.randn(numel)
    times = []
    for i in range(rounds + 5):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(tensor)
        if i >= 5:
            times.append(time.perf_counter() - start)
    if rank == 0:
        Path(result).write_text(str(1000 * statistics.median(times)))
    dist.destroy_process_group()


def _all_reduce_ms(numel: int, rounds: int = 40) -> float:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as f:
        result = f.name
    mp.spawn(_all_reduce_worker, args=(numel, port, result, rounds), nprocs=2, join=True)
    ms = float(Path(result).read_text())
    os.unlink(result)
    return ms


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128, help="per process")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--no-fused", dest="fused", action="store_false", help="Pyro's TraceMeanField_ELBO instead of the fused path"
    )
    args = parser.parse_args(argv)

    import pyro

    print(
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, pyro-ppl {pyro.__version__}; "
        f"{args.dataset}, MLP 784-{HIDDEN}-{LATENT}, analytic ELBO{' (fused)' if args.fused else ''}, Adam; "
        f"median of {args.epochs} epochs; torch threads per process = cores / processes"
    )
    print(
        f"\n{'processes':>9} {'batch/process':>13} {'global batch':>12} {'s/epoch':>8} "
        f"{'vs 1 process, same global batch':>32}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in args.nproc:
            seconds = _run(nproc, args.batch_size, args, Path(tmp))
            if nproc == 1:
                print(f"{1:>9} {args.batch_size:>13} {args.batch_size:>12} {seconds:8.2f} {'':>32}")
                continue
            alone = _run(1, nproc * args.batch_size, args, Path(tmp))
            print(f"{1:>9} {nproc * args.batch_size:>13} {nproc * args.batch_size:>12} {alone:8.2f} {'':>32}")
            print(
                f"{nproc:>9} {args.batch_size:>13} {nproc * args.batch_size:>12} {seconds:8.2f} "
                f"{alone / seconds:31.2f}x"
            )

    step, numel = _step_ms(args.batch_size)
    reduce = _all_reduce_ms(numel)
    print(
        f"\none step of {args.batch_size} points on one thread: {step:.2f} ms; "
        f"its gradient: {numel:,} floats ({4 * numel / 1e6:.2f} MB)"
    )
    print(
        f"all-reduce of that gradient between 2 gloo processes on this machine: {reduce:.2f} ms "
        f"({reduce / (step + reduce):.0%} of a data-parallel step)"
    )


if __name__ == "__main__":
    main()
