"""The paper's pipeline end to end on real CIFAR-10 images (../shared/data/cifar10-mini): a sweep through real
Ray workers into a real MLflow store, `rgsweep export`, then `rgsweep report --check` with its Claims section.

Small on purpose (200 images, 2 epochs, one MLP): the test checks that the verdicts are computed from the
runs, not that the paper's claims hold at this scale (sweeps/paper-cpu.yaml and the README measure that).
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml
from conftest import SHARED_CIFAR

from rgsweep.analysis.claims import FAIL, NOT_RUN, PASS
from rgsweep.cli import main

pytestmark = [
    pytest.mark.cifar,
    pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason=f"{SHARED_CIFAR} is absent (real CIFAR-10 subset)"),
]
CONDITIONS = [{"label_noise": 0.0}, {"label_noise": 0.5}, {"label_noise": 1.0}, {"corruption": "random_pixels"},
              {"weight_decay": 0.0005}]


def test_sweep_export_report_check_on_cifar10_mini(tmp_path, ray_session, tracking_uri, capsys):
    sweep = {
        "name": "paper-e2e", "experiment": "paper-e2e",
        "base": {"dataset": f"imagefolder:{SHARED_CIFAR}", "subset": 200, "arch": "mlp1x512", "lr": 0.01,
                 "epochs": 2, "batch_size": 64, "device": "cpu"},
        "grid": {"condition": CONDITIONS},
        "resources": {"cpu": 1},
    }
    path = tmp_path / "paper-e2e.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(path), "--tracking-uri", tracking_uri]) == 0
    assert main(["export", "--experiment", "paper-e2e", "--out", str(tmp_path / "exports"),
                 "--tracking-uri", tracking_uri]) == 0
    runs = pd.read_parquet(tmp_path / "exports" / "runs.parquet")
    assert len(runs) == len(CONDITIONS) and (runs["status"] == "FINISHED").all()
    assert (runs["num_classes"] == 10).all() and (runs["subset"] == 200).all()
    capsys.readouterr()

    code = main(["report", "--experiment", "paper-e2e", "--out", str(tmp_path / "reports"), "--check",
                 "--tracking-uri", tracking_uri])
    out = capsys.readouterr().out
    folder = tmp_path / "reports" / "paper-e2e"
    verdicts = {c["id"]: c for c in json.loads((folder / "claims.json").read_text())}
    assert list(verdicts) == [f"C{i}" for i in range(1, 9)]
    assert all(c["status"] in (PASS, FAIL, NOT_RUN) for c in verdicts.values())
    failed = [i for i, c in verdicts.items() if c["status"] == FAIL]
    assert code == (1 if failed else 0)
    for i, c in verdicts.items():
        assert re.search(rf"^{i} {re.escape(c['status'])}", out, re.M), out
    text = (folder / "report.md").read_text()
    section = text[text.index("## Claims"):text.index("## Figures")]
    assert all(f"### {i}: {c['status']}" in section for i, c in verdicts.items())

    by = {n: r for n, r in zip(runs["run_name"], runs.itertuples())}
    random_labels = next(r for r in by.values() if r.label_noise == 1.0 and r.corruption == "none")
    # C1 is decided by the p = 1 run's own train accuracy against its fit threshold.
    assert verdicts["C1"]["status"] == (PASS if random_labels.final_train_acc >= 0.999 else FAIL)
    assert random_labels.run_name in verdicts["C1"]["checks"][0]["evidence"]
    # C2: the test accuracies in the evidence are the runs' own, per label-noise level.
    clean = sorted((r for r in by.values() if r.corruption == "none" and r.weight_decay == 0),
                   key=lambda r: r.label_noise)
    curve = " -> ".join(f"p{r.label_noise:g} {r.final_test_acc:.3f}" for r in clean)
    c2 = verdicts["C2"]["checks"][0]
    assert c2["subject"] == "mlp1x512" and curve in c2["evidence"]
    # C5's first part: the random-pixels run against 1/K = 0.1.
    rp = next(r for r in by.values() if r.corruption == "random_pixels")
    assert verdicts["C5"]["checks"][0]["status"] == (PASS if abs(rp.final_test_acc - 0.1) <= 0.10 else FAIL)
    # C6: no regularization vs weight decay; C8 judged on the p = 0.5 run only.
    assert "best regularized (wd only)" in verdicts["C6"]["checks"][0]["evidence"]
    assert [c["subject"] for c in verdicts["C8"]["checks"]] == [r.run_name for r in by.values() if r.label_noise == 0.5]
