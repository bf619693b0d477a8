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
