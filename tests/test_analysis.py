"""Export from a real SQLite MLflow store, the figure and table functions on small frames, the report."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
from mlflow_fixtures import EPOCHS, SWEPT, epoch_metrics, shared_store, summary_metrics

from rgsweep.analysis import commands, export, figures, frames, tables
from rgsweep.analysis.export import AnalysisError
from rgsweep.analysis.report import FIGURES, build_report, write_report


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    paths = export.export_runs(store.uri, experiment="demo", out_dir=out, csv=True)
    runs, history = export.load_export(out)
    return paths, runs, history


def _row(runs: pd.DataFrame, run_id: str) -> pd.Series:
    return runs.set_index("run_id").loc[run_id]


# -- export ---------------------------------------------------------------------------------------
def test_export_has_one_row_per_trial_and_no_parents(store, exported):
    paths, runs, _ = exported
    assert set(paths) == {"runs", "history", "runs_csv", "history_csv"}
    assert all(p.exists() for p in paths.values())
    assert set(runs["run_id"]) == set(store.children.values()) | {store.old_child_id}
    assert not {store.parent_id, store.old_parent_id} & set(runs["run_id"])
    assert set(runs["parent_run_id"]) == {store.parent_id, store.old_parent_id}
    assert (runs["experiment"] == "demo").all() and (runs["tag_kind"] == "trial").all()
    assert (runs["swept"] == SWEPT).all()
    failed = runs[runs["status"] == "FAILED"]
    assert failed["run_name"].tolist() == ["cnn-noise0.5-seed0"]
    assert failed["tag_error"].tolist() == ["RuntimeError: boom"]
    assert runs["start_time"].is_monotonic_increasing and str(runs["start_time"].dt.tz) == "UTC"
    assert len(pd.read_csv(paths["runs_csv"])) == len(runs)


def test_export_types_params_and_final_metrics(store, exported):
    _, runs, _ = exported
    assert runs["label_noise"].dtype == np.float64 and runs["weight_decay"].dtype == np.float64
    assert runs["seed"].dtype == np.int64 and runs["epochs"].tolist() == [EPOCHS] * len(runs)
    assert runs["batch_norm"].isna().all() and runs["subset"].isna().all()  # "None" -> missing
    assert runs["early_stopping"].dtype == "boolean" and not runs["early_stopping"].any()
    assert str(runs["width"].dtype) == "Int64" and runs["width"].isna().sum() == 3  # cnn logs "None"
    assert sorted(runs["augment"].unique()) == ["", "crop,flip"]
    name = "mlp1x512-noise0.5-seed1"
    cfg, row = store.configs[name], _row(runs, store.children[name])
    assert row["label_noise"] == 0.5 and row["tag_trial_key"] == f"key-{name}"
    for key, value in summary_metrics(cfg).items():
        assert row[key] == pytest.approx(value), key
    assert row["test_acc"] == pytest.approx(epoch_metrics(cfg, EPOCHS)["test_acc"])  # latest per-epoch value
    assert row["metric_lr"] == pytest.approx(epoch_metrics(cfg, EPOCHS)["lr"])  # metric named like a param
    unfitted = _row(runs, store.children["mlp1x512-noise1.0-seed1"])
    assert unfitted["fitted"] == 0 and np.isnan(unfitted["epochs_to_fit"])


def test_history_has_one_row_per_trial_and_epoch(store, exported):
    _, runs, history = exported
    assert list(history.columns[:2]) == ["run_id", "epoch"]
    assert not set(export.SUMMARY_METRICS) & set(history.columns)
    assert "num_params" not in history.columns and history["epoch"].min() == 1  # step-0 values are per run
    sizes = history.groupby("run_id").size()
    failed = runs.loc[runs["status"] == "FAILED", "run_id"].item()
    assert sizes[failed] == 1 and (sizes.drop(failed) == EPOCHS).all() and len(history) == 12 * EPOCHS + 1
    name = "mlp1x512-noise0.5-seed0"
    h = history[history["run_id"] == store.children[name]].set_index("epoch")
    assert h.index.tolist() == list(range(1, EPOCHS + 1))
    for e in h.index:
        expected = epoch_metrics(store.configs[name], e)
        assert h.loc[e, list(expected)].to_dict() == pytest.approx(expected)
    clean = history[history["run_id"] == store.children["mlp1x512-noise0.0-seed0"]]
    assert clean["train_acc_noisy"].isna().all()  # never logged when no label changed


def test_export_sweep_filter_and_all_experiments(store, tmp_path):
    paths = export.export_runs(store.uri, parent_run_id=store.parent_id, out_dir=tmp_path / "sweep")
    runs, history = export.load_export(tmp_path / "sweep")
    assert set(runs["run_id"]) == set(store.children.values())
    assert set(history["run_id"]) == set(runs["run_id"])
    assert "runs_csv" not in paths and not (tmp_path / "sweep" / "runs.csv").exists()
    old, _ = export.collect(store.uri, parent_run_id=store.old_parent_id)
    assert old["run_id"].tolist() == [store.old_child_id]
    every, _ = export.collect(store.uri)
    assert sorted(every["experiment"].unique()) == ["demo", "other"] and len(every) == 14


def test_history_per_run_fallback_equals_bulk_query(store, exported):
    _, runs, history = exported
    client = export.get_client(store.uri)
    trials = [client.get_run(r) for r in runs["run_id"]]
    pd.testing.assert_frame_equal(export._history_frame(client, trials, bulk=False), history)


def test_export_errors(store, tmp_path):
    with pytest.raises(AnalysisError, match="unknown experiment 'nope'.*demo, other"):
        export.export_runs(store.uri, experiment="nope", out_dir=tmp_path)
    with pytest.raises(AnalysisError, match="unknown sweep parent"):
        export.collect(store.uri, parent_run_id="0" * 32)
    with pytest.raises(AnalysisError, match="not in experiment"):
        export.collect(store.uri, experiment="other", parent_run_id=store.parent_id)
    with pytest.raises(AnalysisError, match="rgsweep export"):
        export.load_export(tmp_path / "missing")


def test_parse_param_types():
    assert export.parse_param(pd.Series(["0", "1"]), "label_noise").dtype == np.float64
    assert export.parse_param(pd.Series(["0", "1"]), "seed").tolist() == [0, 1]
    assert export.parse_param(pd.Series(["500", "None"]), "subset").tolist() == [500, pd.NA]
    assert export.parse_param(pd.Series(["True", "None"]), "batch_norm").tolist() == [True, pd.NA]
    assert export.parse_param(pd.Series(["sgd", "None"]), "optimizer").isna().tolist() == [False, True]
    assert export.parse_param(pd.Series(["1e-4", "0.1"]), "x").tolist() == [1e-4, 0.1]


def test_latest_per_trial_and_swept_factors():
    t = pd.Timestamp("2026-01-01", tz="UTC")
    runs = pd.DataFrame({
        "run_id": ["a", "b", "c", "d", "e"], "tag_trial_key": ["k1", "k1", "k2", "k2", None],
        "status": ["FINISHED", "FAILED", "FINISHED", "FINISHED", "FINISHED"],
        "start_time": [t, t + pd.Timedelta("1h"), t, t + pd.Timedelta("1h"), t],
        "arch": ["mlp1x512", "mlp1x512", "cnn", "cnn", "cnn"], "lr": [0.1] * 5, "seed": [0, 0, 0, 0, 1],
    })
    # A later FAILED retry does not hide the FINISHED run; of two FINISHED, the later wins; no key: kept.
    assert frames.latest_per_trial(runs)["run_id"].tolist() == ["a", "d", "e"]
    assert frames.swept_factors(runs) == ["arch", "seed"]  # no swept tag: the candidates that vary
    assert frames.swept_factors(runs.assign(swept="arch,condition,lr")) == ["arch", "lr"]


# -- commands -------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rgsweep")
    commands.register(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.mark.parametrize("command", [["export"], ["report", "--experiment", "demo"], ["ui"]])
def test_reading_commands_refuse_a_store_that_does_not_exist_and_create_nothing(command, tmp_path, capsys,
                                                                               monkeypatch):
    """A mistyped path, or the command run from another directory than the sweep, used to become a new
    empty store (migrations, an mlruns/ folder) and "unknown experiment 'demo' (known: Default)"."""
    monkeypatch.chdir(tmp_path)
    for uri, where in ((f"sqlite:///{tmp_path}/typo/mlflow.db", tmp_path / "typo" / "mlflow.db"),
                       ("sqlite:///mlruns/mlflow.db", tmp_path / "mlruns" / "mlflow.db")):
        args = _parser().parse_args([*command, "--tracking-uri", uri])
        assert args.func(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"rgsweep {command[0]}: error: no MLflow store at {where} (tracking URI {uri})")
        assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_commands_parse_and_run(store, tmp_path, capsys):
    parser = _parser()
    ui = parser.parse_args(["ui"])
    assert (ui.host, ui.port, ui.func) == ("127.0.0.1", 5000, commands.cmd_ui)
    assert parser.parse_args(["export"]).out == "exports"
    assert parser.parse_args(["notebooks"]).out == "notebooks/executed"
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "--experiment", "a", "--sweep", "b"])
    assert "not allowed with argument" in capsys.readouterr().err

    args = parser.parse_args(["export", "--experiment", "nope", "--tracking-uri", store.uri])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("rgsweep export: error: unknown experiment 'nope'") and err.count("\n") == 1

    args = parser.parse_args(["export", "--sweep", store.old_parent_id, "--out", str(tmp_path), "--csv",
                              "--tracking-uri", store.uri])
    assert args.func(args) == 0 and (tmp_path / "history.csv").exists()
    assert "exported 1 trial runs" in capsys.readouterr().out

    cmd = commands.server_command(store.uri, host="127.0.0.1", port=5123)
    assert cmd[cmd.index("--backend-store-uri") + 1] == store.uri
    assert cmd[cmd.index("--artifacts-destination") + 1] == str(store.root)
    assert cmd[cmd.index("--workers") + 1] == "1" and cmd[cmd.index("--port") + 1] == "5123"
    urls = dict(commands.runs_table_urls(store.uri, "127.0.0.1", 5123))
    assert urls["demo"] == f"http://127.0.0.1:5123/#/experiments/{store.experiment_id}/runs?workflowType=machine_learning"


# -- figures on small frames ----------------------------------------------------------------------
def _runs(rows: list[dict]) -> pd.DataFrame:
    base = {"status": "FINISHED", "arch": "mlp1x512", "label_noise": 0.0, "corruption": "none", "seed": 0,
            "dataset": "digits", "augment": "", "weight_decay": 0.0}
    return pd.DataFrame([{"run_id": f"r{i}", **base, **r} for i, r in enumerate(rows)])


def _ys(fig) -> dict[str, list[float]]:
    return {line.get_label(): list(line.get_ydata()) for line in fig.axes[0].lines}


def test_fig1a_averages_seeds_per_corruption_type():
    runs = _runs([
        {}, {"seed": 1}, {"label_noise": 1.0}, {"corruption": "shuffled_pixels"},
        {"corruption": "gaussian"}, {"label_noise": 0.5},  # partial noise is not a Figure 1a category
        {"arch": "cnn"},  # another architecture: not averaged in
    ])
    losses = {"r0": [2.0, 1.0], "r1": [4.0, 2.0], "r2": [3.0, 2.5], "r3": [2.5, 1.5], "r4": [2.2, 1.1],
              "r5": [9.0, 9.0], "r6": [7.0, 7.0]}
    history = pd.DataFrame([{"run_id": r, "epoch": e + 1, "steps": 10.0 * (e + 1), "train_loss": v}
                            for r, vs in losses.items() for e, v in enumerate(vs)])
    fig = figures.fig1a_loss_curves(history, runs)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "optimizer steps" and ax.get_ylabel() == "average training loss"
    assert "mlp1x512" in ax.get_title()
    assert _ys(fig) == {"true labels": [3.0, 1.5], "random labels": [3.0, 2.5], "shuffled pixels": [2.5, 1.5],
                        "gaussian": [2.2, 1.1]}
    assert list(ax.lines[0].get_xdata()) == [10.0, 20.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["true labels", "random labels"]
    cnn = figures.fig1a_loss_curves(history.drop(columns="steps"), runs, arch="cnn")
    assert cnn.axes[0].get_xlabel() == "epoch" and _ys(cnn) == {"true labels": [7.0, 7.0]}


def test_fig1b_relative_time_to_fit_marks_unfitted():
    runs = _runs([
        {"epochs_to_fit": 2.0, "fitted": 1.0}, {"seed": 1, "epochs_to_fit": 4.0, "fitted": 1.0},
        {"label_noise": 0.5, "epochs_to_fit": 6.0, "fitted": 1.0},
        {"label_noise": 1.0, "epochs_to_fit": np.nan, "fitted": 0.0},
        {"arch": "cnn", "epochs_to_fit": np.nan, "fitted": 0.0},  # clean labels never fitted: no baseline
        {"corruption": "gaussian", "epochs_to_fit": 30.0, "fitted": 1.0},  # not a label-noise run
    ])
    fig = figures.fig1b_time_to_fit(runs)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "label corruption" and "relative to clean labels" in ax.get_ylabel()
    line, marker = ax.lines
    assert line.get_label() == "mlp1x512" and list(line.get_xdata()) == [0.0, 0.5]
    assert list(line.get_ydata()) == [1.0, 2.0]
    assert marker.get_label() == "mlp1x512: not fitted" and list(marker.get_xdata()) == [1.0]
    assert any("cnn" in t.get_text() for t in ax.texts)


def test_fig1c_test_error_and_chance_line():
    runs = _runs([
        {"final_test_acc": 0.9}, {"seed": 1, "final_test_acc": 0.7},
        {"label_noise": 1.0, "final_test_acc": 0.1},
        {"arch": "cnn", "final_test_acc": 0.95}, {"corruption": "random_pixels", "final_test_acc": 0.2},
    ])
    fig = figures.fig1c_test_error(runs)
    ax = fig.axes[0]
    assert ax.get_ylabel().startswith("test error") and ax.get_xlabel() == "label corruption"
    ys = _ys(fig)
    assert ys["mlp1x512"] == pytest.approx([0.2, 0.9]) and ys["cnn"] == pytest.approx([0.05])
    assert ys["chance"] == pytest.approx([0.9, 0.9])  # digits: 10 classes
    no_chance = figures.fig1c_test_error(runs.assign(dataset="unknown"))
    assert "chance" not in _ys(no_chance)


def test_gen_gap_vs_label_noise_means():
    runs = _runs([{"final_gen_gap": 0.1}, {"seed": 1, "final_gen_gap": 0.3},
                  {"label_noise": 0.5, "final_gen_gap": 0.6}])
    fig = figures.gen_gap_vs_label_noise(runs)
    assert _ys(fig) == {"mlp1x512": pytest.approx([0.2, 0.6])} and "gap" in fig.axes[0].get_ylabel()


def test_gen_gap_heatmap_cells():
    runs = _runs([
        {"final_gen_gap": 0.1}, {"seed": 1, "final_gen_gap": 0.3}, {"label_noise": 1.0, "final_gen_gap": 0.9},
        {"arch": "cnn", "final_gen_gap": 0.05},  # cnn at p=1 never ran: a blank cell
    ])
    fig = figures.gen_gap_heatmap(runs, "label_noise", "arch")
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("label_noise", "arch")
    cells = ax.images[0].get_array()
    assert cells.shape == (2, 2) and cells.mask.tolist() == [[False, True], [False, False]]
    assert cells[0, 0] == pytest.approx(0.05) and cells[1].tolist() == pytest.approx([0.2, 0.9])
    assert sorted(t.get_text() for t in ax.texts) == ["0.05", "0.20", "0.90"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cnn", "mlp1x512"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]


def test_memorisation_curves_clean_and_noisy():
    runs = _runs([{}, {"label_noise": 0.5}, {"label_noise": 0.5, "seed": 1}])
    history = pd.DataFrame([
        {"run_id": "r0", "epoch": 1, "train_acc_clean": 0.5, "train_acc_noisy": np.nan},
        {"run_id": "r0", "epoch": 2, "train_acc_clean": 1.0, "train_acc_noisy": np.nan},
        {"run_id": "r1", "epoch": 1, "train_acc_clean": 0.4, "train_acc_noisy": 0.1},
        {"run_id": "r1", "epoch": 2, "train_acc_clean": 0.8, "train_acc_noisy": 0.3},
        {"run_id": "r2", "epoch": 1, "train_acc_clean": 0.6, "train_acc_noisy": 0.3},
        {"run_id": "r2", "epoch": 2, "train_acc_clean": 1.0, "train_acc_noisy": 0.5},
    ])
    fig = figures.memorisation_curves(history, runs)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "training accuracy")
    ys = _ys(fig)
    # no noisy curve where nothing was relabelled
    assert list(ys) == ["p=0 clean", "p=0.5 clean", "p=0.5 noisy"]
    assert ys["p=0 clean"] == [0.5, 1.0] and ys["p=0.5 clean"] == pytest.approx([0.5, 0.9])
    assert ys["p=0.5 noisy"] == pytest.approx([0.2, 0.4])
    styles = {line.get_label(): line.get_linestyle() for line in ax.lines}
    assert styles["p=0.5 noisy"] == "--" and styles["p=0.5 clean"] == "-"


def test_figures_on_empty_or_sparse_frames_say_no_data():
    empty_runs, empty_history = pd.DataFrame(), pd.DataFrame()
    sparse = pd.DataFrame({"run_id": ["r0"], "status": ["FINISHED"]})  # no factor columns at all
    sparse_history = pd.DataFrame({"run_id": ["r0"], "epoch": [1]})
    for runs, history in ((empty_runs, empty_history), (sparse, sparse_history)):
        made = [
            figures.fig1a_loss_curves(history, runs), figures.fig1b_time_to_fit(runs),
            figures.fig1c_test_error(runs), figures.gen_gap_vs_label_noise(runs),
            figures.gen_gap_heatmap(runs, "label_noise", "arch"), figures.memorisation_curves(history, runs),
        ]
        for fig in made:
            assert not figures.has_data(fig)
            assert fig.axes[0].texts[0].get_text().startswith("no data")
            assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()


# -- tables ---------------------------------------------------------------------------------------
def test_table1_settings_and_paper_numbers():
    runs = _runs([
        {"final_train_acc": 1.0, "final_test_acc": 0.5},  # neither
        {"seed": 1, "final_train_acc": 0.98, "final_test_acc": 0.54},
        {"label_noise": 1.0, "final_train_acc": 0.99, "final_test_acc": 0.1},  # random labels
        {"arch": "alexnet", "augment": "crop,flip", "weight_decay": 5e-4, "final_train_acc": 1.0,
         "final_test_acc": 0.8},  # crop+wd
        {"arch": "cnn", "weight_decay": 1e-4, "final_train_acc": 0.9, "final_test_acc": 0.7},  # wd only
        {"label_noise": 0.5, "final_train_acc": 1.0, "final_test_acc": 0.3},  # no Table 1 setting
    ])
    assert frames.regularizer_setting(runs).fillna("-").tolist() == [
        "neither", "neither", "random labels", "crop+wd", "wd only", "-"]
    t1 = tables.table1(runs).set_index(["arch", "setting"])
    assert t1.index.tolist() == [  # the paper's row order, architectures it did not test last
        ("alexnet", "crop+wd"), ("mlp1x512", "neither"), ("mlp1x512", "random labels"), ("cnn", "wd only")]
    neither = t1.loc[("mlp1x512", "neither")]
    assert neither["n_runs"] == 2 and neither["train_acc"] == pytest.approx(99.0)
    assert neither["test_acc"] == pytest.approx(52.0)
    assert (neither["paper_train_acc"], neither["paper_test_acc"]) == (100.0, 50.51)
    assert t1.loc[("alexnet", "crop+wd"), "paper_test_acc"] == 81.22
    assert np.isnan(t1.loc[("cnn", "wd only"), "paper_test_acc"])
    md = tables.table1_markdown(tables.table1(runs))
    assert md.splitlines()[0] == "| arch | crop+wd | wd only | neither | random labels |"
    assert "99.00 / 52.00 (n=2) · paper 100.00 / 50.51" in md and "| cnn |  | 90.00 / 70.00 (n=1) |" in md


def test_summary_table_groups_swept_values(exported):
    _, runs, _ = exported
    s = tables.summary_table(runs)
    assert list(s.columns[:3]) == ["arch", "label_noise", "corruption"] and "seed" not in s.columns
    row = s[(s["arch"] == "mlp1x512") & (s["label_noise"] == 0.5)].iloc[0]
    assert row["n_runs"] == 2 and row["status"] == "2 FINISHED"
    assert row["epochs_to_fit"] == pytest.approx(3.5) and row["final_test_acc"] == pytest.approx(0.5)
    assert s[s["arch"] == "cnn"]["status"].tolist() == ["1 FINISHED", "1 FAILED", "1 FINISHED"]
    per_run = tables.summary_table(runs, aggregate_seeds=False)
    assert len(per_run) == len(runs) and "seed" in per_run.columns
    md = tables.to_markdown(s)
    assert md.count("\n") == len(s) + 1 and "| 1 FAILED |" in md


# -- report ---------------------------------------------------------------------------------------
def test_report_written_and_logged_to_latest_parent(store, tmp_path):
    path = build_report(store.uri, experiment="demo", out_dir=tmp_path)
    assert path == tmp_path / "demo" / "report.md"
    text = path.read_text()
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    assert pngs == sorted(name for name, _, _ in FIGURES)  # the demo store has data for every figure
    for name in pngs:
        assert f"]({name})" in text and (path.parent / name).stat().st_size > 1000
    assert "paper 100.00 / 50.51" in text and "RuntimeError: boom" in text
    client = export.get_client(store.uri)
    logged = {f.path for f in client.list_artifacts(store.parent_id, "report")}
    assert logged == {f"report/{n}" for n in ["report.md", "claims.json", *pngs]}
    assert client.list_artifacts(store.old_parent_id) == []


def test_report_without_logging_and_with_missing_factors(store, tmp_path):
    runs, history = export.collect(store.uri, experiment="other")
    # An export whose sweep never recorded label noise: only the data (the clean images, drawn from the params),
    # Figure 1a and the learning curves can be drawn; the rest say why not.
    path = write_report(tmp_path, runs.drop(columns="label_noise"), history, title="other", source="test")
    text = path.read_text()
    assert text.count("_Not drawn (no data") == len(FIGURES) - 3 and "](fig1a_loss_curves.png)" in text
    assert "](learning_curves.png)" in text
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "data_samples.png", "fig1a_loss_curves.png", "learning_curves.png"]
    args = _parser().parse_args(["report", "--experiment", "other", "--out", str(tmp_path / "r"), "--no-log",
                                 "--tracking-uri", store.uri])
    assert args.func(args) == 0 and (tmp_path / "r" / "other" / "report.md").exists()
    client = export.get_client(store.uri)
    other_parent = client.search_runs([store.other_experiment_id], "tags.`rgsweep.kind` = 'sweep'")[0]
    assert client.list_artifacts(other_parent.info.run_id) == []


# -- on a store written by a real sweep -----------------------------------------------------------
def test_export_and_report_on_a_store_written_by_a_real_sweep(sweep_store, tmp_path):
    export.export_runs(sweep_store.uri, experiment=sweep_store.experiment, out_dir=tmp_path / "export")
    runs, history = export.load_export(tmp_path / "export")
    assert sorted(runs["run_name"]) == sorted(sweep_store.trials) and set(runs["status"]) == {"FINISHED"}
    assert sorted(runs["label_noise"].unique()) == [0.0, 1.0]
    assert sorted(runs["corruption"].unique()) == ["none", "shuffled_pixels"]
    assert len(history) == 4 * 3 and set(history["epoch"]) == {1, 2, 3}
    assert history["train_acc"].between(0, 1).all() and runs["final_test_acc"].notna().all()
    path = build_report(sweep_store.uri, experiment=sweep_store.experiment, out_dir=tmp_path / "report")
    text = path.read_text()
    assert "- trials: 4 (" in text and "](fig1a_loss_curves.png)" in text
    client = export.get_client(sweep_store.uri)
    parent = client.get_run(client.get_run(runs["run_id"].iloc[0]).data.tags["mlflow.parentRunId"])
    assert "report/report.md" in {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
