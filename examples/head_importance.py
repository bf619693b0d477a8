"""Which attention heads matter, three ways, and how their curvature splits: a small attention classifier trained
here on scikit-learn's digits (the 8 image rows as tokens, one 8-head ``nn.MultiheadAttention``), then probed with
``importance`` (true single-head ablation, attribution patching, gate gradients), ``similarity`` (CKA between the
heads) and ``hessian`` (one block per head: its rows of Q, K, V and columns of O). About half a minute on 2 cores.

    python examples/head_importance.py [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import probekit


def digits_train() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits outside probekit's ``digits:test`` split (every 5th image is a test image), in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    train = np.arange(len(digits.images)) % 5 != 0
    return torch.tensor(digits.images[train] / 16, dtype=torch.float32), torch.tensor(digits.target[train])


class RowAttention(nn.Module):
    """Digits rows as 8 tokens, one 8-head attention (width 32), no residual path, a linear classifier."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.position = nn.Parameter(torch.zeros(8, 32))
        self.attention = nn.MultiheadAttention(32, 8, batch_first=True)
        self.head = nn.Linear(32 * 8, 10)

    def forward(self, x):
        t = self.embed(x.reshape(-1, 8, 8)) + self.position
        return self.head(self.attention(t, t, t, need_weights=False)[0].flatten(1))


def trained(seed: int) -> RowAttention:
    """:class:`RowAttention` trained for 20 epochs on the digits train split under ``seed`` (about a second)."""
    torch.manual_seed(seed)
    model = RowAttention()
    images, labels = digits_train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(20):
        for start in range(0, len(images), 128):
            optimizer.zero_grad()
            F.cross_entropy(model(images[start:start + 128]), labels[start:start + 128]).backward()
            optimizer.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tree = probekit.probe(trained(args.seed), "digits:test", ["importance", "similarity", "hessian"], progress=False,
                          options={"importance.ablations": "zero", "hessian.mode": "estimate"})
    importance, similarity, hessian = tree["importance"], tree["similarity"], tree["hessian"]
    print(f"test accuracy {importance.attrs['intact_accuracy']:.3f} on the first "
          f"{importance.attrs['ablated_samples']} test digits")
    print("head  loss change when removed (+- s.e.)  estimate  gate importance")
    for k, name in enumerate(importance["branch"].values):
        change = importance["ablation_loss_change"].values[k, 0]
        se = importance["ablation_loss_change_se"].values[k, 0]
        print(f"{name.rsplit('.', 1)[1]:>4}  {change:+.4f} +- {se:.4f}{'':17}{importance['estimate'].values[k, 0]:+.4f}"
              f"   {importance['gate_importance'].values[k]:.4f}")
    print(f"Spearman with the ablation: estimate {float(importance['spearman'].values[0, 0]):.2f}, gate gradient "
          f"{float(importance['gate_spearman'].values[0]):.2f}")
    print(f"mean CKA between heads {float(similarity['mean_cka'].values[0]):.3f} "
          f"(shuffled-samples null {float(similarity['mean_cka_null'].values[0]):.3f}, "
          f"p = {float(similarity['mean_cka_p'].values[0]):.3f})")
    share, se = (float(hessian[name].values[0]) for name in ("off_block_share", "off_block_share_se"))
    print(f"Hessian energy off the head blocks: {share:.3f} +- {se:.3f} (evenly spread: {7 / 8:.3f}), from "
          f"{hessian.attrs['hvps']} Hessian-vector products")
    assert np.isfinite(share)


if __name__ == "__main__":
    main()
