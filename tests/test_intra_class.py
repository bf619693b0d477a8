import math

import numpy as np
import torch

from probekit.run.data import load_data
from probekit.zoo.registry import load_zoo_model
from helpers import run_analyses


def test_top_lists_and_thumbnails_match_a_direct_ranking(tmp_path):
    ds = run_analyses(tmp_path, "digits-branched8", "digits:test", ["intra-class"], batch_size=23,
                      options={"intra-class": {"top_percent": "10", "thumbnails": "3"}})["intra-class"]
    data = load_data("digits:test")
    x = torch.stack([data.dataset[i][0] for i in range(len(data))])
    y = torch.tensor([int(data.dataset[i][1]) for i in range(len(data))])
    with torch.no_grad():
        v = torch.stack([b(x) for b in load_zoo_model("digits-branched8").branches], 1)
    confidence = v.softmax(2)[torch.arange(len(y)), :, y].numpy()  # [N, K]
    for k, c in ((0, 3), (5, 9)):
        members = np.flatnonzero(y.numpy() == c)
        expected = members[np.argsort(-confidence[members, k], kind="stable")][: math.ceil(0.1 * len(members))]
        kept = int(ds.top_count.sel(cls=c))
        assert kept == len(expected)
        np.testing.assert_array_equal(ds.top_sample.values[k, c, :kept], expected)
        np.testing.assert_allclose(ds.top_score.values[k, c, :kept], confidence[expected, k], rtol=1e-6)
        assert (ds.top_sample.values[k, c, kept:] == -1).all()
        rows = ds.thumbnail_row.values[k, c]
        np.testing.assert_array_equal(ds.thumb_sample.values[rows], expected[:3])
        np.testing.assert_allclose(ds.thumbnail.values[rows], x[expected[:3]].numpy())
        assert ds.top_sample_id.values[k, c, 0] == data.sample_ids[expected[0]]


def test_more_thumbnails_than_list_entries(tmp_path):
    ds = run_analyses(tmp_path, "digits-branched8", "digits:test", ["intra-class"], limit=30, batch_size=7,
                      options={"intra-class": {"top_percent": "2", "thumbnails": "8"}})["intra-class"]
    assert ds.sizes["thumb"] == 1 and (ds.top_count == 1).all()
