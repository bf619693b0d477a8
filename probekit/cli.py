"""The ``probekit`` command line."""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

from probekit import __version__
from probekit.errors import ProbekitError, escape


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (``probekit: error: ...``, exit 2) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f"probekit: error: {escape(message)} (see {self.prog} --help)\n")


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that states a default where there is one (not ``None``, off, or already said in the text)."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def bounded_int(low: int, high: int):
    """An argparse type: an integer in ``[low, high]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    parse.__name__ = "integer"
    return parse


BATCH = bounded_int(1, 1 << 20)
COUNT = bounded_int(1, 1 << 40)


def _parse_option(text: str) -> tuple[str, str, str]:
    """``NAME.KEY=VALUE`` -> ``(name, key, value)``."""
    head, eq, value = text.partition("=")
    name, dot, key = head.partition(".")
    if not (eq and dot and name and key):
        raise ProbekitError(f"--option must look like NAME.KEY=VALUE, not {text!r}")
    return name.strip(), key.strip(), value


def default_store(model: str, now: datetime | None = None) -> str:
    """``probekit-runs/<model name>-<UTC time>.zarr``: where ``run`` writes when ``--out`` is not given."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model.rpartition(":")[2]).stem).strip("-.") or "run"
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    return str(Path("probekit-runs") / f"{name}-{stamp}.zarr")


def cmd_run(args) -> int:
    from probekit.models.loading import LoadOptions
    from probekit.run.probing import run_probe
    from probekit.run.runner import RunSpec
    from probekit.store.location import check_output_location

    if args.out is None:
        if args.resume:
            raise ProbekitError("--resume needs the --out of the run to continue")
        args.out = default_store(args.model)
        args.argv = [*args.argv, "--out", args.out]  # processes launched by --nproc write the same store
    options: dict[str, dict[str, str]] = {}
    for text in args.option:
        name, key, value = _parse_option(text)
        options.setdefault(name, {})[key] = value
    plugins = [p.strip() for p in args.plugins.split(",") if p.strip()]
    if not plugins:
        raise ProbekitError("--plugins names no plugin")
    load = LoadOptions(weights=args.weights, arch=args.arch, trust_pickle=args.trust_pickle,
                       trust_code=args.trust_code, target_class=args.target_class)
    out = check_output_location(args.out)
    if args.report:
        check_report_target_of(args.out, args.overwrite)
    if args.nproc < 1:
        raise ProbekitError("--nproc must be at least 1")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from probekit.run.distributed import launch
        from probekit.run.runner import check_launch

        check_launch(RunSpec(model=args.model, data=args.data, plugins=plugins, out=out, options=options,
                             overwrite=args.overwrite))
        return launch(args.nproc, _without_nproc(args.argv))
    run, _ = run_probe(args.model, args.data, plugins, out=out, options=options, load=load, branches=args.branches,
                       limit=args.limit, batch_size=args.batch_size, device=args.device, seed=args.seed,
                       overwrite=args.overwrite, progress=not args.quiet, resume=args.resume,
                       checkpoint_every=args.checkpoint_every, shuffle=args.shuffle, state=args.state,
                       threads=args.threads)
    from probekit.run.distributed import is_secondary_process

    if is_secondary_process():
        return 0  # rank 0 reports
    print_store(args.out, args.report)
    for name, message in run.errors.items():
        print(f"probekit: error: analysis {name} failed: {message}", file=sys.stderr)
    return 1 if run.errors else 0


def describe_analysis(name: str) -> int:
    """``probekit plugins NAME``: an analysis's description, options (type and default) and needs."""
    import dataclasses

    from probekit.run.options import describe, option_help, option_types
    from probekit.run.registry import checked_analyses

    registered, invalid = checked_analyses()
    if name in invalid:
        raise ProbekitError(invalid[name])
    if name not in registered:
        raise ProbekitError(f"unknown analysis {name!r}; available: {', '.join(sorted(registered))}")
    cls, plugin = registered[name]
    print(f"{name} (plugin {plugin}): {cls.description or 'no description'}")
    kinds, helps = option_types(cls.Options), option_help(cls.Options)
    fields = dataclasses.fields(cls.Options)
    print("options:" if fields else "options: none")
    for field in fields:
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        text = f": {escape(helps[field.name])}" if field.name in helps else ""
        print(f"  {name}.{field.name}: {describe(kinds[field.name])} (default {default!r}){text}")
    merges = "declared (runs with --nproc and --resume)" if cls.merge_rules is not None else \
        "undeclared (no --nproc, no --resume)"
    data = ", ".join(need for need, wanted in (("targets", cls.needs_targets), ("classes", cls.needs_classes))
                     if wanted) or "nothing beyond inputs"
    print(f"needs: data with {data}; gradients in the pass {'yes' if cls.needs_grad else 'no'}; merge rules {merges}")
    for tap_name, tap in cls.taps.items():
        print(f"  tap {tap_name}: {tap.kind} of {tap.path!r}{' in each branch' if tap.per_branch else ''}")
    print(f"figures: {cls.plot or 'none'}")
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line minus ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def print_store(store: str, report: bool) -> None:
    """Summarise a freshly written store; write its report when asked (the path is printed last)."""
    from probekit.store.results import describe, open_results

    print(describe(open_results(store)))
    print(f"\nwrote {store}")
    if report:
        from probekit.report.html import write_report

        print(f"report: {write_report(store, overwrite=True)}")


def check_report_target_of(store: str, overwrite: bool) -> None:
    """Fail before the run, not after it, when ``--report`` could not write its folder."""
    from probekit.report.html import check_report_target, default_report_dir

    check_report_target(store, default_report_dir(store), overwrite)


def cmd_report(args) -> int:
    from probekit.report.html import write_report

    stores = args.store if len(args.store) > 1 else args.store[0]
    print(f"report: {write_report(stores, args.out, overwrite=args.overwrite, dim=args.dim)}")
    return 0


def cmd_show(args) -> int:
    from probekit.store.results import describe, open_results

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = open_results(args.store)
    print(describe(tree))
    return 0


def cmd_evaluate(args) -> int:
    from probekit.run.evaluate import evaluate
    from probekit.models.loading import LoadOptions

    result = evaluate(args.model, args.data, LoadOptions(weights=args.weights, arch=args.arch,
                                                         trust_pickle=args.trust_pickle, trust_code=args.trust_code),
                      batch_size=args.batch_size, limit=args.limit, device=args.device, progress=not args.quiet)
    print(result.table())
    return 0


def cmd_plugins(args) -> int:
    from probekit.plugins import broken_plugins, plugin_infos
    from probekit.run.registry import checked_analyses

    if args.name:
        return describe_analysis(args.name)
    registered, invalid = checked_analyses()
    broken = broken_plugins()
    for name, problem in sorted(broken.items()):
        print(f"broken plugin {escape(name)}: left out, {escape(problem)}")
    for name, problem in sorted(invalid.items()):
        if name not in broken:
            print(f"invalid analysis {name}: {escape(problem)}")
    by_plugin: dict[str, list[str]] = {}
    for name, (_, plugin) in registered.items():
        by_plugin.setdefault(plugin, []).append(name)
    for info in plugin_infos():
        provided = f"  analyses: {', '.join(sorted(by_plugin[info.name]))}" if info.name in by_plugin else ""
        print(f"{info.name} {info.version}{provided}\n  hooks: {', '.join(info.hooks)}")
    return 0


def _add_trust_flags(parser: argparse.ArgumentParser) -> None:
    """``--trust-pickle`` and ``--trust-code``: each lets a model file run code (docs/security.md)."""
    parser.add_argument("--trust-pickle", action="store_true",
                        help="only if you trust the file's author: load pickles that need classes outside the "
                             "safe list (runs code from the file)")
    parser.add_argument("--trust-code", action="store_true",
                        help="only if you trust the file's author: load TorchScript and torch.export archives, "
                             "which are programs")


def _with_analyses(format_help):
    """``run --help`` ends with the analyses (listed only when that help is printed: it loads the plugins)."""

    def formatted() -> str:
        from probekit.run.registry import analyses

        found = analyses()
        lines = [f"  {name:18s} {cls.description}" for name, (cls, _) in sorted(found.items())]
        return format_help() + "\nanalyses (probekit plugins NAME describes one):\n" + "\n".join(lines) + "\n"

    return formatted


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="probekit", description="Probe branched neural networks.")
    parser.add_argument("--version", action="version", version=f"probekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="probe a model over data and write a results store",
                         formatter_class=DefaultsFormatter)
    run.format_help = _with_analyses(run.format_help)
    run.add_argument("--model", required=True, help="zoo name, torchvision:NAME, hf:DIR (a local Hugging Face "
                     "folder), or a model file")
    run.add_argument("--data", help="cifar10-sample[:SIZE] (bundled: 1,000 CIFAR-10 test images, class-interleaved), "
                     "toy1, toy2, digits[:train|test], cifar10:ROOT[:train|test], imagefolder:PATH, random:C,H,W, "
                     "and for hf: models text:FILE[:SEQ_LEN] or jsonl:FILE[:FIELD] "
                     "(default: the data the model declares, else the bundled sample at a size the model accepts)")
    run.add_argument("--shuffle", action="store_true", help="probe the samples in a random order drawn from --seed")
    run.add_argument("--plugins", required=True, help="comma-separated analyses (listed below)")
    run.add_argument("--out", help="results store to create (a .zarr directory; default: "
                     "probekit-runs/<model>-<UTC time>.zarr)")
    run.add_argument("--option", action="append", default=[], metavar="NAME.KEY=VALUE",
                     help="an analysis option (repeatable)")
    run.add_argument("--weights", help="state_dict for torchvision:NAME or --arch")
    run.add_argument("--arch", help="module:callable that builds the architecture of a state_dict file")
    _add_trust_flags(run)
    run.add_argument("--target-class", metavar="NAME",
                     help="class a generator transfers every input to (e.g. male for celeba-branched9; "
                          "default: its first class)")
    run.add_argument("--branches", metavar="GLOB", help="name the branch modules by module path")
    run.add_argument("--limit", type=COUNT, help="probe only the first N samples")
    run.add_argument("--batch-size", type=BATCH, default=64, help="samples per batch")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run of the same command from its last checkpoint")
    run.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                     help="checkpoint the run every N batches, for --resume (0: never; default 100)")
    run.add_argument("--nproc", type=int, default=1,
                     help="probe with N processes (data parallel, launched through torchrun)")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    run.add_argument("--threads", type=bounded_int(1, 4096), metavar="N",
                     help="CPU threads for torch (default: the cores not kept busy by other work)")
    run.add_argument("--seed", type=int, default=0, help="seeds torch, random: data and --shuffle")
    run.add_argument("--state", choices=("trained", "init"), default="trained",
                     help="init: probe a fresh default initialisation of the model's architecture under --seed "
                          "(PyTorch's reset_parameters: BatchNorm statistics reset, no recipe's zeroed heads)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing store (once the run is done)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--report", action="store_true", help="also write the HTML report (<out>-report/)")
    run.set_defaults(func=cmd_run)

    show = sub.add_parser("show", help="print a readable summary of a results store")
    show.add_argument("store")
    show.set_defaults(func=cmd_show)

    report = sub.add_parser("report", help="write an HTML report (page + PNGs) of a results store, or of several "
                                           "combined along --dim (their spread)")
    report.add_argument("store", nargs="+")
    report.add_argument("--dim", default="seed", help="the dimension several stores are combined along (seed, step, "
                        "model...; each store's own root attr of that name labels it when present)")
    report.add_argument("--out", help="folder for index.html and the PNGs (default: <store>-report)")
    report.add_argument("--overwrite", action="store_true", help="replace an existing report folder")
    report.set_defaults(func=cmd_report)

    evaluate = sub.add_parser("evaluate", help="accuracy overall, per class and per branch alone",
                              description="Score a classifier on labelled data: accuracy overall, per class, and "
                                          "of each summed branch acting alone (its own output's argmax).",
                              formatter_class=DefaultsFormatter)
    evaluate.add_argument("--model", required=True, help="zoo name, torchvision:NAME, or a model file")
    evaluate.add_argument("--data", required=True, help="labelled data: cifar10-sample, digits[:test], "
                          "cifar10:ROOT[:train|test], imagefolder:PATH")
    evaluate.add_argument("--weights", help="state_dict for torchvision:NAME or --arch")
    evaluate.add_argument("--arch", help="module:callable that builds the architecture of a state_dict file")
    _add_trust_flags(evaluate)
    evaluate.add_argument("--limit", type=COUNT, help="score only the first N samples")
    evaluate.add_argument("--batch-size", type=BATCH, default=256, help="samples per batch")
    evaluate.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(func=cmd_evaluate)

    plugins = sub.add_parser("plugins", help="list plugins, their versions and hooks; with NAME, describe one "
                             "analysis (options, types, defaults, needs)")
    plugins.add_argument("name", nargs="?", help="an analysis name, e.g. hessian")
    plugins.set_defaults(func=cmd_plugins)

    from probekit.commands import add_plugin_commands

    add_plugin_commands(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``), raised so every ``finally`` runs: staging removed, the store unlocked."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"probekit: warning: {escape(message)}\n"


def _resume_hint(args) -> str:
    """After an interrupted ``run`` that left a checkpoint: how to continue it."""
    if getattr(args, "command", None) != "run" or not getattr(args, "out", None):
        return ""
    from probekit.store.results import store_status

    try:
        interrupted = store_status(args.out) == "incomplete"
    except Exception:  # no store, or one that cannot be read: no hint
        return ""
    return "; run the same command with --resume to continue from the last checkpoint" if interrupted else ""


def main(argv: list[str] | None = None) -> int:
    import signal

    warnings.formatwarning = _one_line_warning  # a warning (a plugin left out, an incomplete store) is one line

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    shown = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # a warning (a plugin left out, an incomplete store) is one line
    try:
        return args.func(args)
    except ProbekitError as exc:
        from probekit.run.distributed import is_secondary_process

        if not is_secondary_process():  # in a torchrun launch, rank 0 speaks for all
            print(f"probekit: error: {escape(exc)}", file=sys.stderr)
        return 2
    except Terminated:
        print("probekit: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"probekit: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush quiet
        return 0
    except OSError as exc:  # disk full, file too large, permissions: one line, not a traceback
        print(f"probekit: error: {escape(exc)}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":
    sys.exit(main())
