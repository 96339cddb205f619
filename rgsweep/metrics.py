"""Which metric is what: the one place that says which metrics are per-epoch series and which are
results logged once per run (README "Training and metrics" prints the same lists).

In the MLflow runs table a series shows its latest value, i.e. the value of the last epoch trained:
the `gen_gap` column *is* the run's final generalization gap. That is why the old `final_*` metrics
(copies of those latest values, logged once more at the end) are no longer logged: two columns with
one number made people ask which one was the result. `rgsweep export` still writes `final_*` columns
(read from stores written before the change, else taken from the series' last epoch), so notebooks,
tables and claims read the same names as before. No other metric was renamed.

Plain Python (no mlflow, no torch): the analysis code imports it in notebooks.
"""

from __future__ import annotations

# Per-epoch series (MLflow step = epoch), in the order people read them.
EPOCH_SERIES: dict[str, str] = {
    "train_loss": "mean minibatch loss of the epoch (training mode, with augmentation)",
    "train_acc": "accuracy on the full training set (eval mode, no augmentation) against the labels trained on",
    "train_acc_clean": "train_acc on the examples whose label was kept (absent when every label changed)",
    "train_acc_noisy": "train_acc on the examples whose label was changed (absent without label noise)",
    "test_loss": "loss on the (never label-corrupted) test set",
    "test_acc": "accuracy on the test set",
    "gen_gap": "train_acc - test_acc",
    "val_loss": "loss on the validation split (val_fraction > 0)",
    "val_acc": "accuracy on the validation split (what tuning optimises)",
    "lr": "learning rate of the epoch",
    "steps": "optimizer steps so far",
    "epoch_time_s": "wall seconds of the epoch, evaluation included",
}

# Logged once per run, at its end (step 0): the results a series cannot show.
RESULTS: dict[str, str] = {
    "epochs_to_fit": "first epoch with train_acc >= fit_threshold (absent when never fitted)",
    "steps_to_fit": "optimizer steps to that epoch",
    "fitted": "1 when the run reached fit_threshold, else 0",
    "best_test_acc": "highest test_acc of any epoch",
    "epochs_run": "epochs trained",
    "train_time_s": "wall seconds of training and evaluation",
    "optim_time_s": "seconds spent in optimizer steps",
    "samples_per_s": "training samples per second of wall time",
    "samples_trained": "training samples seen",
    "num_params": "trainable parameters of the model",
    "num_classes": "classes of the dataset",
    "pack_size": "trials trained together with this one (--pack)",
    "device_s": "device-seconds: wall seconds the trial held its device share x that share (GPU fraction or "
                "CPU cores); tag rgsweep.device_kind says which device. Measured by the trial from its start to "
                "its summary; a pruned tuning trial sends none, so the driver charges the time it saw; a trial "
                "that crashed or was killed is not charged",
    "device_share": "the trial's share of its device: GPU fraction, or CPU cores",
    "test_every": "epochs between full test-set evaluations (eval_every; for 'auto', resolved from the data sizes)",
    "data_prep_s": "seconds to corrupt and preprocess the trial's data onto its device",
    "data_fetch_s": "seconds the trial took to read its dataset from Ray's object store (sweeps, studies)",
}

# No longer logged; `rgsweep export` fills these columns from the series' last epoch (old stores: as logged).
FINAL_FROM_SERIES: dict[str, str] = {
    "final_train_acc": "train_acc", "final_test_acc": "test_acc", "final_gen_gap": "gen_gap",
    "final_train_loss": "train_loss",
}

# Every per-run metric name a store may hold (today's and older ones): never read as a series.
PER_RUN = frozenset(RESULTS) | frozenset(FINAL_FROM_SERIES)

# On a sweep's parent run (not a trial): the sweep's own charts and its cost.
PARENT: dict[str, str] = {
    "n_trials, n_finished, n_failed, n_killed, n_missing": "trial counts at the end of the sweep",
    "gen_gap_vs_noise/<arch>": ("mean final gen_gap per label-noise level (step = level index; "
                                "tag rgsweep.noise_levels lists the levels)"),
    "test_error_vs_noise/<arch>": "mean final test error per label-noise level (Figure 1c; same steps)",
    "device_s/<device kind>": "device-seconds of the sweep's trials, summed per device kind",
}
