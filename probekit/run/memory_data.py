"""Data a notebook already holds, as :class:`ProbeData`: a torch ``Dataset`` (items ``x``, ``(x, y)`` or dicts),
a ``DataLoader``, a tensor with optional targets, or any iterable of batches.

A dict sample or batch (``input_ids``, ``attention_mask``, ...) goes to the model as keyword arguments; its
``label`` or ``labels`` entry, when it holds one value per sample, is the target instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from probekit.errors import ProbekitError
from probekit.run.data import ProbeData
from probekit.run.inputs import count_inputs, take_inputs

LABEL_KEYS = ("label", "labels")


def split_item(item) -> tuple[object, object | None]:
    """One sample or batch as ``(inputs, target or None)``."""
    if isinstance(item, Mapping):
        inputs = {k: v for k, v in item.items() if k not in LABEL_KEYS}
        labels = [item[k] for k in LABEL_KEYS if k in item]
        return inputs, labels[0] if labels else None
    if isinstance(item, (tuple, list)):
        if len(item) == 1:
            return item[0], None
        if len(item) == 2:
            return item[0], item[1]
        raise ProbekitError(f"a data item must be x, (x, y) or a dict; this one has {len(item)} parts")
    return item, None


class _Items(Dataset):
    """A dataset's items as ``(x, target)`` (target 0 when it has none)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = split_item(self.dataset[i])
        return x, 0 if y is None else y


class _Batches:
    """Ready-made batches, iterated as ``(index, x, target)`` like a :meth:`ProbeData.loader` (a run's own batch
    size does not apply: the batches are the user's)."""

    def __init__(self, source, positions: range):
        self.source, self.positions = source, positions

    def __len__(self) -> int:
        return -(-len(self.positions) // max(self.batch_size, 1))

    @property
    def batch_size(self) -> int:
        return getattr(self.source, "batch_size", None) or 1

    def __iter__(self):
        start = 0
        for item in self.source:
            x, y = split_item(item)
            n = count_inputs(x)
            rows = [i for i in range(start, start + n) if i in self.positions]
            start += n
            if rows:
                keep = torch.as_tensor(rows) - (start - n)
                target = torch.zeros(n, dtype=torch.long) if y is None else torch.as_tensor(y)
                yield torch.as_tensor(rows), take_inputs(x, keep), target[keep]
            if start >= self.positions.stop:
                return


class BatchedData(ProbeData):
    """:class:`ProbeData` over ready-made batches (a ``DataLoader`` or a list of batches)."""

    def __len__(self) -> int:
        return len(self.sample_ids)

    def loader(self, batch_size: int, limit: int | None, shard: range | None = None):
        return _Batches(self.dataset, shard if shard is not None else range(self.count(limit)))

    def shuffled(self, seed: int) -> ProbeData:
        raise ProbekitError("shuffle=True needs a Dataset or a tensor, not ready-made batches; shuffle in your "
                            "DataLoader instead")


def _classes(targets) -> list[str] | None:
    """Class names for integer targets (``0..max``), ``None`` for others."""
    if targets is None:
        return None
    targets = torch.as_tensor(targets)
    if targets.dtype.is_floating_point or targets.dim() != 1 or targets.numel() == 0:
        return None
    return [str(c) for c in range(int(targets.max()) + 1)]


def _first_target(dataset: Dataset):
    return split_item(dataset[0])[1] if len(dataset) else None


def _from_dataset(dataset: Dataset, name: str) -> ProbeData:
    try:
        n = len(dataset)
    except TypeError:
        raise ProbekitError("a Dataset to probe needs a length (len(dataset)); pass a DataLoader or a list of "
                            "batches instead") from None
    target = _first_target(dataset)
    classes = _dataset_classes(dataset, read=target is not None)
    return ProbeData(name, _Items(dataset), [str(i) for i in range(n)], classes=classes,
                     has_targets=target is not None)


def _dataset_classes(dataset: Dataset, read: bool) -> list[str] | None:
    """A dataset's class names: its ``classes``, a TensorDataset's integer labels, the labels it keeps in
    ``targets`` (torchvision's), else (``read``) the labels of every item."""
    classes = getattr(dataset, "classes", None)
    if classes is None and isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        classes = _classes(dataset.tensors[1])
    elif classes is None and read:
        labels = getattr(dataset, "targets", None)
        classes = _classes(labels if labels is not None else
                           torch.stack([torch.as_tensor(split_item(dataset[i])[1]) for i in range(len(dataset))]))
    return [str(c) for c in classes] if classes else None


def _from_batches(batches, name: str) -> ProbeData:
    dataset = getattr(batches, "dataset", None)
    if isinstance(batches, DataLoader) and dataset is not None:
        try:
            n = len(dataset)
        except TypeError:
            n = None
        if n is not None and not batches.drop_last:
            target = split_item(next(iter(batches)))[1]
            return BatchedData(name, batches, [str(i) for i in range(n)],
                               classes=_dataset_classes(dataset, read=False), has_targets=target is not None)
    kept = list(batches)  # an iterator: read once, kept for the pass
    if not kept:
        raise ProbekitError("the data holds no batches")
    parts = [split_item(b) for b in kept]
    n = sum(count_inputs(x) for x, _ in parts)
    has_targets = parts[0][1] is not None
    classes = _classes(torch.cat([torch.as_tensor(y).reshape(-1) for _, y in parts])) if has_targets else None
    return BatchedData(name, kept, [str(i) for i in range(n)], classes=classes, has_targets=has_targets)


def as_probe_data(data, targets=None) -> ProbeData:
    """``data`` (see the module docstring) as :class:`ProbeData`; ``targets`` go with a tensor."""
    if isinstance(data, ProbeData):
        return data
    if isinstance(data, torch.Tensor):
        if targets is None:
            return _from_dataset(TensorDataset(data), f"tensor {tuple(data.shape)}")
        targets = torch.as_tensor(targets)
        if len(targets) != len(data):
            raise ProbekitError(f"{len(data)} samples but {len(targets)} targets")
        return _from_dataset(TensorDataset(data, targets), f"tensor {tuple(data.shape)}")
    if targets is not None:
        raise ProbekitError("targets= goes with a tensor of inputs; a Dataset or batches carry their own")
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        return _from_dataset(data, type(data).__name__)
    if isinstance(data, (DataLoader, Iterable)) and not isinstance(data, (str, bytes, Mapping)):
        return _from_batches(data, type(data).__name__)
    raise ProbekitError(f"data must be a spec string, a Dataset, a DataLoader, a tensor or batches, not "
                        f"{type(data).__name__}")
