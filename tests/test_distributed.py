"""Data-parallel SVI under torchrun (CPU, gloo, 2 processes): the same arithmetic, one writer, no hangs.

Each test starts a real ``torchrun`` job, so they are in the slow tier (about ten seconds each).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import distributed_worker
import pytest
import torch

from pyro_vae import evaluate_run, load
from pyro_vae.runs.storage import load_checkpoint

HERE = Path(__file__).parent
pytestmark = pytest.mark.slow


def torchrun(*args, nproc=2, **kwargs):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "PYTHONWARNINGS": "ignore",
    }
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(process, timeout=300):
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()  # a no-op when it has ended; never leave a hung job behind
        process.wait()
    assert process.returncode == 0, err[-3000:]
    return out, err


def test_two_processes_of_batch_b_step_like_one_process_of_batch_2b(tmp_path, monkeypatch):
    finish(torchrun(str(HERE / "distributed_worker.py"), str(tmp_path / "ddp.pt"), "4"))
    distributed = torch.load(tmp_path / "ddp.pt", weights_only=True)

    monkeypatch.setattr(
        torch.distributions.Normal, "rsample", torch.distributions.Normal.rsample
    )  # undone after the test
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    distributed_worker.deterministic_draws()
    try:
        single = [distributed_worker.train(case, batch_size=8) for case in distributed_worker.CASES]
    finally:
        torch.set_default_dtype(dtype)
    for case, d, s in zip(distributed_worker.CASES, distributed, single):
        for name in s["parameters"]:
            torch.testing.assert_close(
                d["parameters"][name],
                s["parameters"][name],
                rtol=1e-9,
                atol=1e-12,
                msg=lambda m, name=name, case=case: f"{case} {name}: {m}",
            )
        for hd, hs in zip(d["history"], s["history"]):  # losses averaged over processes, evaluation summed over shards
            for key in ("train_elbo", "test_elbo_mc", "test_elbo_analytic"):
                assert hd[key] == pytest.approx(hs[key], rel=1e-10), (case, key)


TRAIN = ["--epochs", "3", "--hidden", "32", "--latent-dim", "2", "--batch-size", "64", "--quiet"]


def test_a_two_process_checkpoint_evaluates_identically_in_one_process(tmp_path):
    run = tmp_path / "run"
    out, err = finish(torchrun("-m", "pyro_vae", "train", *TRAIN, "--out", str(run)))
    assert out.count("run folder:") == 1  # process 0 alone reports and writes
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["train"]["world_size"] == 2 and not any(key.startswith("module.") for key in state["model"])
    vae, _ = load(run)  # one process, no process group
    result = evaluate_run(run)
    # The run's own summary was evaluated by process 0 on the whole test set from the run's seed: the same numbers.
    for key in ("elbo_mc", "elbo_analytic", "elbo_mc_se", "elbo_analytic_se"):
        assert result[key] == summary[f"test_{key}"], key
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]


def _children(pid):
    children = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            children.append(int(fields["Pid"]))
    return children


def test_killing_one_process_ends_the_job_with_an_error_not_a_hang(tmp_path):
    run = tmp_path / "run"
    process = torchrun(
        "-m",
        "pyro_vae",
        "train",
        "--epochs",
        "500",
        "--hidden",
        "32",
        "--latent-dim",
        "2",
        "--quiet",
        "--out",
        str(run),
    )
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # training has started in both processes
    assert process.poll() is None, process.communicate()[1][-3000:]
    workers = _children(process.pid)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)
    killed = time.monotonic()
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0
    assert time.monotonic() - killed < 60
    assert all(
        not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text() for pid in workers
    )
    assert (run / "config.toml").exists() and not list(run.glob(".*.tmp"))


def test_a_stopped_two_process_run_resumes_under_torchrun_only(tmp_path):
    run = tmp_path / "run"
    args = [
        "--epochs",
        "40",
        "--hidden",
        "32",
        "--latent-dim",
        "2",
        "--seed",
        "4294967000",
        "--checkpoint-every",
        "0",
        "--quiet",
    ]
    process = torchrun("-m", "pyro_vae", "train", *args, "--out", str(run))
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)  # torchrun forwards it to both processes
    try:
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode != 0 and "continue with: pyro-vae train --resume" in err, err[-3000:]
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["train"]["world_size"] == 2 and state["epoch"] < 40

    single = subprocess.run(
        [sys.executable, "-m", "pyro_vae", "train", "--resume", str(run)], capture_output=True, text=True, timeout=120
    )
    assert (
        single.returncode == 2
        and "written by 2 process(es), this job has 1; resume with torchrun --nproc_per_node=2" in single.stderr
    )
    finish(torchrun("-m", "pyro_vae", "train", "--resume", str(run), "--quiet"))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, 41))
    assert json.loads((run / "summary.json").read_text())["processes"] == 2
