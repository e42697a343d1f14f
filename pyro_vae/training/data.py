"""Data sets as tensors on the target device, split into train and test, optionally binarized.

Three sources, chosen by ``dataset``:

- ``"digits"`` — scikit-learn's bundled 8×8 handwritten digits (1,797 images, pixel values
  divided by 16 into [0, 1]); needs no network. Default.
- ``"mnist"`` — 28×28 MNIST through torchvision from ``data_root`` (``download=True`` fetches it
  when online).
- a path to a ``.npy``, ``.npz`` or ``.pt`` file holding an array of shape ``(N, ...)``.

The whole data set lives in memory on the device: an epoch is a random permutation sliced into
minibatches, with no per-sample Python work.

Example:
    >>> data = load_dataset("digits")
    >>> data.train.shape, data.test.shape
    (torch.Size([1438, 8, 8]), torch.Size([359, 8, 8]))
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.distributions import constraints

from pyro_vae.errors import DataError
from pyro_vae.training.labels import (
    LABEL_BATCHES,
    UNLABELLED,
    Batch,
    check_labels,
    count_classes,
    keep_labels,
    labelled_batches,
    mixed_batches,
)

__all__ = [
    "Dataset",
    "DATASETS",
    "BINARIZATIONS",
    "load_dataset",
    "TEST_FRACTION",
    "SPLIT_SEED",
    "BINARIZATION_SEED",
    "NUM_CLASSES",
]

#: Fraction of a data set without its own test split that is held out for testing.
TEST_FRACTION = 0.2
#: Seed of that split and of the validation split, fixed so that every run of every user sees the same sets.
SPLIT_SEED = 0
#: Seed with which binarization draws the test set, then the validation set, once: every run,
#: whatever its own seed, is evaluated on the same binary images.
BINARIZATION_SEED = 0
BINARIZATIONS = ("none", "static", "dynamic")
#: The classes of the built-in data sets' labels.
NUM_CLASSES = {"digits": 10, "mnist": 10}
FILE_SUFFIXES = (".npy", ".npz", ".pt")


class _Arrays(NamedTuple):
    """A data set's splits and labels, with where each split's points are in the arrays as stored.

    ``rows[split][i]`` is the index, in the array it was read from, of point ``i`` of ``split``: messages
    about a point name the index in the user's file, not in a split drawn from it. A split without an
    entry is an array as stored.
    """

    train: Tensor
    test: Tensor
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    rows: dict[str, Tensor] | None = None


@dataclass
class Dataset:
    """A train/test pair of tensors of shape ``(N, *event_shape)`` with optional integer labels.

    :func:`load_dataset` makes one from a named data set or a file; any pair of tensors makes one too.
    ``binarize = "dynamic"`` draws a fresh binary image from the grey values of each training
    minibatch (:meth:`batches`); the test and validation sets are then binarized once, with the
    fixed seed :data:`BINARIZATION_SEED`, so that evaluations are comparable.

    Args:
        name: what messages and summaries call the data set (``"digits"``, a file's name).
        train: the training points, shape ``(N, *event_shape)``.
        test: the test points, of the same event shape.
        train_labels: integer labels of ``train``, shape ``(N,)``, holding
            :data:`~pyro_vae.training.labels.UNLABELLED` (-1) where a label is not kept (``data.labels``);
            ``None`` without labels.
        test_labels: integer labels of ``test`` (``None`` without labels).
        binarize: ``"none"``, ``"static"`` (the tensors hold binary images drawn once) or ``"dynamic"``
            (``train`` holds grey values, drawn anew for each minibatch).
        validation: points held out of the training set for validation; ``None`` unless some were.
        num_classes: the number of classes of the labels (``None`` without labels).
        validation_labels: integer labels of ``validation`` (``None`` without labels or validation set).
        label_batches: how :meth:`labelled_batches` forms a step of labelled and unlabelled points:
            ``"mixed"``, ``"balanced"`` or ``"ratio"`` (see :class:`~pyro_vae.runs.config.DataConfig`).

    Example:
        >>> import torch
        >>> data = Dataset("points", train=torch.rand(40, 6), test=torch.rand(10, 6))
        >>> data.event_shape, data.num_labelled
        ((6,), 0)
        >>> [batch.shape for batch in data.batches(batch_size=16)]
        [torch.Size([16, 6]), torch.Size([16, 6])]
    """

    name: str
    train: Tensor
    test: Tensor
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    binarize: str = "none"
    validation: Tensor | None = None
    num_classes: int | None = None
    validation_labels: Tensor | None = None
    label_batches: str = "mixed"

    @property
    def num_labelled(self) -> int:
        """How many training points keep their label."""
        return 0 if self.train_labels is None else int((self.train_labels != UNLABELLED).sum())

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    def binarization_note(self, split: str = "test") -> str | None:
        """How the binary images of a held-out ``split`` were drawn, for wherever its numbers are printed."""
        if self.binarize == "none" or split == "train":
            return None
        seed = BINARIZATION_SEED
        return f"{self.binarize} binarization: the {split} set is drawn once, with seed {seed} in every run"

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Tensor]:
        """One epoch of training minibatches of exactly ``batch_size`` points, in random order.

        The last ``len(train) % batch_size`` points of each permutation are left for later epochs:
        equal batch sizes keep a JIT-compiled objective valid, and every point is still used
        equally often in expectation. ``start`` skips that many batches of the permutation without
        drawing anything for them (a resumed run continues its epoch where it stopped).

        With ``world_size`` processes each draws the same permutation and takes its shard, every
        ``world_size``-th point from ``rank`` on; then the shards' ``k``-th batches together are
        the ``k``-th batch of ``world_size * batch_size`` points of a single process.
        """
        n = len(self.train)
        order = torch.randperm(n, generator=generator).to(self.train.device)
        if world_size > 1:
            order = order[rank::world_size][: n // world_size]
        for first in range(start * batch_size, len(order) - batch_size + 1, batch_size):
            batch = self.train[order[first : first + batch_size]]
            yield torch.bernoulli(batch) if self.binarize == "dynamic" else batch

    def labelled_batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[Batch, ...]]:
        """One epoch of steps, each a tuple of :class:`~pyro_vae.training.labels.Batch`, formed as
        ``label_batches`` says: a labelled and an unlabelled part (:func:`~pyro_vae.training.labels.mixed_batches`,
        their points weighing the same where ``"balanced"``) or one part of either kind
        (:func:`~pyro_vae.training.labels.labelled_batches`); binarized as :meth:`batches`."""
        if self.train_labels is None:
            raise DataError(f"data set {self.name} has no labels; use a data set with labels, or a program without")
        args = (self.train, self.train_labels, batch_size, generator, start, rank, world_size)
        if self.label_batches == "ratio":
            steps = ((b,) for b in labelled_batches(*args))
        else:
            steps = mixed_batches(*args, balanced=self.label_batches == "balanced")
        dynamic = self.binarize == "dynamic"
        for parts in steps:
            yield tuple(b._replace(x=torch.bernoulli(b.x)) for b in parts) if dynamic else parts


def _split(x: Tensor, labels: Tensor | None) -> _Arrays:
    """The fixed train/test split of a data set that has none of its own."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    order = torch.randperm(len(x), generator=generator)
    n_test = max(1, round(TEST_FRACTION * len(x))) if len(x) > 1 else 0
    test, train = order[:n_test], order[n_test:]
    pick = (lambda idx: labels[idx]) if labels is not None else (lambda idx: None)
    return _Arrays(x[train], x[test], pick(train), pick(test), {"train": train, "test": test})


def _load_digits(data_root: Path, download: bool) -> _Arrays:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0
    return _split(images, torch.as_tensor(digits.target))


def _remove_new_empty_folders(folders: list[Path], existed: list[bool]) -> None:
    """Remove those of ``folders`` (innermost last) that did not exist before and are empty now."""
    for folder, was in reversed(list(zip(folders, existed))):
        if not was and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _load_mnist(data_root: Path, download: bool) -> _Arrays:
    from torchvision.datasets import MNIST

    folders = [data_root, data_root / "MNIST", data_root / "MNIST" / "raw"]
    existed = [f.is_dir() for f in folders]
    splits = []
    for train in (True, False):
        try:
            mnist = MNIST(root=str(data_root), train=train, download=download)
        except Exception as e:  # not found, no network, damaged files (torchvision asserts on some)
            raw = data_root / "MNIST" / "raw"
            _remove_new_empty_folders(folders, existed)  # a failed download leaves no empty folders behind
            if download:
                raise DataError(
                    f"could not download MNIST into {raw} (no network?); download it where you are online and "
                    "copy the MNIST/raw folder there, or point --data-root at an existing copy"
                ) from None
            if "not found" in str(e):
                raise DataError(
                    f"MNIST not found under {raw}; point --data-root (data.data_root) at the folder that holds "
                    "MNIST/raw, or add --download (data.download = true) when online"
                ) from None
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(
                f"cannot read MNIST from {raw} ({reason}); delete the damaged files and copy or download them again"
            ) from None
        splits.append((mnist.data.float() / 255.0, mnist.targets))
    (train, train_labels), (test, test_labels) = splits
    return _Arrays(train, test, train_labels, test_labels)


#: Built-in data sets by name: ``loader(data_root, download) -> (train, test, train_labels, test_labels)``.
DATASETS: dict[str, Callable[[Path, bool], tuple[Tensor, ...]]] = {"digits": _load_digits, "mnist": _load_mnist}


def _read_file(path: Path) -> dict[str, Tensor]:
    """The arrays in a user's file, read without unpickling anything."""
    if not path.is_file():
        raise DataError(
            f"data file {path} does not exist; "
            "give --dataset digits, mnist or the path of an existing .npy/.npz/.pt file"
        )
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            # torch warns about the pickle protocol of files it then refuses; the refusal is the message.
            warnings.simplefilter("ignore")
            if path.suffix == ".pt":
                obj = torch.load(f, map_location="cpu", weights_only=True)
            else:
                obj = np.load(f, allow_pickle=False)  # from an open file, so that a damaged .npz leaks no handle
                if isinstance(obj, np.lib.npyio.NpzFile):
                    with obj:
                        obj = {k: obj[k] for k in obj.files}
    except Exception as e:  # any failure to parse the file means the same thing to the user
        reason = str(e)
        if isinstance(e, pickle.UnpicklingError) and "weights_only" in reason:
            # torch's safe loader refused the file; its message suggests loading it unsafely,
            # which must not be repeated.
            if "Unsupported global" in reason:
                raise DataError(
                    f"data file {path} holds pickled Python objects, which pyro-vae never loads (they could run code); "
                    "save tensors or arrays only"
                ) from None
            reason = "not a file written by numpy.save/savez or torch.save, or damaged"
        first = reason.splitlines()[0] if reason else type(e).__name__
        raise DataError(
            f"cannot read data file {path}: {first}; it must be a numeric array saved by numpy.save/savez or torch.save"
        ) from None
    if not isinstance(obj, dict):
        obj = {"x": obj}
    arrays = {}
    for key, value in obj.items():
        if not isinstance(value, (np.ndarray, Tensor)):
            raise DataError(
                f"data file {path}: entry {key!r} is a {type(value).__name__}, not an array; "
                "store a numpy array or a torch tensor"
            )
        if value.ndim == 0:
            raise DataError(f"data file {path}: entry {key!r} is a single number; store an array of shape (N, ...)")
        kind = value.dtype.kind if isinstance(value, np.ndarray) else "c" if value.dtype.is_complex else "f"
        if kind not in "biuf":  # bool, int, unsigned, float
            raise DataError(
                f"data file {path}: entry {key!r} has dtype {value.dtype}; store real numbers (float, int or bool)"
            )
        array = torch.as_tensor(value)
        arrays[key] = array
    return arrays


def _from_file(path: Path) -> _Arrays:
    arrays = _read_file(path)
    if "train" in arrays:
        if "test" not in arrays:
            raise DataError(
                f"data file {path} has 'train' but no 'test' array; "
                "add one, or store a single array under 'x' to split it automatically"
            )
        return _Arrays(arrays["train"], arrays["test"], arrays.get("train_labels"), arrays.get("test_labels"))
    if "x" not in arrays:
        if len(arrays) != 1:
            raise DataError(
                f"data file {path} holds arrays {sorted(arrays)}; name the data 'x' (labels 'y'), or 'train'/'test'"
            )
        ((key, x),) = arrays.items()
        _check_points(path, key, x)
        return _split(x, None)
    x, y = arrays["x"], arrays.get("y")
    _check_points(path, "x", x)
    if y is not None and y.shape != (len(x),):  # checked here: the split indexes the labels
        raise DataError(
            f"data file {path}: labels 'y' have shape {tuple(y.shape)}; "
            f"expected ({len(x)},), one label per point of 'x'"
        )
    return _split(x, y)


def _check_points(path: Path, key: str, x: Tensor) -> None:
    """The array a file holds is ``N`` points along its first axis, each of one or more values."""
    if x.ndim >= 2 and math.prod(x.shape[1:]) > 0:
        return
    what, fix = ("a single axis", f": save x.reshape({len(x)}, 1) for {len(x)} points of one value")
    if x.ndim != 1:
        what, fix = "points without values", ""
    raise DataError(
        f"data file {path}: entry {key!r} has shape {tuple(x.shape)}, {what}; "
        f"it must have the shape (N, ...), N points of one or more values each{fix}"
    )


def _check(x: Tensor, where: str, support: constraints.Constraint, support_text: str, fix: str, rows: Tensor) -> None:
    """Every value of ``x`` finite and in ``support``; a message names the first bad one by its index as stored.

    ``rows[i]`` is the index of point ``i`` of ``x`` in the array it was read from (see :class:`_Arrays`).
    """
    finite = torch.isfinite(x)
    if not finite.all():
        bad = _first(~finite, rows)
        raise DataError(
            f"{where} contains {x[bad].item()} at index {_stored(bad, rows)}; remove or replace NaN and inf values"
        )
    outside = ~support.check(x)
    if outside.any():
        bad = _first(outside, rows)
        raise DataError(
            f"{where} has value {x[bad].item():g} at index {_stored(bad, rows)}, outside {support_text}; {fix}"
        )


def _first(bad: Tensor, rows: Tensor) -> tuple[int, ...]:
    """The index in ``bad`` of its first true entry, its points taken in the order they were stored (``rows``)."""
    points = bad.reshape(len(bad), -1).any(1).nonzero()[:, 0]
    point = int(points[rows[points].argmin()])
    return (point, *bad[point].nonzero()[0].tolist())


def _stored(index: tuple[int, ...], rows: Tensor) -> list[int]:
    """``index`` into a split as the index of the same value in the array the split was drawn from."""
    point, *within = index
    return [int(rows[point]), *within]


def _load_arrays(dataset: str, data_root: str | Path, download: bool) -> _Arrays:
    """The arrays of a built-in data set or of a user's file, as stored."""
    if dataset in DATASETS:
        return _Arrays(*DATASETS[dataset](Path(data_root), download))
    if Path(dataset).suffix in FILE_SUFFIXES:
        return _from_file(Path(dataset))
    raise DataError(
        f"data.dataset: unknown data set {dataset!r}; "
        f"use {', '.join(DATASETS)} or the path of a {'/'.join(FILE_SUFFIXES)} file"
    )


def _check_shapes(
    name: str, train: Tensor, test: Tensor, train_labels: Tensor | None, test_labels: Tensor | None
) -> None:
    """Both splits are non-empty with one shared, non-empty point shape, and hold one label per point."""
    if len(train) == 0 or len(test) == 0:
        raise DataError(
            f"data set {name} has {len(train)} training and {len(test)} test points; it needs at least one of each"
        )
    if train.ndim < 2 or train.shape[1:] != test.shape[1:] or math.prod(train.shape[1:]) == 0:
        raise DataError(
            f"data set {name}: train {tuple(train.shape)} and test {tuple(test.shape)} "
            "must have the shape (N, ...) with the same non-empty shape per point"
        )
    for labels, x, split in ((train_labels, train, "train"), (test_labels, test, "test")):
        if labels is not None and labels.shape != (len(x),):
            raise DataError(f"data set {name}: {split} labels have shape {tuple(labels.shape)}; expected ({len(x)},)")


def _hold_out(name: str, num_train: int, size: int) -> tuple[Tensor, Tensor]:
    """Which points stay in the training set, and which ``size`` are held out of it (chosen with :data:`SPLIT_SEED`)."""
    if size >= num_train:
        raise DataError(
            f"data.validation ({size}) leaves no training points of data set {name} ({num_train}); "
            f"hold out fewer than {num_train}"
        )
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[size:], order[:size]


def _splits(name: str, arrays: _Arrays, validation: int) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
    """The splits as float tensors, each point's index as stored (see :class:`_Arrays`), and their labels."""
    splits = {"train": arrays.train.float(), "test": arrays.test.float()}
    rows = {split: (arrays.rows or {}).get(split, torch.arange(len(x))) for split, x in splits.items()}
    labels = {"train": arrays.train_labels, "test": arrays.test_labels}
    if validation:
        kept, held = _hold_out(name, len(splits["train"]), validation)
        for table in (splits, rows) if labels["train"] is None else (splits, rows, labels):
            table["train"], table["validation"] = table["train"][kept], table["train"][held]
    return splits, rows, labels


def _binarize(
    name: str, splits: dict[str, Tensor], rows: dict[str, Tensor], binarize: str, seed: int
) -> dict[str, Tensor]:
    """The held-out splits drawn once from Bernoulli(value) with :data:`BINARIZATION_SEED`; for
    ``"static"`` also the training set, with ``seed``. ``rows``: where each split's points are stored."""
    if binarize == "none":
        return splits
    for split, x in splits.items():
        _check(
            x,
            f"{name} ({split})",
            constraints.unit_interval,
            "[0, 1]",
            "binarization reads values as probabilities; rescale the data into [0, 1]",
            rows[split],
        )
    held_out = torch.Generator().manual_seed(BINARIZATION_SEED)
    drawn = {split: torch.bernoulli(x, generator=held_out) for split, x in splits.items() if split != "train"}
    train = splits["train"]
    if binarize == "static":  # drawn after a test-sized draw, as before the held-out sets had a seed of their own
        generator = torch.Generator().manual_seed(seed)
        torch.bernoulli(splits["test"], generator=generator)
        train = torch.bernoulli(train, generator=generator)
    return {"train": train, **drawn}


def load_dataset(
    dataset: str = "digits",
    *,
    data_root: str | Path = "data",
    download: bool = False,
    binarize: str = "none",
    support: constraints.Constraint = constraints.real,
    support_text: str = "any real number",
    device: str | torch.device = "cpu",
    seed: int = 0,
    validation: int = 0,
    labels: int = 0,
    label_seed: int = 0,
    num_classes: int = 0,
    label_batches: str = "mixed",
) -> Dataset:
    """Load a data set, check it, binarize it as asked, and move it to ``device``.

    Args:
        dataset: ``"digits"``, ``"mnist"``, or the path of a ``.npy``/``.npz``/``.pt`` file. A
            file holds one array ``(N, ...)`` (or ``x`` with optional labels ``y``, split
            80/20 with a fixed seed), or ``train`` and ``test`` arrays (optional
            ``train_labels``, ``test_labels``).
        data_root: folder holding ``MNIST/raw`` (torchvision's layout).
        download: let torchvision download MNIST when it is missing.
        binarize: ``"none"``, ``"static"`` (each pixel drawn once from Bernoulli(grey value)) or
            ``"dynamic"`` (drawn anew for every training minibatch).
        support: the likelihood's support, a ``torch.distributions.constraints`` constraint; every value must be
            finite and lie in it, else a :class:`~pyro_vae.DataError` names the first that does not.
        support_text: ``support`` in words, for that message (``"[0, 1]"``).
        device: where the tensors live.
        seed: seed of static binarization (the test and validation sets are drawn with
            :data:`BINARIZATION_SEED`, whatever the seed).
        validation: points held out of the training set as a validation set (chosen with
            :data:`SPLIT_SEED`; 0: none).
        labels: keep this many training labels, balanced across classes and chosen with ``label_seed``
            (:func:`~pyro_vae.training.labels.keep_labels`); the rest are unlabelled (0: keep them all).
        label_seed: the seed of that choice.
        num_classes: the number of classes (0: 10 for the built-in data sets, else one more than the largest).
        label_batches: how labelled and unlabelled points form a step (:data:`~.labels.LABEL_BATCHES`).

    Returns:
        The :class:`Dataset`, its tensors on ``device``.

    Example:
        >>> data = load_dataset("digits", binarize="static", validation=100)
        >>> data.train.shape, data.validation.shape, data.test.shape
        (torch.Size([1338, 8, 8]), torch.Size([100, 8, 8]), torch.Size([359, 8, 8]))
        >>> data.train.unique().tolist(), data.num_classes
        ([0.0, 1.0], 10)
    """
    _check_choices(binarize, label_batches)
    arrays = _load_arrays(dataset, data_root, download)
    name = dataset if dataset in DATASETS else Path(dataset).name
    _check_shapes(name, arrays.train, arrays.test, arrays.train_labels, arrays.test_labels)
    splits, rows, labelled = _splits(name, arrays, validation)
    labelled, classes = _labels(name, labelled, rows, labels, label_seed, num_classes)
    splits = _binarize(name, splits, rows, binarize, seed)
    fix = f"rescale the data into {support_text} or choose a likelihood whose support fits it"
    for split, x in splits.items():
        _check(x, f"{name} ({split})", support, support_text, fix, rows[split])
    to = {k: v.to(device) for k, v in splits.items()} | {
        f"{k}_labels": v.to(device) for k, v in labelled.items() if v is not None
    }
    return Dataset(name=name, **to, binarize=binarize, num_classes=classes, label_batches=label_batches)


def _check_choices(binarize: str, label_batches: str) -> None:
    """A one-line :class:`DataError` for an unknown binarization or way of forming labelled steps."""
    if binarize not in BINARIZATIONS:
        raise DataError(f"data.binarize: unknown binarization {binarize!r}; known: {', '.join(BINARIZATIONS)}")
    if label_batches not in LABEL_BATCHES:
        raise DataError(f"data.label_batches: unknown {label_batches!r}; known: {', '.join(LABEL_BATCHES)}")


def _labels(
    name: str, labels: dict[str, Tensor | None], rows: dict[str, Tensor], keep: int, seed: int, classes: int
) -> tuple[dict[str, Tensor | None], int | None]:
    """Each split's checked labels, the training ones cut to the kept subset, and the number of classes
    (``rows``: where each split's points are stored, see :class:`_Arrays`)."""
    classes = classes or NUM_CLASSES.get(name) or None
    labels = {
        split: None if y is None else check_labels(y, f"data set {name}: {split} labels", classes, rows[split])
        for split, y in labels.items()
    }
    if labels["train"] is None:
        if keep:
            raise DataError(f"data.labels = {keep}, but data set {name} has no training labels; give it labels")
        return labels, None
    classes = classes or count_classes(*labels.values())
    if keep:
        labels["train"] = keep_labels(labels["train"], keep, classes, seed)
    return labels, classes
