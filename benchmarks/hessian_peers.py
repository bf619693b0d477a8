"""The Hessian over the first layer of every branch of ``cifar10-branched16`` (16 x 162 = 2,592 weights, a
class-balanced batch of 128 from the bundled sample, the model's own loss, cross-entropy, summed over the batch),
by probekit and by its peers, each in a fresh process with the same thread count; prints times, peak memory and
ratios.

* probekit: :func:`probekit_plugins.hessian.exact.summed_hessian` (what ``probekit run --plugins hessian`` runs):
  all rows.
* BackPACK ``SqrtGGNExact``: BackPACK refuses the model as it is (functional ReLUs, residual adds, a clamp), so it
  runs on a hand-rewritten copy sharing the weights (``Parallel``/``SumModule`` branches, inputs normalised
  beforehand; for the clamped variant, ``nn.Hardtanh`` with a derivative registered here). Its GGN equals the
  Hessian here only because the within-branch term R_k is zero for one ReLU-network layer; probekit stays exact
  where it is not. All rows.
* curvlinops ``HessianLinearOperator`` times identity columns and the naive double-backward loop: ``--columns``
  evenly spaced columns, extrapolated to all 2,592 (said so in the output).
* ``torch.func`` HVPs (``vjp`` of ``grad``) run only with ``--methods ...,torch.func``: on this 2-core,
  24 GiB machine one product alone passed 24 GiB (so did vmapped ones and forward-over-reverse ``jvp`` of
  ``grad``).
* ``torch.func.hessian`` is not run: it materialises forward-mode tangents for all 2,592 directions at once
  (about 2,592 copies of the model's activations), far past this machine's memory.

Every method's rows are compared with probekit's (relative Frobenius error). Optional dependencies:
``pip install backpack-for-pytorch curvlinops-for-pytorch`` (a method whose library is missing is reported as
such).

    python benchmarks/hessian_peers.py [--threads 2] [--columns 16] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

METHODS = ("probekit", "backpack", "curvlinops", "torch.func", "naive")
DEFAULT = ("probekit", "backpack", "curvlinops", "naive")  # torch.func: out of memory here (see above)


def setup(batch_size: int):
    """The model (eval), its first-layer blocks, a class-balanced batch and the summed clamped loss."""
    from probekit.models.branches import DiscoveryConfig, discover
    from probekit.models.loading import load_model
    from probekit.models.losses import resolve_loss, summed_loss
    from probekit.run.data import load_data
    from probekit_plugins.hessian.params import select_params

    model = load_model("cifar10-branched16").module.eval()
    _, x, y = next(iter(load_data("cifar10-sample").loader(batch_size, batch_size)))
    branchset = discover(model, DiscoveryConfig())
    blocks = select_params(model, branchset, None)
    name = resolve_loss("auto", model, True, "hessian")  # the loss the model was trained with
    return model, branchset, blocks, x, y, lambda outputs: summed_loss(name, outputs, y, "bench")


def run_probekit(model, branchset, blocks, x, y, loss, columns):
    from probekit_plugins.hessian.exact import MemoryPlan, summed_hessian

    parts = summed_hessian(model, branchset.layers[0], blocks, x, loss, MemoryPlan(4 * 2 ** 30))
    return parts.hessian, None


def backpack_extension():
    """``SqrtGGNExact`` with a derivative for ``nn.Hardtanh`` (piecewise linear: df = 1 inside, 0 outside)."""
    from backpack.core.derivatives.elementwise import ElementwiseDerivatives
    from backpack.extensions import SqrtGGNExact
    from backpack.extensions.secondorder.sqrt_ggn.base import SqrtGGNBaseModule
    from backpack.utils.subsampling import subsample

    class Derivatives(ElementwiseDerivatives):
        def hessian_is_zero(self, module):
            return True

        def df(self, module, g_inp, g_out, subsampling=None):
            x = subsample(module.input0, subsampling=subsampling)
            return ((x > module.min_val) & (x < module.max_val)).to(x.dtype)

    extension = SqrtGGNExact()
    extension.set_module_extension(nn.Hardtanh, SqrtGGNBaseModule(Derivatives()))
    return extension


def backpack_copy(model) -> nn.Sequential:
    """The branched ResNet as BackPACK modules, sharing the weights; it takes normalised 32x32 inputs (which end
    at 4x4, so a fixed average pool replaces the adaptive one BackPACK lacks)."""
    from backpack.custom_module.branching import Parallel, SumModule

    def block(b):
        main = nn.Sequential(b.conv1, b.bn1, nn.ReLU(), b.conv2, b.bn2)
        shortcut = b.shortcut if len(b.shortcut) else nn.Identity()
        return nn.Sequential(Parallel(main, shortcut, merge_module=SumModule()), nn.ReLU())

    def branch(r):
        blocks = [block(b) for stage in (r.layer1, r.layer2, r.layer3, r.layer4) for b in stage]
        return nn.Sequential(r.conv1, r.bn1, nn.ReLU(), *blocks, nn.AvgPool2d(4), nn.Flatten(), r.linear)

    clamp = [nn.Hardtanh(-1.0, 1.0)] if model.clamp else []
    return nn.Sequential(Parallel(*[branch(r) for r in model.branches], merge_module=SumModule()), *clamp).eval()


def run_backpack(model, branchset, blocks, x, y, loss, columns):
    from backpack import backpack, extend

    copy = extend(backpack_copy(model), use_converter=False)
    with torch.no_grad():
        assert torch.allclose(copy((x - model.mean) / model.std), model(x), atol=1e-5), "the copy is not the model"
    # cross-entropy; a clamped model's loss has the same Hessian in the outputs (softmax's, whatever the targets)
    lossfunc = extend(nn.CrossEntropyLoss(reduction="sum"))
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = [params[b.name] for b in blocks]
    for p in chosen:
        p.requires_grad_(True)
    with backpack(backpack_extension()):
        lossfunc(copy((x - model.mean) / model.std), y).backward()
    s = torch.cat([p.sqrt_ggn_exact.flatten(2) for p in chosen], dim=2).flatten(0, 1)  # [C * N, P]
    return s.T @ s, None


def run_curvlinops(model, branchset, blocks, x, y, loss, columns):
    from curvlinops import HessianLinearOperator

    class Loss(nn.Module):
        reduction = "sum"

        def forward(self, outputs, targets):
            return loss(outputs)

    params = dict(model.named_parameters())
    operator = HessianLinearOperator(model, Loss(), [params[b.name] for b in blocks], [(x, y)],
                                     check_deterministic=False)
    eye = torch.eye(operator.shape[0])[:, columns]
    return (operator @ eye).T, columns


def run_torch_func(model, branchset, blocks, x, y, loss, columns):
    import warnings

    from torch.func import functional_call, grad, vjp

    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

    names = [b.name for b in blocks]
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    gradient = grad(lambda ps: loss(functional_call(model, ps, (x,))))
    total = sum(p.numel() for p in params.values())
    eye = torch.eye(total)[columns]
    tangents = {n: t.reshape(len(columns), *params[n].shape) for n, t in
                zip(names, eye.split([p.numel() for p in params.values()], dim=1), strict=True)}
    _, product = vjp(gradient, params)  # H is symmetric: v^T H = (H v)^T
    rows = [product({n: t[i] for n, t in tangents.items()})[0] for i in range(len(columns))]
    hv = {n: torch.stack([r[n] for r in rows]) for n in names}
    return torch.cat([hv[n].flatten(1) for n in names], dim=1), columns


def run_naive(model, branchset, blocks, x, y, loss, columns):
    from probekit_plugins.hessian.exact import naive_hessian

    return naive_hessian(lambda m: loss(m(x)), model, blocks, columns), columns


RUNNERS = {"probekit": run_probekit, "backpack": run_backpack, "curvlinops": run_curvlinops,
           "torch.func": run_torch_func, "naive": run_naive}


def one(method: str, args, out: Path) -> None:
    """In a fresh process: time ``method`` (setup excluded), save its rows, print one JSON line."""
    torch.set_num_threads(args.threads)
    model, branchset, blocks, x, y, loss = setup(args.batch_size)
    total = sum(b.size for b in blocks)
    columns = list(range(0, total, max(1, total // args.columns)))
    start = time.perf_counter()
    rows, computed = RUNNERS[method](model, branchset, blocks, x, y, loss, columns)
    seconds = time.perf_counter() - start
    np.save(out, rows.detach().double().numpy())
    print(json.dumps({"seconds": seconds, "rows": len(computed) if computed else total, "total": total,
                      "columns": computed, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--columns", type=int, default=16, help="columns the extrapolated methods compute")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--methods", default=",".join(DEFAULT), help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args.one, args, Path(args.save))
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    print(f"torch {torch.__version__}, {args.threads} threads, cifar10-branched16 first layer, batch "
          f"{args.batch_size}; each method in a fresh process, model loading excluded")
    results, reference = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            save = Path(tmp) / f"{method}.npy"
            proc = subprocess.run([sys.executable, __file__, "--one", method, "--save", str(save), "--threads",
                                   str(args.threads), "--columns", str(args.columns), "--batch-size",
                                   str(args.batch_size)], capture_output=True, text=True)
            if proc.returncode:
                print(f"{method:12s} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rows = np.load(save)
            if method == "probekit":
                reference = rows
            elif reference is not None:
                ref = reference if result["columns"] is None else reference[result["columns"]]
                result["error"] = float(np.linalg.norm(rows - ref) / np.linalg.norm(ref))
            result["full"] = result["seconds"] * result["total"] / result["rows"]
            results[method] = result
    base = results.get("probekit", {}).get("full")
    print(f"{'method':12s} {'time (s)':>10s} {'/ probekit':>12s} {'peak RSS (GiB)':>15s} {'rel. error':>11s}")
    for method, r in results.items():
        note = (f"  EXTRAPOLATED from {r['rows']} of {r['total']} columns ({r['seconds']:.1f} s)"
                if r["columns"] is not None else "")
        ratio = f"{r['full'] / base:.1f}x" if base else "-"
        print(f"{method:12s} {r['full']:10.1f} {ratio:>12s} {r['peak'] / 2 ** 30:15.2f} "
              f"{r.get('error', 0.0):11.1e}{note}")
    if "torch.func" not in results:
        print("torch.func HVPs: not run (one product passed 24 GiB on a 24 GiB machine; --methods adds it)")
    print("torch.func.hessian: not run (forward-mode tangents for all 2,592 directions at once: out of memory)")


if __name__ == "__main__":
    main()
