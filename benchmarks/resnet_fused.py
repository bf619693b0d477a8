"""One training step of cifar10-branched16: a loop over 16 branch modules against one fused grouped-conv net.

Both compute the same function (tests/test_resnet.py). Prints seconds per step
(batch 128, forward + backward + SGD step, best of several) and the ratio.

    python benchmarks/resnet_fused.py [--repeats 5] [--branches 16]
"""

from __future__ import annotations

import argparse
import time

import torch

from fused_resnet import FusedBranchedResNet18
from probekit.zoo.resnet import branched_resnet18, clamped_softmax_loss


def step_seconds(model, x, y, repeats: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        loss = clamped_softmax_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--branches", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    loop = branched_resnet18(args.branches).train()
    fused = FusedBranchedResNet18.from_branched(loop).train()
    x, y = torch.rand(128, 3, 32, 32), torch.randint(0, 10, (128,))
    loop_s, fused_s = step_seconds(loop, x, y, args.repeats), step_seconds(fused, x, y, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.branches} branches, batch 128")
    print(f"loop over branch modules {loop_s:.3f} s/step   fused grouped convs {fused_s:.3f} s/step   "
          f"fused / loop {fused_s / loop_s:.2f}")


if __name__ == "__main__":
    main()
