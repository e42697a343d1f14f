"""Data sets: the bundled digits, MNIST from disk, users' files, binarization and checks."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import constraints

from pyro_vae.errors import DataError
from pyro_vae.training.data import SPLIT_SEED, load_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
UNIT = dict(support=constraints.unit_interval, support_text="[0, 1]")


def test_digits_fixed_split_in_unit_interval():
    a, b = load_dataset("digits"), load_dataset("digits", seed=123)
    assert a.train.shape == (1438, 8, 8) and a.test.shape == (359, 8, 8)
    assert a.event_shape == (8, 8)
    assert a.train.min() >= 0 and a.train.max() == 1.0  # pixel values 0..16 divided by 16
    torch.testing.assert_close(a.test, b.test)  # the split does not depend on the run's seed
    assert set(a.train_labels.tolist()) == set(range(10))
    assert SPLIT_SEED == 0


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="needs ../shared/data/MNIST")
def test_mnist_from_data_root():
    data = load_dataset("mnist", data_root=SHARED_DATA)
    assert data.train.shape == (60000, 28, 28) and data.test.shape == (10000, 28, 28)
    assert data.train.mean().item() == pytest.approx(33.32 / 255, abs=1e-3)
    assert data.train_labels.bincount().tolist()[:2] == [5923, 6742]


def test_mnist_missing_offline_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"MNIST not found under .*MNIST/raw; point --data-root .* --download"):
        load_dataset("mnist", data_root=tmp_path)


def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.mnist

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    (tmp_path / "kept").mkdir()  # a folder that existed stays
    with pytest.raises(DataError, match=r"could not download MNIST into .*MNIST/raw \(no network\?\)"):
        load_dataset("mnist", data_root=tmp_path / "kept" / "data", download=True)
    assert list(tmp_path.rglob("*")) == [tmp_path / "kept"]


def test_batches_cover_a_permutation_with_equal_sizes():
    data = load_dataset("digits")
    generator = torch.Generator().manual_seed(0)
    batches = list(data.batches(100, generator))
    assert len(batches) == 1438 // 100 and all(len(b) == 100 for b in batches)
    seen = torch.cat(batches).flatten(1)
    rows = {tuple(r.tolist()) for r in data.train.flatten(1)}
    assert all(tuple(r.tolist()) in rows for r in seen)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_binarization(mode):
    data = load_dataset("digits", binarize=mode, seed=1)
    assert set(data.test.unique().tolist()) == {0.0, 1.0}
    again = load_dataset("digits", binarize=mode, seed=1)
    torch.testing.assert_close(data.test, again.test)  # a fixed test set for evaluation
    first, second = (next(data.batches(50, torch.Generator().manual_seed(0))) for _ in range(2))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    if mode == "dynamic":  # same images, new draws every time
        assert not torch.equal(first, second)
    else:
        assert torch.equal(first, second)
    # Binarization is unbiased: pixel means match the grey values.
    grey = load_dataset("digits").train
    assert (data.train.mean() - grey.mean()).abs() < 4 * (grey * (1 - grey)).mean().sqrt() / grey.numel() ** 0.5


def _save(path: Path, array) -> Path:
    if path.suffix == ".npy":
        np.save(path, array)
    elif path.suffix == ".npz":
        np.savez(path, **array) if isinstance(array, dict) else np.savez(path, array)
    else:
        torch.save(array, path)
    return path


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt"])
def test_users_file(tmp_path, suffix):
    array = np.random.default_rng(0).random((50, 3, 5)).astype(np.float32)
    payload = torch.from_numpy(array) if suffix == ".pt" else array
    data = load_dataset(str(_save(tmp_path / f"x{suffix}", payload)), **UNIT)
    assert data.event_shape == (3, 5) and len(data.train) + len(data.test) == 50 and len(data.test) == 10


def test_users_file_with_own_split_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train": rng.random((20, 6)),
        "test": rng.random((5, 6)),
        "train_labels": np.arange(20),
        "test_labels": np.arange(5),
    }
    data = load_dataset(str(_save(tmp_path / "d.npz", arrays)), **UNIT)
    assert len(data.train) == 20 and len(data.test) == 5 and data.test_labels.tolist() == list(range(5))


def _write_bytes(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda p: _save(p / "nan.npy", np.array([[0.5, np.nan]] * 10)),
            r"contains nan at index \[\d+, 1\]; remove or replace NaN",
        ),
        (lambda p: _save(p / "inf.npy", np.array([[0.5, np.inf]] * 10)), r"contains inf"),
        (
            lambda p: _save(p / "big.npy", np.full((10, 4), 1.3)),
            r"value 1.3 at index \[0, 0\], outside \[0, 1\]; rescale the data into \[0, 1\]",
        ),
        (lambda p: _save(p / "flat.npy", np.zeros(10)), r"must have the shape \(N, \.\.\.\)"),
        (lambda p: _save(p / "empty.npy", np.zeros((0, 4))), r"needs at least one of each"),
        (lambda p: _save(p / "text.npy", np.array([["a", "b"]] * 5)), r"has dtype <U1; store real numbers"),
        (
            lambda p: _write_bytes(
                p / "trunc.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (100, 4)}"
            ),
            r"cannot read data file .*trunc.npy",
        ),
        (lambda p: _write_bytes(p / "junk.pt", b"not a torch file"), r"cannot read data file .*junk.pt"),
        (lambda p: p / "missing.npy", r"does not exist"),
        (lambda p: _save(p / "two.npz", {"a": np.zeros((5, 2)), "b": np.zeros((5, 2))}), r"name the data 'x'"),
    ],
)
def test_bad_files(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_dataset(str(make(tmp_path)), **UNIT)


@pytest.mark.parametrize("row", [0, 3, 29])
@pytest.mark.parametrize(
    "value,options,message",
    [
        (np.nan, {}, "contains nan"),
        (np.nan, {"validation": 7}, "contains nan"),
        (3.0, {}, "has value 3"),
        (3.0, {"binarize": "static", "validation": 7}, "has value 3"),  # refused before binarization
    ],
)
def test_a_bad_value_is_named_by_its_index_in_the_users_file(tmp_path, row, value, options, message):
    x = np.full((30, 3, 2), 0.5)
    x[row, 2, 1] = value
    with pytest.raises(DataError, match=rf"x\.npy \(\w+\) {message} at index \[{row}, 2, 1\]"):
        load_dataset(str(_save(tmp_path / "x.npy", x)), **options, **UNIT)


def test_pickled_object_file_is_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot read data file"):
        load_dataset(str(path), **UNIT)


@pytest.mark.parametrize(
    "name,message",
    [("cifar", r"unknown data set 'cifar'; use digits, mnist or the path"), ("x.csv", r"unknown data set 'x.csv'")],
)
def test_unknown_dataset(name, message):
    with pytest.raises(DataError, match=message):
        load_dataset(name)


def test_unknown_binarization():
    with pytest.raises(DataError, match=r"data.binarize: unknown binarization 'always'; known: none, static, dynamic"):
        load_dataset("digits", binarize="always")
