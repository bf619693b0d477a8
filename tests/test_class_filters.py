"""``class-filters`` against plain-numpy transcriptions of its definitions, on real features of real models."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from helpers import run_analyses
from probekit import ProbekitError
from probekit.run.datasets import digits_arrays
from probekit.zoo.registry import load_zoo_model
from probekit_plugins.class_filters import stats

N = 90


def branch_features(model, x):
    """Each branch's final-linear input, concatenated: hooks on the modules, independent of the analysis."""
    seen = []
    hooks = [branch.classifier.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
             for branch in model.branches]
    with torch.no_grad():
        logits = model(x)
    for hook in hooks:
        hook.remove()
    return torch.cat(seen, 1).double().numpy(), logits.double().numpy()


def transcribed_counts(h, y, k, classes):
    counts = np.zeros((classes, h.shape[1]), dtype=np.int64)
    for row, target in zip(h, y, strict=True):
        for j in sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]:
            counts[target, j] += 1
    return counts


def reference_psi(h, y, fraction, classes):
    """The class-specific-filter reference's Psi, transcribed: each row sorted (largest first) and divided by its
    sum; n_k = how many cumulative shares are below the fraction; Psi = (D - median over the class) / D."""
    shares = -np.sort(-h, axis=1) / h.sum(1, keepdims=True)
    n = (np.cumsum(shares, axis=1) < fraction).sum(1)
    return np.array([(h.shape[1] - np.median(n[y == c])) / h.shape[1] if (y == c).any() else np.nan
                     for c in range(classes)])


def reference_score(counts_a, counts_b, eps=1e-6):
    """The reference's "mutual information" of two classes' top-k counts, transcribed: p = counts / sum;
    H(p_a) + H(p_b) - H(p_a + p_b), each entropy (nats) of its argument normalised, after adding eps to every
    entry of an argument with a zero."""
    def entropy(p):
        p = np.asarray(p, dtype=np.float64)
        if np.any(p == 0):
            p = p + eps
        total = p.sum()
        return -np.sum((p / total) * (np.log(p) - np.log(total)))
    p, q = counts_a / counts_a.sum(), counts_b / counts_b.sum()
    return entropy(p) + entropy(q) - entropy(p + q)


def transcribed_mass_count(row, fraction):
    """n_k by the ``reaching`` rule: how many of the largest features it takes to reach the fraction."""
    total, running = row.sum(), 0.0
    if total == 0:
        return 0
    for n, value in enumerate(sorted(row, reverse=True), 1):
        running += value
        if running >= fraction * total * (1 - 1e-12):
            return n
    return len(row)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cf")
    tree = run_analyses(tmp, "digits-branched8", "digits:test", ["class-filters"], limit=N, batch_size=32,
                        options={"class-filters": {"k": "3,0.01,40", "fractions": "0.25,0.5,0.9,1"}})
    model = load_zoo_model("digits-branched8").eval()
    x, y, _ = digits_arrays("test")
    h, logits = branch_features(model, x[:N])
    return tree["class-filters"].to_dataset(), model, h, y[:N].numpy(), logits


def test_topk_counts_integer_and_fractional_k_match_the_transcription(digits_run):
    ds, _, h, y, _ = digits_run
    assert list(ds.k.values) == [3, round(0.01 * 2048), 40] and h.shape[1] == 2048
    np.testing.assert_allclose(ds.features.values, h, rtol=1e-6)
    for k in ds.k.values:
        expected = transcribed_counts(h, y, int(k), 10)
        np.testing.assert_array_equal(ds["count"].sel(k=k).values, expected)
        chosen = ds.is_filter.sel(k=k).values
        for c in range(10):  # I_c: the k most counted, ties to the lower index
            order = sorted(range(2048), key=lambda j: (-expected[c, j], j))[:int(k)]
            assert set(np.flatnonzero(chosen[c])) == set(order)


def test_psi_is_the_reference_s_by_default(digits_run):
    """Below fraction 1 (where the reference's count of shares below 1 depends on rounding, and ours is the
    non-zero features less one)."""
    ds, _, h, y, _ = digits_run
    assert ds.median_mass_count.attrs["n_k"] == "below"
    for fraction in ds.fraction.values[ds.fraction.values < 1]:
        np.testing.assert_allclose(ds.psi.sel(fraction=fraction).values, reference_psi(h, y, fraction, 10))


def test_the_reaching_rule_counts_one_more_and_the_median_is_exact(digits_run):
    ds, _, h, y, _ = digits_run
    for fraction in ds.fraction.values:
        n = np.array([transcribed_mass_count(row, fraction) for row in h])
        np.testing.assert_array_equal(stats.mass_count(h, fraction, "reaching"), n)
        np.testing.assert_array_equal(stats.mass_count(h, fraction, "below"), np.maximum(n - 1, 0))
        for c in range(10):
            if (y == c).any():
                median = np.median(np.maximum(n[y == c] - 1, 0))
                assert ds.median_mass_count.sel(cls=c, fraction=fraction) == median
                assert ds.psi.sel(cls=c, fraction=fraction) == pytest.approx((2048 - median) / 2048)


def test_selectivity_divergence_and_the_reference_score_match_their_definitions(digits_run):
    ds, _, h, y, _ = digits_run
    means = np.stack([h[y == c].mean(0) for c in range(10)])
    for j in range(0, 2048, 97):
        top = means[:, j].max()
        rest = np.delete(means[:, j], means[:, j].argmax()).mean()
        assert ds.selectivity.values[j] == pytest.approx((top - rest) / (top + rest + 1e-7), abs=1e-9)
    counts = ds["count"].sel(k=40).values
    for a, b in [(0, 1), (3, 8), (5, 5)]:
        p, q = counts[a] / counts[a].sum(), counts[b] / counts[b].sum()
        expected = jensenshannon(p, q, base=2) ** 2
        assert ds.js_divergence.sel(k=40, cls=a, cls_other=b) == pytest.approx(expected, abs=1e-9)
        assert ds.reference_mi.sel(k=40, cls=a, cls_other=b) == pytest.approx(
            reference_score(counts[a], counts[b]), abs=1e-9)
    np.testing.assert_array_equal(ds.information.values, ds.js_divergence.values)  # the deprecated name


def test_decomposed_head_matches_and_every_feature_reproduces_the_logits(digits_run):
    ds, model, h, y, logits = digits_run
    weight = torch.cat([b.classifier.weight for b in model.branches], 1).detach().double().numpy()
    bias = sum(b.classifier.bias.detach().double() for b in model.branches).numpy()
    for k in ds.k.values:
        chosen = ds.is_filter.sel(k=k).values
        manual = np.array([[sum(weight[c, j] * row[j] for j in np.flatnonzero(chosen[c])) + bias[c]
                            for c in range(10)] for row in h])
        assert ds.decomposed_accuracy.sel(k=k) == pytest.approx((manual.argmax(1) == y).mean())
    everything = stats.decomposed_logits(h, weight, bias, np.tile(np.arange(2048), (10, 1)))
    np.testing.assert_allclose(everything, logits, rtol=1e-5, atol=1e-5)  # the model sums its branches' logits
    assert ds.attrs["logit_error"] < 1e-5
    assert ds.attrs["full_accuracy"] == pytest.approx((logits.argmax(1) == y).mean())
    share = ds.branch_share.values
    np.testing.assert_allclose(share.sum(-1), 1.0)
    owners = ds.feature_branch.values
    c, k = 4, 40
    picked = owners[ds.is_filter.sel(k=k, cls=c).values]
    assert share[2, c, 0] == pytest.approx((picked == "branches.0").mean())


def test_plain_resnet20_reads_a_named_layer_and_reproduces_its_logits(tmp_path):
    tree = run_analyses(tmp_path, "resnet20-cifar10", "cifar10-sample", ["class-filters"], limit=64,
                        options={"class-filters": {"layer": "layer3", "k": "5,64"}})
    ds = tree["class-filters"].to_dataset()
    assert ds.attrs["features"] == 64 and list(ds.owner.values) == ["layer3"]
    assert ds.attrs["logit_error"] < 1e-5  # linear(GAP(layer3)) is the model's output
    assert ds.decomposed_accuracy.sel(k=64) == pytest.approx(ds.attrs["full_accuracy"])


def stage_features(model, x, path):
    """ReLU of ``path``'s output, averaged over space: plain forward hooks, independent of the analysis."""
    seen = []
    hook = model.get_submodule(path).register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    return torch.relu(seen[0]).mean((2, 3)).double().numpy()


def test_any_module_with_a_relu_and_no_head_matches_independent_hooks(tmp_path):
    """The reference's location, the ReLU in the middle of a stage's last block: no linear layer reads its 16
    features, so the decomposed head is left out with a note; CSI matches hooks on the model."""
    from probekit.run.data import load_data

    tree = run_analyses(tmp_path, "resnet20-cifar10", "cifar10-sample", ["class-filters"], limit=200,
                        options={"class-filters": {"layer": "layer1.2.bn1", "activation": "relu",
                                                   "permutations": "0", "resamples": "0"}})
    ds = tree["class-filters"].to_dataset()
    data = load_data("cifar10-sample", 0)
    x = torch.stack([data.dataset[i][0] for i in range(200)])
    y = np.array([int(data.dataset[i][1]) for i in range(200)])
    h = stage_features(load_zoo_model("resnet20-cifar10").eval(), x, "layer1.2.bn1")
    np.testing.assert_allclose(ds.features.values, h, rtol=1e-5, atol=1e-6)
    means = np.stack([h[y == c].mean(0) for c in range(10)])
    top = means.max(0)
    rest = (means.sum(0) - top) / 9
    np.testing.assert_allclose(ds.selectivity.values, (top - rest) / (top + rest + 1e-7), rtol=1e-6)
    assert float(ds.mean_selectivity) == pytest.approx(float(ds.selectivity.mean()), rel=1e-12)
    assert list(ds.k.values) == [1, 5, 10] and "decomposed_accuracy" not in ds
    assert "no nn.Linear reads the 16 features" in ds.attrs["decomposed_note"]


def test_the_fine_tuned_head_is_cross_fitted_and_starts_from_the_head(tmp_path):
    """0 epochs of fine-tune would be the decomposed head; a few epochs at layer3 (where the model's linear head
    reads the features) move it, and the score is over every sample, each scored by the other half's head."""
    tree = run_analyses(tmp_path, "resnet20-cifar10", "cifar10-sample", ["class-filters"], limit=200,
                        options={"class-filters": {"layer": "layer3", "k": "1,5", "finetune_epochs": "30",
                                                   "finetune_lr": "0.01", "permutations": "0", "resamples": "0"}})
    ds = tree["class-filters"].to_dataset()
    tuned, plain = ds.finetuned_accuracy.values, ds.decomposed_accuracy.values
    assert np.all((tuned >= 0) & (tuned <= 1)) and np.allclose(tuned * 200, np.round(tuned * 200))
    assert tuned[0] > plain[0]  # one filter per class: the untuned head is near chance, fine-tuning helps


@pytest.mark.parametrize("options, message", [
    ({}, "needs a summed classifier at the model's root, or the features' module"),
    ({"layer": "layer9"}, "must name one module"),
    ({"layer": "layer3", "k": "65"}, "at most the 64 features"),
    ({"layer": "layer3", "k": "0,3"}, "integers >= 1 or fractions"),
    ({"layer": "layer3", "fractions": "1.5,0"}, "class-filters.fractions must be in (0, 1]"),
    ({"layer": "layer3", "correction": "bonferroni"}, "correction must be one of holm, bh, none"),
    ({"layer": "layer3", "activation": "gelu"}, "class-filters.activation"),
    ({"layer": "layer3", "n_k": "above"}, "class-filters.n_k"),
    ({"layer": "layer3", "finetune_epochs": "-1"}, "finetune_epochs must be >= 0"),
    ({"layer": "layer1.2.bn1", "activation": "relu", "finetune_epochs": "5"}, "finetune_epochs needs a head"),
    ({"layer": "layer1.2.bn1"}, "negative values (class-filters.activation=relu applies a ReLU first)"),
])
def test_bad_choices_are_one_clear_error(tmp_path, options, message):
    """Refused before the pass, or (k against the feature count, known at the first batch) as the analysis's
    one-line error."""
    from probekit.run.runner import RunSpec, execute

    spec = RunSpec(model="resnet20-cifar10", data="cifar10-sample", plugins=["class-filters"], limit=8,
                   out=str(tmp_path / "x.zarr"), progress=False, options={"class-filters": options})
    try:
        error = execute(spec).errors["class-filters"]
    except ProbekitError as refused:
        error = str(refused)
    assert message in error and "\n" not in error
