"""The paper's claims (rgsweep.analysis.claims) on small hand-built frames: each claim passing, failing and
not run; then the report's Claims section and `report --check` on a real sweep's MLflow store."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from rgsweep.analysis import claims
from rgsweep.analysis.claims import FAIL, NOT_RUN, PASS

CONVNETS = {"alexnet", "cnn", "inception"}


def run(name: str, **kw) -> dict:
    """One exported trial row; defaults: clean labels, no regularizer, fitted at epoch 5, test_acc 0.5."""
    row = {"run_id": name, "run_name": name, "status": "FINISHED", "arch": "mlp1x512", "dataset": "cifar10",
           "lr": 0.01, "label_noise": 0.0, "corruption": "none", "augment": "", "weight_decay": 0.0,
           "dropout": 0.0, "fit_threshold": 0.999, "final_train_acc": 1.0, "final_test_acc": 0.5,
           "epochs_to_fit": 5.0, "epochs_run": 5.0, "num_classes": 10.0}
    row.update(kw)
    if row["final_train_acc"] < (row["fit_threshold"] if not math.isnan(row["fit_threshold"]) else 0.99):
        row["epochs_to_fit"] = math.nan  # what train() logs for a run that never fitted
    return row


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def no_history() -> pd.DataFrame:
    return pd.DataFrame(columns=["run_id", "epoch", "train_acc", "train_acc_clean", "train_acc_noisy"])


def judge(runs: pd.DataFrame, history: pd.DataFrame | None = None) -> dict[str, claims.Claim]:
    found, _ = claims.judge(runs, no_history() if history is None else history, convnet=lambda a: a in CONVNETS)
    return {c.id: c for c in found}


def statuses(claim: claims.Claim) -> dict[str, str]:
    return {c.subject: c.status for c in claim.checks}


# -- C1 / C7: memorisation -------------------------------------------------------------------------
def test_c1_random_labels_fitted_pass_fail_and_not_run():
    fitted = frame(run("a-p1", label_noise=1.0, epochs_to_fit=20.0), run("a-p0"))
    assert judge(fitted)["C1"].status == PASS
    assert "1/1 fitted" in judge(fitted)["C1"].checks[0].evidence
    missed = frame(run("a-p1", label_noise=1.0, final_train_acc=0.6, epochs_run=40.0),
                   run("b-p1", label_noise=1.0, arch="cnn"))
    c1 = judge(missed)["C1"]
    assert c1.status == FAIL and "1/2 fitted" in c1.checks[0].evidence and "a-p1" in c1.checks[0].evidence
    assert "0.600 < 0.999 after 40 epochs" in c1.checks[0].evidence
    # Random labels on corrupted inputs are C4's business; no p = 1 run on intact inputs: not run.
    assert judge(frame(run("g", label_noise=1.0, corruption="gaussian"), run("a-p0")))["C1"].status == NOT_RUN


def test_fitted_uses_the_runs_threshold_or_099_and_diverged_runs_count_as_not_fitted():
    # Table 1's fixed budgets have no fit threshold: 0.995 is fitted (>= 0.99), 0.985 is not.
    runs = frame(run("budget-ok", label_noise=1.0, fit_threshold=math.nan, final_train_acc=0.995),
                 run("budget-short", label_noise=1.0, fit_threshold=math.nan, final_train_acc=0.985))
    assert "1/2 fitted" in judge(runs)["C1"].checks[0].evidence
    # A diverged trial is FAILED in MLflow but is a training outcome: it was not fitted.
    diverged = frame(run("div", label_noise=1.0, status="FAILED", tag_diverged="true", final_train_acc=1.0))
    assert judge(diverged)["C1"].status == FAIL
    # An infrastructure failure is left out (and counted), not judged.
    crashed = frame(run("crash", label_noise=1.0, status="FAILED", final_train_acc=0.1))
    found, left_out = claims.judge(crashed, no_history())
    assert left_out == 1 and {c.id: c for c in found}["C1"].status == NOT_RUN


def test_c7_regularized_random_labels():
    runs = frame(run("wd", label_noise=1.0, weight_decay=5e-4), run("crop", label_noise=1.0, augment="crop,flip"),
                 run("drop", label_noise=1.0, dropout=0.5), run("plain", label_noise=1.0, final_train_acc=0.2))
    c7 = judge(runs)["C7"]
    assert c7.status == PASS and "3/3 fitted" in c7.checks[0].evidence and "plain" not in c7.checks[0].evidence
    runs.loc[runs["run_name"] == "crop", ["final_train_acc", "epochs_to_fit"]] = [0.5, math.nan]
    assert judge(runs)["C7"].status == FAIL
    assert judge(frame(run("plain", label_noise=1.0)))["C7"].status == NOT_RUN
    # "crop" must be the crop itself, not a name that contains it
    assert judge(frame(run("x", label_noise=1.0, augment="nocropish")))["C7"].status == NOT_RUN


# -- C2: test error against label noise -------------------------------------------------------------
def _noise_curve(arch: str, accs: dict[float, float]) -> list[dict]:
    return [run(f"{arch}-p{p}", arch=arch, label_noise=p, final_test_acc=a) for p, a in accs.items()]


def test_c2_monotone_towards_chance():
    ok = frame(*_noise_curve("mlp1x512", {0.0: 0.5, 0.5: 0.3, 1.0: 0.12}),
               *_noise_curve("cnn", {0.0: 0.6, 0.5: 0.61, 1.0: 0.08}))  # +0.01 is within 0.02
    assert judge(ok)["C2"].status == PASS and statuses(judge(ok)["C2"]) == {"cnn": PASS, "mlp1x512": PASS}
    assert "p0 0.500 -> p0.5 0.300 -> p1 0.120" in judge(ok)["C2"].checks[1].evidence
    rises = frame(*_noise_curve("mlp1x512", {0.0: 0.5, 0.5: 0.3, 0.8: 0.33, 1.0: 0.1}))
    assert judge(rises)["C2"].status == FAIL and "rises by 0.030 at p0.8" in judge(rises)["C2"].checks[0].evidence
    far = frame(*_noise_curve("mlp1x512", {0.0: 0.5, 1.0: 0.14}))  # 0.04 from 1/K
    assert judge(far)["C2"].status == FAIL
    # exactly on the thresholds passes (floats: 0.12 - 0.10 is not above 0.02)
    edge = frame(*_noise_curve("mlp1x512", {0.0: 0.1, 0.5: 0.12, 1.0: 0.13}))
    assert judge(edge)["C2"].status == PASS


def test_c2_not_run_without_p1_or_a_second_level_and_setups_apart():
    assert judge(frame(*_noise_curve("mlp1x512", {0.0: 0.5, 0.5: 0.3})))["C2"].status == NOT_RUN
    assert judge(frame(*_noise_curve("mlp1x512", {1.0: 0.1})))["C2"].status == NOT_RUN
    # cnn has the curve, mlp stopped short of p = 1: the claim is not shown for every architecture
    partial = frame(*_noise_curve("cnn", {0.0: 0.6, 1.0: 0.1}), *_noise_curve("mlp1x512", {0.0: 0.5, 0.5: 0.3}))
    assert judge(partial)["C2"].status == NOT_RUN and statuses(judge(partial)["C2"])["cnn"] == PASS
    # ... while an architecture that ran no label noise at all (only the shared baseline) is no subject
    baseline_only = frame(*_noise_curve("cnn", {0.0: 0.6, 1.0: 0.1}), run("mlp-p0"))
    assert judge(baseline_only)["C2"].status == PASS and list(statuses(judge(baseline_only)["C2"])) == ["cnn"]
    # Two learning rates are two setups, never averaged together; regularized runs are not Figure 1's.
    other_lr = [dict(r, run_id=r["run_id"] + "b", lr=0.1) for r in _noise_curve("mlp1x512", {0.0: 0.5, 1.0: 0.3})]
    two_lrs = frame(*_noise_curve("mlp1x512", {0.0: 0.5, 1.0: 0.1}), *other_lr,
                    run("wd", label_noise=1.0, weight_decay=5e-4, final_test_acc=0.9))
    assert statuses(judge(two_lrs)["C2"]) == {"mlp1x512 lr=0.01": PASS, "mlp1x512 lr=0.1": FAIL}


# -- C3: time to fit ----------------------------------------------------------------------------------
def test_c3_ratio_between_1_and_10():
    ok = frame(run("p0", epochs_to_fit=5.0), run("p1", label_noise=1.0, epochs_to_fit=20.0, epochs_run=20.0))
    c3 = judge(ok)["C3"]
    assert c3.status == PASS and "p0 5.0" in c3.checks[0].evidence and "ratio 4.00" in c3.checks[0].evidence
    faster = frame(run("p0", epochs_to_fit=5.0), run("p1", label_noise=1.0, epochs_to_fit=4.0))
    assert judge(faster)["C3"].status == FAIL
    slow = frame(run("p0", epochs_to_fit=5.0), run("p1", label_noise=1.0, epochs_to_fit=51.0, epochs_run=51.0))
    assert judge(slow)["C3"].status == FAIL and "fails p1 <= 10 x p0" in judge(slow)["C3"].checks[0].evidence
    # seeds are averaged: (4 + 6) / 2 = 5 at p0, 50 at p1 -> exactly 10x passes
    seeds = frame(run("p0s0", epochs_to_fit=4.0), run("p0s1", epochs_to_fit=6.0, seed=1),
                  run("p1", label_noise=1.0, epochs_to_fit=50.0, epochs_run=50.0))
    assert judge(seeds)["C3"].status == PASS


def test_c3_unfitted_runs_are_lower_bounds():
    # p1 never fitted in 30 epochs: > 30 could still be <= 10 x 5, so undecided -> not run, never pass
    short = frame(run("p0", epochs_to_fit=5.0),
                  run("p1", label_noise=1.0, final_train_acc=0.7, epochs_run=30.0))
    c3 = judge(short)["C3"]
    assert c3.status == NOT_RUN and "needs a longer budget" in c3.checks[0].evidence
    assert "p1 > 30 (not fitted)" in c3.checks[0].evidence
    # ... but not fitted in 80 epochs is more than 10 x 5: decided, fails
    long = frame(run("p0", epochs_to_fit=5.0), run("p1", label_noise=1.0, final_train_acc=0.7, epochs_run=80.0))
    assert judge(long)["C3"].status == FAIL
    # p0 not fitted in 30 epochs, p1 fitted at 20: p1 is faster, fails
    flipped = frame(run("p0", final_train_acc=0.9, epochs_run=30.0), run("p1", label_noise=1.0, epochs_to_fit=20.0))
    assert judge(flipped)["C3"].status == FAIL
    # no epochs_to_fit metric (a fixed budget): read from the history at the 0.99 default threshold
    budget = frame(run("p0", fit_threshold=math.nan, epochs_to_fit=math.nan, epochs_run=3.0),
                   run("p1", label_noise=1.0, fit_threshold=math.nan, epochs_to_fit=math.nan, epochs_run=3.0))
    hist = pd.DataFrame({"run_id": ["p0"] * 3 + ["p1"] * 3, "epoch": [1, 2, 3] * 2,
                         "train_acc": [0.5, 0.995, 1.0, 0.2, 0.5, 0.99]})
    c3 = judge(budget, hist)["C3"]
    assert c3.status == PASS and "p0 2.0" in c3.checks[0].evidence and "p1 3.0" in c3.checks[0].evidence
    assert judge(frame(run("p0")))["C3"].status == NOT_RUN


# -- C4 / C5: input corruptions -------------------------------------------------------------------------
def _fig1a(arch: str, etf: dict[str, float], test: dict[str, float] | None = None) -> list[dict]:
    test = test or {}
    kinds = {"true": {}, "random_labels": {"label_noise": 1.0}, "shuffled_pixels": {"corruption": "shuffled_pixels"},
             "random_pixels": {"corruption": "random_pixels"}, "gaussian": {"corruption": "gaussian"}}
    return [run(f"{arch}-{k}", arch=arch, epochs_to_fit=etf[k], epochs_run=etf[k], final_test_acc=test.get(k, 0.1),
                **v) for k, v in kinds.items()]


ORDERED = {"true": 5.0, "shuffled_pixels": 8.0, "random_pixels": 12.0, "gaussian": 9.0, "random_labels": 15.0}


def test_c4_every_corruption_fitted_and_ordered():
    c4 = judge(frame(*_fig1a("alexnet", ORDERED)))["C4"]
    assert c4.status == PASS and statuses(c4) == {"all runs": PASS, "alexnet": PASS}
    assert "true labels 5.0, shuffled pixels 8.0, random pixels 12.0, gaussian 9.0, random labels 15.0" in \
        c4.checks[1].evidence
    slow_gauss = frame(*_fig1a("alexnet", {**ORDERED, "gaussian": 16.0}))
    c4 = judge(slow_gauss)["C4"]
    assert c4.status == FAIL and "fails gaussian <= random labels" in c4.checks[1].evidence
    unfitted = frame(*_fig1a("alexnet", ORDERED))
    unfitted.loc[unfitted["corruption"] == "random_pixels", ["final_train_acc", "epochs_to_fit"]] = [0.8, math.nan]
    assert statuses(judge(unfitted)["C4"])["all runs"] == FAIL


def test_c4_not_run_without_corruptions_or_with_a_kind_missing():
    assert judge(frame(run("p0"), run("p1", label_noise=1.0)))["C4"].status == NOT_RUN
    others = frame(*_fig1a("alexnet", ORDERED), run("mlp-p0"), run("mlp-p1", label_noise=1.0))
    assert statuses(judge(others)["C4"]) == {"all runs": PASS, "alexnet": PASS}  # mlp ran no corruption
    partial = frame(*[r for r in _fig1a("alexnet", ORDERED) if r["corruption"] != "gaussian"])
    c4 = judge(partial)["C4"]
    assert c4.status == NOT_RUN and "missing gaussian" in c4.checks[1].evidence
    # a kind missing does not hide an order that is already broken
    fast_shuffled = _fig1a("alexnet", {**ORDERED, "shuffled_pixels": 3.0})
    broken = frame(*[r for r in fast_shuffled if r["corruption"] != "gaussian"])
    assert judge(broken)["C4"].status == FAIL


def test_c5_noise_inputs_at_chance_and_shuffled_below_true_for_convnets():
    test = {"true": 0.6, "shuffled_pixels": 0.4, "random_pixels": 0.15, "gaussian": 0.09}
    mlp = _fig1a("mlp1x512", ORDERED, {**test, "shuffled_pixels": 0.7})
    c5 = judge(frame(*_fig1a("alexnet", ORDERED, test), *mlp))["C5"]
    # shuffled pixels above true labels on the MLP is allowed: the claim is about convnets
    assert c5.status == PASS and statuses(c5) == {"random pixels, gaussian": PASS, "alexnet": PASS}
    assert "4/4 within 0.10 of 1/K" in c5.checks[0].evidence
    colourful = frame(*_fig1a("alexnet", ORDERED, {**test, "random_pixels": 0.21}))
    assert statuses(judge(colourful)["C5"])["random pixels, gaussian"] == FAIL
    structured = frame(*_fig1a("alexnet", ORDERED, {**test, "shuffled_pixels": 0.6}))  # not below
    assert judge(structured)["C5"].status == FAIL


def test_c5_not_run_when_a_part_has_no_runs():
    assert judge(frame(run("p0"), run("p1", label_noise=1.0)))["C5"].status == NOT_RUN
    mlp_only = frame(*_fig1a("mlp1x512", ORDERED), run("cnn-true", arch="cnn"))  # no convnet with shuffled pixels
    c5 = judge(mlp_only)["C5"]
    assert c5.status == NOT_RUN and statuses(c5) == {"random pixels, gaussian": PASS, "convnets": NOT_RUN}
    shuffled_only = frame(run("t", arch="cnn", final_test_acc=0.6),
                          run("s", arch="cnn", corruption="shuffled_pixels", final_test_acc=0.3))
    c5 = judge(shuffled_only)["C5"]
    assert statuses(c5) == {"random pixels, gaussian": NOT_RUN, "cnn": PASS} and c5.status == NOT_RUN


# -- C6: regularization not necessary -------------------------------------------------------------------
def _table1(arch: str, neither: float, **regs: float) -> list[dict]:
    settings = {"crop_wd": {"augment": "crop", "weight_decay": 5e-4}, "crop": {"augment": "crop"},
                "wd": {"weight_decay": 5e-4}}
    return [run(f"{arch}-neither", arch=arch, final_test_acc=neither)] + [
        run(f"{arch}-{s}", arch=arch, final_test_acc=a, **settings[s]) for s, a in regs.items()]


def test_c6_neither_close_to_best_and_above_3_over_k():
    ok = frame(*_table1("alexnet", 0.45, crop_wd=0.52, crop=0.5, wd=0.46))
    c6 = judge(ok)["C6"]
    assert c6.status == PASS and "best regularized (crop+wd) 0.520" in c6.checks[0].evidence
    far = frame(*_table1("alexnet", 0.40, crop_wd=0.52))
    assert judge(far)["C6"].status == FAIL and "0.120 below the best (> 0.10)" in judge(far)["C6"].checks[0].evidence
    low = frame(*_table1("alexnet", 0.25, wd=0.26))  # close to the best, but under 3/K = 0.3
    assert judge(low)["C6"].status == FAIL and "fails: neither 0.250 < 3/K" in judge(low)["C6"].checks[0].evidence
    # dropout and other augmentations are not Table 1's settings: neither "neither" nor the best
    extra = frame(*_table1("alexnet", 0.45, wd=0.46), run("drop", arch="alexnet", dropout=0.5, final_test_acc=0.9),
                  run("flip", arch="alexnet", augment="flip", final_test_acc=0.9))
    assert judge(extra)["C6"].status == PASS


def test_unknown_number_of_classes_is_not_run_never_fail():
    # an older store without num_classes, on an image folder: K cannot be known from the name
    runs = frame(*_table1("alexnet", 0.1, wd=0.5), *_noise_curve("cnn", {0.0: 0.5, 1.0: 0.1}),
                 run("rp", corruption="random_pixels", final_test_acc=0.9))
    runs = runs.assign(num_classes=math.nan, dataset="imagefolder:/data/x")
    found = judge(runs)
    assert [found[c].status for c in ("C2", "C5", "C6")] == [NOT_RUN] * 3
    assert "number of classes unknown" in found["C6"].checks[0].evidence
    assert judge(runs.assign(dataset="cifar10"))["C6"].status == FAIL  # a named 10-class dataset: K = 10


def test_c6_not_run_without_both_sides():
    assert judge(frame(*_table1("alexnet", 0.45)))["C6"].checks == []  # no regularized run: no subject
    assert judge(frame(run("wd", weight_decay=5e-4)))["C6"].status == NOT_RUN


# -- C8: clean before noisy ------------------------------------------------------------------------------
def test_c8_clean_reaches_09_before_noisy():
    runs = frame(run("p0.4", label_noise=0.4, epochs_run=4.0), run("p0.8", label_noise=0.8, epochs_run=4.0),
                 run("p0", epochs_run=4.0))
    hist = pd.DataFrame({
        "run_id": ["p0.4"] * 4 + ["p0.8"] * 4, "epoch": [1, 2, 3, 4] * 2,
        "train_acc_clean": [0.5, 0.92, 1.0, 1.0, 0.3, 0.6, 0.95, 1.0],
        "train_acc_noisy": [0.1, 0.3, 0.9, 1.0, 0.1, 0.2, 0.5, 0.6],  # p0.8's noisy subset never gets there
    })
    c8 = judge(runs, hist)["C8"]
    assert c8.status == PASS and statuses(c8) == {"p0.4": PASS, "p0.8": PASS}
    assert "clean at epoch 2, noisy at epoch 3" in c8.checks[0].evidence
    assert "noisy not within 4 epochs" in c8.checks[1].evidence
    same = hist.assign(train_acc_noisy=hist["train_acc_clean"])  # together is not earlier
    assert judge(runs, same)["C8"].status == FAIL
    neither = hist.assign(train_acc_clean=0.5, train_acc_noisy=0.5)
    assert judge(runs, neither)["C8"].status == NOT_RUN
    assert judge(frame(run("p0"), run("p1", label_noise=1.0)), hist)["C8"].status == NOT_RUN


# -- output ----------------------------------------------------------------------------------------------
def test_markdown_json_and_check_lines():
    test = {"true": 0.6, "shuffled_pixels": 0.4, "random_pixels": 0.15, "gaussian": 0.09}
    runs = frame(*_fig1a("alexnet", ORDERED, test), run("a-wd", arch="alexnet", weight_decay=5e-4, final_test_acc=0.9))
    found, _ = claims.judge(runs, no_history(), convnet=lambda a: a in CONVNETS)
    md = claims.to_markdown(found, left_out=2)
    assert md.count("\n| C") == 8 and "| C6 Explicit regularization" in md and "**FAIL** |" in md
    assert "2 run(s) that did not finish" in md and "### C4: PASS" in md
    data = json.loads(claims.to_json(found))
    assert [c["id"] for c in data] == [f"C{i}" for i in range(1, 9)]
    assert {c["id"]: c["status"] for c in data}["C6"] == FAIL  # 0.6 neither vs 0.9 with weight decay
    assert [c.id for c in claims.failed(found)] == ["C6"]
    lines = claims.check_lines(found)
    assert len(lines) == 8 and lines[5].startswith("C6 FAIL")


@pytest.mark.parametrize("empty", [True, False])
def test_no_runs_means_every_claim_not_run(empty):
    runs = pd.DataFrame(columns=["run_id", "status"]) if empty else frame(run("x", status="KILLED"))
    found, _ = claims.judge(runs, no_history())
    assert [c.status for c in found] == [NOT_RUN] * 8


# -- the report and `report --check` on a real sweep's store ---------------------------------------------
def test_report_check_on_a_real_sweep(tmp_path, ray_session, client, tracking_uri, capsys):
    """Two random-label trials through real Ray and MLflow: one fitted (threshold 0.05, reached in an epoch),
    one that cannot fit (0.9999 after one epoch). C1 fails and --check exits 1; with the unfitted run
    deleted from the store, the same command exits 0."""
    import yaml

    from rgsweep.cli import main
    from rgsweep.sweep import run_sweep
    from rgsweep.sweepfile import expand, load_spec

    doc = {"name": "claims-cli", "base": {"dataset": "synthetic", "arch": "mlp1x512", "epochs": 1, "lr": 0.05,
                                          "device": "cpu", "label_noise": 1.0},
           "grid": {"budget": [{"fit_threshold": 0.05}, {"fit_threshold": 0.9999}]}}
    path = tmp_path / "claims-cli.yaml"
    path.write_text(yaml.safe_dump(doc))
    plan = expand(load_spec(path), path)
    code, _ = run_sweep(plan, tracking_uri=tracking_uri, verbose=0)
    assert code == 0
    argv = ["report", "--experiment", "claims-cli", "--out", str(tmp_path / "reports"), "--check",
            "--tracking-uri", tracking_uri]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "C1 FAIL" in out and "claims: 1 FAILED (C1)" in out and "C3 NOT RUN" in out
    folder = tmp_path / "reports" / "claims-cli"
    text = (folder / "report.md").read_text()
    section = text[text.index("## Claims"):text.index("## Figures")]
    unfitted = next(t.name for t in plan.trials if t.config.fit_threshold == 0.9999)
    assert "| C1 Deep nets fit random labels" in section and "### C1: FAIL" in section
    assert f"1/2 fitted: {unfitted} (train_acc" in section and "< 0.9999 after 1 epochs" in section
    verdicts = {c["id"]: c["status"] for c in json.loads((folder / "claims.json").read_text())}
    assert verdicts == {"C1": FAIL, **{f"C{i}": NOT_RUN for i in range(2, 9)}}
    exp = client.get_experiment_by_name("claims-cli")
    parent = client.search_runs([exp.experiment_id], "tags.`rgsweep.kind` = 'sweep'")[0].info.run_id
    assert {f.path for f in client.list_artifacts(parent, "report")} >= {"report/report.md", "report/claims.json"}

    bad = client.search_runs([exp.experiment_id], f"attributes.run_name = '{unfitted}'")[0]
    client.delete_run(bad.info.run_id)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "C1 PASS" in out and "claims: none failed" in out
