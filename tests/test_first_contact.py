"""What a new user met on a fresh clone, each fixed: help text, local --arch modules, depthwise convs, threads."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision

from probekit.models.branches import DiscoveryConfig, discover
from probekit.errors import ProbekitError
from probekit.run import threads


@pytest.mark.parametrize("command", ["run", "evaluate", "report", "show", "plugins"])
def test_help_states_only_real_defaults(command):
    text = subprocess.run([sys.executable, "-m", "probekit", command, "--help"], capture_output=True, text=True,
                          check=True).stdout
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text


def test_evaluate_help_documents_every_option():
    text = subprocess.run([sys.executable, "-m", "probekit", "evaluate", "--help"], capture_output=True, text=True,
                          check=True).stdout
    assert "accuracy overall, per class" in text
    for option, words in (("--data", "labelled data"), ("--limit", "first N"), ("--device", "cuda")):
        assert option in text and words in text


def test_a_local_arch_module_says_why_it_is_not_found(tmp_path, cli, monkeypatch):
    (tmp_path / "mynet.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(2, 2)\n")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "w.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "mynet", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    code, _, err = cli("run", "--model", "w.pt", "--arch", "mynet:build", "--data", "random:2", "--plugins",
                       "activity")
    assert code == 2 and "mynet is in the working folder" in err and "PYTHONPATH=. probekit" in err


def test_depthwise_convs_are_left_out_with_a_note():
    convnext = torchvision.models.convnext_tiny()
    with pytest.raises(ProbekitError, match="18 depthwise convs .* left out as branches; name them with --branches"):
        discover(convnext, DiscoveryConfig())
    mobilenet = torchvision.models.mobilenet_v3_small()
    with pytest.raises(ProbekitError, match="depthwise convs"):
        discover(mobilenet, DiscoveryConfig())
    grouped = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Conv2d(8, 8, 3, groups=2))
    found = discover(grouped, DiscoveryConfig())
    assert [layer.name for layer in found.layers] == ["1"] and "1 depthwise conv " in found.note


def test_default_threads_leave_the_busy_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.7, 0.0, 0.0))
    assert threads.default_threads() == (2, "2 of 4 (the others are busy: load average 2.7)")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.4, 0.0, 0.0))
    assert threads.default_threads() == (4, "4")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert threads.default_threads()[0] == 1


def test_a_folder_given_as_a_model_file_is_named_as_a_folder(cli, tmp_path):
    code, _, err = cli("run", "--model", tmp_path, "--plugins", "activity")
    assert code == 2 and "is a folder without config.json" in err and "model file not found" not in err
