"""A small, real SQLite MLflow store laid out exactly as rgsweep's tracking writes it.

Metric values follow closed-form rules (see `epoch_metrics`) so tests can compute what the
analysis code should find without reading the store back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

EPOCHS = 4
STEPS_PER_EPOCH = 10
SWEPT = "arch,label_noise,corruption,seed"
T0 = 1_700_000_000_000  # ms; fixed so runs sort the same way every time

BASE_PARAMS: dict[str, str] = {
    "dataset": "digits", "subset": "None", "val_fraction": "0.0", "label_noise": "0.0", "corruption": "none",
    "corrupt_fraction": "1.0", "pixel_fraction": "1.0", "corruption_seed": "0", "preprocess": "standard",
    "augment": "", "arch": "mlp1x512", "width": "512", "depth": "None", "dropout": "0.0",
    "batch_norm": "None",
    "optimizer": "sgd", "lr": "0.01", "momentum": "0.9", "weight_decay": "0.0", "lr_schedule": "exponential",
    "lr_decay": "0.95", "lr_step": "1", "epochs": str(EPOCHS), "batch_size": "64", "fit_threshold": "0.999",
    "early_stopping": "False", "seed": "0", "device": "cpu", "eval_batch_size": "1024",
}
DIFFICULTY = {"shuffled_pixels": 0.3, "random_pixels": 0.6, "gaussian": 0.8}


def trial_configs() -> list[dict[str, str]]:
    """12 trials: label noise x seed on mlp1x512, three pixel corruptions, three cnn trials (one FAILED)."""
    configs = []
    for p in ("0.0", "0.5", "1.0"):
        for seed in ("0", "1"):
            configs.append({"label_noise": p, "seed": seed})
    for corruption in ("shuffled_pixels", "random_pixels", "gaussian"):
        configs.append({"corruption": corruption})
    configs.append({"arch": "cnn", "augment": "crop,flip", "weight_decay": "0.0005", "width": "None"})
    configs.append({"arch": "cnn", "label_noise": "1.0", "width": "None"})
    configs.append({"arch": "cnn", "label_noise": "0.5", "width": "None", "status": "FAILED"})
    return [{**BASE_PARAMS, **c} for c in configs]


def run_name(cfg: dict[str, str]) -> str:
    middle = cfg["corruption"] if cfg["corruption"] != "none" else f"noise{cfg['label_noise']}"
    extra = "-wd" if float(cfg["weight_decay"]) > 0 else ""
    return f"{cfg['arch']}-{middle}{extra}-seed{cfg['seed']}"


def fit_epoch(cfg: dict[str, str]) -> float:
    """Epoch (fractional) at which train_acc reaches 1; above EPOCHS means never fitted."""
    d = DIFFICULTY.get(cfg["corruption"], float(cfg["label_noise"]))
    return 2 + 2 * d + 0.5 * int(cfg["seed"])


def epoch_metrics(cfg: dict[str, str], epoch: int) -> dict[str, float]:
    p = float(cfg["label_noise"])
    d = DIFFICULTY.get(cfg["corruption"], p)
    train_acc = min(1.0, epoch / fit_epoch(cfg))
    test_acc = (0.9 - 0.8 * d + (0.05 if cfg["arch"] == "cnn" else 0.0)) * epoch / EPOCHS
    m = {
        "train_loss": 2.3 * (1 + d) / epoch + 0.01 * int(cfg["seed"]),
        "train_acc": train_acc, "train_acc_clean": min(1.0, epoch / 2),
        "test_loss": 2.3 - test_acc, "test_acc": test_acc, "gen_gap": train_acc - test_acc,
        "lr": 0.01 * 0.95 ** (epoch - 1), "epoch_time_s": 0.1, "steps": float(epoch * STEPS_PER_EPOCH),
    }
    if p > 0:  # train_acc_noisy is absent when no label was changed
        m["train_acc_noisy"] = train_acc * 0.9
    return m


def summary_metrics(cfg: dict[str, str]) -> dict[str, float]:
    last = epoch_metrics(cfg, EPOCHS)
    fe = fit_epoch(cfg)
    s = {
        "fitted": float(fe <= EPOCHS), "best_test_acc": last["test_acc"],
        "final_train_acc": last["train_acc"], "final_test_acc": last["test_acc"],
        "final_gen_gap": last["gen_gap"], "final_train_loss": last["train_loss"],
        "samples_per_s": 1000.0, "train_time_s": 0.4, "epochs_run": float(EPOCHS), "num_params": 1234.0,
    }
    if fe <= EPOCHS:
        s["epochs_to_fit"] = float(math.ceil(fe))
        s["steps_to_fit"] = float(math.ceil(fe) * STEPS_PER_EPOCH)
    return s


@dataclass
class Store:
    uri: str
    root: Path
    experiment_id: str
    parent_id: str  # the latest sweep parent, with the 12 trials
    old_parent_id: str  # an earlier invocation of the same sweep, with one trial
    other_experiment_id: str
    children: dict[str, str] = field(default_factory=dict)  # run name -> run id (latest parent only)
    configs: dict[str, dict[str, str]] = field(default_factory=dict)  # run name -> params
    old_child_id: str = ""


def _trial(client: MlflowClient, exp_id: str, parent_id: str, cfg: dict[str, str], start: int) -> str:
    cfg = dict(cfg)
    status = cfg.pop("status", "FINISHED")
    tags = {
        "mlflow.parentRunId": parent_id, "rgsweep.kind": "trial", "rgsweep.sweep": "demo",
        "rgsweep.trial_key": f"key-{run_name(cfg)}", "rgsweep.git_commit": "abc123",
        "rgsweep.dataset_fingerprint": "fp", "rgsweep.device": "cpu", "rgsweep.torch_version": "2.14.1",
    }
    if status == "FAILED":
        tags["rgsweep.error"] = "RuntimeError: boom"
    run = client.create_run(exp_id, start_time=start, tags=tags, run_name=run_name(cfg))
    rid = run.info.run_id
    epochs = 1 if status == "FAILED" else EPOCHS
    metrics = [Metric(k, v, start + e * 1000, e)
               for e in range(1, epochs + 1) for k, v in epoch_metrics(cfg, e).items()]
    if status == "FINISHED":
        # As rgsweep.tracking does: once-per-run values at step 0.
        metrics += [Metric(k, v, start + 9000, 0) for k, v in summary_metrics(cfg).items()]
    client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in cfg.items()])
    client.set_terminated(rid, status=status, end_time=start + 10_000)
    return rid


def _parent(client: MlflowClient, exp_id: str, start: int, n: int) -> str:
    tags = {"rgsweep.kind": "sweep", "rgsweep.sweep": "demo", "rgsweep.swept": SWEPT}
    rid = client.create_run(exp_id, start_time=start, tags=tags, run_name="sweep-demo").info.run_id
    client.log_batch(rid, metrics=[Metric("n_trials", n, start, 0)], tags=[RunTag("note", "parent")])
    return rid


def make_store(root: Path) -> Store:
    """Experiment `demo`: an old parent with 1 trial and the latest parent with 12.
    Experiment `other`: one parent with 1 trial."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("demo", artifact_location=str(root / "mlruns" / "demo"))
    other_id = client.create_experiment("other", artifact_location=str(root / "mlruns" / "other"))

    old_parent = _parent(client, exp_id, T0, 1)
    old_child = _trial(client, exp_id, old_parent, {**BASE_PARAMS, "seed": "7"}, T0 + 100)
    client.set_terminated(old_parent, "FINISHED", end_time=T0 + 20_000)

    other_parent = _parent(client, other_id, T0, 1)
    _trial(client, other_id, other_parent, dict(BASE_PARAMS), T0 + 100)

    parent = _parent(client, exp_id, T0 + 100_000, 12)
    store = Store(uri, root, exp_id, parent, old_parent, other_id, old_child_id=old_child)
    for i, cfg in enumerate(trial_configs()):
        rid = _trial(client, exp_id, parent, cfg, T0 + 100_000 + 1000 * (i + 1))
        store.children[run_name(cfg)] = rid
        store.configs[run_name(cfg)] = cfg
    client.set_terminated(parent, "FINISHED", end_time=T0 + 200_000)
    return store


_shared: Store | None = None


def shared_store(tmp_path_factory) -> Store:
    """One store per test process (building it costs 3-6 s, mostly MLflow's schema migrations), shared by
    the test modules that only read it or add artifacts."""
    global _shared
    if _shared is None:
        _shared = make_store(tmp_path_factory.mktemp("mlflow-store"))
    return _shared
