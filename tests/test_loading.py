import os
import pickle

import pytest
import torch
import torchvision

from probekit import ProbekitError
from probekit.zoo.architectures import digits_branched
from probekit.models.loading import LoadOptions, load_model
from probekit.models.safe_pickle import UnsafePickle


def test_zoo_models_load_with_their_weights_hash():
    loaded = load_model("digits-branched8")
    assert len(loaded.module.branches) == 8 and len(loaded.sha256) == 64
    assert not loaded.module.training


def test_torchvision_name_and_weights_file(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    weights = tmp_path / "w.pt"
    torch.save(reference.state_dict(), weights)
    loaded = load_model("torchvision:resnet18", LoadOptions(weights=str(weights)))
    torch.testing.assert_close(loaded.module.fc.weight, reference.fc.weight)


def test_unknown_torchvision_model():
    with pytest.raises(ProbekitError, match="unknown torchvision model"):
        load_model("torchvision:resnet9000")


def test_whole_module_pickle_of_resnext_loads_without_flags(tmp_path):
    path = tmp_path / "my_resnext.pt"
    torch.save(torchvision.models.resnext50_32x4d(), path)
    assert type(load_model(str(path)).module).__name__ == "ResNet"


def test_state_dict_needs_arch_and_loads_with_it(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(digits_branched(8).state_dict(), path)
    with pytest.raises(ProbekitError, match="--arch"):
        load_model(str(path))
    loaded = load_model(str(path), LoadOptions(arch="probekit.zoo.architectures:digits_branched"))
    assert len(loaded.module.branches) == 8


def test_export_archive_loads_with_trust_code(tmp_path):
    model = digits_branched(2)
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(3, 1, 8, 8),)), path)
    with pytest.raises(ProbekitError, match="--trust-code"):
        load_model(str(path))
    module = load_model(str(path), LoadOptions(trust_code=True)).module
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(module(x), model(x))


def test_torchscript_archive_loads_with_trust_code(tmp_path):
    model = digits_branched(2).eval()
    path = tmp_path / "m.ts"
    torch.jit.script(model).save(str(path))
    x = torch.randn(3, 1, 8, 8)
    with pytest.raises(ProbekitError, match="--trust-code"):
        load_model(str(path))
    torch.testing.assert_close(load_model(str(path), LoadOptions(trust_code=True)).module(x), model(x))


class Malicious:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_its_command_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": Malicious(marker)}, path)
    with pytest.raises(UnsafePickle, match="is no model class .*: refused") as err:
        load_model(str(path))
    assert "'posix.system'" in str(err.value) and "--trust-pickle" not in str(err.value)
    assert not marker.exists()


class Custom(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)


def test_foreign_class_is_named_and_trust_pickle_loads_it(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save(Custom(), path)
    with pytest.raises(UnsafePickle, match=r"test_loading\.Custom"):
        load_model(str(path))
    assert isinstance(load_model(str(path), LoadOptions(trust_pickle=True)).module, Custom)


@pytest.mark.parametrize(
    "spec, message",
    [("missing.pt", "model file not found"), ("no-such-zoo-model", "unknown model"),
     ("zoo:nope", "unknown zoo model")],
)
def test_bad_specs(spec, message):
    with pytest.raises(ProbekitError, match=message):
        load_model(spec)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(pickle.dumps([1, 2])[:5] + b"\x00garbage")
    with pytest.raises(ProbekitError, match="not a PyTorch model file"):
        load_model(str(path))
