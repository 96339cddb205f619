"""The one progress line of a sweep or a study, fed by the driver-side trial events.

    trials 7/18 done (6 finished, 1 failed), 2 running | 3m05s elapsed, ~4m50s left | best test_acc 0.912
    gen_gap 0.071 (cnn-noise0.0-seed0)                                   (one line; wrapped here)

On a terminal (the stream is a TTY) it is one live line, redrawn in place at most every `redraw` seconds.
Anywhere else (CI logs, `| tee`, a file) it is a plain line, prefixed `progress:`, when a trial ends and
otherwise at most every `interval` seconds (a heartbeat for long trials): no carriage returns, no escape
codes.

The time left adds up each trial's seconds to go, from what the sweep has shown so far:
- how long a trial runs, in epochs: the mean of the finished trials of its group (a sweep's groups are its
  architectures; a study is one group), else that mean as a share of max epochs over all groups, else its
  max epochs. Most sweeps stop at fit: paper-cpu's trials run 2-89 of their 200 epochs;
- a running trial has that length less the epochs it ran still to go, or, once past it, half of what is
  left to its max, so the estimate does not reach zero while a trial can still run;
- seconds per epoch: those of its group's trials (start to the latest epoch heard, or to the end), else all
  groups'. The trials run as many at once as were seen running at once, and none in less than itself.
A group that has not run yet borrows the others' speed: paper-cpu runs its 7 AlexNet trials first, and
its 11 MLP trials (20x faster an epoch) are counted at AlexNet's speed until the first one ends. Replayed
on a real run (9 min) it read 15-21 min left from its 3rd to its 8th minute (the truth: 6 to 1 min;
counting each trial as its max epochs read 20-35), then 2m17s with 45 s to go, once MLP trials had run.

"Best" is over trials that ended well, on their final values: the highest `metric` (mode max) or lowest
(mode min), shown with the `also` values of the same trial. The events come from Ray through
`rgsweep.raytune` (trial_started / trial_result / trial_completed / trial_errored / tick); this module
imports no Ray. A Ray trial may carry several trials (a pack): `names(ray_id, config)` splits it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

PLAIN_INTERVAL_S = 30.0  # heartbeat of the plain (non-TTY) line
REDRAW_S = 0.5  # the live line is redrawn at most this often


def fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Counts and the line; the event methods below translate Ray's trial events into start/end/epoch."""

    def __init__(
        self,
        total: int,
        *,
        epochs: Callable[[str], int] | None = None,
        group: Callable[[str], str] | None = None,
        queued: list[str] | None = None,
        metric: str = "test_acc",
        mode: str = "max",
        also: tuple[str, ...] = ("gen_gap",),
        names: Callable[[str, dict[str, Any]], list[str]] | None = None,
        summary_key: str = "rgsweep_summary",
        stopped: str = "stopped",
        stream: TextIO | None = None,
        live: bool | None = None,
        interval: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.metric, self.mode, self.also = total, metric, mode, also
        self.epochs = epochs or (lambda name: 0)
        self.group = group or (lambda name: "")  # trials of a group cost alike per epoch (a sweep: the arch)
        self.queued = list(queued or [])  # every trial's name, where known up front (a sweep's, not a study's)
        self.names = names or (lambda ray_id, config: [ray_id])
        self.summary_key, self.stopped_as = summary_key, stopped
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.interval, self.clock = interval, clock
        self.t0 = clock()
        self.running: dict[str, tuple[float, int, float]] = {}  # trial name -> (start, epochs done, heard at)
        self.gone: set[str] = set()  # the trials that ended
        self.cost: dict[str, list[float]] = {}  # group -> [seconds, epochs] of its ended trials
        self.lengths: dict[str, list[int]] = {}  # group -> the epochs each of its finished trials ran
        self.shares: list[float] = []  # each finished trial's epochs as a share of its max: other groups' guess
        self.slots = 0  # the most trials seen running at once
        self.ended: dict[str, int] = {"finished": 0, "failed": 0, stopped: 0}
        self.members: dict[str, list[str]] = {}  # Ray trial id -> its trial names
        self.best: tuple[float, dict[str, Any], str] | None = None
        self.last_shown = -float("inf")
        self.width, self.drawn = 0, ""  # the line last written

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks (this object among them) into the experiment state. The stream may not
        pickle (pytest's capture, a notebook's output): a copy is never the one that draws, so it goes to stderr."""
        return {**self.__dict__, "stream": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, stream=sys.stderr)

    # -- state ----------------------------------------------------------------------------------------
    def start(self, name: str) -> None:
        now = self.clock()
        self.running[name] = (now, 0, now)
        self.slots = max(self.slots, len(self.running))

    def epoch(self, name: str, epoch: Any) -> None:
        if name in self.running and epoch is not None:
            self.running[name] = (self.running[name][0], int(epoch), self.clock())

    def end(self, name: str, outcome: str, final: dict[str, Any] | None = None, epochs_run: Any = None) -> None:
        if name not in self.running:
            return  # not running: already ended (an error after its summary)
        start, epochs, _ = self.running.pop(name)
        self.ended[outcome] = self.ended.get(outcome, 0) + 1
        self.gone.add(name)
        if isinstance(epochs_run, (int, float)) and epochs_run > 0:
            epochs = int(epochs_run)  # the summary's count: the last epochs' results may not have come
        if epochs > 0:
            cost = self.cost.setdefault(self.group(name), [0.0, 0.0])
            cost[0] += self.clock() - start
            cost[1] += epochs
            if outcome == "finished":
                self.lengths.setdefault(self.group(name), []).append(epochs)
                if self.epochs(name):
                    self.shares.append(min(1.0, epochs / self.epochs(name)))
        value = (final or {}).get(self.metric)
        if outcome == "finished" and isinstance(value, (int, float)):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), {k: final.get(k) for k in self.also}, name)
        self.show(force=True)

    def done(self) -> int:
        return sum(self.ended.values())

    def line(self) -> str:
        elapsed = self.clock() - self.t0
        parts = [f"{v} {k}" for k, v in self.ended.items() if v]
        counts = f"trials {self.done()}/{self.total} done" + (f" ({', '.join(parts)})" if parts else "")
        counts += f", {len(self.running)} running"
        left = self.left()
        best = "best -"
        if self.best is not None:
            value, extra, name = self.best
            shown = " ".join(f"{k} {v:.3f}" for k, v in extra.items() if isinstance(v, (int, float)))
            best = f"best {self.metric} {value:.3f}" + (f" {shown}" if shown else "") + f" ({name})"
        return f"{counts} | {fmt_duration(elapsed)} elapsed, {left} | {best}"

    def left(self) -> str:
        """The estimate of the module docstring, as the line shows it."""
        if self.done() >= self.total:
            return "0s left"
        seconds = {g: c[0] for g, c in self.cost.items()}
        epochs = {g: c[1] for g, c in self.cost.items()}
        for name, (start, done, heard) in self.running.items():
            if done > 0:
                g = self.group(name)
                seconds[g] = seconds.get(g, 0.0) + heard - start
                epochs[g] = epochs.get(g, 0) + done
        if not sum(epochs.values()):
            return "left ?"
        overall = sum(seconds.values()) / sum(epochs.values())

        def rate(name: str) -> float:  # seconds per epoch
            g = self.group(name)
            return seconds[g] / epochs[g] if epochs.get(g) else overall

        def length(name: str) -> float:  # epochs it is expected to run in all
            ran, most = self.lengths.get(self.group(name)), self.epochs(name) or 0
            if ran:
                return sum(ran) / len(ran)
            return most * sum(self.shares) / len(self.shares) if self.shares and most else most

        def still(name: str) -> float:  # a running trial's seconds left
            done, expected = self.running[name][1], length(name)
            more = expected - done if done < expected else max(0.0, (self.epochs(name) or done) - done) / 2
            return more * rate(name)

        waiting = [n for n in self.queued if n not in self.running and n not in self.gone]
        unnamed = max(0, self.total - self.done() - len(self.running) - len(waiting))  # a study's next trials
        if unnamed and not length(""):
            return "left ?"  # nothing says how long a study's next trials run
        trials = [still(n) for n in self.running] + [length(n) * rate(n) for n in waiting] \
            + [length("") * rate("")] * unnamed  # seconds each
        # As many at once as were seen running at once; and no sooner than the longest trial alone.
        eta = max(max(trials, default=0.0), sum(trials) / max(self.slots, 1))
        return f"~{fmt_duration(eta)} left"

    # -- output ---------------------------------------------------------------------------------------
    def show(self, force: bool = False) -> None:
        now = self.clock()
        wait = REDRAW_S if self.live else self.interval
        if not force and now - self.last_shown < wait:
            return
        self.last_shown = now
        text = self.line()
        if self.live:
            text = text[: shutil.get_terminal_size((120, 20)).columns - 1]
        if text == self.drawn:  # nothing new to say (e.g. the closing line right after the last trial's)
            return
        if self.live:
            self.stream.write("\r" + text.ljust(self.width))
        else:
            self.stream.write(f"progress: {text}\n")
        self.width, self.drawn = len(text), text
        self.stream.flush()

    def close(self) -> None:
        """The final state, and a newline after a live line so what follows starts on its own line."""
        self.show(force=True)
        if self.live:
            self.stream.write("\n")
            self.stream.flush()

    # -- Ray's trial events (called in the driver by rgsweep.raytune) --------------------------------
    def trial_started(self, ray_id: str, config: dict[str, Any]) -> None:
        self.members[ray_id] = self.names(ray_id, config)
        for name in self.members[ray_id]:
            self.start(name)
        self.show()

    def trial_result(self, ray_id: str, result: dict[str, Any]) -> None:
        members = self.members.get(ray_id, [ray_id])
        name = result.get("member") or members[0]
        if self.summary_key in result:
            summary = json.loads(result[self.summary_key])
            status = summary.get("status")
            self.end(name, "finished" if status in ("finished", "complete") else "failed", result,
                     epochs_run=summary.get("epochs_run"))
        else:
            self.epoch(name, result.get("epoch"))
            self.show()

    def trial_completed(self, ray_id: str) -> None:
        """Ended without its summary: stopped by a scheduler (a pruned tuning trial) or interrupted."""
        for name in self.members.pop(ray_id, []):
            if name in self.running:
                self.end(name, self.stopped_as)

    def trial_errored(self, ray_id: str, error: str, infrastructure: bool = False) -> None:
        for name in self.members.pop(ray_id, []):
            if name in self.running:
                self.end(name, "failed")

    def trial_retried(self, ray_id: str, error: str) -> None:
        """A lost attempt Ray runs again: its trials are still running (their epochs start over)."""
        for name in self.members.get(ray_id, []):
            if name in self.running:
                now = self.clock()
                self.running[name] = (now, 0, now)

    def tick(self) -> None:
        """Called on every step of Tune's loop: redraws the clock (live) or writes the heartbeat (plain)."""
        self.show()
