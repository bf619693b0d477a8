"""Probe data: a torch Dataset plus the labels probekit stores with results."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from torch.utils.data import DataLoader, Dataset

from probekit.errors import ProbekitError


@dataclass
class ProbeData:
    """Data to probe with.

    ``dataset[i]`` returns ``(x, target)``: ``x`` one input tensor (no batch
    dim), ``target`` a class index (``classes`` given), a float (regression),
    or ``0`` when ``has_targets`` is false. ``sample_ids[i]`` is the
    dataset's own id of sample ``i`` (a file path, an index).
    """

    name: str
    dataset: Dataset
    sample_ids: Sequence[str]
    classes: list[str] | None = None
    has_targets: bool = True
    num_workers: int = 0
    note: str = ""  # what the run's note should add about this data (e.g. why it has no classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def shuffled(self, seed: int) -> ProbeData:
        """The same samples in a random order drawn from ``seed`` (positions then follow the new order)."""
        import torch
        from torch.utils.data import Subset

        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        return dataclasses.replace(self, name=f"{self.name} (shuffled, seed {seed})",
                                   dataset=Subset(self.dataset, order), sample_ids=[self.sample_ids[i] for i in order])

    def count(self, limit: int | None) -> int:
        """How many samples a run with ``--limit limit`` probes."""
        return len(self) if limit is None else min(limit, len(self))

    def loader(self, batch_size: int, limit: int | None, shard: range | None = None) -> DataLoader:
        """Batches of ``(index, x, target)`` over the first ``limit`` samples (or the positions ``shard``
        among them), in order; ``index`` is the position in the data."""
        positions = shard if shard is not None else range(self.count(limit))
        return DataLoader(
            _Indexed(self.dataset, positions),
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )


class _Indexed(Dataset):
    """The samples at ``positions`` of a dataset, each with its position."""

    def __init__(self, dataset: Dataset, positions: range):
        self.dataset, self.positions = dataset, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        position = self.positions[i]
        try:
            x, target = self.dataset[position]
        except Exception as exc:  # a file that decodes badly past its header
            text = str(exc).strip()
            raise ProbekitError(f"sample {position} cannot be read: {type(exc).__name__}: "
                                f"{text.splitlines()[0] if text else ''}") from None
        return position, x, target


def batches(loader: DataLoader):
    """Iterate ``loader``; an error raised in a worker process comes out as the one line it was raised with
    (a DataLoader otherwise wraps it in the worker's whole traceback)."""
    iterator = iter(loader)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except ProbekitError as exc:
            raise ProbekitError(str(exc).rpartition(f"{ProbekitError.__module__}.ProbekitError: ")[2]
                                .split("\\n")[0]) from None
        yield item


def parse_data_spec(spec: str) -> tuple[str, str]:
    """``'scheme:argument'`` or ``'scheme'`` -> ``(scheme, argument)``."""
    scheme, _, argument = spec.partition(":")
    return scheme.strip(), argument.strip()


def load_data(spec: str, seed: int = 0, model=None) -> ProbeData:
    """Build the data for ``--data spec`` through the registered dataset factories; a factory with a ``model``
    parameter also gets the model (text data reads its tokenizer)."""
    import inspect

    from probekit.plugins import datasets

    scheme, argument = parse_data_spec(spec)
    factories = datasets()
    if scheme not in factories:
        known = ", ".join(sorted(factories))
        raise ProbekitError(f"unknown data {spec!r}: the schemes are {known}")
    factory, _ = factories[scheme]
    try:
        wants_model = "model" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        wants_model = False
    data = factory(argument, seed, model=model) if wants_model else factory(argument, seed)
    if len(data) == 0:
        raise ProbekitError(f"data {spec!r} holds no samples")
    return data

