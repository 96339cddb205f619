"""The one progress line of a sweep or a study, fed by the driver-side trial events.

    trials 7/18 done (6 finished, 1 failed), 2 running | 3m05s elapsed, ~4m50s left | best test_acc 0.912
    gen_gap 0.071 (cnn-noise0.0-seed0)                                   (one line; wrapped here)

On a terminal (the stream is a TTY) it is one live line, redrawn in place at most every `redraw` seconds.
Anywhere else (CI logs, `| tee`, a file) it is a plain line, prefixed `progress:`, when a trial ends and
otherwise at most every `interval` seconds (a heartbeat for long trials): no carriage returns, no escape
codes. The time left is the elapsed time scaled by the work left over the work done, counted in epochs as
shares of each trial's max epochs: an ended trial counts the epochs it ran; a trial yet to start is expected
to run as long as the finished ones did on average (its max epochs until one has finished: most sweeps stop
at fit, paper-cpu's trials after 2-89 of their 200); a running trial is expected to reach that length, or,
once past it, half of what is left to its max. So an estimate exists before the first trial ends, it
learns from trials that stop early, and it does not reach zero while a trial can still run. Every epoch
counts the same, so a sweep mixing fast and slow architectures is still overestimated while the slow ones
run: a real paper-cpu run (9 min; AlexNet first, then the MLP's trials, 20x faster per epoch), replayed
minute by minute, read 15-21 min left from its third minute on (counting each trial whole: 20-35 min),
against 6 min down to 1 min in truth.

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
        self.names = names or (lambda ray_id, config: [ray_id])
        self.summary_key, self.stopped_as = summary_key, stopped
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.interval, self.clock = interval, clock
        self.t0 = clock()
        self.running: dict[str, float] = {}  # trial name -> share of its max epochs done
        self.spent = 0.0  # the shares of their max epochs the ended trials ran (1 each where unknown)
        self.lengths: list[float] = []  # the same share for each finished trial: how long a trial runs
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
        self.running[name] = 0.0

    def epoch(self, name: str, epoch: Any) -> None:
        max_epochs = self.epochs(name)
        if name in self.running and max_epochs and epoch is not None:
            self.running[name] = min(1.0, float(epoch) / max_epochs)

    def end(self, name: str, outcome: str, final: dict[str, Any] | None = None, epochs_run: Any = None) -> None:
        share = self.running.pop(name, None)
        if share is None:
            return  # not running: already ended (an error after its summary)
        self.ended[outcome] = self.ended.get(outcome, 0) + 1
        max_epochs = self.epochs(name)
        if max_epochs and isinstance(epochs_run, (int, float)):
            share = min(1.0, epochs_run / max_epochs)  # the summary's count: the last epochs may not have come
        known = bool(max_epochs) and share > 0  # no epoch seen and no count in the summary: length unknown
        self.spent += share if known else 1.0
        if outcome == "finished" and known:
            self.lengths.append(share)
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
        left = self.left(elapsed)
        best = "best -"
        if self.best is not None:
            value, extra, name = self.best
            shown = " ".join(f"{k} {v:.3f}" for k, v in extra.items() if isinstance(v, (int, float)))
            best = f"best {self.metric} {value:.3f}" + (f" {shown}" if shown else "") + f" ({name})"
        return f"{counts} | {fmt_duration(elapsed)} elapsed, {left} | {best}"

    def left(self, elapsed: float) -> str:
        """The estimate of the module docstring, as the line shows it."""
        if self.done() >= self.total:
            return "0s left"
        typical = sum(self.lengths) / len(self.lengths) if self.lengths else 1.0
        done = self.spent + sum(self.running.values())
        waiting = self.total - self.done() - len(self.running)
        todo = waiting * typical + sum(typical - f if f < typical else (1.0 - f) / 2 for f in self.running.values())
        return f"~{fmt_duration(elapsed * todo / done)} left" if done > 0 else "left ?"

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
                self.running[name] = 0.0

    def tick(self) -> None:
        """Called on every step of Tune's loop: redraws the clock (live) or writes the heartbeat (plain)."""
        self.show()
