"""A corpus of bad input, driven through the real command line.

Every row of :data:`CASES` is one thing a user can get wrong: a config value, a data file, a run
folder, a checkpoint. Each must give exactly one line ``pyro-vae: error: ...`` (or argparse's one
``error:`` line after its usage) that names the field or file, the value and the fix, exit with
status 2, show no traceback, and write nothing: the case's whole folder (which is also the working
directory) is the same, file by file, in name, size and modification time, before and after.

Most rows call :func:`pyro_vae.cli.main.main` in-process; the rows marked ``subprocess=True`` run
``python -m pyro_vae`` as a user would, to prove that no traceback reaches the terminal. Adding a
case is adding a row.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.cli.main import main
from pyro_vae.runs.storage import CHECKPOINT_FORMAT

#: Settings that make a ``train`` case fast should the library wrongly accept it. Given as
#: ``--set`` (applied first, in order) so that every option and ``--set`` of a case overrides them.
TINY = ["--set", "train.epochs=1", "--set", "model.latent_dim=2", "--set", "model.network.hidden=[8]", "--quiet"]
MARKER = "MARKER"  # created by a payload's code if anything ever unpickles it

Writer = Callable[[Path, Path], None]  # (file to write, the case's folder)


class Payload:
    """Unpickling this object creates a file: a stand-in for any code a crafted file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def text(content: str | bytes) -> Writer:
    return lambda path, root: path.write_bytes(content.encode() if isinstance(content, str) else content)


def npy(array: np.ndarray) -> Writer:
    return lambda path, root: np.save(path, array, allow_pickle=array.dtype == object)


def npz(**arrays: np.ndarray) -> Writer:
    return lambda path, root: np.savez(path, **arrays)


def pt(make: Callable[[Path], object]) -> Writer:
    """``torch.save`` of ``make(case folder)`` (a callable, so that payloads can point into the folder)."""
    return lambda path, root: torch.save(make(root), path)


def truncated(writer: Writer) -> Writer:
    def write(path: Path, root: Path) -> None:
        writer(path, root)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return write


def edited(old: str, new: str) -> Writer:
    """Replace ``old`` by ``new`` in a file of the copied run."""

    def write(path: Path, root: Path) -> None:
        content = path.read_text()
        assert old in content, f"{old!r} not in {path}"
        path.write_text(content.replace(old, new))

    return write


def deleted(path: Path, root: Path) -> None:
    path.unlink()


def pickled(make: Callable[[Path], object]) -> Writer:
    """A plain pickle (protocol 4, not torch's format) of ``make(case folder)``."""

    def write(path: Path, root: Path) -> None:
        with open(path, "wb") as f:
            pickle.dump(make(root), f, protocol=4)

    return write


def code_checkpoint(root: Path) -> dict:
    """What a checkpoint crafted to run code holds: the format tag and a payload."""
    return {"format": CHECKPOINT_FORMAT, "model": Payload(root / MARKER)}


def evil_npy(path: Path, root: Path) -> None:
    np.save(path, np.array([Payload(root / MARKER)], dtype=object), allow_pickle=True)


def read_only_folder(path: Path, root: Path) -> None:
    path.mkdir()
    path.chmod(0o555)


UNIT = np.linspace(0.0, 1.0, 80).reshape(20, 4)  # 20 points of 4 values in [0, 1]
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def halves(shape: tuple[int, ...], index: tuple[int, ...], value: float) -> np.ndarray:
    """An array of 0.5 but for ``value`` at ``index``."""
    x = np.full(shape, 0.5)
    x[index] = value
    return x


@dataclass(frozen=True)
class Case:
    args: str  # the command line after ``pyro-vae``; {tmp} is the case's folder, {run} a copy of a finished run
    message: str  # a regular expression searched in the error line
    files: dict[str, Writer] = field(
        default_factory=dict
    )  # path under {tmp} -> writer, applied after the run is copied
    run: bool = False  # copy the module's finished run to {tmp}/run first
    subprocess: bool = False  # run ``python -m pyro_vae`` instead of main() in-process


def case(id: str, args: str, message: str, *, xfail: str | None = None, marks=(), **kwargs) -> pytest.param:
    marks = [*marks, *([pytest.mark.xfail(strict=True, reason=xfail)] if xfail else [])]
    return pytest.param(Case(args, message, **kwargs), id=id, marks=marks)


no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
not_root = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (see the test below)")

CASES = [
    # --- config: wrong types -------------------------------------------------------------------------------
    case("config-epochs-word", "train --set train.epochs=ten", r"train\.epochs must be an integer \(got 'ten'\)"),
    case(
        "config-latent-dim-fraction",
        "train --set model.latent_dim=2.5",
        r"model\.latent_dim must be an integer \(got 2\.5\)",
    ),
    case(
        "config-bool-as-string-set",
        "train --set 'train.jit=\"true\"'",
        r"train\.jit must be true or false \(got 'true'\)",
    ),
    case(
        "config-bool-as-string-file",
        "train --config {tmp}/c.toml",
        r"c\.toml: train\.fused must be true or false \(got 'yes'\)",
        files={"c.toml": text('[train]\nfused = "yes"\n')},
    ),
    case(
        "config-list-as-number",
        "train --set model.network.hidden=400",
        r"model\.network\.hidden must be a list \(got 400\)",
    ),
    case(
        "config-unknown-preset",
        "train --config vampp",
        r"--config 'vampp' is neither a file nor a preset; presets: flow, laplace, mixture, normal, standard_normal, "
        r"student_t, vamp \(pyro-vae presets\)",
    ),
    case("config-dataset-as-number", "train --set data.dataset=3", r"data\.dataset must be a string \(got 3\)"),
    case("config-table-as-value", "train --set train=3", r"train must be a table \(got 3\)"),
    case(
        "config-value-as-table",
        "train --set model.latent_dim.x=3",
        r"model\.latent_dim\.x: model\.latent_dim is 2, not a table; set model\.latent_dim itself",
    ),
    # --- config: out of range ------------------------------------------------------------------------------
    case("config-negative-epochs", "train --epochs -2", r"train\.epochs must be >= 1 \(got -2\)"),
    case("config-lr-zero", "train --lr 0", r"train\.lr must be > 0 \(got 0\.0\)"),
    case("config-lr-infinite", "train --lr inf", r"train\.lr must be a finite number \(got inf\)"),
    case(
        "config-prior-loc-nan",
        "train --set model.prior.type=normal --set model.prior.loc=nan",
        r"model\.prior\.loc must be a finite number \(got nan\)",
    ),
    case(
        "config-batch-larger-than-data",
        "train --batch-size 5000",
        r"train\.batch_size \(5000\) is larger than the training set \(1438 points\); use --batch-size 1438 or less",
    ),
    case(
        "config-prior-components-zero",
        "train --set model.prior.type=mixture --set model.prior.components=0",
        r"model\.prior\.components must be >= 1 \(got 0\)",
    ),
    case("config-num-particles-zero", "train --num-particles 0", r"train\.num_particles must be >= 1 \(got 0\)"),
    case("config-negative-beta", "train --beta -0.5", r"train\.beta must be >= 0 \(got -0\.5\)"),
    case(
        "config-seed-beyond-32-bits", "train --seed 4294967296", r"train\.seed must be <= 4294967295 \(got 4294967296\)"
    ),
    case(
        "config-conv-without-layers",
        "train --set model.network.type=conv --set model.network.channels=[]",
        r"model\.network\.channels must list at least one layer \(got \[\]\)",
    ),
    # --- config: unknown keys and names --------------------------------------------------------------------
    case(
        "config-unknown-table",
        "train --config {tmp}/c.toml",
        r"c\.toml: trian: unknown table \(the tables are data, model, train\); the keys are data\.dataset, ",
        files={"c.toml": text("[trian]\nepochs = 3\n")},
    ),
    case(
        "config-unknown-section-key",
        "train --set train.epoch=3",
        r"train\.epoch: unknown key; allowed: epochs, batch_size",
    ),
    case(
        "config-unknown-component-parameter",
        "train --set model.network.hiden=[3]",
        r"model\.network\.hiden: unknown parameter for network 'mlp'; allowed: hidden, activation",
    ),
    case(
        "config-unknown-prior",
        "train --set model.prior.type=vampp",
        r"model\.prior\.type: unknown prior type 'vampp'; known: standard_normal, .*vamp, flow",
    ),
    case(
        "config-unknown-likelihood",
        "train --set model.likelihood.type=poisson",
        r"model\.likelihood\.type: unknown likelihood type 'poisson'; known: bernoulli, gaussian",
    ),
    case(
        "config-unknown-network",
        "train --set model.network.type=resnet",
        r"model\.network\.type: unknown network type 'resnet'; known: mlp, conv",
    ),
    case(
        "config-unknown-estimator", "train --elbo exact", r"train\.elbo: unknown estimator 'exact'; known: mc, analytic"
    ),
    case(
        "config-unknown-device",
        "train --device tpu",
        r"train\.device: unknown device 'tpu'; use auto, cpu, cuda or cuda:N",
    ),
    case(
        "config-unsupported-device",
        "train --device meta",
        r"train\.device: unsupported device 'meta'; use auto, cpu, cuda or cuda:N",
    ),
    case(
        "config-cuda-unavailable",
        "train --device cuda",
        r"train\.device is 'cuda' but CUDA is not available here; use auto or cpu",
        marks=[no_cuda],
    ),
    # --- config: options that cannot go together -----------------------------------------------------------
    case(
        "config-fused-with-jit",
        "train --fused --jit",
        r"train\.fused and train\.jit cannot both be true: .*drop --jit \(train\.jit = false\)",
    ),
    case(
        "config-flow-prior-1d-latent",
        "train --set model.prior.type=flow --latent-dim 1",
        r"model\.prior: a flow prior needs model\.latent_dim >= 2 \(got 1\); use another prior",
    ),
    case(
        "config-binarize-data-outside-unit-interval",
        "train --dataset {tmp}/x.npy --binarize static --set model.likelihood.type=gaussian",
        r"x\.npy \(train\) has value 3 at index \[0, 0\], outside \[0, 1\]; "
        r"binarization reads values as probabilities; rescale the data into \[0, 1\]",
        files={"x.npy": npy(np.full((20, 4), 3.0))},
    ),
    case(
        "config-hidden-with-conv",
        "train --set model.network.type=conv --hidden 8",
        r"model\.network\.hidden: unknown parameter for network 'conv'; allowed: channels, activation",
    ),
    # --- config: files and syntax --------------------------------------------------------------------------
    case(
        "config-invalid-toml",
        "train --config {tmp}/c.toml",
        r"c\.toml is not valid TOML: .*\(at line 1, column 7\); correct the syntax there",
        files={"c.toml": text("[train\nepochs = 3\n")},
        subprocess=True,
    ),
    case(
        "config-missing-file",
        "train --config {tmp}/nope.toml",
        r"cannot read config file .*nope\.toml: No such file or directory; give the path of a TOML file",
    ),
    case(
        "config-file-is-a-folder",
        "train --config {tmp}",
        r"cannot read config file .*: Is a directory; give the path of a TOML file",
    ),
    case(
        "config-file-not-utf8",
        "train --config {tmp}/c.toml",
        r"cannot read config file .*c\.toml: .*not UTF-8 text.*; give the path of a TOML file",
        files={"c.toml": text(b"\xff\xfe[\x00t\x00r\x00")},
    ),
    case(
        "config-set-without-value",
        "train --set train.epochs",
        r"--set 'train\.epochs': expected key\.sub=value, e\.g\. --set train\.epochs=5",
    ),
    # --- data: values --------------------------------------------------------------------------------------
    case(
        "data-nan",
        "train --dataset {tmp}/x.npy",
        r"x\.npy \(train\) contains nan at index \[\d+, 1\]; remove or replace NaN and inf values",
        files={"x.npy": npy(np.array([[0.5, np.nan]] * 10))},
    ),
    case(  # the index is the file's, not the shuffled training split's (row 3 is a training point)
        "data-nan-named-by-its-index-in-the-file",
        "train --dataset {tmp}/x.npy",
        r"x\.npy \(train\) contains nan at index \[3, 2, 1\]; remove or replace NaN and inf values",
        files={"x.npy": npy(halves((20, 3, 2), (3, 2, 1), np.nan))},
    ),
    case(  # row 5 is a test point
        "data-out-of-range-named-by-its-index-in-the-file",
        "train --dataset {tmp}/x.npy",
        r"x\.npy \(test\) has value 7 at index \[5, 1\], outside \[0, 1\]",
        files={"x.npy": npy(halves((20, 4), (5, 1), 7.0))},
    ),
    case(  # row 11 is held out for validation
        "data-nan-in-validation-named-by-its-index-in-the-file",
        "train --dataset {tmp}/x.npy --validation 4",
        r"x\.npy \(validation\) contains nan at index \[11, 0\]",
        files={"x.npy": npy(halves((20, 4), (11, 0), np.nan))},
    ),
    case(
        "data-inf",
        "train --dataset {tmp}/x.npz",
        r"x\.npz \(test\) contains inf at index \[0, 0\]; remove or replace NaN and inf values",
        files={"x.npz": npz(train=UNIT, test=np.full((3, 4), np.inf))},
    ),
    case(
        "data-outside-bernoulli",
        "train --dataset {tmp}/x.npy",
        r"x\.npy \(train\) has value 1\.3 at index \[0, 0\], outside \[0, 1\]; "
        r"rescale the data into \[0, 1\] or choose a likelihood",
        files={"x.npy": npy(np.full((10, 4), 1.3))},
    ),
    case(
        "data-raw-pixels-for-bernoulli",
        "train --dataset {tmp}/x.npy",
        r"x\.npy \(train\) has value 255 at index \[0, 0\], outside \[0, 1\]; rescale the data",
        files={"x.npy": npy(np.full((10, 4), 255, dtype=np.uint8))},
    ),
    case(
        "data-outside-continuous-bernoulli",
        "train --dataset {tmp}/x.npy --set model.likelihood.type=continuous_bernoulli",
        r"x\.npy \(train\) has value -0\.5 at index \[0, 0\], outside \[0, 1\]; rescale",
        files={"x.npy": npy(np.full((10, 4), -0.5))},
    ),
    # --- data: shapes --------------------------------------------------------------------------------------
    case(
        "data-vectors-for-conv",
        "train --dataset {tmp}/x.npy --set model.network.type=conv",
        r"conv network needs images of shape \(H, W\) or \(C, H, W\), but the data points have shape \(4,\); "
        r"use the mlp network",
        files={"x.npy": npy(UNIT)},
    ),
    case(
        "data-4d-points-for-conv",
        "train --dataset {tmp}/x.npy --set model.network.type=conv",
        r"data points have shape \(2, 3, 4, 4\); use the mlp network",
        files={"x.npy": npy(np.zeros((10, 2, 3, 4, 4)))},
    ),
    case(
        "data-one-value-per-point",
        "train --dataset {tmp}/x.npy",
        r"data file .*x\.npy: entry 'x' has shape \(10,\), a single axis; it must have the shape \(N, \.\.\.\), "
        r"N points of one or more values each: save x\.reshape\(10, 1\)",
        files={"x.npy": npy(np.zeros(10))},
    ),
    case(
        "data-points-without-values",
        "train --dataset {tmp}/x.npy",
        r"data file .*x\.npy: entry 'x' has shape \(10, 0\), points without values; "
        r"it must have the shape \(N, \.\.\.\)",
        files={"x.npy": npy(np.zeros((10, 0)))},
    ),
    case(
        "data-single-number",
        "train --dataset {tmp}/x.npy",
        r"data file .*x\.npy: entry 'x' is a single number; store an array of shape \(N, \.\.\.\)",
        files={"x.npy": npy(np.array(0.5))},
    ),
    case(
        "data-empty",
        "train --dataset {tmp}/x.npy",
        r"data set x\.npy has 0 training and 0 test points; it needs at least one of each",
        files={"x.npy": npy(np.zeros((0, 4)))},
    ),
    case(
        "data-single-point",
        "train --dataset {tmp}/x.npy",
        r"data set x\.npy has 1 training and 0 test points; it needs at least one of each",
        files={"x.npy": npy(np.zeros((1, 4)))},
    ),
    case(
        "data-train-test-shapes-differ",
        "train --dataset {tmp}/x.npz",
        r"train \(20, 4\) and test \(3, 5\) must have .* the same non-empty shape per point",
        files={"x.npz": npz(train=UNIT, test=np.zeros((3, 5)))},
    ),
    case(
        "data-labels-wrong-length",
        "train --dataset {tmp}/x.npz",
        r"data file .*x\.npz: labels 'y' have shape \(10,\); expected \(20,\), one label per point of 'x'",
        files={"x.npz": npz(x=UNIT, y=np.arange(10))},
    ),
    case(
        "data-labels-not-integers",
        "train --dataset {tmp}/x.npz",
        r"data set x\.npz: (train|test) labels are not integers: 2\.5 at index 7; store class indices 0, 1, \.\.\.",
        files={"x.npz": npz(x=UNIT, y=np.where(np.arange(20) == 7, 2.5, np.arange(20) % 2))},
    ),
    case(
        "data-labels-out-of-range",
        "train --dataset {tmp}/x.npz --set data.num_classes=2",
        r"data set x\.npz: (train|test) labels: label 5 at index 3 is out of range; classes are 0\.\.1",
        files={"x.npz": npz(x=UNIT, y=np.where(np.arange(20) == 3, 5, np.arange(20) % 2))},
    ),
    case(
        "data-labels-negative",
        "train --dataset {tmp}/x.npz",
        r"label -2 at index 3 is out of range; classes are 0 or more",
        files={"x.npz": npz(x=UNIT, y=np.where(np.arange(20) == 3, -2, np.arange(20) % 2))},
    ),
    case("data-labels-fewer-than-classes", "train --labels 5", r"data\.labels = 5 is fewer than the 10 classes"),
    case(
        "data-labels-more-than-points",
        "train --labels 5000",
        r"data\.labels = 5000 is more than the 1438 training points; keep at most that many",
    ),
    case(
        "data-labels-without-labels",
        "train --dataset {tmp}/x.npy --labels 4",
        r"data\.labels = 4, but data set x\.npy has no training labels",
        files={"x.npy": npy(UNIT)},
    ),
    case(
        "data-label-batches-unknown",
        "train --model ssvae --labels 20 --set data.label_batches=halves",
        r"data\.label_batches must be one of 'mixed', 'balanced', 'ratio' \(got 'halves'\)",
    ),
    case(
        "config-ssvae-free-bits",
        "train --model ssvae --labels 50 --free-bits 0.5",
        r"train\.free_bits: the guide enumerates site 'y', which only 'mc' \(TraceEnum_ELBO\) sums out in training",
    ),
    case(
        "data-cvae-needs-every-label",
        "train --model cvae --labels 20",
        r"CVAE\.model\(x, y\) needs a label for every training point, and data set digits has 20 of 1438",
    ),
    case(
        "data-cvae-without-labels",
        "train --model cvae --dataset {tmp}/x.npy --batch-size 8",
        r"CVAE\.model\(x, y\) needs a label for every training point, and data set x\.npy has 0 of",
        files={"x.npy": npy(UNIT)},
    ),
    case(
        "config-m1m2-without-features",
        "train --model m1m2 --labels 20",
        r"model\.features is required for model 'm1m2'",
    ),
    case(
        "config-m1m2-features-missing",
        "train --model m1m2 --labels 20 --set model.features=nowhere",
        r"model\.features = '.*nowhere', the run the program is built on: run folder .*nowhere does not exist",
    ),
    case(
        "config-m1m2-features-of-other-data",
        "train --model m1m2 --dataset {tmp}/x.npy --batch-size 8 --set model.features={run}",
        r"model\.features = '.*run' was trained on points of shape \(8, 8\), these are \(4,\); train M1 on the same",
        run=True,
        files={"x.npy": npy(UNIT)},
    ),
    case(
        "data-train-without-test",
        "train --dataset {tmp}/x.npz",
        r"x\.npz has 'train' but no 'test' array; add one",
        files={"x.npz": npz(train=UNIT)},
    ),
    case(
        "data-two-unnamed-arrays",
        "train --dataset {tmp}/x.npz",
        r"x\.npz holds arrays \['a', 'b'\]; name the data 'x'",
        files={"x.npz": npz(a=UNIT, b=UNIT)},
    ),
    # --- data: damaged files and wrong dtypes --------------------------------------------------------------
    case(
        "data-truncated-npy",
        "train --dataset {tmp}/x.npy",
        r"cannot read data file .*x\.npy: .*; it must be a numeric array saved by numpy\.save",
        files={"x.npy": truncated(npy(UNIT))},
    ),
    case(
        "data-truncated-npz",
        "train --dataset {tmp}/x.npz",
        r"cannot read data file .*x\.npz: .*; it must be a numeric array saved by numpy\.save",
        files={"x.npz": truncated(npz(x=UNIT))},
    ),
    case(
        "data-truncated-pt",
        "train --dataset {tmp}/x.pt",
        r"^(?!.*weights_only).*cannot read data file .*x\.pt: .*; it must be a numeric array saved by numpy\.save",
        files={"x.pt": truncated(pt(lambda root: torch.rand(20, 4)))},
    ),
    case(
        "data-not-a-torch-file",
        "train --dataset {tmp}/x.pt",
        r"^(?!.*weights_only).*cannot read data file .*x\.pt: not a "
        r"file written by numpy\.save/savez or torch\.save, or damaged",
        files={"x.pt": text("0.5 0.5\n")},
    ),
    case(
        "data-strings",
        "train --dataset {tmp}/x.npy",
        r"data file .*x\.npy: entry 'x' has dtype <U1; store real numbers",
        files={"x.npy": npy(np.array([["a", "b"]] * 5))},
    ),
    case(
        "data-complex",
        "train --dataset {tmp}/x.npy",
        r"data file .*x\.npy: entry 'x' has dtype complex128; store real numbers",
        files={"x.npy": npy(np.zeros((10, 3), dtype=complex))},
    ),
    case(
        "data-complex-tensor",
        "train --dataset {tmp}/x.pt",
        r"data file .*x\.pt: entry 'x' has dtype torch\.complex64; store real numbers",
        files={"x.pt": pt(lambda root: torch.zeros(10, 3, dtype=torch.complex64))},
    ),
    case(
        "data-list-not-array",
        "train --dataset {tmp}/x.pt",
        r"data file .*x\.pt: entry 'x' is a list, not an array; store a numpy array or a torch tensor",
        files={"x.pt": pt(lambda root: [[0.5, 0.5]] * 10)},
    ),
    case(
        "data-pickled-object-npy",
        "train --dataset {tmp}/x.npy",
        r"cannot read data file .*x\.npy: Object arrays cannot be loaded when allow_pickle=False; "
        r"it must be a numeric array",
        files={"x.npy": evil_npy},
    ),
    case(
        "data-pickled-code-pt",
        "train --dataset {tmp}/x.pt",
        r"data file .*x\.pt holds pickled Python objects, which pyro-vae never loads \(they could run code\); "
        r"save tensors or arrays only",
        files={"x.pt": pt(lambda root: {"x": Payload(root / MARKER)})},
    ),
    case(
        "data-pickled-code-plain-pickle",
        "train --dataset {tmp}/x.pt",
        r"^(?!.*weights_only).*cannot read data file .*x\.pt: not a "
        r"file written by numpy\.save/savez or torch\.save, or damaged",
        files={"x.pt": pickled(lambda root: {"x": Payload(root / MARKER)})},
        subprocess=True,
    ),
    # --- data: where the data come from --------------------------------------------------------------------
    case(
        "data-missing-file",
        "train --dataset {tmp}/missing.npy",
        r"data file .*missing\.npy does not exist; give --dataset digits, mnist or the path of an existing",
    ),
    case(
        "data-unknown-name",
        "train --dataset cifar",
        r"data\.dataset: unknown data set 'cifar'; use digits, mnist or the path of a \.npy/\.npz/\.pt file",
    ),
    case(
        "data-unknown-suffix",
        "train --dataset {tmp}/x.csv",
        r"data\.dataset: unknown data set '.*x\.csv'; use digits, mnist or the path",
        files={"x.csv": text("0.5,0.5\n")},
    ),
    case(
        "data-mnist-missing",
        "train --dataset mnist --data-root {tmp}/empty",
        r"MNIST not found under .*empty/MNIST/raw; "
        r"point --data-root \(data\.data_root\) at the folder that holds MNIST/raw",
    ),
    case(
        "data-mnist-damaged",
        "train --dataset mnist --data-root {tmp}",
        r"cannot read MNIST from .*MNIST/raw \(.*\); delete the damaged files and copy or download them again",
        files={f"MNIST/raw/{name}": text(b"garbage") for name in MNIST_FILES},
    ),
    # --- command line: run folders -------------------------------------------------------------------------
    case(
        "cli-out-is-a-run-without-overwrite",
        "train --out {run}",
        r"--out .*run already exists and is not empty; pass --overwrite to replace that run",
        run=True,
    ),
    case(
        "cli-overwrite-a-folder-that-is-not-a-run",
        "train --out {tmp}/thesis --overwrite",
        r"--out .*thesis is not empty and is not a pyro-vae run folder; refusing to delete it",
        files={"thesis/thesis.tex": text("precious")},
    ),
    case(
        "cli-out-is-a-file",
        "train --out {tmp}/out",
        r"--out .*out is a file; give a folder path",
        files={"out": text("a file")},
    ),
    case(
        "cli-out-in-a-read-only-folder",
        "train --out {tmp}/locked/run/sub",
        r"--out .*locked/run/sub cannot be created in .*locked: Permission denied; make .*locked writable",
        files={"locked": read_only_folder},
        marks=[not_root],
    ),
    case(
        "cli-out-inside-a-file",
        "train --out {tmp}/afile/run",
        r"--out .*afile/run is inside .*afile, which is a file; give a folder path",
        files={"afile": text("a file")},
    ),
    case(
        "cli-evaluate-missing-folder",
        "evaluate {tmp}/nowhere",
        r"run folder .*nowhere does not exist; give the --out folder of a finished pyro-vae train",
        subprocess=True,
    ),
    case(
        "cli-evaluate-not-a-run",
        "evaluate {tmp}/notes",
        r"notes is not a finished pyro-vae run \(no config\.toml, checkpoint\.pt\); give the --out folder",
        files={"notes/a.txt": text("notes")},
    ),
    case(
        "cli-plot-not-a-run",
        "plot {tmp}/notes",
        r"notes is not a finished pyro-vae run \(no config\.toml, checkpoint\.pt\)",
        files={"notes/a.txt": text("notes")},
    ),
    case(
        "cli-plot-missing-folder", "plot {tmp}/nowhere", r"run folder .*nowhere does not exist; give the --out folder"
    ),
    case(
        "cli-compare-not-a-run",
        "compare {tmp}/notes",
        r"notes is not a finished pyro-vae run \(no config\.toml, checkpoint\.pt\)",
        files={"notes/a.txt": text("notes")},
    ),
    case(
        "cli-compare-missing-folder",
        "compare {tmp}/nowhere",
        r"run folder .*nowhere does not exist; give the --out folder",
    ),
    # --- command line: bad arguments -----------------------------------------------------------------------
    case(
        "cli-epochs-word", "train --epochs ten", r"pyro-vae train: error: argument --epochs: invalid int value: 'ten'"
    ),
    case(
        "cli-hidden-malformed",
        "train --hidden 400,x",
        r"argument --hidden: expected comma-separated layer sizes such as 400,400, got '400,x'",
    ),
    case("cli-unknown-command", "fit", r"pyro-vae: error: argument COMMAND: invalid choice: 'fit'"),
    case(
        "cli-bad-choice",
        "evaluate {run} --split val",
        r"argument --split: invalid choice: 'val' \(choose from '?train'?, '?test'?\)",
        run=True,
    ),
    case(
        "cli-evaluate-zero-particles",
        "evaluate {run} --num-particles 0",
        r"argument --num-particles: must be >= 1, got 0",
        run=True,
    ),
    case(
        "cli-evaluate-negative-samples",
        "evaluate {run} --num-samples -1",
        r"--num-samples must be >= 0 \(got -1\)",
        run=True,
    ),
    case(
        "cli-compare-zero-particles",
        "compare {run} --particles 1,0",
        r"argument --particles: numbers of particles must be >= 1, got '1,0'",
        run=True,
    ),
    case(
        "cli-compare-one-repeat",
        "compare {run} --repeats 1",
        r"--repeats must be >= 2 to estimate a variance \(got 1\)",
        run=True,
    ),
    case(
        "cli-compare-unknown-device",
        "compare {run} --device tpu",
        r"--device: unknown device 'tpu'; use auto, cpu, cuda or cuda:N",
        run=True,
    ),
    case(
        "cli-evaluate-cuda-absent",
        "evaluate {run} --device cuda",
        r"--device is 'cuda' but CUDA is not available here; use auto or cpu",
        run=True,
        marks=[no_cuda],
    ),
    # --- checkpoints ---------------------------------------------------------------------------------------
    case(
        "checkpoint-truncated",
        "evaluate {run}",
        r"cannot read checkpoint .*checkpoint\.pt \(.*\); "
        r"it is damaged or not a pyro-vae checkpoint: retrain, or restore it from a copy",
        run=True,
        files={"run/checkpoint.pt": truncated(lambda path, root: None)},
    ),
    case(
        "checkpoint-empty",
        "plot {run}",
        r"cannot read checkpoint .*checkpoint\.pt .*; it is damaged or not a pyro-vae checkpoint",
        run=True,
        files={"run/checkpoint.pt": text(b"")},
    ),
    case(
        "checkpoint-not-a-checkpoint",
        "evaluate {run}",
        r"cannot read checkpoint .*checkpoint\.pt .*; it is damaged or not a pyro-vae checkpoint",
        run=True,
        files={"run/checkpoint.pt": text("epoch 1: elbo -30\n")},
    ),
    case(
        "checkpoint-other-architecture",
        "evaluate {run}",
        r"checkpoint .*checkpoint\.pt does not fit the model of .*config\.toml .*; "
        r"was config\.toml edited\? restore it or retrain",
        run=True,
        files={"run/config.toml": edited("latent_dim = 2", "latent_dim = 3")},
    ),
    case(
        "checkpoint-format-999",
        "compare {run}",
        r"checkpoint .*checkpoint\.pt has format 999, this pyro-vae reads formats? [\d, ]+; "
        r"use the pyro-vae version that wrote it, or retrain",
        run=True,
        files={"run/checkpoint.pt": pt(lambda root: {"format": 999})},
    ),
    case(
        "checkpoint-untagged",
        "evaluate {run}",
        r"checkpoint\.pt is not a pyro-vae checkpoint \(no format tag\); point to a run folder",
        run=True,
        files={"run/checkpoint.pt": pt(lambda root: {"weights": torch.zeros(3)})},
    ),
    case(
        "checkpoint-missing-entries",
        "evaluate {run}",
        r"checkpoint .*checkpoint\.pt has no 'event_shape' or 'model'; .*retrain",
        run=True,
        files={"run/checkpoint.pt": pt(lambda root: {"format": CHECKPOINT_FORMAT})},
    ),
    case(
        "checkpoint-pickled-code",
        "evaluate {run}",
        r"^(?!.*weights_only).*checkpoint .*checkpoint\.pt holds pickled Python objects, "
        r"which pyro-vae never loads \(they could run code\); .* or retrain",
        run=True,
        files={"run/checkpoint.pt": pt(code_checkpoint)},
    ),
    case(
        "checkpoint-pickled-code-plain-pickle",
        "evaluate {run}",
        r"^(?!.*weights_only).*checkpoint .*checkpoint\.pt.*(holds pickled "
        r"Python objects|it is damaged or not a pyro-vae checkpoint)",
        run=True,
        files={"run/checkpoint.pt": pickled(code_checkpoint)},
        subprocess=True,
    ),
    case(
        "checkpoint-junk-bytes",
        "evaluate {run}",
        r"^(?!.*weights_only).*cannot read checkpoint .*checkpoint\.pt .*; "
        r"it is damaged or not a pyro-vae checkpoint: retrain, or restore it",
        run=True,
        files={"run/checkpoint.pt": text("not a torch file")},
    ),
    case(
        "checkpoint-missing",
        "evaluate {run}",
        r"run is not a finished pyro-vae run \(no checkpoint\.pt\); give the --out folder",
        run=True,
        files={"run/checkpoint.pt": deleted},
    ),
    case(
        "checkpoint-config-invalid-toml",
        "evaluate {run}",
        r"config\.toml is not valid TOML: .*; correct the syntax there",
        run=True,
        files={"run/config.toml": edited("[train]", "[train")},
    ),
    case(
        "checkpoint-config-unknown-key",
        "plot {run}",
        r"config\.toml: train\.epoch: unknown key; allowed: epochs",
        run=True,
        files={"run/config.toml": edited("[train]\n", "[train]\nepoch = 3\n")},
    ),
    case(
        "checkpoint-data-changed-shape",
        "evaluate {run}",
        r"data set x\.npy has points of shape \(4,\) but the run was trained on \(8, 8\); .*retrain",
        run=True,
        files={"x.npy": npy(UNIT), "run/config.toml": edited('dataset = "digits"', 'dataset = "x.npy"')},
    ),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished run: digits, one epoch, MLP 8, latent 2."""
    out = tmp_path_factory.mktemp("bad-input") / "run"
    assert main(["train", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--quiet", "--out", str(out)]) == 0
    return out


def snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root`` (and ``root`` itself) with whether it is a folder, its size and its mtime."""
    paths = [root, *root.rglob("*")]
    return {
        str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
        for p in paths
    }


def command_line(args: str, root: Path) -> list[str]:
    argv = [a.replace("{tmp}", str(root)).replace("{run}", str(root / "run")) for a in shlex.split(args)]
    if argv[0] == "train":
        argv[1:1] = TINY
        if "--out" not in argv:
            argv += ["--out", str(root / "out")]
    return argv


def error_line(err: str) -> str:
    """The one ``error:`` line of ``err``; anything else may only be argparse's usage, before it."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and re.match(r"pyro-vae( \w+)?: error: ", lines[-1]), err
    usage = lines[:-1]
    assert not usage or (usage[0].startswith("usage: ") and all(line.startswith(" ") for line in usage[1:])), err
    return lines[-1]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: Case, finished_run: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    if case.run:
        shutil.copytree(finished_run, tmp_path / "run")
    for name, write in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write(tmp_path / name, tmp_path)
    argv = command_line(case.args, tmp_path)
    monkeypatch.chdir(tmp_path)  # anything written to the working directory counts too
    before = snapshot(tmp_path)

    if case.subprocess:
        result = subprocess.run(
            [sys.executable, "-m", "pyro_vae", *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120
        )
        status, out, err = result.returncode, result.stdout, result.stderr
    else:
        try:
            status = main(argv)
        except SystemExit as e:  # argparse
            status = e.code
        out, err = capsys.readouterr()

    assert not (tmp_path / MARKER).exists(), "a crafted file ran code"
    line = error_line(err)
    assert re.search(case.message, line), f"{line!r} does not match {case.message!r}"
    assert status == 2 and out == "", (status, out)
    assert snapshot(tmp_path) == before, "bad input must write nothing"


def refuse_folders_in_locked(monkeypatch) -> None:
    """Make a folder named ``locked`` refuse new folders inside it, as a read-only one does for all but root."""
    mkdir = Path.mkdir

    def refused(self: Path, *args, **kwargs) -> None:
        if self.parent.name == "locked" and self.parent.exists():
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)


def test_an_out_folder_that_cannot_be_created_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """The read-only row above, for any user (root writes anywhere)."""
    (tmp_path / "locked").mkdir()
    refuse_folders_in_locked(monkeypatch)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    status = main(command_line("train --out {tmp}/locked/run/sub", tmp_path))
    line = error_line(capsys.readouterr().err)
    assert re.search(r"--out .*run/sub cannot be created in .*locked: Permission denied; make .*locked writable", line)
    assert status == 2 and snapshot(tmp_path) == before, "bad input must write nothing"


def test_an_out_folder_that_cannot_be_created_leaves_none_of_its_parents(tmp_path, capsys, monkeypatch):
    """``--out``'s missing parents made before the refusal are removed again."""
    refuse_folders_in_locked(monkeypatch)
    assert main(command_line("train --out {tmp}/new/locked/run", tmp_path)) == 2
    assert "new/locked: Permission denied" in error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


CATEGORIES = ("config", "data", "cli", "checkpoint")


def test_the_corpus_covers_every_category() -> None:
    counts = {c: sum(p.id.startswith(f"{c}-") for p in CASES) for c in CATEGORIES}
    assert sum(counts.values()) == len(CASES) >= 35 and min(counts.values()) >= 5, counts
    assert len({p.id for p in CASES}) == len(CASES)


def test_the_crafted_files_really_run_code(tmp_path: Path) -> None:
    """The payloads the corpus refuses are real: loading them without the guards creates the marker."""
    for name, write, unsafe_load in [
        ("x.npy", evil_npy, lambda p: np.load(p, allow_pickle=True)),
        ("checkpoint.pt", pickled(code_checkpoint), lambda p: pickle.loads(p.read_bytes())),
        ("x.pt", pt(code_checkpoint), lambda p: torch.load(p, weights_only=False)),
    ]:
        write(tmp_path / name, tmp_path)
        assert not (tmp_path / MARKER).exists()
        unsafe_load(tmp_path / name)
        assert (tmp_path / MARKER).exists(), name
        os.remove(tmp_path / MARKER)
