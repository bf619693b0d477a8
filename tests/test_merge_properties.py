"""Property tests: every analysis with streaming state gives the same result however the samples are batched,
and merging shard states (as a distributed run does) is order-independent and associative."""

import functools
import tempfile
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from probekit.run.analysis import Batch, RunContext
from probekit.models.branches import DiscoveryConfig, discover
from probekit.run.capture import capture
from probekit.run.data import load_data
from probekit.run.registry import analyses
from probekit.zoo.registry import load_zoo_model

N = 128
STREAMING = ["activity", "covariance", "specialization", "intra-class", "gradient-factors"]
PROPERTY = settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # no shrinking: examples are slow


@functools.cache
def probe():
    """The digits model, its branch set, and every input, target, output and response of the first N samples."""
    model = load_zoo_model("digits-branched8").eval()
    data = load_data("digits:test")
    branchset = discover(model, DiscoveryConfig())
    x = torch.stack([data.dataset[i][0] for i in range(N)])
    y = torch.tensor([data.dataset[i][1] for i in range(N)])
    with torch.no_grad(), capture(model, branchset) as recorder:
        outputs = model(x)
        responses = recorder.take(N)
    return model, data, branchset, x, y, outputs, responses


def fresh(name: str, shard: range | None = None, staging: Path | None = None):
    """The analysis ``name`` over the samples ``shard``; with ``staging``, its per-sample arrays go to that
    folder, shared by every shard, as in a run (the evidence reads them back at the end)."""
    model, data, branchset, *_ = probe()
    cls = analyses()[name][0]
    context = RunContext(branchset, data, N, torch.device("cpu"), 0, model=model, shard=shard,
                         staging=(lambda node: staging / node) if staging else None)
    return cls(context, cls.Options())


def feed(analysis, cuts: list[int], rows: range) -> None:
    """Batches of ``rows`` split at ``cuts``."""
    _, _, _, x, y, outputs, responses = probe()
    bounds = [rows.start, *sorted(c for c in set(cuts) if rows.start < c < rows.stop), rows.stop]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if a == b:  # an empty shard gets no batch, as in a run
            continue
        analysis.update(Batch(torch.arange(a, b), x[a:b], y[a:b], outputs[a:b],
                              {k: v[a:b] for k, v in responses.items()}))


def assert_same(a: xr.Dataset, b: xr.Dataset, per_sample: bool = True) -> None:
    """Equal variables and coordinates; ``per_sample=False`` skips per-sample variables, which a run shares
    on disk between shards rather than merging (here each shard keeps its own in memory)."""
    def compared(ds):
        return {n for n in ds.data_vars if per_sample or "sample" not in ds[n].dims}

    assert compared(a) == compared(b)
    names = sorted(compared(a)) + list(a.coords)
    for name in names:
        if a[name].dtype.kind in "fc":
            # float32 model outputs differ in the last bits with the batch composition
            np.testing.assert_allclose(a[name].values, b[name].values, rtol=1e-4, atol=1e-7, equal_nan=True,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def whole(name: str) -> xr.Dataset:
    analysis = fresh(name)
    feed(analysis, [], range(N))
    return analysis.finalize()


@PROPERTY
@given(name=st.sampled_from(STREAMING), cuts=st.lists(st.integers(1, N - 1), max_size=12))
def test_batching_does_not_change_the_result(name, cuts):
    analysis = fresh(name)
    feed(analysis, cuts, range(N))
    assert_same(analysis.finalize(), whole(name))


@PROPERTY
@given(name=st.sampled_from(STREAMING), first=st.integers(0, N), second=st.integers(0, N),
       order=st.permutations([0, 1, 2]), cuts=st.lists(st.integers(1, N - 1), max_size=6))
def test_merging_shards_in_any_order_and_grouping_equals_one_pass(name, first, second, order, cuts):
    lo, hi = sorted((first, second))
    with tempfile.TemporaryDirectory() as staging:
        target = merged_shards(name, [range(0, lo), range(lo, hi), range(hi, N)], order, cuts, Path(staging))
        assert_same(target.finalize(), whole(name), per_sample=False)


def merged_shards(name: str, shards: list[range], order: list[int], cuts: list[int], staging: Path):
    """The analysis of each shard (their per-sample arrays shared in ``staging``), merged into the shard
    ``order[0]`` in ``order``."""
    parts = []
    for rows in shards:
        analysis = fresh(name, rows, staging)
        feed(analysis, cuts, rows)
        parts.append((analysis, rows))
    target, _ = parts[order[0]]  # any shard can be the one that collects
    for i in order[1:]:
        target.merge(parts[i][0].state(), parts[i][1])
    return target


@PROPERTY
@given(name=st.sampled_from(STREAMING), first=st.integers(1, N - 1), second=st.integers(1, N - 1))
def test_merging_is_associative(name, first, second):
    lo, hi = sorted((first, second))
    with tempfile.TemporaryDirectory() as staging:
        a, b, c = (fresh(name, rows, Path(staging)) for rows in (range(0, lo), range(lo, hi), range(hi, N)))
        for analysis in (a, b, c):
            feed(analysis, [], analysis.context.rows)
        b.merge(c.state(), c.context.rows)  # a + (b + c)
        a.merge(b.state(), range(lo, N))
        assert_same(a.finalize(), whole(name), per_sample=False)


def test_compensated_sums_merge_bitwise_equal_whatever_the_sharding():
    """Plain float sums of the same batches differ with the order (two shards, then merged); the
    ``compensated-sum`` rule gives the same bits, and the correctly rounded sum (math.fsum)."""
    import math

    from probekit.run.merging import compensated_add, compensated_value, merge_value

    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(6, generator=gen, dtype=torch.float64) * 10 ** torch.randint(-8, 9, (6,), generator=gen)
               for _ in range(40)]
    plain_differs = 0
    for cut in range(1, 40):
        one = two_a = two_b = None
        for b in batches:
            one = compensated_add(one, b)
        for b in batches[:cut]:
            two_a = compensated_add(two_a, b)
        for b in batches[cut:]:
            two_b = compensated_add(two_b, b)
        merged = merge_value("compensated-sum", two_a, two_b, range(0), None)
        assert torch.equal(compensated_value(merged), compensated_value(one))
        exact = torch.tensor([math.fsum(float(b[i]) for b in batches) for i in range(6)], dtype=torch.float64)
        assert torch.equal(compensated_value(one), exact)
        plain_differs += not torch.equal(sum(batches[:cut]) + sum(batches[cut:]), sum(batches))
    assert plain_differs > 0  # the plain rule would not have been bitwise
