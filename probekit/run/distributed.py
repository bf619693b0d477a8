"""Data-parallel probing on ``torch.distributed`` (``probekit run --nproc N`` or ``torchrun -m probekit run``).

``--nproc N`` starts N local processes itself (:func:`launch`): their
rendezvous is a file in a private temporary folder (no TCP store listening on
any interface), gloo's connections go over the loopback interface, and no
process has the working directory on ``sys.path``, so a ``tqdm.py`` lying
there is never imported. Multi-node runs use torchrun by hand (docs/results.md
says what that trusts).

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
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

SHARD_ALIGN = 64  # shards start at multiples of this many samples
RENDEZVOUS_ENV = "PROBEKIT_RENDEZVOUS"  # the rendezvous file of a --nproc launch
# Run a module as __main__ without the working directory (python -c puts it first on sys.path).
SAFE_PATH_BOOT = ("import sys; sys.path.pop(0); import runpy; "
                  "runpy.run_module({!r}, run_name='__main__', alter_sys=True)")


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
        backend = "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo"
        rendezvous = os.environ.get(RENDEZVOUS_ENV)
        if rendezvous:  # a --nproc launch: a file store, no listening socket
            dist.init_process_group(backend=backend, init_method=f"file://{rendezvous}",
                                    rank=int(os.environ["RANK"]), world_size=world)
        else:  # launched by torchrun (its env:// rendezvous)
            dist.init_process_group(backend=backend)
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


def _loopback_interface() -> str:
    """The name of the loopback network interface (``lo`` on Linux, ``lo0`` on macOS)."""
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    return names[0] if names else "lo"


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``probekit <argv>`` as ``nproc`` local processes; the first non-zero exit code, else 0.

    When one process fails, the others are stopped. Rank 0 speaks for the run: the other ranks' stderr (a peer's
    "connection closed" traceback once rank 0 has failed with its one-line error) is shown only when rank 0
    succeeded. See the module docstring for what is (not) exposed."""
    folder = Path(tempfile.mkdtemp(prefix="probekit-rendezvous-"))
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, torch.get_num_threads() // nproc)))
    loopback = _loopback_interface()
    command = [sys.executable, "-c", SAFE_PATH_BOOT.format("probekit"), *argv]
    processes = []
    try:
        for rank in range(nproc):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                   "LOCAL_WORLD_SIZE": str(nproc), RENDEZVOUS_ENV: str(folder / "store"),
                   "OMP_NUM_THREADS": threads, "GLOO_SOCKET_IFNAME": loopback, "NCCL_SOCKET_IFNAME": loopback}
            log = None if rank == 0 else open(folder / f"rank-{rank}.log", "wb")  # noqa: SIM115 - closed below
            processes.append(subprocess.Popen(command, env=env, stderr=log))
            if log is not None:
                log.close()
        code = _wait_all(processes)
        if code and processes[0].returncode == 0:
            for rank in range(1, nproc):
                sys.stderr.write((folder / f"rank-{rank}.log").read_text(errors="replace"))
        return code
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_all(processes: list[subprocess.Popen], grace: float = 10.0) -> int:
    """Wait for every process; on the first failure give rank 0 ``grace`` seconds to end on its own (with its
    own error), stop the rest, and return rank 0's code if it failed, else the first failure's."""
    while True:
        codes = [p.poll() for p in processes]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            try:
                processes[0].wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            for process in processes:
                if process.poll() is None:
                    process.terminate()
            return processes[0].returncode if processes[0].returncode not in (None, 0) else failed[0]
        if all(c == 0 for c in codes):
            return 0
        time.sleep(0.1)
