"""Local Hugging Face models on text: tiny random-weight models built from config classes, tokenizers trained here,
saved with ``save_pretrained`` and probed with ``--model hf:DIR --data text:FILE``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="transformers is the optional extra probekit[hf]")

import probekit  # noqa: E402
from probekit.models.branches import DiscoveryConfig, discover  # noqa: E402
from probekit.models.hf import load_hf  # noqa: E402
from probekit.models.losses import token_loss  # noqa: E402
from probekit.run.capture import capture  # noqa: E402
from probekit.run.inputs import call_model  # noqa: E402
from hf_models import save_tiny_model, write_text  # noqa: E402

KINDS = ("mixtral", "gpt2", "llama", "bert")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {kind: save_tiny_model(kind, root / kind) for kind in (*KINDS, "olmoe")} | \
        {"text": write_text(root / "corpus.txt")}


@pytest.mark.parametrize("kind", KINDS)
def test_text_run_finds_heads_per_attention_layer(cli, folders, tmp_path, kind):
    code, out, err = cli("run", "--model", f"hf:{folders[kind]}", "--data", f"text:{folders['text']}:16",
                         "--plugins", "activity", "--out", tmp_path / "r.zarr", "--quiet")
    assert code == 0, err
    tree = probekit.open_results(tmp_path / "r.zarr")
    activity = tree["activity"]
    layers = list(activity["layer"].values)
    heads = [layer for layer in layers if "attn" in layer or "attention" in layer]
    assert len(heads) == 2, layers  # two blocks, each an attention layer of 4 heads
    for layer in heads:
        assert (activity["branch_layer"].values == layer).sum() == 4
    assert tree.attrs["n_samples"] == len(activity["sample"]) > 10
    assert np.isfinite(activity["norm"].values).all() and (activity["norm"].values > 0).all()


def test_experts_per_moe_layer_with_routing_per_token(cli, folders, tmp_path):
    code, _, err = cli("run", "--model", f"hf:{folders['mixtral']}", "--data", f"text:{folders['text']}:16",
                       "--plugins", "activity", "--out", tmp_path / "moe.zarr", "--quiet")
    assert code == 0, err
    tree = probekit.open_results(tmp_path / "moe.zarr")
    assert tree.attrs["branch_strategy"] == "routed-experts+attention-heads"
    activity = tree["activity"]
    experts = [layer for layer in activity["layer"].values if layer.endswith("mlp.experts")]
    assert len(experts) == 2
    for layer in experts:
        mine = activity["branch_layer"].values == layer
        assert mine.sum() == 4
        share = activity["routing_share"].values[mine]
        np.testing.assert_allclose(share.sum(), 1.0, rtol=1e-5)  # top-2 weights renormalised: they sum to 1
        routed = activity["routed_fraction"].values[mine]
        np.testing.assert_allclose(routed.sum(), 2.0, rtol=1e-5)  # each token goes to 2 of the 4 experts
        per_token = activity["token_routing_share"].values[:, mine]
        assert per_token.shape == (16, 4)
        np.testing.assert_allclose(per_token.sum(1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(per_token.mean(0), share, rtol=1e-5)


@pytest.mark.parametrize("kind", (*KINDS, "olmoe"))
def test_heads_plus_bias_and_experts_sum_to_their_module_outputs(folders, kind):
    loaded = load_hf(str(folders[kind]))
    model = loaded.module
    branchset = discover(model, DiscoveryConfig())
    ids = torch.randint(5, 90, (3, 12))
    outputs = {}
    heads = [layer for layer in branchset.layers if layer.kind == "projected-heads"]
    experts = [layer for layer in branchset.layers if layer.kind == "routed"]
    hooks = [model.get_submodule(layer.modules[0]).register_forward_hook(
        lambda m, a, o, name=layer.name: outputs.__setitem__(name, o)) for layer in heads + experts]
    with torch.no_grad(), capture(model, branchset) as recorder:
        call_model(model, {"input_ids": ids})
        responses = recorder.take(3)
    for hook in hooks:
        hook.remove()
    assert len(heads) == 2
    for layer in heads:
        projection = model.get_submodule(layer.modules[0])
        summed = responses[layer.name].sum(1).reshape(outputs[layer.name].shape)
        if projection.bias is not None:
            summed = summed + projection.bias
        torch.testing.assert_close(summed, outputs[layer.name], atol=1e-5, rtol=1e-5)
        assert responses[layer.name].shape[1] == model.config.num_attention_heads
    for layer in experts:  # (whichever experts implementation from_pretrained chose)
        summed = responses[layer.name].sum(1).reshape(outputs[layer.name].shape)
        torch.testing.assert_close(summed, outputs[layer.name], atol=1e-5, rtol=1e-5)
    assert len(experts) == (2 if kind in ("mixtral", "olmoe") else 0)


@pytest.mark.parametrize("kind", ["mixtral", "olmoe"])
def test_ungated_routed_experts_times_their_token_gates_are_the_contributions(folders, kind):
    model = load_hf(str(folders[kind])).module
    branchset = discover(model, DiscoveryConfig())
    ids = torch.randint(5, 90, (3, 12))
    with torch.no_grad(), capture(model, branchset, ungated=True) as recorder:
        call_model(model, {"input_ids": ids})
        responses, ungated, gates = recorder.take(3), recorder.take_ungated(3), recorder.take_token_gates(3)
    for layer in (layer for layer in branchset.layers if layer.kind == "routed"):
        n, k, _ = responses[layer.name].shape
        per_token = ungated[layer.name].reshape(n, k, 12, -1) * gates[layer.name].transpose(1, 2).unsqueeze(3)
        torch.testing.assert_close(per_token.flatten(2), responses[layer.name], atol=1e-5, rtol=1e-5)
        assert (ungated[layer.name].abs().sum(2) > 0).all()  # every expert ran on every sample


def test_ablating_a_head_or_an_expert_is_zeroing_its_weights(folders):
    """importance's zero ablation on a Mixtral (grouped-query heads and token-routed experts) against the plain
    way: the head's columns of o_proj, or the expert's slab of down_proj, set to zero."""
    import copy

    model = load_hf(str(folders["mixtral"])).module.eval()
    ids = torch.randint(5, 90, (4, 12), generator=torch.Generator().manual_seed(0))
    node = probekit.probe(model, [{"input_ids": ids}], ["importance"], progress=False,
                          options={"importance.ablations": "zero"})["importance"]
    with torch.no_grad():
        intact = float(token_loss(model(input_ids=ids).logits, ids, True, "test"))
    changes = []
    for layer in range(2):
        for h in range(4):
            ablated = copy.deepcopy(model)
            ablated.model.layers[layer].self_attn.o_proj.weight.data[:, 8 * h:8 * h + 8] = 0
            changes.append((f"model.layers.{layer}.self_attn.heads.{h}", ablated))
        for k in range(4):
            ablated = copy.deepcopy(model)
            ablated.model.layers[layer].mlp.experts.down_proj.data[k] = 0
            changes.append((f"model.layers.{layer}.mlp.experts[e={k}]", ablated))
    for name, ablated in changes:
        with torch.no_grad():
            expected = (float(token_loss(ablated(input_ids=ids).logits, ids, True, "test")) - intact) / 4
        got = float(node["ablation_loss_change"].sel(branch=name, ablation="zero"))
        assert got == pytest.approx(expected, abs=2e-5), name  # float32 sums of 44 token losses of about 4.5
    assert np.isfinite(node["gate_importance"].values).all() and (node["gate_importance"].values > 0).all()


def test_grouped_query_attention_still_has_one_branch_per_query_head(folders):
    model = load_hf(str(folders["llama"])).module
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    branchset = discover(model, DiscoveryConfig())
    assert [len(layer.branches) for layer in branchset.layers] == [4, 4]


@pytest.mark.parametrize("kind", ("gpt2", "bert"))
def test_the_language_model_loss_is_the_libraries_own(folders, kind):
    model = load_hf(str(folders[kind])).module
    ids = torch.randint(5, 90, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    logits = call_model(model, {"input_ids": ids, "attention_mask": mask})
    ours = token_loss(logits, {"input_ids": ids, "attention_mask": mask}, kind == "gpt2", "test")
    labels = ids.masked_fill(mask == 0, -100)
    if kind == "gpt2":  # transformers shifts the labels itself; its loss is the mean over the predicted tokens
        theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss * (labels[:, 1:] != -100).sum()
    else:
        theirs = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                   ignore_index=-100, reduction="sum")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_probe_takes_the_folder_and_dict_batches(folders):
    tree = probekit.probe(f"hf:{folders['gpt2']}", f"text:{folders['text']}:16", ["covariance"], progress=False)
    assert tree["covariance"]["cov"].shape == (8, 8)
    model = load_hf(str(folders["gpt2"])).module
    tokenizer = model.probekit_tokenizer
    batch = tokenizer(["the cat sat on the mat", "a bird sang in the tree"], padding=True, return_tensors="pt")
    tree = probekit.probe(model, [dict(batch)], ["activity"], progress=False)
    assert tree.attrs["n_samples"] == 2 and tree["activity"]["norm"].shape == (8,)


def test_jsonl_labels_give_classes(cli, folders, tmp_path):
    lines = [{"text": t, "label": label} for t, label in
             [("the cat sat on the mat", "animal"), ("a bird sang in the tree", "animal"),
              ("experts in a mixture are chosen by a router", "model"), ("branches of a network", "model")] * 4]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    code, _, err = cli("run", "--model", f"hf:{folders['llama']}", "--data", f"jsonl:{path}", "--plugins",
                       "activity,specialization", "--out", tmp_path / "j.zarr", "--quiet")
    assert code == 0, err
    tree = probekit.open_results(tmp_path / "j.zarr")
    assert list(tree["activity"]["class_name"].values) == ["animal", "model"]
    assert tree.attrs["targets"] == "data labels"


def test_refusals_are_one_line(cli, folders, tmp_path):
    code, _, err = cli("run", "--model", "hf:gpt2", "--data", "random:3", "--plugins", "activity")
    assert code == 2 and "nothing is downloaded: pass a local folder" in err and err.count("\n") == 1
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "x", "auto_map": {"AutoModel": "m.M"}}))
    code, _, err = cli("run", "--model", f"hf:{remote}", "--data", "random:3", "--plugins", "activity")
    assert code == 2 and "never runs a model folder's code" in err
    code, _, err = cli("run", "--model", f"hf:{folders['gpt2']}", "--plugins", "activity", "--out", tmp_path / "n")
    assert code == 2 and "pass --data text:FILE" in err
    code, _, err = cli("run", "--model", f"hf:{folders['llama']}", "--data", f"text:{folders['text']}:16",
                       "--plugins", "hessian", "--option", "hessian.params=model.layers.0.self_attn.k_proj.weight",
                       "--out", tmp_path / "h.zarr", "--quiet")
    assert code == 2 and "grouped-query keys and values serve several heads" in err and err.count("\n") == 1


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_each_heads_parameter_elements_are_its_own(folders, kind):
    """Zeroing the elements head_runs gives a head (its O columns; its Q, K, V rows and biases) silences that head
    and no other: the Hessian's head blocks are the right elements, whatever the layout (GPT-2's Conv1D is [in,
    out]; Llama's keys and values are grouped, so they belong to no single head)."""
    from probekit.models.projected_heads import head_runs

    model = load_hf(str(folders[kind])).module.eval()
    branchset = discover(model, DiscoveryConfig())
    layer = next(layer for layer in branchset.layers if layer.kind == "projected-heads")
    ids = {"input_ids": torch.randint(5, 90, (2, 10), generator=torch.Generator().manual_seed(0))}

    def responses():
        with torch.no_grad(), capture(model, branchset) as recorder:
            call_model(model, ids)
            return recorder.take(2)[layer.name]

    intact = responses()
    params = dict(model.named_parameters(prefix=""))
    inputs = ("q_proj",) if kind == "llama" else ("c_attn", "query", "key", "value")  # llama: keys, values shared
    block = [name for name in params if name.startswith(f"{layer.container}.")]
    for head, owned in ((0, [f"{layer.modules[0]}.weight"]),
                        (1, [name for name in block if any(f".{part}." in name for part in inputs)])):
        assert owned
        saved = {name: params[name].detach().clone() for name in owned}
        with torch.no_grad():
            for name in owned:
                flat = params[name].view(-1)
                for start, stop, rows, stride in head_runs(model, layer, name)[head]:
                    for r in range(rows):
                        flat[start + r * stride:stop + r * stride] = 0
        silenced = responses()
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
        others = [h for h in range(intact.shape[1]) if h != head]
        torch.testing.assert_close(silenced[:, others], intact[:, others])
        if kind != "llama" or head == 0:  # llama's head 1 keeps its shared keys and values: attends uniformly
            assert silenced[:, head].abs().max() < 1e-6, (kind, head, owned)
    if kind == "llama":
        with pytest.raises(probekit.ProbekitError, match="grouped-query"):
            head_runs(model, layer, f"{layer.container}.k_proj.weight")


def test_unknown_architectures_and_pickled_weights_are_one_line(cli, folders, tmp_path):
    import shutil

    unknown = tmp_path / "unknown"
    shutil.copytree(folders["gpt2"], unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "architectures": ["WarpDriveForCausalLM"]}))
    code, _, err = cli("run", "--model", f"hf:{unknown}", "--data", "random:3", "--plugins", "activity")
    assert code == 2 and "does not know the architecture 'WarpDriveForCausalLM'" in err and err.count("\n") == 1
    pickled = tmp_path / "pickled"
    shutil.copytree(folders["gpt2"], pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    code, _, err = cli("run", "--model", f"hf:{pickled}", "--data", "random:3", "--plugins", "activity")
    assert code == 2 and "no safetensors weights" in err


def test_a_save_pretrained_folder_works_without_the_scheme(cli, folders, tmp_path):
    code, _, err = cli("run", "--model", folders["bert"], "--data", f"text:{folders['text']}:16",
                       "--plugins", "activity", "--out", tmp_path / "b.zarr", "--quiet")
    assert code == 0, err


ANALYSES = ("activity", "covariance", "similarity", "importance", "specialization", "intra-class", "attribution",
            "hessian", "gradient-factors", "kernels", "decomposition", "chan-vese", "class-filters")


@pytest.mark.parametrize("analysis", ANALYSES)
def test_every_analysis_on_a_token_model_gives_a_result_or_one_line(cli, folders, tmp_path, analysis):
    """A sparse MoE language model (experts and heads) on labelled JSONL text: docs/branches.md's token rows."""
    lines = [{"text": t, "label": label} for t, label in
             [("the cat sat on the mat", "animal"), ("a bird sang in the tree", "animal"),
              ("experts in a mixture are chosen by a router", "model"), ("branches of a network", "model")] * 3]
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    options = ["--option", "hessian.max_time=5"] if analysis == "hessian" else []
    code, out, err = cli("run", "--model", f"hf:{folders['mixtral']}", "--data", f"jsonl:{data}", "--plugins",
                         analysis, *options, "--out", tmp_path / "r.zarr", "--quiet")
    errors = [line for line in err.splitlines() if line.startswith("probekit: error")]
    if code == 0:
        assert analysis in probekit.open_results(tmp_path / "r.zarr").children
    else:
        assert len(errors) == 1, err
    print(f"{analysis}: {'result' if code == 0 else errors[0]}")
