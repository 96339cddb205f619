"""What a person sees in the MLflow UI after a sweep, read back from the store of a real sweep (real Ray,
real SQLite MLflow store, real torch): colours, dataset inputs, source and user tags, descriptions, the
sweep's page on its parent run, seeds as mean ± std, device-seconds. tests/test_browser.py looks at the
same things in a real browser."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rgsweep import tracking
from rgsweep.analysis import export, figures, tables
from rgsweep.cli import main
from rgsweep.config import ConfigError, TrialConfig
from rgsweep.palette import ARCH_COLORS, arch_color
from rgsweep.sweep import run_sweep, ui_hint
from rgsweep.sweepfile import expand, load_spec, seeds_override

REPO = Path(__file__).resolve().parents[1]
ONE_LINE = re.compile(r"^(mlp1x512|cnn), noise (0\.0|1\.0), clean: train \d\.\d\d / test \d\.\d\d / gap -?\d\.\d\d, "
                      r"(fitted in \d+ epochs|not fitted in \d+ epochs)$")


def write_sweep(tmp_path: Path, name: str, **spec) -> Path:
    doc = {"name": name, "description": f"The *{name}* sweep: two architectures, two noise levels.",
           "base": {"dataset": "synthetic", "epochs": 2, "lr": 0.05, "device": "cpu", "fit_threshold": None},
           "grid": {"arch": ["mlp1x512", "cnn"], "condition": [{"label_noise": 0.0}, {"label_noise": 1.0}]},
           **spec}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _children(client, exp_id: str, parent_id: str) -> dict[str, object]:
    return {r.info.run_name: r for r in tracking.search_children(client, exp_id, parent_id)}


def _artifact_text(client, run_id: str, path: str, dst: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(dst))).read_text()


# -- a real sweep ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def swept(tmp_path_factory, ray_session, tracking_uri):
    """2 architectures x 2 label-noise levels, one seed, 2 epochs on synthetic data."""
    root = tmp_path_factory.mktemp("ui-sweep")
    path = write_sweep(root, "ui-look")
    plan = expand(load_spec(path), path)
    code, counts = run_sweep(plan, tracking_uri=tracking_uri, verbose=0)
    client = tracking.get_client(tracking_uri)
    exp = client.get_experiment_by_name("ui-look")
    parent = client.get_run(client.search_runs([exp.experiment_id], "tags.`rgsweep.kind` = 'sweep'")[0].info.run_id)
    return {"code": code, "counts": counts, "plan": plan, "client": client, "exp": exp, "parent": parent,
            "children": _children(client, exp.experiment_id, parent.info.run_id), "root": root}


def test_children_have_short_names_colours_source_and_descriptions(swept):
    assert swept["code"] == 0 and swept["counts"]["finished"] == 4
    children = swept["children"]
    assert set(children) == {"mlp1x512-noise0.0", "mlp1x512-noise1.0", "cnn-noise0.0", "cnn-noise1.0"}
    for name, run in children.items():
        tags, arch = run.data.tags, name.split("-")[0]
        assert tags["mlflow.runColor"] == ARCH_COLORS[arch]
        assert tags["mlflow.source.name"].endswith("ui-look.yaml") and tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] and tags["mlflow.source.git.commit"] == tracking.git_commit()
        assert ONE_LINE.match(tags["mlflow.note.content"]), tags["mlflow.note.content"]
        assert tags["mlflow.note.content"].startswith(f"{arch}, noise {name[-3:]}, clean: ")
        assert "learning_curve.png" in {a.path for a in swept["client"].list_artifacts(run.info.run_id)}
    assert swept["exp"].tags["mlflow.note.content"] == "The *ui-look* sweep: two architectures, two noise levels."


def test_children_log_train_and_test_inputs_with_the_dataset_fingerprint(swept):
    for run in swept["children"].values():
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"synthetic/train", "synthetic/test"}
        for split, d in inputs.items():
            assert d.dataset.digest == run.data.tags["rgsweep.dataset_fingerprint"]
            tags = {t.key: t.value for t in d.tags}
            assert tags["mlflow.data.context"] == split.split("/")[1] and tags["rgsweep.corruption"] == "none"
        train_tags = {t.key: t.value for t in inputs["synthetic/train"].tags}
        assert train_tags["rgsweep.label_noise"] == run.data.params["label_noise"]  # this trial's, not the first's


def test_results_are_series_and_per_run_metrics_without_duplicates(swept):
    for run in swept["children"].values():
        m = run.data.metrics
        assert not {"final_train_acc", "final_test_acc", "final_gen_gap", "final_train_loss"} & set(m)
        assert m["gen_gap"] == pytest.approx(m["train_acc"] - m["test_acc"])
        assert m["device_s"] > 0 and m["device_share"] == 1.0 and run.data.tags["rgsweep.device_kind"] == "cpu"
    # The export still has the final_* columns the analysis reads, from the series' last epoch.
    runs, history = export.collect(swept["client"].tracking_uri, parent_run_id=swept["parent"].info.run_id)
    last = history.sort_values("epoch").groupby("run_id").last()
    for r in runs.itertuples():
        assert r.final_gen_gap == pytest.approx(last.loc[r.run_id, "gen_gap"])
        assert r.final_test_acc == pytest.approx(last.loc[r.run_id, "test_acc"])


def test_the_parent_run_carries_the_sweeps_page(swept, tmp_path):
    client, parent, children = swept["client"], swept["parent"], swept["children"]
    pid = parent.info.run_id
    tags = parent.data.tags
    note = tags["mlflow.note.content"]
    assert note.startswith("**Sweep `ui-look` ended: 4 trials, 4 finished, 0 failed, 0 killed, 0 not run.**")
    assert "| run | arch | label_noise | train_acc | test_acc | gen_gap | epochs_to_fit | status |" in note
    for name, run in children.items():
        assert f"| {name} | {name.split('-')[0]} |" in note
        assert f"{run.data.metrics['gen_gap']:.3f}" in note
    assert f"get-artifact?path=report/gen_gap_vs_label_noise.png&run_uuid={pid}" in note
    assert re.search(r"Cost: [\d,]+ CPU core-seconds\.", note)
    assert tags["mlflow.runColor"] == tracking.PARENT_COLOR and tags["mlflow.source.type"] == "LOCAL"

    files = {a.path for a in client.list_artifacts(pid, "report")}
    for f in ("report.md", "results.md", "results.csv", "gen_gap_vs_label_noise.png", "fig1c_test_error.png",
              "learning_curves.png"):
        assert f"report/{f}" in files, f
    results_md = _artifact_text(client, pid, "report/results.md", tmp_path)
    assert results_md.strip() in note  # the description shows the same table the terminal printed
    rows = list(csv.DictReader(io.StringIO(_artifact_text(client, pid, "report/results.csv", tmp_path))))
    assert {r["run"] for r in rows} == set(children) and {r["status"] for r in rows} == {"FINISHED"}
    assert "## Figures" in _artifact_text(client, pid, "report/report.md", tmp_path)

    # Figure 1c and the gap on the parent's own charts: step = index of the noise level.
    assert tags["rgsweep.noise_levels"] == "0,1"
    for arch in ("mlp1x512", "cnn"):
        history = client.get_metric_history(pid, f"gen_gap_vs_noise/{arch}")
        assert sorted((m.step, round(m.value, 6)) for m in history) == [
            (0, round(children[f"{arch}-noise0.0"].data.metrics["gen_gap"], 6)),
            (1, round(children[f"{arch}-noise1.0"].data.metrics["gen_gap"], 6))]
        err = client.get_metric_history(pid, f"test_error_vs_noise/{arch}")
        assert {m.step for m in err} == {0, 1}
    total = sum(r.data.metrics["device_s"] for r in children.values())
    assert parent.data.metrics["device_s/cpu"] == pytest.approx(total)


def test_learning_curve_is_titled_with_run_and_condition(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "test_loss": 2 / e, "train_acc": e / 3, "test_acc": 0.1,
                "train_acc_clean": e / 3, "train_acc_noisy": e / 6} for e in (1, 2, 3)]
    fig = tracking.learning_curve_figure(history, "cnn-noise0.4 (cnn, noise 0.4, clean)")
    assert fig._suptitle.get_text() == "cnn-noise0.4 (cnn, noise 0.4, clean)"
    lines = {line.get_label(): (line.get_color(), line.get_linestyle()) for line in fig.axes[1].lines}
    kept, changed = lines["train, labels kept"], lines["train, labels changed"]
    assert kept[0] != changed[0] and kept[1] != changed[1]  # another colour and another dash
    tracking.plot_learning_curve(history, tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").stat().st_size > 0


# -- seeds ----------------------------------------------------------------------------------------
def test_three_seeds_give_mean_std_in_tables_and_error_bars_in_figures(tmp_path, ray_session, tracking_uri, capsys):
    path = write_sweep(tmp_path, "ui-seeds", grid={"condition": [{"label_noise": 0.0}, {"label_noise": 1.0}]},
                       base={"dataset": "synthetic", "arch": "mlp1x512", "epochs": 2, "lr": 0.05, "device": "cpu",
                             "fit_threshold": None})
    code = main(["sweep", str(path), "--seeds", "0,1,2", "--tracking-uri", tracking_uri])
    assert code == 0
    out = capsys.readouterr().out
    table = out[out.index("label_noise  n"):]
    header, _, *rows = table.splitlines()[:4]
    assert header.split() == ["label_noise", "n", "train_acc", "test_acc", "gen_gap", "epochs_to_fit", "fitted",
                              "status"]
    for row in rows:
        assert row.split()[1] == "3" and row.count("±") == 3 and row.endswith("3 FINISHED")

    client = tracking.get_client(tracking_uri)
    exp = client.get_experiment_by_name("ui-seeds")
    parent = client.search_runs([exp.experiment_id], "tags.`rgsweep.kind` = 'sweep'")[0]
    children = _children(client, exp.experiment_id, parent.info.run_id)
    assert set(children) == {f"mlp1x512-noise{p}-seed{s}" for p in ("0.0", "1.0") for s in (0, 1, 2)}
    note = parent.data.tags["mlflow.note.content"]
    assert "| label_noise | n | train_acc | test_acc | gen_gap |" in note and note.count("±") == 6

    # The numbers are the mean and the standard deviation (n - 1) of the three runs.
    runs, _ = export.collect(tracking_uri, parent_run_id=parent.info.run_id)
    clean = runs[runs["label_noise"] == 0.0]["final_gen_gap"]
    assert f"{clean.mean():.3f} ± {clean.std(ddof=1):.3f}" in note
    report_md = _artifact_text(client, parent.info.run_id, "report/report.md", tmp_path)
    summary = report_md[report_md.index("## Summary per configuration"):]
    assert "mean ± standard deviation over seeds" in summary and f"{clean.mean():.3f} ± " in summary

    fig = figures.gen_gap_vs_label_noise(runs)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["mlp1x512"]
    assert [t.get_text() for t in ax.texts] == ["mean ± std over n = 3 runs per point"]
    (bars,) = ax.collections  # one vertical bar per noise level, mean +- std
    lows_highs = sorted((seg[0][1], seg[1][1]) for seg in bars.get_segments())
    assert lows_highs[0] == pytest.approx((clean.mean() - clean.std(ddof=1), clean.mean() + clean.std(ddof=1)))


def test_seeds_flag_and_set_seeds_replace_the_files_seeds(capsys):
    assert main(["sweep", str(REPO / "sweeps" / "demo.yaml"), "--dry-run", "--seeds", "0,1,2"]) == 0
    out = capsys.readouterr().out
    assert "54 trials" in out and "cnn-gaussian-seed2" in out and "mlp1x512-noise0.4-seed1" in out
    assert main(["sweep", str(REPO / "sweeps" / "demo.yaml"), "--dry-run", "--set", "seeds=[0,1,2]"]) == 0
    assert "54 trials" in capsys.readouterr().out
    assert main(["sweep", str(REPO / "sweeps" / "demo.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "18 trials" in out and "cnn-gaussian " in out and "seed0" not in out
    assert main(["sweep", str(REPO / "sweeps" / "demo.yaml"), "--dry-run", "--seeds", "0,x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seeds" in err and "0,1,2" in err
    with pytest.raises(ConfigError, match="repeats a seed"):
        seeds_override("1,1", {})
    overrides = {"seeds": [3, 4], "lr": 0.1}
    assert seeds_override(None, overrides) == [3, 4] and overrides == {"lr": 0.1}


# -- small pieces ---------------------------------------------------------------------------------
def test_run_names_show_the_values_a_trial_was_given():
    path = REPO / "sweeps" / "demo.yaml"
    names = [t.name for t in expand(load_spec(path), path).trials]
    assert names[:7] == ["mlp1x512-noise0.0", "mlp1x512-noise0.2", "mlp1x512-noise0.4", "mlp1x512-noise0.6",
                         "mlp1x512-noise0.8", "mlp1x512-noise1.0", "mlp1x512-shuffled_pixels"]
    assert "cnn-gaussian" in names and len(set(names)) == len(names)
    path = REPO / "sweeps" / "label-noise.yaml"  # bundles that pick the architecture: its lr stays out of names
    assert expand(load_spec(path), path).trials[0].name == "inception-noise0.0"


def test_shipped_sweep_files_give_readable_unique_run_names():
    """What the MLflow UI's runs table and the report show: no trial-key digits where the values can say it."""
    names = {}
    for f in sorted((REPO / "sweeps").glob("*.yaml")):
        if not f.name.startswith("tune-"):
            trials = expand(load_spec(f), f).trials
            names[f.stem] = [t.name for t in trials]
            assert len(set(names[f.stem])) == len(trials), f
            assert not [t.name for t in trials if t.name.endswith(t.key[:6])], f
    # Bundles that pick the architecture and the condition it runs: the condition is named.
    assert names["paper-cpu"] == [
        "alexnet-noise1.0", "alexnet-random_pixels", "alexnet-shuffled_pixels", "alexnet-gaussian", "alexnet-noise0.0",
        "alexnet-crop-wd0.0005", "alexnet-noise1.0-wd0.0005", "mlp1x512-noise0.0", "mlp1x512-noise0.2",
        "mlp1x512-noise0.4", "mlp1x512-noise0.6", "mlp1x512-noise0.8", "mlp1x512-noise1.0", "mlp1x512-shuffled_pixels",
        "mlp1x512-random_pixels", "mlp1x512-gaussian", "mlp1x512-wd0.0005", "mlp1x512-noise1.0-wd0.0005"]
    # A bundle carrying each architecture's setup (its lr): the lr does not vary within an arch, so it is not named.
    assert names["architectures"][:2] == ["inception-noise0.0", "inception-noise1.0"]


def test_a_bundle_value_that_varies_within_an_architecture_is_named_and_a_tie_gets_key_digits(tmp_path):
    path = write_sweep(tmp_path, "bundles", grid={"setup": [
        {"arch": "mlp1x512", "lr": 0.1}, {"arch": "mlp1x512", "lr": 0.01}, {"arch": "cnn", "lr": 0.05}]})
    assert [t.name for t in expand(load_spec(path), path).trials] == ["mlp1x512-lr0.1", "mlp1x512-lr0.01", "cnn"]
    # Two trials whose values print alike (a name shows an image folder's kind, not its path): the second
    # gets its trial key's first 6 digits.
    path = write_sweep(tmp_path, "tie", grid={"dataset": ["imagefolder:/x/a", "imagefolder:/x/b"]})
    first, second = expand(load_spec(path), path).trials
    assert first.name == "mlp1x512-imagefolder" and second.name == f"mlp1x512-imagefolder-{second.key[:6]}"


def test_describe_trial_says_what_happened():
    cfg = TrialConfig(dataset="synthetic", arch="cnn", label_noise=1.0)
    s = {"final_train_acc": 1.0, "final_test_acc": 0.12, "final_gen_gap": 0.88, "fitted": True, "epochs_to_fit": 77,
         "epochs_run": 77, "stop_reason": "fitted"}
    expected = "cnn, noise 1.0, clean: train 1.00 / test 0.12 / gap 0.88, fitted in 77 epochs"  # the example
    assert tracking.describe_trial(cfg, s) == expected
    s.update(fitted=False, stop_reason="diverged", epochs_run=5)
    assert tracking.describe_trial(cfg, s).endswith("diverged at epoch 5")
    cfg = TrialConfig(dataset="synthetic", arch="alexnet", corruption="gaussian", augment=["crop"], weight_decay=5e-4)
    assert tracking.describe_trial(cfg, {}, "Traceback ...\nRuntimeError: boom\n") == \
        "alexnet, noise 0.0, gaussian, crop, wd 0.0005: failed before its first epoch ended: RuntimeError: boom"


def test_colours_are_fixed_per_architecture():
    assert arch_color("cnn") == "#ff7f0e" and arch_color("mlp1x512") == "#1f77b4"
    assert arch_color("my-new-net") == arch_color("my-new-net") and re.fullmatch(r"#[0-9a-f]{6}", arch_color("x"))
    assert len(set(ARCH_COLORS.values())) == len(ARCH_COLORS)  # no two known models share a colour


def test_long_descriptions_are_cut_at_a_line_within_mlflows_limit():
    table = "\n".join(f"| run{i} | 0.123 |" for i in range(1000))
    note = tracking.fit_note(table)
    assert len(note) <= tracking.NOTE_MAX and note.endswith("report/results.md)_")
    assert note.split("\n\n")[0].splitlines()[-1].startswith("| run")


def test_addresses_open_the_training_view_on_the_stores_own_server():
    assert tracking.runs_url("http://10.0.0.5:8080/", "7") == \
        "http://10.0.0.5:8080/#/experiments/7/runs?workflowType=machine_learning"
    assert ui_hint("http://10.0.0.5:8080", "7") == \
        "MLflow UI: http://10.0.0.5:8080/#/experiments/7/runs?workflowType=machine_learning"
    local = ui_hint("sqlite:////x/mlflow.db", "7", "demo")
    assert "rgsweep ui --tracking-uri sqlite:////x/mlflow.db" in local and "'demo'" in local
    assert not re.search(r":\d{4}", local)  # no port that may not be the one the UI runs on


def test_summary_table_has_std_and_merge_std_formats_it():
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "status": ["FINISHED"] * 3, "arch": ["cnn"] * 3,
                         "label_noise": [0.0, 0.0, 1.0], "seed": [0, 1, 0], "final_gen_gap": [0.1, 0.3, 0.5],
                         "swept": ["arch,label_noise,seed"] * 3})
    t = tables.summary_table(runs)
    assert t["final_gen_gap_std"].tolist()[0] == pytest.approx(0.141421, abs=1e-6)
    shown = tables.merge_std(t)
    assert shown["final_gen_gap"].tolist() == ["0.200 ± 0.141", "0.500"] and "final_gen_gap_std" not in shown
