"""The bundled plain ResNet20 (third-party weights): the conversion of the published file, its accuracy on the
bundled sample, and the branches it names for itself."""

from pathlib import Path

import pytest
import torch

from probekit import open_results, ProbekitError
from probekit.models.branches import DiscoveryConfig, discover
from probekit.run.data import load_data
from probekit.zoo.registry import load_zoo_model, WEIGHTS_DIR
from probekit.zoo.resnet20 import import_published

PUBLISHED = Path(__file__).resolve().parents[2] / "shared" / "models" / "resnet20-cifar10" / "resnet20-12fca82f.th"


@pytest.mark.skipif(not PUBLISHED.is_file(), reason=f"the published ResNet20 is not at {PUBLISHED}")
def test_bundled_weights_are_the_published_file_converted():
    converted = import_published(PUBLISHED)["state_dict"]
    bundled = torch.load(WEIGHTS_DIR / "resnet20-cifar10.pt", weights_only=True)["state_dict"]
    assert converted.keys() == bundled.keys()
    assert all(torch.equal(converted[k], bundled[k]) for k in converted)


def test_bundled_resnet20_classifies_the_sample_and_names_its_blocks_as_branches():
    model = load_zoo_model("resnet20-cifar10").eval()
    _, x, y = next(iter(load_data("cifar10-sample").loader(1000, 1000)))
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.7  # 81% on the whole JPEG test split (91.78% published on lossless images)
    found = discover(model, DiscoveryConfig())
    assert found.strategy == "glob" and [layer.name for layer in found.layers] == ["layer1", "layer2", "layer3"]
    assert len(found) == 9
    assert len(discover(model, DiscoveryConfig("layer3.*"))) == 3  # --branches overrides the model's glob
    model.probekit_branch_glob = "stage*.*"
    with pytest.raises(ProbekitError, match="probekit_branch_glob 'stage\\*\\.\\*' matches no module path"):
        discover(model, DiscoveryConfig())


def test_cli_probes_the_resnet20_blocks(cli, tmp_path):
    code, stdout, err = cli("run", "--model", "resnet20-cifar10", "--limit", "32", "--plugins", "activity",
                            "--out", tmp_path / "r.zarr", "--quiet")
    assert code == 0, err
    node = open_results(tmp_path / "r.zarr")["activity"]
    assert node.sizes["branch"] == 9 and node.attrs["branch_strategy"] == "glob"
