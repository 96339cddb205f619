"""`rgsweep train` and `rgsweep models` end to end against a real SQLite MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rgsweep import tracking
from rgsweep.cli import main


def _runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_train_logs_a_finished_run_with_metrics_params_tags_and_curve(client, tracking_uri, capsys):
    code = main(["train", "--dataset", "synthetic", "--arch", "mlp1x512", "--epochs", "3", "--lr", "0.05",
                 "--label-noise", "0.4", "--no-fit-stop", "--device", "cpu", "--quiet",
                 "--experiment", "cli-train", "--tracking-uri", tracking_uri])
    assert code == 0
    out = capsys.readouterr().out
    assert "train_acc=" in out and "test_acc=" in out and "gen_gap=" in out and "run_id=" in out
    (run,) = _runs(client, "cli-train")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "mlp1x512-noise0.4-clean-seed0"
    p = run.data.params
    assert p["label_noise"] == "0.4" and p["arch"] == "mlp1x512" and p["dataset"] == "synthetic"
    t = run.data.tags
    assert t["rgsweep.trial_key"] and t["rgsweep.git_commit"] and t["rgsweep.device"] == "cpu"
    assert len(t["rgsweep.dataset_fingerprint"]) >= 8
    hist = client.get_metric_history(run.info.run_id, "train_acc")
    assert [m.step for m in hist] == [1, 2, 3]
    for key in ("test_acc", "gen_gap", "train_acc_clean", "train_acc_noisy", "lr", "epoch_time_s"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 3, key
    m = run.data.metrics
    assert m["fitted"] == 0.0 and m["epochs_run"] == 3.0 and m["samples_per_s"] > 0
    assert "gen_gap" in m and "best_test_acc" in m and "final_gen_gap" not in m
    assert t["mlflow.runColor"] == "#1f77b4" and t["mlflow.note.content"].startswith("mlp1x512, noise 0.4, clean: ")
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"synthetic/train", "synthetic/test"}
    arts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "learning_curve.png" in arts


def test_train_eval_every_auto_logs_the_interval_it_chose(client, tracking_uri):
    # synthetic: 600 training, 200 test images, so "auto" evaluates the test set every 4th epoch and the last
    code = main(["train", "--dataset", "synthetic", "--epochs", "5", "--no-fit-stop", "--device", "cpu", "--quiet",
                 "--eval-every", "auto", "--experiment", "cli-auto", "--tracking-uri", tracking_uri])
    assert code == 0
    (run,) = _runs(client, "cli-auto")
    assert run.data.params["eval_every"] == "auto" and run.data.metrics["test_every"] == 4
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")] == [4, 5]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_acc")] == [1, 2, 3, 4, 5]


def test_train_from_yaml_config_with_flag_override(client, tracking_uri, tmp_path):
    cfg = tmp_path / "trial.yaml"
    cfg.write_text("dataset: synthetic\narch: cnn\nepochs: 1\nlabel_noise: 0.2\ndevice: cpu\n")
    code = main(["train", "--config", str(cfg), "--label-noise", "0.6", "--quiet",
                 "--experiment", "cli-yaml", "--tracking-uri", tracking_uri])
    assert code == 0
    (run,) = _runs(client, "cli-yaml")
    assert run.data.params["arch"] == "cnn" and run.data.params["label_noise"] == "0.6"


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--label-noise", "1.5"], ["label_noise", "1.5"]),
        (["--lr", "-1"], ["lr", "greater than 0"]),
        (["--epochs", "0"], ["epochs"]),
        (["--arch", "vgg"], ["arch", "allowed", "alexnet"]),
        (["--dataset", "imagenet"], ["dataset", "allowed", "cifar10"]),
        (["--corruption", "blur"], ["corruption", "allowed", "gaussian"]),
        (["--augment", "crop,mixup"], ["mixup", "allowed", "flip"]),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/rg"], ["/nonexistent/rg", "--download"]),
        (["--lr", "abc"], ["--lr", "invalid float"]),
        (["--eval-every", "often"], ["eval_every", "'often'", "'auto'"]),
    ],
)
def test_bad_input_exits_2_with_clear_message_and_no_run(argv, needles, client, tracking_uri, capsys):
    code = None
    if "abc" not in argv:
        code = main(["train", *argv, "--experiment", "cli-bad", "--tracking-uri", tracking_uri, "--quiet"])
    if code is None:  # argparse type errors exit through SystemExit
        with pytest.raises(SystemExit) as e:
            main(["train", *argv, "--experiment", "cli-bad", "--tracking-uri", tracking_uri])
        code = e.value.code
    assert code == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, (needle, err)
    assert _runs(client, "cli-bad") == []


@pytest.mark.parametrize(
    "argv, line",
    [
        (["sweep", "s.yaml", "--epochs", "-3"],
         "rgsweep sweep: error: unrecognized arguments: --epochs -3; trial keys go through --set: --set epochs=-3"),
        (["sweep", "--epochs", "3", "s.yaml"],  # argparse took "3" as the file: the hint still reads argv
         "rgsweep sweep: error: unrecognized arguments: --epochs s.yaml; trial keys go through --set: --set epochs=3"),
        (["tune", "t.yaml", "--label-noise=0.5", "--bogus"],
         "rgsweep tune: error: unrecognized arguments: --label-noise=0.5 --bogus; trial keys go through --set: "
         "--set label_noise=0.5"),
        (["train", "--bogus", "1"], "rgsweep train: error: unrecognized arguments: --bogus 1"),
        (["export", "--lr", "1"], "rgsweep export: error: unrecognized arguments: --lr 1"),
    ],
)
def test_an_unknown_flag_exits_2_naming_the_command_and_the_set_form_of_a_trial_key(argv, line, tmp_path,
                                                                                    capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""
    assert list(tmp_path.iterdir()) == []  # nothing started: no store, no Ray folder


@pytest.mark.parametrize(
    "argv, line",
    [
        (["sweep", "{repo}/sweeps/demo.yaml", "--rerun-failed"],
         "rgsweep sweep: error: --rerun-failed runs the FAILED trials of a resumed sweep again: add --resume "
         "(rgsweep sweep {repo}/sweeps/demo.yaml --resume --rerun-failed)"),
        (["tune", "{repo}/sweeps/tune-demo.yaml", "--smoke", "--resume"],
         "rgsweep tune: error: --smoke runs a throwaway study, deleted before it starts: it cannot be resumed; "
         "drop --resume or --smoke"),
        (["sweep", "{repo}/sweeps/demo.yaml", "--num-cpus", "2", "--ray-address", "127.0.0.1:9"],
         "rgsweep sweep: error: --num-cpus sizes a local Ray instance, but this command joins the cluster at "
         "127.0.0.1:9 (--ray-address): the cluster's nodes have their CPUs (`ray start --num-cpus`); cap the "
         "trials with --max-concurrent"),
        (["tune", "{repo}/sweeps/tune-demo.yaml", "--num-cpus", "0"],
         "rgsweep tune: error: --num-cpus must be >= 1, got 0"),
        (["sweep", "{repo}/sweeps/demo.yaml", "--cpus-per-trial", "0"],  # was ignored: 0 is falsy
         "rgsweep sweep: error: --cpus-per-trial/--gpus-per-trial: Input should be greater than 0"),
    ],
)
def test_a_flag_that_would_be_ignored_exits_2_before_anything_starts(argv, line, tmp_path, capsys, monkeypatch):
    repo = str(Path(__file__).resolve().parents[1])
    monkeypatch.chdir(tmp_path)
    assert main([a.format(repo=repo) for a in argv]) == 2
    assert capsys.readouterr().err == line.format(repo=repo) + "\n"
    assert list(tmp_path.iterdir()) == []


def test_unknown_config_file_key_exits_2(tmp_path, capsys, client, tracking_uri):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("dataset: synthetic\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(cfg), "--experiment", "cli-bad", "--tracking-uri", tracking_uri]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'learning_rate'" in err and "bad.yaml" in err
    assert _runs(client, "cli-bad") == []


def test_diverging_run_is_failed_with_tag(client, tracking_uri):
    code = main(["train", "--dataset", "synthetic", "--arch", "mlp3x512", "--epochs", "20",
                 "--lr", "10", "--momentum", "0.99",
                 "--preprocess", "none", "--no-fit-stop", "--device", "cpu", "--quiet",
                 "--experiment", "cli-diverge", "--tracking-uri", tracking_uri])
    assert code == 1
    (run,) = _runs(client, "cli-diverge")
    assert run.info.status == "FAILED"
    assert run.data.tags["rgsweep.diverged"] == "true"


def test_models_lists_paper_counts(capsys):
    assert main(["models", "--input-shape", "3,28,28"]) == 0
    out = capsys.readouterr().out
    for name, count in [("mlp1x512", "1,209,866"), ("mlp3x512", "1,735,178"), ("alexnet", "1,387,786"),
                        ("inception", "1,649,402")]:
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert count in line


@pytest.mark.parametrize("args, message", [
    (["--num-classes", "0"], "num_classes must be positive, got 0"),
    (["--input-shape", "3,-1,28"], "input_shape must be (C, H, W) with positive sizes, got (3, -1, 28)"),
])
def test_models_with_impossible_sizes_exits_2_with_one_line(args, message, capsys):
    assert main(["models", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"rgsweep models: error: {message}\n" and captured.out == ""


def test_output_into_a_closed_pipe_exits_141_without_a_traceback():
    """`rgsweep models | head -1`: the reader is gone before the command writes. The read end is closed
    before the command starts, so its first write fails whatever the timing."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "rgsweep.cli", "models"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == ""


def test_console_script_entry_point():
    exe = tracking.Path(sys.executable).with_name("rgsweep")
    out = subprocess.run([str(exe), "models", "--input-shape", "1,8,8"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "inception-nobn" in out.stdout


def test_make_help_lists_the_targets_without_colour_codes_when_piped():
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(["make", "-s", "help"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "\x1b[" not in done.stdout
    targets = [line.split()[0] for line in done.stdout.splitlines()]
    assert targets[:2] == ["help", "install"] and {"demo", "test", "paper-cpu", "gpu-check"} <= set(targets)


def test_help_ends_with_examples_that_parse_as_written(capsys):
    # Every example line of `rgsweep --help` names a real subcommand, flags and a shipped file.
    import shlex

    from rgsweep.cli import EXAMPLES, build_parser

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "examples (from the checkout" in capsys.readouterr().out
    lines = [ln.strip() for ln in EXAMPLES.splitlines() if ln.strip().startswith("rgsweep ")]
    assert len(lines) >= 5
    repo = Path(__file__).resolve().parents[1]
    for line in lines:
        argv = shlex.split(line.split("  ")[0])[1:]
        args = build_parser().parse_args(argv)  # argparse exits 2 on an unknown flag or subcommand
        if getattr(args, "file", None):
            assert (repo / args.file).is_file(), line
