"""One trial end to end: data on the device, model, optimiser, epochs, metrics through a callback.

This module imports neither Ray, MLflow nor Optuna: `rgsweep train`, sweeps and tuning all call
`train(config, report)` and adapt `report` to their world. The hot loop is index slices of
device tensors, augmentation as batched tensor ops, and exactly one host sync per epoch (all
epoch metrics are gathered into one tensor and read with a single `.tolist()`).
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
from rgsweep.data.preprocess import preprocess
from rgsweep.data.sources import balanced_subset, load_dataset
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

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def prepare_data(config: TrialConfig, device: torch.device) -> TrialData:
    """Load (cached), hold out validation from the clean train set, corrupt, preprocess, move to device.

    Corrupted inputs apply to train, validation and test alike (one shared permutation for
    shuffled pixels); label noise applies to the training labels only.
    """
    ds = load_dataset(config.dataset, config.data_dir, config.download, config.subset)
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
    c = corrupt(
        x_tr, y_tr, x_eval, ds.y_test if x_val is None else torch.cat([ds.y_test, y_val]),
        ds.num_classes,
        label_noise=config.label_noise,
        corruption=config.corruption,
        corrupt_fraction=config.corrupt_fraction,
        pixel_fraction=config.pixel_fraction,
        seed=config.corruption_seed,
    )
    xtr, xev = preprocess(c.x_train.to(device), c.x_test.to(device), config.preprocess)
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
    """Summed loss (device scalar) and per-sample correctness (device bool [N]); no host sync."""
    loss = torch.zeros((), device=device)
    correct = torch.empty(len(y), dtype=torch.bool, device=device)
    with torch.inference_mode(), autocast_for(device):
        for i in range(0, len(y), batch_size):
            xb = x[i : i + batch_size]
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            out = model(xb).float()
            loss += F.cross_entropy(out, y[i : i + batch_size], reduction="sum")
            correct[i : i + batch_size] = out.argmax(1) == y[i : i + batch_size]
    return loss, correct


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
def train(
    config: TrialConfig,
    report: Report | None = None,
    *,
    data: TrialData | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one trial. `report(metrics)` is called once per epoch (it may raise to stop the trial).

    Returns the run summary. Raises DivergedError when the loss is NaN/inf (after reporting that epoch).
    """
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    data = data or prepare_data(config, device)
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
    augment = Augment(config.augment)
    gen = torch.Generator(device=device).manual_seed(config.seed)

    n, bs = len(data.y_train), config.batch_size
    noisy_f = data.noisy.float()
    n_noisy = int(data.noisy.sum())  # host read once, before the loop
    # A final batch of one sample breaks BatchNorm in train mode; it is dropped (at most 1 sample/epoch).
    starts = [i for i in range(0, n, bs) if n - i > 1 or i == 0]
    steps_per_epoch = len(starts)

    summary: dict[str, Any] = {
        "epochs_to_fit": None, "steps_to_fit": None, "fitted": False, "best_test_acc": 0.0,
        "num_params": count_params(model), "num_classes": data.num_classes, "device": str(device),
        "dataset_fingerprint": data.fingerprint, "torch_version": torch.__version__, "stop_reason": "max_epochs",
    }
    best_val, since_best = -1.0, 0
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
            xb = augment(data.x_train[idx], gen)
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

        # Evaluation: the whole train set (eval mode, no augmentation), the test set, validation.
        model.eval()
        eb = config.eval_batch_size
        tr_loss, tr_ok = evaluate(model, data.x_train, data.y_train, eb, device, channels_last)
        te_loss, te_ok = evaluate(model, data.x_test, data.y_test, eb, device, channels_last)
        tr_okf = tr_ok.float()
        vals = [loss_sum / n, tr_okf.mean(), tr_okf @ noisy_f, te_loss / len(data.y_test), te_ok.float().mean()]
        if data.x_val is not None:
            va_loss, va_ok = evaluate(model, data.x_val, data.y_val, eb, device, channels_last)
            vals += [va_loss / len(data.y_val), va_ok.float().mean()]
        vals_host = torch.stack([v.float() for v in vals]).tolist()  # the epoch's one host sync
        train_loss, train_acc, noisy_ok, test_loss, test_acc = vals_host[:5]
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time

        m: dict[str, Any] = {
            "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
            "test_acc": test_acc, "gen_gap": train_acc - test_acc, "lr": lr, "epoch_time_s": epoch_time,
            "steps": epoch * steps_per_epoch,
        }
        if n_noisy > 0:
            m["train_acc_noisy"] = noisy_ok / n_noisy
        if n_noisy < n:
            m["train_acc_clean"] = (train_acc * n - noisy_ok) / (n - n_noisy)
        if data.x_val is not None:
            m["val_loss"], m["val_acc"] = vals_host[5], vals_host[6]
        last = m
        summary["best_test_acc"] = max(summary["best_test_acc"], test_acc)
        summary.update(
            final_train_acc=train_acc, final_test_acc=test_acc, final_gen_gap=train_acc - test_acc,
            final_train_loss=train_loss, epochs_run=epoch, train_time_s=train_time,
            samples_per_s=samples / train_time, optim_time_s=clock.read(), samples_trained=samples,
        )
        if report is not None:
            report(m)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}", train=f"{train_acc:.3f}", test=f"{test_acc:.3f}")

        if not math.isfinite(train_loss):
            summary["stop_reason"] = "diverged"
            if bar is not None:
                bar.close()
            raise DivergedError(epoch, summary)
        if config.fit_threshold is not None and train_acc >= config.fit_threshold:
            summary.update(epochs_to_fit=epoch, steps_to_fit=epoch * steps_per_epoch, fitted=True)
            summary["stop_reason"] = "fitted"
            break
        if config.early_stopping is not None and "val_acc" in m:
            if m["val_acc"] > best_val:
                best_val, since_best = m["val_acc"], 0
            else:
                since_best += 1
                if since_best >= config.early_stopping:
                    summary["stop_reason"] = "early_stopping"
                    break
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(-m["val_acc"] if "val_acc" in m else train_loss)
        elif sched is not None:
            sched.step()

    if bar is not None:
        bar.close()
    summary["last_epoch"] = last
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    return _fmt(summary)
