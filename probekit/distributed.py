"""Data-parallel probing on ``torch.distributed`` (``probekit run --nproc N`` or ``torchrun -m probekit run``).

Each rank probes a disjoint, contiguous shard of the samples and writes its
rows of the per-sample arrays into the shared staging store. Afterwards
rank 0 gathers every analysis's streaming state (``gather_object``, gloo on
the CPU), merges it exactly by the analysis's ``merge_rules``, finalizes and
writes the store. Backends: gloo on the CPU; ``cpu:gloo,cuda:nccl`` when the
run uses CUDA (each rank on ``cuda:<LOCAL_RANK>``).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

SHARD_ALIGN = 64  # shards start at multiples of this many samples


@dataclass(frozen=True)
class Ranks:
    """This process's place in a distributed run."""

    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env(device: str) -> Ranks | None:
    """The run's ranks when launched by torchrun with more than one process (joining its process group),
    else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_secondary_process() -> bool:
    """Whether this process is a rank other than 0 of a torchrun launch (it stays quiet)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"


def shard_of(n: int, ranks: Ranks) -> range:
    """Rank ``r``'s contiguous positions: shards of ``ceil(n / world)`` rounded up to :data:`SHARD_ALIGN`."""
    size = math.ceil(n / ranks.world / SHARD_ALIGN) * SHARD_ALIGN
    start = min(ranks.rank * size, n)
    return range(start, min(start + size, n))


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, ranks: Ranks) -> list[Any] | None:
    """Every rank's ``value`` (in rank order) on rank 0; None elsewhere."""
    out = [None] * ranks.world if ranks.is_main else None
    dist.gather_object(value, out, dst=0)
    return out


def barrier() -> None:
    dist.barrier()


def finish() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(device: str, ranks: Ranks | None) -> str:
    """``cuda`` becomes this rank's own GPU; anything else is kept."""
    if ranks is not None and device == "cuda":
        return f"cuda:{ranks.local_rank}"
    return device


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``probekit <argv>`` as ``nproc`` processes through torchrun (standalone rendezvous); its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "probekit", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, torch.get_num_threads()
                                                                                        // nproc)))}
    return subprocess.call(command, env=env)
