"""Cost of capturing every attention head of torchvision's ViT-B/16 and Swin-T against their bare forward pass.

Each model (random weights; nothing is downloaded) runs the same 224x224 batches bare and with probekit's head
capture: discovery swaps each attention module for one that runs the library's fused attention once and calls its
output projection as a module (:mod:`probekit.models.heads`), and one hook per projection gives every head's
contribution ``[N, H, T * E]`` (:mod:`probekit.models.projected_heads`), taken off as the activity analysis gets
it. Alternating, best of several repeats; prints the ratio captured / bare (target: <= 1.3; the per-head swap
of probekit 1.3 cost 3.0x on ViT-B/16 and 7.5x on Swin-T). Both run with freed memory kept for reuse, as in a
probekit run (:mod:`probekit.run.allocator`); ``--fresh-memory`` leaves glibc's defaults.

    python benchmarks/heads.py [--repeats 5] [--threads N] [--batch-size 8] [--fresh-memory]
"""

from __future__ import annotations

import argparse
import copy
from contextlib import nullcontext

import torch
import torchvision

from head_capture import timed
from probekit.models.branches import DiscoveryConfig, discover
from probekit.run.allocator import reused_memory
from probekit.run.capture import capture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fresh-memory", action="store_true",
                        help="leave glibc's defaults (a probekit run keeps freed memory for reuse during its pass)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = [torch.randn(args.batch_size, 3, 224, 224) for _ in range(args.batches)]
    with reused_memory() if not args.fresh_memory else nullcontext(False) as kept:
        print(f"{args.batches} batches of {args.batch_size} images 224x224, {args.threads} threads, best of "
              f"{args.repeats}; freed memory kept for reuse, as in a probekit run (both ways): {kept}")
        for name in ("vit_b_16", "swin_t"):
            compare(name, batches, args.repeats)


def compare(name: str, batches: list, repeats: int) -> None:
    """Time one model bare and with its heads captured, alternating; print the ratio."""
    bare_model = getattr(torchvision.models, name)(weights=None).eval()
    model = copy.deepcopy(bare_model)
    branchset = discover(model, DiscoveryConfig())
    heads = sum(len(layer.branches) for layer in branchset.layers)
    with torch.no_grad():
        assert torch.allclose(model(batches[0]), bare_model(batches[0]), rtol=1e-4, atol=1e-4)

    def captured(batch):
        with capture(model, branchset) as recorder:
            model(batch)
            recorder.take(batch.shape[0])

    timed(bare_model, batches[:1])  # warm-up
    timed(captured, batches[:1])
    bare, probed = [], []
    for _ in range(repeats):
        bare.append(timed(bare_model, batches))
        probed.append(timed(captured, batches))
    print(f"{name:9s} {heads} heads in {len(branchset.layers)} layers: bare {min(bare):.3f} s, with head capture "
          f"{min(probed):.3f} s, ratio {min(probed) / min(bare):.2f}")


if __name__ == "__main__":
    main()
