"""Trial packing: K trials of one architecture and input shape trained together in one process.

Small trials (digits, an MLP) spend most of a step in Python and dispatch overhead, not arithmetic.
Packing stacks the K models' parameters (`torch.func.stack_module_state`) and runs one vectorised step
for all of them (`vmap` over `functional_call`): a [K, B, ...] batch, one backward, one optimiser update
on [K, ...] tensors, one host sync per epoch for all K trials.

Each trial stays its own experiment, with the same results as `train()` gives it alone (within float
rounding of batched kernels): its data is prepared by `prepare_data` from its own config (own label
noise and input corruption), its model is built after `torch.manual_seed(seed)` exactly as `train()`
does, its own `torch.Generator(seed)` draws its batch order and augmentation in the same order, its own
lr, momentum, weight decay and schedule apply (the schedule is a real torch scheduler on a one-number
optimiser, so every schedule `train()` knows steps identically), and its own stop rules end it. A trial
that stops (fitted, early-stopped, out of epochs, diverged, or its `report` raised) is removed from the
pack, so the others go on without paying for it; its result is final.

What may differ between packed trials (`packing.PACKABLE_DIFFERENCES`): seeds, label noise, input corruption,
augmentation, optimiser hyperparameters, schedule, epochs, stop rules and the test-evaluation schedule.
A trial with the paper's random crop draws its batches from its own full-size images (`x_crop`), cut
and whitened by its own pipeline, exactly as `train()` does; the others from the shared stacked inputs.
The test set is evaluated for the whole pack on an epoch where any active trial's schedule (`test_due`)
asks for it, and reported only to those trials; trials that stop between their scheduled evaluations
get the full test set once more, as in `train()`. Everything else (dataset,
architecture, batch size, optimiser type, ...) must be equal; `check_packable` says which keys are not.
Dropout is refused: its masks come from the global RNG inside the forward, which `vmap` cannot give each
trial in the order `train()` would draw them. BatchNorm works: running statistics are stacked buffers
that the vmapped `batch_norm` updates in place, per trial.

Timing: a packed epoch's wall time is shared; each trial's `epoch_time_s`, `train_time_s` and
`optim_time_s` are its share (wall time / trials active in that epoch), so the trials' times sum to the
wall time and `samples_per_s` is the throughput each trial effectively got.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from rgsweep.config import TrialConfig
from rgsweep.data.sources import Dataset
from rgsweep.models import build_model, count_params
from rgsweep.packing import check_packable
from rgsweep.train import (
    DivergedError,
    Report,
    StepClock,
    StopRules,
    TrialData,
    add_test,
    autocast_for,
    epoch_metrics,
    eval_batch_size,
    make_augment,
    make_scheduler,
    prepare_data,
    resolve_device,
    test_due,
    test_every,
    update_summary,
)

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which train() uses


# -- stacked data ---------------------------------------------------------------------------------
class _Stack:
    """Per-trial tensors [K, N, ...] kept once per distinct value: trials with the same inputs share them.

    `add` one trial's tensor at a time (a duplicate of an earlier one costs nothing), then `freeze`;
    `rows[k]` is the stored tensor trial k uses, and `take(idx)` gathers a [K, B, ...] batch.
    """

    def __init__(self) -> None:
        self._uniques: list[Tensor] = []
        self._rows: list[int] = []

    def add(self, t: Tensor) -> None:
        j = next((j for j, u in enumerate(self._uniques) if u.shape == t.shape and torch.equal(u, t)), None)
        if j is None:
            self._uniques.append(t)
            j = len(self._uniques) - 1
        self._rows.append(j)

    def freeze(self) -> _Stack:
        u = self._uniques
        self.data = u[0].unsqueeze(0) if len(u) == 1 else torch.stack(u)  # [U, N, ...]; no copy when U = 1
        self.rows = torch.tensor(self._rows, device=self.data.device)
        self.n = self.data.shape[1]
        del self._uniques
        return self

    def take(self, idx: Tensor) -> Tensor:
        """idx [K, B] sample indices per trial -> [K, B, ...]."""
        return self.data[self.rows[:, None], idx]

    def chunk(self, i: int, j: int) -> Tensor:
        """Samples i:j of every trial -> [K, j-i, ...] (copies only the chunk)."""
        return self.data[:, i:j].index_select(0, self.rows)

    def keep(self, keep: Tensor) -> None:
        self.rows = self.rows[keep]

    def subset(self, rows: Tensor) -> _Stack:
        """A view of some trials' rows (the stored tensors are shared, not copied)."""
        sub = copy.copy(self)
        sub.rows = self.rows[rows]
        return sub


# -- the optimiser on stacked parameters ----------------------------------------------------------
class _StackedOptimizer:
    """torch.optim.SGD / Adam semantics (coupled weight decay) on [K, ...] parameters, per-trial hyperparameters.

    Per-trial lr, momentum and weight decay are [K] tensors broadcast over each parameter; the first SGD
    momentum step from a zero buffer equals torch's clone of the gradient.
    """

    def __init__(self, configs: list[TrialConfig], params: list[Tensor], device: torch.device):
        self.adam = configs[0].optimizer == "adam"
        self.params = params
        self.momentum = torch.tensor([c.momentum for c in configs], device=device)
        self.wd = torch.tensor([c.weight_decay for c in configs], device=device)
        self.use_momentum = not self.adam and any(c.momentum > 0 for c in configs)
        # One momentum for every trial (the usual case) scales by a number, not a broadcast tensor.
        self.shared_momentum = configs[0].momentum if len({c.momentum for c in configs}) == 1 else None
        self.use_wd = any(c.weight_decay > 0 for c in configs)
        self.state = [[torch.zeros_like(p) for p in params] for _ in range(2 if self.adam else 1)]
        self.steps = 0

    @staticmethod
    def _view(v: Tensor, p: Tensor) -> Tensor:
        return v.view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self, lr: Tensor) -> None:
        self.steps += 1
        if self.adam:
            b1, b2 = ADAM_BETAS
            bc1, bc2 = 1 - b1**self.steps, 1 - b2**self.steps
            for p, m, v in zip(self.params, *self.state):
                g = p.grad if not self.use_wd else p.grad.add(p * self._view(self.wd, p))
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / math.sqrt(bc2)).add_(ADAM_EPS)
                p.sub_(m / denom * self._view(lr / bc1, p))
            return
        neg_lr = -lr
        for p, buf in zip(self.params, self.state[0]):
            g = p.grad if not self.use_wd else p.grad.add(p * self._view(self.wd, p))
            if self.use_momentum:
                mom = self.shared_momentum if self.shared_momentum is not None else self._view(self.momentum, p)
                g = buf.mul_(mom).add_(g)
            p.addcmul_(g, self._view(neg_lr, p))

    def keep(self, keep: Tensor, params: list[Tensor]) -> None:
        """Keep the rows `keep` (a subset of trials: a shared momentum stays shared)."""
        self.params = params
        self.momentum, self.wd = self.momentum[keep], self.wd[keep]
        self.state = [[s[keep] for s in group] for group in self.state]


# -- the packed loop ------------------------------------------------------------------------------
def _summary(num_params: int, num_classes: int, device: torch.device, fingerprint: str, k: int) -> dict[str, Any]:
    return {
        "epochs_to_fit": None, "steps_to_fit": None, "fitted": False, "best_test_acc": 0.0,
        "num_params": num_params, "num_classes": num_classes, "device": str(device), "dataset_fingerprint": fingerprint,
        "torch_version": torch.__version__, "stop_reason": "max_epochs", "pack_size": k,
    }


def train_packed(
    configs: list[TrialConfig],
    reports: list[Report | None] | None = None,
    *,
    data: list[TrialData] | None = None,
    dataset: Dataset | None = None,
) -> list[dict[str, Any] | Exception]:
    """Train `configs` together; `reports[k](metrics)` gets trial k's metrics once per epoch.

    `data`: each trial's prepared tensors; else each is prepared here (`data_prep_s` in its summary),
    from `dataset` when given: the loaded data they share (their dataset and subset are equal).

    Returns, per trial, its summary (the keys of `train()`'s, plus `pack_size`) or the exception that
    ended it: a `DivergedError` (holding the summary so far) or whatever its `report` raised.
    Raises ValueError before any training when the trials cannot be packed.
    """
    check_packable(configs)
    k_all = len(configs)
    reports = list(reports) if reports is not None else [None] * k_all
    if len(reports) != k_all:
        raise ValueError(f"{k_all} configs but {len(reports)} report callbacks")
    device = resolve_device(configs[0].device)
    if device.type == "cuda":  # as train()
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    # Each trial's data prepared as train() prepares it, one trial at a time, identical inputs stored once.
    x_train, x_test, x_val = _Stack(), _Stack(), _Stack()
    ys, noisys, y_vals, n_noisy, shapes, prep_s = [], [], [], [], set(), []
    crops: list[Tensor | None] = []  # per trial: the full-size images its random crop cuts (None: no crop)
    augments = []
    for j, c in enumerate(configs):
        t_prep = time.perf_counter()
        d = data[j] if data is not None else prepare_data(c, device, dataset)
        prep_s.append(time.perf_counter() - t_prep if data is None else None)
        augments.append(make_augment(c, d))
        crops.append(_same_as_earlier(d.x_crop, crops))
        shapes.add((tuple(d.x_train.shape), d.num_classes, tuple(d.x_test.shape),
                    None if d.x_val is None else tuple(d.x_val.shape)))
        if len(shapes) > 1:
            raise ValueError(f"cannot pack these trials: their data shapes differ: {sorted(map(str, shapes))}")
        x_train.add(d.x_train)
        x_test.add(d.x_test)
        if d.x_val is not None:
            x_val.add(d.x_val)
            y_vals.append(d.y_val)
        ys.append(d.y_train)
        noisys.append(d.noisy)
        n_noisy.append(int(d.noisy.sum()))  # host reads once, before the loop
        if j == 0:
            d0 = d
    x_train.freeze()
    x_test.freeze()
    has_val = bool(y_vals)
    if has_val:
        x_val.freeze()
    y_train = torch.stack(ys)  # [K, N]
    noisy_f = torch.stack(noisys).float()
    y_val = torch.stack(y_vals) if has_val else None
    y_test = d0.y_test  # never corrupted: the same for every trial
    input_shape, num_classes, fingerprint = d0.input_shape, d0.num_classes, d0.fingerprint
    del d, d0, ys, noisys, y_vals
    c0 = configs[0]

    # Models exactly as train() builds them, then stacked into [K, ...] parameters and buffers.
    models = []
    for c in configs:
        torch.manual_seed(c.seed)
        models.append(build_model(c.arch, input_shape, num_classes, dropout=c.dropout,
                                  batch_norm=c.batch_norm, width=c.width, depth=c.depth).to(device))
    num_params = count_params(models[0])
    base = copy.deepcopy(models[0]).to("meta")
    p_stack, b_stack = stack_module_state(models)
    del models
    names = list(p_stack)
    params = [p_stack[n] for n in names]
    buffers = b_stack

    forward = _mlp_forward(base, names) or _vmap_forward(base, names)

    opt = _StackedOptimizer(configs, params, device)
    # One-number optimisers carry each trial's schedule: the same torch schedulers train() uses.
    lr_opts = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=c.lr) for c in configs]
    scheds = [make_scheduler(c, o) for c, o in zip(configs, lr_opts)]
    gens = [torch.Generator(device=device).manual_seed(c.seed) for c in configs]

    n, bs = x_train.n, c0.batch_size
    starts = [i for i in range(0, n, bs) if n - i > 1 or i == 0]
    steps_per_epoch = len(starts)
    samples_per_epoch = sum(min(bs, n - i) for i in starts)
    eb = max(64, eval_batch_size(c0, device) // k_all)  # K trials share the memory of one eval batch

    active = list(range(k_all))  # original index of each row of the stacked tensors
    results: list[dict[str, Any] | Exception | None] = [None] * k_all
    every = [test_every(c, n, len(y_test)) for c in configs]
    summaries = [_summary(num_params, num_classes, device, fingerprint, k_all) | {"data_prep_s": p, "test_every": e}
                 for p, e in zip(prep_s, every)]
    times = [[0.0, 0.0, 0] for _ in range(k_all)]  # train time share, optim time share, samples
    rules = [StopRules(c) for c in configs]
    augmenting = any(a.names for a in augments)
    clock = StepClock(device)  # the pack's optimisation time, without an extra sync on CUDA

    epoch = 0
    while active:
        epoch += 1
        k = len(active)
        t0, optim_before = time.perf_counter(), clock.total
        clock.start()
        base.train()
        lrs = [lr_opts[i].param_groups[0]["lr"] for i in active]
        lr_t = torch.tensor(lrs, device=device)
        perm = torch.stack([torch.randperm(n, device=device, generator=gens[i]) for i in active])
        loss_sum = torch.zeros(k, device=device)
        for s in starts:
            idx = perm[:, s : s + bs]  # [K, B]
            xb = x_train.take(idx) if not all(crops[i] is not None for i in active) else None
            if augmenting:  # each trial's own pipeline, generator and source images, in train()'s order
                xb = torch.stack([augments[i](crops[i][idx[j]] if crops[i] is not None else xb[j], gens[i])
                                  for j, i in enumerate(active)])
            yb = y_train.gather(1, idx)
            with autocast_for(device):
                out = forward(params, buffers, xb).float()
            losses = _cross_entropy(out, yb).mean(1)
            for p in params:
                p.grad = None
            losses.sum().backward()  # trials are independent: d(sum)/d(params_k) = d(loss_k)/d(params_k)
            opt.step(lr_t)
            loss_sum += losses.detach() * idx.shape[1]
        clock.stop()

        base.eval()
        due = [test_due(configs[i], epoch, every[i]) for i in active]
        host = _evaluate_epoch(forward, params, buffers, eb, loss_sum, any(due), (x_train, y_train, noisy_f),
                               (x_test, y_test), (x_val, y_val) if has_val else None)  # the epoch's one sync
        ms, reasons = [], []
        for j, i in enumerate(active):
            v = host[j] if due[j] else {key: x for key, x in host[j].items() if not key.startswith("test_")}
            ms.append(epoch_metrics(epoch, v, n, n_noisy[i], lrs[j], epoch * steps_per_epoch))
            reasons.append(rules[i].check(ms[-1], epoch))
        late = [j for j in range(k) if reasons[j] is not None and "test_acc" not in ms[j]]
        if late:  # trials that stop between their scheduled test evaluations get the full test set, as in train()
            sel = torch.tensor(late, device=device)
            sub = [p.detach()[sel] for p in params], {name: b[sel] for name, b in buffers.items()}
            for j, row in zip(late, _read_rows(_test_values(forward, *sub, x_test.subset(sel), y_test, eb))):
                add_test(ms[j], row)
        wall = time.perf_counter() - t0
        t_optim = clock.read() - optim_before  # after the sync: CUDA events are done

        stopped = []
        for j, i in enumerate(active):
            m, summary = ms[j], summaries[i]
            times[i][0] += wall / k
            times[i][1] += t_optim / k
            times[i][2] += samples_per_epoch
            m["epoch_time_s"] = wall / k
            update_summary(summary, m, epoch, times[i][0], times[i][2], times[i][1])
            summary["last_epoch"] = m
            result = _step_trial(m, summary, reports[i], reasons[j], epoch, steps_per_epoch)
            if result is None and scheds[i] is not None:
                lr_opts[i].step()  # a no-op (no gradient) that keeps the scheduler's call-order check quiet
                if isinstance(scheds[i], torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheds[i].step(-m["val_acc"] if "val_acc" in m else m["train_loss"])
                else:
                    scheds[i].step()
            if result is not None:
                results[i] = result
                stopped.append(j)

        if stopped:  # drop finished trials from every stacked tensor; the rest go on unchanged
            keep_rows = [j for j in range(k) if j not in stopped]
            active = [active[j] for j in keep_rows]
            if not active:
                break
            keep = torch.tensor(keep_rows, device=device)
            params = [p.detach()[keep].requires_grad_() for p in params]
            buffers = {name: b[keep] for name, b in buffers.items()}
            opt.keep(keep, params)
            for st in (x_train, x_test, x_val) if has_val else (x_train, x_test):
                st.keep(keep)
            y_train, noisy_f = y_train[keep], noisy_f[keep]
            if y_val is not None:
                y_val = y_val[keep]
    return results  # type: ignore[return-value]


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy [K, B] of logits [K, B, classes]: F.cross_entropy's value, but through
    logsumexp, which is ~4x faster than log_softmax on the CPU for a few classes and many rows."""
    return logits.logsumexp(-1) - logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)


def _vmap_forward(base: torch.nn.Module, names: list[str]) -> Callable:
    """Any model: vmap over functional_call with stacked parameters and buffers (BatchNorm included)."""

    def forward(params: list[Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        def one(p: tuple[Tensor, ...], b: dict[str, Tensor], xb: Tensor) -> Tensor:
            return functional_call(base, ({**dict(zip(names, p)), **b}), (xb,))

        return vmap(one)(tuple(params), buffers, x)

    return forward


class _PackedLinear(torch.autograd.Function):
    """y = x @ w^T + b for K stacked layers (x [K,B,in], w [K,out,in], b [K,out]), with a hand-written
    backward whose weight gradient comes out of one bmm already in w's layout. Autograd through
    baddbmm(b, x, w.transpose) computes it transposed and then copies it, and takes the layer-2 gradient
    through a [K,512,B] @ [K,B,10] bmm that MKL runs at a tenth of its speed: 1.6x per packed digits step."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, g: Tensor):
        # Under autocast (bf16 on CUDA) the forward saw cast copies of x and w but saved the originals,
        # and the backward runs outside autocast: compute in the gradient's dtype (a no-op in fp32);
        # autograd casts each gradient back to its input's dtype.
        x, w = (t.to(g.dtype) for t in ctx.saved_tensors)
        gx = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
        return gx, torch.bmm(g.transpose(1, 2), x), g.sum(1)


def _mlp_forward(base: torch.nn.Module, names: list[str]) -> Callable | None:
    """Plain MLPs (Flatten, Linear, ReLU only) as baddbmm chains: the bias add fused into the matmul and
    every activation contiguous [K, B, width], about twice as fast per step as the vmap route on a CPU."""
    mods = list(getattr(base, "net", []))
    if not mods or not isinstance(mods[0], torch.nn.Flatten) or not all(
            isinstance(m, (torch.nn.Linear, torch.nn.ReLU)) for m in mods[1:]):
        return None
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in mods)
    if any(m.bias is None for m in mods if isinstance(m, torch.nn.Linear)) or len(names) != 2 * n_linear:
        return None
    relu_after = [isinstance(b, torch.nn.ReLU) for a, b in zip(mods, [*mods[1:], None])
                  if isinstance(a, torch.nn.Linear)]

    def forward(params: list[Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        h = x.flatten(2)
        for j, relu in enumerate(relu_after):
            w, b = params[2 * j], params[2 * j + 1]
            h = _PackedLinear.apply(h, w, b)
            if relu:
                h = h.relu_()
        return h

    return forward


def _step_trial(m: dict[str, Any], summary: dict[str, Any], report: Report | None, reason: str | None,
                epoch: int, steps_per_epoch: int) -> dict[str, Any] | Exception | None:
    """Report one trial's epoch and act on its stop reason (`StopRules`) as train() does; its final result,
    or None to go on."""
    if report is not None:
        try:
            report(m)
        except Exception as e:  # the callback stopped this trial (train() would raise it)
            return e
    if reason == "diverged":
        summary["stop_reason"] = "diverged"
        return DivergedError(epoch, summary)
    if reason == "fitted":
        summary.update(epochs_to_fit=epoch, steps_to_fit=epoch * steps_per_epoch, fitted=True)
    if reason is not None:
        summary["stop_reason"] = reason
        return summary
    return None


def _evaluate_epoch(forward: Callable, params: list[Tensor], buffers: dict[str, Tensor], eb: int, loss_sum: Tensor,
                    with_test: bool, train: tuple[_Stack, Tensor, Tensor], test: tuple[_Stack, Tensor],
                    val: tuple[_Stack, Tensor] | None) -> list[dict[str, float]]:
    """Every trial's epoch values (train set every epoch, test set when asked, validation), one host sync."""
    x_train, y_train, noisy_f = train
    _, tr_ok = _evaluate(forward, params, buffers, x_train, y_train, eb)
    tr_okf = tr_ok.float()
    cols = {"train_loss": loss_sum / x_train.n, "train_acc": tr_okf.mean(1), "noisy_ok": (tr_okf * noisy_f).sum(1)}
    if with_test:
        cols.update(_test_values(forward, params, buffers, *test, eb))
    if val is not None:
        va_loss, va_ok = _evaluate(forward, params, buffers, *val, eb)
        cols.update(val_loss=va_loss / val[1].shape[1], val_acc=va_ok.float().mean(1))
    return _read_rows(cols)


def _read_rows(cols: dict[str, Tensor]) -> list[dict[str, float]]:
    """Per-trial columns [K] to one dict per trial, with one host sync."""
    rows = torch.stack([v.float() for v in cols.values()], 1).tolist()
    return [dict(zip(cols, r)) for r in rows]


def _test_values(forward: Callable, params: list[Tensor], buffers: dict[str, Tensor], x_test: _Stack,
                 y_test: Tensor, batch_size: int) -> dict[str, Tensor]:
    """Test loss and accuracy [K] of the trials in `x_test`'s rows (the test labels are everyone's)."""
    loss, ok = _evaluate(forward, params, buffers, x_test, y_test.expand(len(x_test.rows), -1), batch_size)
    return {"test_loss": loss / len(y_test), "test_acc": ok.float().mean(1)}


def _same_as_earlier(t: Tensor | None, earlier: list[Tensor | None]) -> Tensor | None:
    """An equal tensor already held (so the duplicate can be freed), else `t` itself."""
    if t is None:
        return None
    return next((u for u in earlier if u is not None and u.shape == t.shape and torch.equal(u, t)), t)


def _evaluate(forward: Callable, params: list[Tensor], buffers: dict[str, Tensor], x: _Stack, y: Tensor,
              batch_size: int) -> tuple[Tensor, Tensor]:
    """Per-trial summed loss [K] and correctness [K, N] in eval mode; no host sync. Like train.evaluate,
    per-sample losses are summed once, whatever the batch size."""
    k, n = y.shape
    losses = torch.empty(k, n, device=y.device)
    correct = torch.empty(k, n, dtype=torch.bool, device=y.device)
    with torch.inference_mode(), autocast_for(y.device):
        for i in range(0, n, batch_size):
            out = forward(params, buffers, x.chunk(i, i + batch_size)).float()  # [K, b, classes]
            yb = y[:, i : i + batch_size]
            losses[:, i : i + batch_size] = _cross_entropy(out, yb)
            correct[:, i : i + batch_size] = out.argmax(-1) == yb
    return losses.sum(1), correct
