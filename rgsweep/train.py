"""One trial end to end: data on the device, model, optimiser, epochs, metrics through a callback.

This module imports neither Ray, MLflow nor Optuna: `rgsweep train`, sweeps and tuning all call
`train(config, report)` and adapt `report` to their world. The hot loop is index slices of
device tensors, augmentation as batched tensor ops, and exactly one host sync per epoch (all
epoch metrics are gathered into one tensor and read with a single `.tolist()`); a run that stops
between its scheduled test evaluations (`eval_every`) reads the test set's once more, at its end.

With the paper's random crop (`augment: [crop]`), training batches are random 28x28 windows of the
full-size images (`TrialData.x_crop`), whitened per batch on the device, while every evaluation
(train_acc, test, validation) uses the centre window, whitened once (`TrialData.x_train` etc.).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rgsweep.config import TrialConfig
from rgsweep.data.augment import Augment
from rgsweep.data.corruption import corrupt
from rgsweep.data.preprocess import CROP_SIZE, center_crop, preprocess
from rgsweep.data.sources import Dataset, balanced_subset, load_dataset
from rgsweep.models import build_model, count_params, is_convnet

Report = Callable[[dict[str, Any]], Any]


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite; `summary` holds the run's metrics so far."""

    def __init__(self, epoch: int, summary: dict[str, Any]):
        super().__init__(f"diverged: training loss is not finite at epoch {epoch}")
        self.epoch = epoch
        self.summary = summary


# -- device ---------------------------------------------------------------------------------------
def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available here; use --device cpu")
    return dev


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed); plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


# -- data -----------------------------------------------------------------------------------------
@dataclass
class TrialData:
    """A trial's tensors, already corrupted and preprocessed, living on `device`."""

    x_train: torch.Tensor  # float32 [N,C,H,W]
    y_train: torch.Tensor  # int64 [N], the labels trained on (after label noise)
    x_test: torch.Tensor
    y_test: torch.Tensor
    noisy: torch.Tensor  # bool [N]: label differs from the original
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    num_classes: int
    fingerprint: str
    # float32 [N,C,H,W]: the full-size training images (/255, corrupted, not whitened) that the paper's
    # random crop takes its windows from; None without that crop, and then x_train feeds training too.
    # x_train (the centre window, whitened once) stays what train_acc is evaluated on.
    x_crop: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def paper_crop_on(config: TrialConfig, shape: tuple[int, ...]) -> bool:
    """The paper's random crop applies: `crop` is asked for and the image is larger than the window.

    On images not larger than 28x28 (digits, MNIST) the only window is the whole image: no crop.
    """
    return "crop" in config.augment and max(shape[-2:]) > CROP_SIZE


def seen_pixels(config: TrialConfig, x: torch.Tensor) -> torch.Tensor:
    """The pixels the model sees, which is what a pixel corruption permutes (a view, no copy).

    Under `paper` the model sees the centre 28x28 window, so the window is cut before corrupting: shuffled
    pixels permute those 784 positions, not 1,024 of which 240 are then cropped away. With the paper's
    random crop the model sees windows of the whole image, so the whole image goes on (the shuffles are
    refused with that crop by the config; gaussian then fills the whole image). Other presets: the whole image.
    """
    if config.preprocess == "paper" and not paper_crop_on(config, x.shape):
        return center_crop(x, CROP_SIZE)
    return x


def make_augment(config: TrialConfig, data: TrialData) -> Augment:
    """The trial's augmentation pipeline: the paper's crop only where `data` has full-size images for it."""
    return Augment([n for n in config.augment if n != "crop" or data.x_crop is not None])


def prepare_data(config: TrialConfig, device: torch.device, dataset: Dataset | None = None) -> TrialData:
    """Load (cached), hold out validation from the clean train set, corrupt, preprocess, move to device.

    `dataset`: the trial's data already loaded (with its subset taken), as a sweep's driver hands it
    to its trials (rgsweep/preload.py); then no file is opened here. Its tensors are only read, never
    written: they may be read-only memory shared with other trials. Without it, the dataset is loaded
    from the config, relative paths from the current directory (`rgsweep train`).

    Corrupted inputs apply to train, validation and test alike (one shared permutation for
    shuffled pixels), on the pixels the model sees (`seen_pixels`); label noise applies to the
    training labels only. With the paper's random crop, `x_crop` keeps the full-size training images.
    """
    if dataset is None:
        ds = load_dataset(config.dataset, config.data_dir, config.download, config.subset)
    elif dataset.name != config.dataset:
        raise ValueError(f"prepare_data got dataset {dataset.name!r} for a trial of {config.dataset!r}")
    else:
        ds = dataset
    x_tr, y_tr = ds.x_train, ds.y_train
    x_val = y_val = None
    if config.val_fraction > 0:
        # Deterministic, class-balanced hold-out drawn from the clean training set, before noise.
        n_val = max(ds.num_classes, round(config.val_fraction * len(y_tr)))
        val_idx = balanced_subset(y_tr, n_val, seed=config.corruption_seed + 1)
        keep = torch.ones(len(y_tr), dtype=torch.bool)
        keep[val_idx] = False
        x_val, y_val = x_tr[val_idx], y_tr[val_idx]
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    # The validation images share the test split's pixel corruption, so concatenate them there.
    x_eval = x_test = ds.x_test
    if x_val is not None:
        x_eval = torch.cat([ds.x_test, x_val])
    x_tr, x_eval = seen_pixels(config, x_tr), seen_pixels(config, x_eval)
    c = corrupt(
        x_tr, y_tr, x_eval, ds.y_test if x_val is None else torch.cat([ds.y_test, y_val]),
        ds.num_classes,
        label_noise=config.label_noise,
        corruption=config.corruption,
        corrupt_fraction=config.corrupt_fraction,
        pixel_fraction=config.pixel_fraction,
        seed=config.corruption_seed,
    )
    xtr, xev = c.x_train.to(device), c.x_test.to(device)
    x_crop = None
    if paper_crop_on(config, xtr.shape):
        # Training windows are cut from the full images; evaluation sees the centre window, cut here as
        # it is without the crop (the same bits), then whitened once by the preset.
        x_crop = xtr
        xtr, xev = center_crop(xtr, CROP_SIZE).contiguous(), center_crop(xev, CROP_SIZE).contiguous()
    xtr, xev = preprocess(xtr, xev, config.preprocess)
    n_test = len(x_test)
    return TrialData(
        x_train=xtr.contiguous(),
        y_train=c.y_train.to(device),
        x_test=xev[:n_test].contiguous(),
        y_test=ds.y_test.to(device),
        noisy=c.noisy.to(device),
        x_val=xev[n_test:].contiguous() if x_val is not None else None,
        y_val=y_val.to(device) if y_val is not None else None,
        num_classes=ds.num_classes,
        fingerprint=ds.fingerprint(),
        x_crop=x_crop,
    )


# -- optimisation ---------------------------------------------------------------------------------
def make_optimizer(config: TrialConfig, params, device: torch.device | None = None) -> torch.optim.Optimizer:
    """SGD (momentum) or Adam; the fused kernels on CPU and CUDA: one pass over each parameter per step
    instead of three or four (about 10% of an MLP step on the CPU), same update rule."""
    fused = {"fused": True} if device is not None and device.type in ("cpu", "cuda") else {}
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           **fused)


def make_scheduler(config: TrialConfig, opt: torch.optim.Optimizer):
    """Stepped once per epoch. `exponential` is the paper's lr * decay**epoch (decay 0.95)."""
    s = config.lr_schedule
    if s == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=config.lr_decay)
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_step, gamma=config.lr_decay)
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    if s == "plateau":  # on the training loss (or val_acc when a validation split exists)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=config.lr_decay, patience=config.lr_step)
    return None


# -- evaluation -----------------------------------------------------------------------------------
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss (device scalar) and per-sample correctness (device bool [N]); no host sync.

    Per-sample losses are kept and summed once, so the sum does not depend on how the set was cut into
    batches (adding per-batch sums would round differently at each batch size)."""
    losses = torch.empty(len(y), device=device)
    correct = torch.empty(len(y), dtype=torch.bool, device=device)
    with torch.inference_mode(), autocast_for(device):
        for i in range(0, len(y), batch_size):
            xb = x[i : i + batch_size]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            out = model(xb).float()
            losses[i : i + batch_size] = F.cross_entropy(out, y[i : i + batch_size], reduction="none")
            correct[i : i + batch_size] = out.argmax(1) == y[i : i + batch_size]
    return losses.sum(), correct


def eval_batch_size(config: TrialConfig, device: torch.device) -> int:
    """The config's, else 2048 on CUDA; on the CPU 128 for convnets and 512 for the MLPs.

    Measured on a 2-core EPYC, one thread (benchmarks/README.md "Evaluation share"): inside the training
    loop 128 takes alexnet's evaluation share from 31% to 27% against 256 (64 is no faster; larger batches'
    activations leave the cache); an MLP's forward passes over 2,000 images take 82 ms at 128, 68 ms at 512
    and 92 ms at 1024. On that CPU the outputs were checked bit-identical, every model's at 128 and 256 and
    the MLPs' at 128 and 512, and `evaluate` sums per-sample losses once, so the choice moves no metric."""
    if config.eval_batch_size:
        return config.eval_batch_size
    if device.type == "cuda":
        return 2048
    return 128 if is_convnet(config.arch) else 512


# eval_every "auto": the test images evaluated per epoch, averaged over the schedule, are at most
# 1/AUTO_TEST_RATIO of the training images. The training set is evaluated in full every epoch (it decides "fitted"),
# and a forward pass costs about a third of a training step, so that evaluation alone is about a quarter of
# a small run's epoch; a tenth of it more for the test set keeps the test curve without doubling the cost
# on laptop subsets (1,000 training images against CIFAR-10's 10,000 test images: every 100th epoch).
AUTO_TEST_RATIO = 10


def test_every(config: TrialConfig, n_train: int, n_test: int) -> int:
    """Epochs between full test-set evaluations: `eval_every`, or for "auto" the smallest interval at
    which n_test / interval <= n_train / AUTO_TEST_RATIO (1 whenever the test set is that small)."""
    if config.eval_every != "auto":
        return int(config.eval_every)
    return max(1, -(-AUTO_TEST_RATIO * n_test // max(n_train, 1)))  # integer ceil


def test_due(config: TrialConfig, epoch: int, every: int) -> bool:
    """Whether `epoch` evaluates the full test set by schedule: every `every`-th epoch (`test_every`) and
    the last.

    A run that stops earlier (fitted, early stopping, diverged) evaluates it on its last epoch too, after
    the stop rules have seen that epoch's training metrics (`train`): final_* are always the full test set.
    """
    return epoch % every == 0 or epoch >= config.epochs


def read_host(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Device scalars to Python floats with one host sync for all of them."""
    return dict(zip(values, torch.stack([v.float() for v in values.values()]).tolist()))


def epoch_metrics(epoch: int, v: dict[str, float], n: int, n_noisy: int, lr: float, steps: int) -> dict[str, Any]:
    """An epoch's reported metrics from its evaluated values (test ones only when the test set was evaluated)."""
    m: dict[str, Any] = {"epoch": epoch, "train_loss": v["train_loss"], "train_acc": v["train_acc"], "lr": lr,
                         "steps": steps}
    if "test_acc" in v:
        add_test(m, v)
    if n_noisy > 0:
        m["train_acc_noisy"] = v["noisy_ok"] / n_noisy
    if n_noisy < n:
        m["train_acc_clean"] = (v["train_acc"] * n - v["noisy_ok"]) / (n - n_noisy)
    if "val_acc" in v:
        m["val_loss"], m["val_acc"] = v["val_loss"], v["val_acc"]
    return m


def add_test(m: dict[str, Any], v: dict[str, float]) -> None:
    m.update(test_loss=v["test_loss"], test_acc=v["test_acc"], gen_gap=m["train_acc"] - v["test_acc"])


class StopRules:
    """One run's stop rules, checked once per epoch on its metrics, in this order: diverged (loss not
    finite), fitted (train_acc >= fit_threshold), early stopping (no better val_acc for `early_stopping`
    epochs), out of epochs. `check` returns the reason to stop, or None to go on."""

    def __init__(self, config: TrialConfig):
        self.config, self.best_val, self.since_best = config, -1.0, 0

    def check(self, m: dict[str, Any], epoch: int) -> str | None:
        c = self.config
        if not math.isfinite(m["train_loss"]):
            return "diverged"
        if c.fit_threshold is not None and m["train_acc"] >= c.fit_threshold:
            return "fitted"
        if c.early_stopping is not None and "val_acc" in m:
            if m["val_acc"] > self.best_val:
                self.best_val, self.since_best = m["val_acc"], 0
            else:
                self.since_best += 1
                if self.since_best >= c.early_stopping:
                    return "early_stopping"
        return "max_epochs" if epoch >= c.epochs else None


class StepClock:
    """Seconds spent in optimisation steps (evaluation excluded) without an extra host sync.

    On CUDA two events bracket the steps and are read after the epoch's one sync, when both have
    completed; on the CPU ops run synchronously, so the wall clock is exact.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.total = 0.0
        self._t0 = 0.0
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        if self.cuda:
            self._start.record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self._end.record()
        else:
            self.total += time.perf_counter() - self._t0

    def read(self) -> float:
        """Call after the epoch's sync: adds the CUDA interval (already done on the CPU)."""
        if self.cuda:
            self.total += self._start.elapsed_time(self._end) / 1000
        return self.total


def _fmt(summary: dict[str, Any]) -> str:
    fit = summary.get("epochs_to_fit")
    return (
        f"train_acc={summary['final_train_acc']:.4f} test_acc={summary['final_test_acc']:.4f} "
        f"gen_gap={summary['final_gen_gap']:.4f} epochs_to_fit={fit if fit is not None else '-'}"
    )


# -- the loop -------------------------------------------------------------------------------------
class _Evaluator:
    """A trial's per-epoch evaluation as device scalars (no host sync): the whole training set (eval
    mode, no augmentation) every epoch, the validation split every epoch, the test set when asked."""

    def __init__(self, model: nn.Module, data: TrialData, config: TrialConfig, device: torch.device,
                 channels_last: bool):
        self.model, self.data, self.device, self.cl = model, data, device, channels_last
        self.eb = eval_batch_size(config, device)
        self.noisy_f = data.noisy.float()

    def _eval(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return evaluate(self.model, x, y, self.eb, self.device, self.cl)

    def test(self) -> dict[str, torch.Tensor]:
        loss, ok = self._eval(self.data.x_test, self.data.y_test)
        return {"test_loss": loss / len(self.data.y_test), "test_acc": ok.float().mean()}

    def epoch(self, with_test: bool) -> dict[str, torch.Tensor]:
        d = self.data
        _, tr_ok = self._eval(d.x_train, d.y_train)
        tr_okf = tr_ok.float()
        v = {"train_acc": tr_okf.mean(), "noisy_ok": tr_okf @ self.noisy_f}
        if with_test:
            v.update(self.test())
        if d.x_val is not None:
            va_loss, va_ok = self._eval(d.x_val, d.y_val)
            v.update(val_loss=va_loss / len(d.y_val), val_acc=va_ok.float().mean())
        return v


def train(
    config: TrialConfig,
    report: Report | None = None,
    *,
    data: TrialData | None = None,
    dataset: Dataset | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one trial. `report(metrics)` is called once per epoch (it may raise to stop the trial).

    `data`: the trial's prepared tensors; else they are prepared here, from `dataset` when given (see
    prepare_data), and the summary's `data_prep_s` says how long that took.
    Returns the run summary. Raises DivergedError when the loss is NaN/inf (after reporting that epoch).
    The test set is evaluated on the epochs `test_due` names and on the run's last epoch; `test_loss`,
    `test_acc` and `gen_gap` are reported on exactly those epochs, and `best_test_acc` is their best.
    """
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    data_prep_s = None
    if data is None:
        t_prep = time.perf_counter()
        data = prepare_data(config, device, dataset)
        data_prep_s = time.perf_counter() - t_prep
    torch.manual_seed(config.seed)
    model = build_model(
        config.arch, data.input_shape, data.num_classes, dropout=config.dropout,
        batch_norm=config.batch_norm, width=config.width, depth=config.depth,
    ).to(device)
    # channels_last suits oneDNN on the CPU as well as cuDNN: 1.2-1.3x per step for alexnet, cnn,
    # inception and wrn on this 2-core Xeon (1.02x for resnet18), measured in benchmarks/.
    channels_last = device.type in ("cpu", "cuda") and is_convnet(config.arch)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(config, model.parameters(), device)
    sched = make_scheduler(config, opt)
    augment = make_augment(config, data)
    source = data.x_crop if data.x_crop is not None else data.x_train  # what training batches are cut from
    gen = torch.Generator(device=device).manual_seed(config.seed)
    evaluator = _Evaluator(model, data, config, device, channels_last)
    rules = StopRules(config)

    n, bs = len(data.y_train), config.batch_size
    n_noisy = int(data.noisy.sum())  # host read once, before the loop
    # A final batch of one sample breaks BatchNorm in train mode; it is dropped (at most 1 sample/epoch).
    starts = [i for i in range(0, n, bs) if n - i > 1 or i == 0]
    steps_per_epoch = len(starts)
    every = test_every(config, n, len(data.y_test))

    summary: dict[str, Any] = {
        "epochs_to_fit": None, "steps_to_fit": None, "fitted": False, "best_test_acc": 0.0,
        "num_params": count_params(model), "num_classes": data.num_classes, "device": str(device),
        "dataset_fingerprint": data.fingerprint, "torch_version": torch.__version__, "stop_reason": "max_epochs",
        "data_prep_s": data_prep_s, "test_every": every,
    }
    train_time = 0.0
    samples = 0
    clock = StepClock(device)
    last: dict[str, Any] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, desc=f"{config.arch}", unit="epoch", leave=False)

    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        clock.start()
        model.train()
        lr = opt.param_groups[0]["lr"]
        perm = torch.randperm(n, device=device, generator=gen)
        loss_sum = torch.zeros((), device=device)
        for i in starts:
            idx = perm[i : i + bs]
            xb = augment(source[idx], gen)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast_for(device):
                loss = F.cross_entropy(model(xb).float(), data.y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
        clock.stop()
        samples += sum(min(bs, n - i) for i in starts)

        model.eval()
        values = evaluator.epoch(with_test=test_due(config, epoch, every))
        host = read_host({"train_loss": loss_sum / n, **values})  # the epoch's one host sync
        m = epoch_metrics(epoch, host, n, n_noisy, lr, epoch * steps_per_epoch)
        reason = rules.check(m, epoch)
        if reason is not None and "test_acc" not in m:
            # The run stops between scheduled test evaluations: its last epoch gets the full test set
            # (one more sync, once per run), so final_test_acc is always on the whole test set.
            add_test(m, read_host(evaluator.test()))
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        m["epoch_time_s"] = epoch_time
        last = m
        update_summary(summary, m, epoch, train_time, samples, clock.read())
        if report is not None:
            report(m)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{m['train_loss']:.3f}", train=f"{m['train_acc']:.3f}",
                            test=f"{m['test_acc']:.3f}" if "test_acc" in m else "-")

        if reason == "diverged":
            summary["stop_reason"] = "diverged"
            if bar is not None:
                bar.close()
            raise DivergedError(epoch, summary)
        if reason == "fitted":
            summary.update(epochs_to_fit=epoch, steps_to_fit=epoch * steps_per_epoch, fitted=True)
        if reason is not None:
            summary["stop_reason"] = reason
            break
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(-m["val_acc"] if "val_acc" in m else m["train_loss"])
        elif sched is not None:
            sched.step()

    if bar is not None:
        bar.close()
    summary["last_epoch"] = last
    return summary


def update_summary(summary: dict[str, Any], m: dict[str, Any], epoch: int, train_time: float, samples: int,
                    optim_time: float) -> None:
    """The run's summary after an epoch; the test figures change only on epochs that evaluated the test set."""
    if "test_acc" in m:
        summary["best_test_acc"] = max(summary["best_test_acc"], m["test_acc"])
        summary.update(final_test_acc=m["test_acc"], final_gen_gap=m["gen_gap"])
    summary.update(
        final_train_acc=m["train_acc"], final_train_loss=m["train_loss"], epochs_run=epoch,
        train_time_s=train_time, samples_per_s=samples / train_time, optim_time_s=optim_time,
        samples_trained=samples,
    )


def summary_line(summary: dict[str, Any]) -> str:
    return _fmt(summary)
