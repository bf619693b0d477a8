import numpy as np
import pytest
import xarray as xr

from probekit.run import sample_arrays
from probekit.run.sample_arrays import SampleArray


@pytest.mark.parametrize("batch", [1, 3, 7, 50])
def test_streamed_rows_land_where_they_belong(tmp_path, monkeypatch, batch):
    monkeypatch.setattr(sample_arrays, "CHUNK_BYTES", 5 * 4 * 4)  # 4 rows of 5 float32 per chunk
    rows = np.random.default_rng(0).normal(size=(23, 5)).astype(np.float32)
    on_disk = SampleArray(tmp_path / "node", "x", ("sample", "branch"), rows.shape, np.float32, {"long_name": "x"})
    in_memory = SampleArray(None, "x", ("sample", "branch"), rows.shape, np.float32, {})
    assert on_disk.chunk_rows == 4
    for start in range(0, len(rows), batch):
        on_disk.write(start, rows[start:start + batch])
        in_memory.write(start, rows[start:start + batch])
    np.testing.assert_array_equal(in_memory.values(), rows)
    assert on_disk.values() is None
    stored = xr.open_zarr(str(tmp_path / "node"), consolidated=False)
    assert stored.x.dims == ("sample", "branch") and stored.x.attrs["long_name"] == "x"
    np.testing.assert_array_equal(stored.x.values, rows)


def test_rows_must_arrive_in_order(tmp_path):
    array = SampleArray(None, "x", ("sample",), (10,), np.float32, {})
    array.write(0, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="in order"):
        array.write(6, np.ones(4, np.float32))


def test_shards_that_share_a_chunk_keep_each_others_rows(tmp_path):
    """Two shards of one array whose boundary falls inside a chunk (no alignment): each writes only its own rows.
    Mutation: flushing the whole chunk from its start zeroes the first shard's rows."""
    arrays = [SampleArray(tmp_path, "v", ("sample", "branch"), (20, 2), np.float32, {}, rows)
              for rows in (range(0, 11), range(11, 20))]
    assert arrays[0].chunk_rows == 20  # one chunk holds both shards
    for array, rows in zip(arrays, (range(0, 11), range(11, 20)), strict=True):
        array.write(rows.start, np.full((len(rows), 2), rows.start + 1, dtype=np.float32))
    stored = arrays[1].read(0, 20)
    np.testing.assert_array_equal(stored[:11], 1)
    np.testing.assert_array_equal(stored[11:], 12)
