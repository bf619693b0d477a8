"""Evidence on real runs: identical branches are never significant, the bundled classifier's are; an untrained
copy is probed with --state init; several initialisations with init_seeds."""

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from helpers import run_analyses
from probekit import SummedBranches


def identical_copies(path):
    torch.manual_seed(0)
    branch = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                           nn.Linear(128, 10))
    torch.save(SummedBranches([copy.deepcopy(branch) for _ in range(4)]), path)
    return path


def test_identical_branches_are_never_significant(tmp_path):
    model = identical_copies(tmp_path / "same.pt")
    tree = run_analyses(tmp_path, model, "cifar10-sample", ["specialization", "activity", "intra-class"],
                        limit=400, options={"specialization": {"permutations": "199"},
                                            "intra-class": {"permutations": "49"}})
    spec = tree["specialization"]
    assert (spec.specialization_p.values == 1).all() and (spec.heterogeneity_p.values == 1).all()
    assert (spec.heterogeneity.values == 0).all() and (spec.specialization_p_adjusted.values == 1).all()
    assert (tree["activity"].norm_share_p.values == 1).all()
    assert (tree["intra-class"].overlap_p.values == 1).all()
    assert "exchanged independently within every sample, 199 times" in spec.specialization_p.attrs["null"]


def test_the_bundled_classifiers_branches_differ_beyond_the_null(tmp_path):
    tree = run_analyses(tmp_path, "cifar10-branched16", "cifar10-sample", ["specialization"], limit=400,
                        options={"specialization": {"permutations": "199", "resamples": "50"}})
    spec = tree["specialization"]
    assert float(spec.heterogeneity_p_adjusted.max()) < 0.05
    low, high = spec.specialization_ci.sel(bound="low"), spec.specialization_ci.sel(bound="high")
    assert ((low <= spec.specialization + 1e-9) & (spec.specialization <= high + 1e-9)).all()
    summary = json.loads(spec.attrs["summary"])
    assert summary["class profiles differ between branches in model"].startswith("p_adj = ")


def test_state_init_probes_a_fresh_default_initialisation(tmp_path):
    trained = run_analyses(tmp_path, "digits-branched8", "digits:test", ["activity"], limit=64,
                           options={"activity": {"permutations": "0", "resamples": "0"}})
    fresh = [run_analyses(tmp_path, "digits-branched8", "digits:test", ["activity"], limit=64, seed=seed,
                          state="init", options={"activity": {"permutations": "0", "resamples": "0"}})
             for seed in (3, 3, 4)]
    model = json.loads(fresh[0].attrs["model"])
    assert model["spec"] == "digits-branched8" and model["sha256"].startswith("none (default init under seed 3")
    norms = [tree["activity"].norm.values for tree in (trained, *fresh)]
    assert not np.allclose(norms[0], norms[1]) and not np.allclose(norms[1], norms[3])
    np.testing.assert_array_equal(norms[1], norms[2])  # the same seed, the same initialisation
    assert "norm_share_p" not in fresh[0]["activity"]  # permutations=0: no test


def test_init_seeds_give_one_state_per_seed(tmp_path):
    node = run_analyses(tmp_path, "digits-branched8", "digits:test", ["hessian"], limit=16, batch_size=16,
                        options={"hessian": {"init_seeds": "0,1,2", "params": "branches.0.features.0.weight,"
                                             "branches.1.features.0.weight"}})["hessian"]
    assert list(node.state.values) == ["trained", "init-seed0", "init-seed1", "init-seed2"]
    shares = node.off_block_share.values
    assert len(set(np.round(shares[1:], 8))) == 3  # three different initialisations
    assert "seeds 0, 1, 2" in node.attrs["init"]
    with pytest.raises(Exception, match="distinct"):
        run_analyses(tmp_path, "digits-branched8", "digits:test", ["hessian"], limit=16,
                     options={"hessian": {"init_seeds": "1,1"}})
