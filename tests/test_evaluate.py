import numpy as np

from probekit.run.data import load_data
from probekit.run.evaluate import evaluate


def test_digits_accuracy_per_class_and_per_branch():
    result = evaluate("digits-branched8", "digits:test", progress=False)
    assert result.n == 360 and result.class_total.sum() == 360
    assert result.correct == result.class_correct.sum() and result.correct / result.n > 0.95
    assert len(result.branch_names) == 8 and (result.branch_correct <= result.n).all()
    assert result.branch_correct.max() < result.correct  # no branch alone beats the sum
    table = result.table()
    assert table.startswith("accuracy: 0.99") and "per branch alone" in table and "branches.7" in table


def test_bundled_cifar10_sample_is_class_balanced():
    data = load_data("cifar10-sample")
    labels = np.array([int(data.dataset[i][1]) for i in range(len(data))])
    assert len(data) == 1000 and np.bincount(labels).tolist() == [100] * 10
    x, _ = data.dataset[0]
    assert x.shape == (3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert data.classes[0] == "airplane" and data.sample_ids[0].startswith("airplane/")


def test_cli_evaluate_and_its_errors(cli):
    code, stdout, _ = cli("evaluate", "--model", "toy1", "--data", "toy1", "--quiet")
    assert code == 2
    code, stdout, _ = cli("evaluate", "--model", "digits-branched8", "--data", "digits:test", "--limit", "50",
                          "--quiet")
    assert code == 0 and "(50)" not in stdout and "/50)" in stdout
