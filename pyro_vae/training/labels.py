r"""Labels: checked, a balanced subset kept with a recorded seed, and minibatches that carry them.

A data set's training labels are a tensor of class indices in ``[0, num_classes)``, with
:data:`UNLABELLED` (-1) where a point's label is not kept (``data.labels``). A program that takes labels
(``model(x, y=None)``) is trained on steps formed as ``data.label_batches`` says (:data:`LABEL_BATCHES`): by
default every step has a labelled minibatch and an unlabelled one, each standing for all points of its kind,
an unbiased estimate of the full-data objective (``"mixed"``, :func:`mixed_batches`); or the same steps with
every point weighing the same, the labelled terms weighted up (``"balanced"``); or steps all labelled or all
unlabelled, in the ratio the data have, unbiased too (``"ratio"``, :func:`labelled_batches`).

Example:
    >>> labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    >>> kept = keep_labels(labels, 3, num_classes=3, seed=0)
    >>> sorted(kept[kept != UNLABELLED].tolist())
    [0, 1, 2]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from pyro_vae.errors import DataError

__all__ = [
    "LABEL_BATCHES",
    "UNLABELLED",
    "Batch",
    "check_labels",
    "count_classes",
    "epoch_steps",
    "keep_labels",
    "labelled_batches",
    "labelled_weight",
    "mixed_batches",
]

#: The label of a training point whose label is not kept: the program sees ``y = None`` for it.
UNLABELLED = -1

#: How labelled and unlabelled points form the steps of an epoch (``data.label_batches``): ``"mixed"``, a
#: labelled and an unlabelled minibatch in every step, each standing for all of its kind (:func:`mixed_batches`);
#: ``"balanced"``, the same steps, every point of a step weighing the same (the labelled terms weighted up by
#: :func:`labelled_weight`); ``"ratio"``, steps all of one kind in the ratio the data have
#: (:func:`labelled_batches`).
LABEL_BATCHES = ("mixed", "balanced", "ratio")


def check_labels(labels: Tensor, where: str, num_classes: int | None = None, rows: Tensor | None = None) -> Tensor:
    """``labels`` as ``int64`` class indices, or a one-line :class:`DataError` naming the first bad one.

    Integral floating-point values are taken; anything else (fractions, NaN, negative values, values at or
    above ``num_classes``) is refused with the index of the first offender: ``rows[i]``, where label ``i`` is
    stored, when ``rows`` is given.
    """
    at = (lambda i: i) if rows is None else (lambda i: int(rows[i]))
    if labels.dtype == torch.bool or labels.is_complex():
        raise DataError(f"{where} are {labels.dtype}, not integer class indices; store them as integers 0, 1, ...")
    if labels.is_floating_point():
        bad = ~(torch.isfinite(labels) & (labels == labels.round()))
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise DataError(
                f"{where} are not integers: {labels[i].item()} at index {at(i)}; store class indices 0, 1, ..."
            )
    labels = labels.long()
    out = (labels < 0) if num_classes is None else (labels < 0) | (labels >= num_classes)
    if out.any():
        i = int(out.nonzero()[0, 0])
        known = "0 or more" if num_classes is None else f"0..{num_classes - 1}"
        raise DataError(f"{where}: label {labels[i].item()} at index {at(i)} is out of range; classes are {known}")
    return labels


def count_classes(*labels: Tensor | None) -> int | None:
    """The number of classes that labels imply, one more than the largest (``None`` without labels)."""
    present = [y for y in labels if y is not None and len(y)]
    return max(int(y.max()) for y in present) + 1 if present else None


def keep_labels(labels: Tensor, n: int, num_classes: int, seed: int) -> Tensor:
    r"""``labels`` with all but ``n`` replaced by :data:`UNLABELLED`, balanced across classes.

    Each class keeps :math:`\lfloor n / C \rfloor` labels, and :math:`n \bmod C` classes, drawn with ``seed``,
    one more; the points of each class are drawn with ``seed`` too, so the same ``n`` and ``seed`` keep the
    same labels on every machine.
    """
    if n < num_classes:
        raise DataError(f"data.labels = {n} is fewer than the {num_classes} classes; keep at least one label per class")
    if n > len(labels):
        raise DataError(f"data.labels = {n} is more than the {len(labels)} training points; keep at most that many")
    generator = torch.Generator().manual_seed(seed)
    quota = torch.full((num_classes,), n // num_classes)
    quota[torch.randperm(num_classes, generator=generator)[: n % num_classes]] += 1
    kept = torch.full_like(labels, UNLABELLED)
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten().cpu()
        if len(members) < quota[c]:
            raise DataError(
                f"data.labels = {n} asks for {int(quota[c])} labels of class {c}, which has {len(members)} "
                "training points; keep fewer labels"
            )
        chosen = members[torch.randperm(len(members), generator=generator)[: quota[c]]].to(labels.device)
        kept[chosen] = c
    return kept


class Batch(NamedTuple):
    """A training minibatch: points, their labels (``None`` for unlabelled ones), and the weight of the step.

    ``num_data / len(x)`` is the factor of the batch's terms that makes the step an unbiased estimate of
    the full-data objective (the program contract's minibatch scaling, :func:`~pyro_vae.infer.program.bind`).
    """

    x: Tensor
    y: Tensor | None
    num_data: float


def _plan(counts: list[int], batch_size: int) -> tuple[list[int], list[int]]:
    """The labelled and unlabelled batches of an epoch, and their sizes, from the points of each kind: at least
    one batch of a kind that has points (all of them where there are fewer than ``batch_size``)."""
    steps = [max(1, n // batch_size) if n else 0 for n in counts]
    return steps, [counts[0] // steps[0] if steps[0] else 0, min(batch_size, counts[1])]


def _mixed_plan(counts: list[int], batch_size: int) -> tuple[int, list[int]]:
    """The steps of an epoch of :func:`mixed_batches` and the size of each kind's part of a step, from the points
    of each kind: enough steps to see every point of the larger part once."""
    sizes = [min(batch_size, n) for n in counts]
    return max(n // b for n, b in zip(counts, sizes) if b), sizes


def labelled_weight(labels: Tensor, batch_size: int, world_size: int = 1) -> float:
    r"""The factor :math:`w = (N_u / b_u) / (N_l / b_l)` by which ``"balanced"`` steps weigh the labelled points'
    terms against the full-data objective (1 where the data have points of one kind only): about
    :math:`N_u / N_l` while both kinds fill a minibatch, 599 for 100 labels of MNIST's 60,000."""
    totals = _totals(labels, world_size)
    sizes = _mixed_plan([n // world_size for n in totals], batch_size)[1]
    return totals[1] * sizes[0] / (sizes[1] * totals[0]) if all(sizes) else 1.0


def epoch_steps(labels: Tensor, batch_size: int, world_size: int = 1, scheme: str = "ratio") -> int:
    """The number of steps in an epoch of :func:`labelled_batches` (``scheme = "ratio"``) or of
    :func:`mixed_batches` (``"mixed"``, ``"balanced"``), in each process of a job."""
    labelled = int((labels != UNLABELLED).sum())
    counts = [labelled // world_size, (len(labels) - labelled) // world_size]
    return sum(_plan(counts, batch_size)[0]) if scheme == "ratio" else _mixed_plan(counts, batch_size)[0]


def _totals(labels: Tensor, world_size: int) -> list[int]:
    """The job's labelled and unlabelled points (not a shard's), or a one-line refusal where a process would have
    no labelled point."""
    totals = [int((labels != UNLABELLED).sum()), int((labels == UNLABELLED).sum())]
    if 0 < totals[0] < world_size:
        raise DataError(
            f"data.labels: {totals[0]} labelled points cannot be shared by {world_size} processes; "
            f"keep at least {world_size}"
        )
    return totals


def _parts(labels: Tensor, generator: torch.Generator, rank: int, world_size: int) -> tuple[Tensor, Tensor]:
    """This process's shard of a random order of the labelled points, and of the unlabelled ones."""
    parts = []
    for mask in (labels != UNLABELLED, labels == UNLABELLED):
        index = mask.nonzero().flatten().cpu()
        index = index[torch.randperm(len(index), generator=generator)]
        parts.append(index[rank::world_size][: len(index) // world_size])
    return parts[0], parts[1]


def labelled_batches(
    train: Tensor,
    labels: Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    r"""One epoch of minibatches, each all labelled or all unlabelled, in a random order.

    With :math:`N_l` labelled and :math:`N_u` unlabelled points, the epoch has
    :math:`S_l = \max(1, \lfloor N_l/B \rfloor)` labelled batches (of :math:`\lfloor N_l/S_l \rfloor` points,
    from :math:`B` to :math:`2B - 1`, or all of them where there are fewer) and
    :math:`S_u = \max(1, \lfloor N_u/B \rfloor)` unlabelled ones (of :math:`B`, or all where there are fewer),
    so a step is labelled with probability :math:`S_l/S`, in the ratio the data have. A batch of kind
    :math:`k` and :math:`b_k` points is weighted :math:`N_k S / (S_k b_k)` a point, which makes every step an
    unbiased estimate of the full-data objective, :math:`\sum_{\text{labelled}} + \sum_{\text{unlabelled}}`.
    ``start`` skips that many batches of the epoch, as :meth:`~pyro_vae.training.data.Dataset.batches` does.
    With ``world_size`` processes each takes its shard of both orders; their ``k``-th batches together are
    one batch of the whole job.
    """
    labelled, unlabelled = _parts(labels, generator, rank, world_size)
    counts = [len(labelled), len(unlabelled)]
    totals = _totals(labels, world_size)
    steps, sizes = _plan(counts, batch_size)
    kinds = torch.tensor([0] * steps[0] + [1] * steps[1])[torch.randperm(sum(steps), generator=generator)]
    used = [int((kinds[:start] == k).sum()) for k in (0, 1)]
    weights = [totals[k] * sum(steps) / (steps[k] * sizes[k]) if steps[k] else 0.0 for k in (0, 1)]
    for kind in kinds[start:].tolist():
        index = (labelled, unlabelled)[kind][used[kind] * sizes[kind] : (used[kind] + 1) * sizes[kind]]
        used[kind] += 1
        index = index.to(train.device)
        y = labels[index] if kind == 0 else None
        yield Batch(train[index], y, weights[kind] * len(index))


def _orders(index: Tensor, need: int, generator: torch.Generator | None, rank: int, world_size: int) -> Tensor:
    """``need`` of this process's points of ``index``, taken in turn from independent random orders of all of them
    (a fresh order as one is used up), each sharded as :func:`_parts` shards one."""
    share = len(index) // world_size
    rounds = -(-need // share) if need else 0
    orders = [index[torch.randperm(len(index), generator=generator)][rank::world_size][:share] for _ in range(rounds)]
    return torch.cat(orders)[:need] if orders else index[:0]


def mixed_batches(
    train: Tensor,
    labels: Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    start: int = 0,
    rank: int = 0,
    world_size: int = 1,
    balanced: bool = False,
) -> Iterator[tuple[Batch, ...]]:
    r"""One epoch of steps, each a labelled minibatch and an unlabelled one (the parts of a kind that has points).

    A step has :math:`b_k = \min(B, N_k)` points of kind :math:`k`, and the epoch
    :math:`S = \max_k \lfloor N_k / b_k \rfloor` steps, enough to see each point of the larger kind once; each
    kind's points come in turn from independent random orders of them, a fresh one as one is used up, so the
    few labelled points of a semi-supervised run are seen in every step (as in Kingma et al.'s code). A part
    stands for all :math:`N_k` points of its kind (``num_data``): every position of a part is a uniform draw
    from its kind, so each step is an unbiased estimate of the full-data objective,
    :math:`\sum_{\text{labelled}} + \sum_{\text{unlabelled}}`. With ``balanced``, a labelled point weighs what
    an unlabelled one does, :math:`N_u / b_u`: the step estimates
    :math:`w \sum_{\text{labelled}} + \sum_{\text{unlabelled}}` with :math:`w` = :func:`labelled_weight`, the
    weighting of implementations that add up the two minibatches' losses as they are; under ``world_size``
    processes a job's step holds every process's parts, and :math:`w` is that of the job's step.
    ``start`` skips that many steps of the epoch; with ``world_size`` processes each takes its shard of every
    order.
    """
    totals = _totals(labels, world_size)
    steps, sizes = _mixed_plan([n // world_size for n in totals], batch_size)
    stands = list(totals)
    if balanced and all(sizes):
        stands[0] = totals[1] * sizes[0] / sizes[1]
    masks = (labels != UNLABELLED, labels == UNLABELLED)
    streams = [
        _orders(mask.nonzero().flatten().cpu(), steps * b, generator, rank, world_size) for mask, b in zip(masks, sizes)
    ]
    for step in range(start, steps):
        parts = []
        for kind in (k for k in (0, 1) if sizes[k]):
            index = streams[kind][step * sizes[kind] : (step + 1) * sizes[kind]].to(train.device)
            parts.append(Batch(train[index], labels[index] if kind == 0 else None, stands[kind]))
        yield tuple(parts)
