"""Hostile model files (docs/security.md): each is built for real, shown to be hostile when loaded the unsafe way,
and then run through ``probekit run`` and ``probekit evaluate``, which must refuse it with one escaped line and a
non-zero exit, with no marker file ever appearing.

Mutation checks, done in a scratch copy of the code by ``tests/security/mutate.py`` (see each test's docstring for
the mutation and the result).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import malicious
from probekit import open_results
from probekit.zoo.architectures import digits_branched

HERE = Path(__file__).resolve().parent
COMMANDS = {
    "run": ["run", "--data", "random:3,8,8", "--limit", "2", "--plugins", "activity", "--quiet"],
    "evaluate": ["evaluate", "--data", "digits:test", "--limit", "2", "--quiet"],
}


def invoke(cli, command: str, path: Path, tmp_path: Path, *extra: str):
    args = [COMMANDS[command][0], "--model", path, *COMMANDS[command][1:], *extra]
    if command == "run":
        args += ["--out", tmp_path / "out.zarr"]
    return cli(*args)


def assert_one_escaped_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("probekit: error: "), err
    assert "\x1b" not in err and "Traceback" not in err
    return lines[0]


def unsafe_load_in_subprocess(path: Path) -> None:
    """Load ``path`` the unsafe way in a child process (so whatever it runs stays out of the test process)."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import malicious; malicious.unsafe_load({str(path)!r})"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)


HOSTILE = {
    "export archive with a pickled weight, named model.pt": (malicious.export_with_pickled_weight, "--trust-code"),
    "TorchScript archive that writes a file": (malicious.torchscript_writing_file, "--trust-code"),
    "pickle calling os.system": (malicious.pickle_calling_system, None),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_file_is_refused_and_runs_nothing(cli, tmp_path, kind, command):
    """Mutations: loading programs without the ``--trust-code`` check (``kind in PROGRAMS and not
    options.trust_code`` -> ``False``) creates the marker for both archives, and ``torch.load(...,
    weights_only=False)`` in ``load_module_pickle`` creates it for the pickle: each case then fails here."""
    build, flag = HOSTILE[kind]
    marker = tmp_path / "marker"
    path = build(tmp_path, marker)
    unsafe_load_in_subprocess(path)
    assert marker.exists(), "the file is not hostile: loading it the unsafe way did nothing"
    marker.unlink()
    code, _, err = invoke(cli, command, path, tmp_path)
    line = assert_one_escaped_line(code, err)
    assert not marker.exists()
    if flag:  # a program: the trust flag is offered only after the warning
        assert line.index("Only if you trust the file's author") < line.index(flag)
    else:  # a system call: no flag is offered at all
        assert "'posix.system'" in line or "'nt.system'" in line
        assert "--trust" not in line


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_allowlisted_package_helper_is_refused(cli, tmp_path, command):
    """``probekit.run.sample_arrays.SampleArray`` creates files; it was allowed because every ``probekit.*`` class
    was. Mutation: ``allowed`` back to the old rule (any class under ``probekit.*``, found by importing its
    module) -> the pickle loads, the marker folder is created and this test fails."""
    marker = tmp_path / "made-by-pickle"
    path = malicious.pickle_of_allowlisted_helper(tmp_path, marker)
    code, _, err = invoke(cli, command, path, tmp_path)
    line = assert_one_escaped_line(code, err)
    assert "'probekit.run.sample_arrays.SampleArray'" in line and "--trust" not in line
    assert not marker.exists()


def test_cli_module_global_is_refused_without_importing_it(tmp_path):
    """The old check imported every module a ``probekit.*`` name pointed to, so ``probekit.__main__`` ran the
    CLI. Mutation: the same old rule in ``allowed`` -> importing ``probekit.__main__`` runs the CLI, which exits
    with its usage, and this test fails."""
    path = malicious.pickle_of_cli_module(tmp_path)
    code = ("import sys\nfrom probekit.cli import main\nrc = main(['evaluate', '--model', sys.argv[1], '--data', "
            "'digits:test', '--quiet'])\nprint('main imported' if 'probekit.__main__' in sys.modules else 'clean')\n"
            "sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout.strip() == "clean", result.stdout + result.stderr
    assert_one_escaped_line(result.returncode, result.stderr)
    assert "'probekit.__main__.main'" in result.stderr and "--trust" not in result.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_ansi_class_name_is_escaped_and_cannot_fake_the_message(cli, tmp_path, command):
    """Mutation: printing the exception raw (``print(f"probekit: error: {exc}")`` and ``ProbekitError`` without
    ``escape``) writes the ESC bytes, which clear the real message: this test fails."""
    path = malicious.pickle_with_ansi_name(tmp_path)
    code, _, err = invoke(cli, command, path, tmp_path)
    line = assert_one_escaped_line(code, err)
    assert "\\x1b[2K" in line  # shown, inert
    assert line.rindex("--trust-pickle") > line.index("Only if you trust the file's author")


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("arch", ["os:system", "builtins:exec", "subprocess:getoutput", "torch:save",
                                  "probekit.zoo.architectures:nothing", "not a spec"])
def test_arch_accepts_only_module_builders(cli, tmp_path, command, arch):
    """Mutation: without the standard-library check, ``os:system`` and ``builtins:exec`` are called (and fail
    with another message): the standard-library assertion fails."""
    weights = tmp_path / "w.pt"
    torch.save(digits_branched(2).state_dict(), weights)
    code, _, err = invoke(cli, command, weights, tmp_path, "--arch", arch)
    line = assert_one_escaped_line(code, err)
    if arch.split(":")[0] in ("os", "builtins", "subprocess"):
        assert "standard-library module" in line
    elif arch == "torch:save":
        assert "could not be called with no arguments" in line


def test_resnext_whole_module_pickle_loads_with_no_flag(cli, tmp_path):
    path = tmp_path / "my_resnext.pt"
    torch.save(torchvision.models.resnext50_32x4d(), path)
    code, _, err = cli("run", "--model", path, "--data", "random:3,32,32", "--limit", "2", "--plugins",
                       "activity", "--out", tmp_path / "r.zarr", "--quiet")
    assert code == 0, err
    branches = open_results(tmp_path / "r.zarr")["activity"].branch.values
    assert len(branches) == 16 * 32 and "layer1.0.conv2[g=31]" in branches  # 16 grouped convs of 32 groups


def test_safetensors_file_loads_with_arch(cli, tmp_path):
    from safetensors.torch import save_file

    model = digits_branched(8)
    path = tmp_path / "weights.safetensors"
    save_file(model.state_dict(), path)
    code, stdout, err = cli("evaluate", "--model", path, "--arch", "probekit.zoo.architectures:digits_branched",
                            "--data", "digits:test", "--limit", "50", "--quiet")
    assert code == 0 and "accuracy" in stdout, err
    code, _, err = cli("evaluate", "--model", path, "--data", "digits:test", "--quiet")
    assert code == 2 and "safetensors" in err and "--arch" in err


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_trusted_program_loads_with_trust_code(cli, tmp_path, kind):
    model = digits_branched(8).eval()
    path = tmp_path / f"model.{kind}"
    if kind == "torchscript":
        torch.jit.script(model).save(str(path))
    else:
        torch.export.save(torch.export.export(model, (torch.randn(4, 1, 8, 8),)), path)
    code, _, err = cli("evaluate", "--model", path, "--data", "digits:test", "--limit", "40", "--quiet")
    assert code == 2 and "--trust-code" in err
    code, stdout, err = cli("evaluate", "--model", path, "--data", "digits:test", "--limit", "40", "--quiet",
                            "--batch-size", "4", "--trust-code")
    assert code == 0 and "accuracy" in stdout, err
