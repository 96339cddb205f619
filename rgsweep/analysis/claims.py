"""The paper's claims (DESIGN.md, "The paper's claims"), judged on an experiment's exported runs.

Pure pandas on the frames `rgsweep export` writes (runs, history): no MLflow here. Each claim C1..C8
gets PASS, FAIL or NOT RUN, with the numbers and run names behind it, per architecture where the
claim says so. The thresholds are DESIGN.md's and nothing here loosens them.

Definitions used throughout:
- judged runs: the latest run of each trial that FINISHED, plus runs that diverged (a diverged trial
  is a training outcome, not an infrastructure one: it counts as *not fitted*). Other FAILED or KILLED
  runs are left out and counted in the section's header.
- fitted: final train_acc >= the run's fit_threshold (>= 0.99 where the run has none, as in Table 1's
  fixed budgets). epochs to fit: the run's `epochs_to_fit`, else the first epoch of its history with
  train_acc at that threshold.
- A run that never fitted gives only a lower bound (> epochs run). A comparison the bounds cannot
  decide is NOT RUN for that subject ("needs a longer budget"), never PASS; one they decide is judged.
- Comparisons between conditions (C2-C6) are made within a *group*: runs of one architecture and one
  setup (lr, batch size, optimiser, data, ...); seeds are averaged. A group is a subject of the claim
  when it ran the claim's manipulation (label noise for C2/C3, a pixel corruption for C4, shuffled
  pixels for C5, a regularizer for C6); then it must have every run the comparison needs, or it is
  NOT RUN. C2-C5 use the randomization experiments' runs, i.e. without weight decay, dropout or
  augmentation (paper Section 2.1, Appendix A).
- K, the number of classes, is the runs' `num_classes` metric (or 10 for the named 10-class datasets).

A claim FAILs when any of its subjects fails, PASSes when every subject passes, and is NOT RUN
otherwise (no runs of its kind, or a subject whose runs are missing or cannot decide it).
`rgsweep report --check` exits 1 when a claim FAILs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import pandas as pd

from rgsweep.analysis.frames import col, corruption_type, latest_per_trial

PASS, FAIL, NOT_RUN = "PASS", "FAIL", "NOT RUN"
DEFAULT_FIT = 0.99  # "fitted" for a run without a fit threshold (DESIGN.md)
EPS = 1e-9  # float noise only (0.12 - 0.10 is 0.01999...); never a margin
TEN_CLASS = {"cifar10": 10, "mnist": 10, "fashion-mnist": 10, "digits": 10, "synthetic": 10}
# What defines a group besides the compared factor: one architecture under one setup. Budgets
# (epochs, fit_threshold) are left out: a random-label run may get more epochs than a clean one.
SETUP = ("arch", "width", "depth", "batch_norm", "dataset", "subset", "optimizer", "lr", "momentum",
         "batch_size", "lr_schedule", "lr_decay", "preprocess", "val_fraction")
UNKNOWN_K = "number of classes unknown (no num_classes metric, and not a named 10-class dataset)"
PIXEL_KINDS = ("shuffled pixels", "random pixels", "gaussian")


@dataclass
class Check:
    """One subject of a claim (an architecture's group, a run, or all runs) and what was found."""

    subject: str
    status: str
    evidence: str


@dataclass
class Claim:
    id: str
    title: str
    rule: str
    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> str:
        found = {c.status for c in self.checks}
        return FAIL if FAIL in found else PASS if found == {PASS} else NOT_RUN

    def summary(self) -> str:
        """One line: what the verdict rests on."""
        if not self.checks:
            return "no runs of this kind"
        by = {s: [c.subject for c in self.checks if c.status == s] for s in (PASS, FAIL, NOT_RUN)}
        return "; ".join(f"{s.lower()}: {', '.join(names)}" for s, names in by.items() if names)


# -- the runs, prepared once ----------------------------------------------------------------------
def _num(runs: pd.DataFrame, name: str, default: float = math.nan) -> pd.Series:
    return pd.to_numeric(col(runs, name, default), errors="coerce").astype("float64")


def _first_epoch(history: pd.DataFrame, metric: str, thresholds: pd.Series) -> pd.Series:
    """Per run id: the first epoch at which `metric` >= the run's threshold (NaN if never, or no history)."""
    if history.empty or metric not in history.columns:
        return pd.Series(dtype="float64")
    h = history[["run_id", "epoch", metric]].dropna()
    h = h[h[metric] >= h["run_id"].map(thresholds) - EPS]
    return h.groupby("run_id")["epoch"].min().astype("float64")


def prepare(runs: pd.DataFrame, history: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The judged runs with the columns the claims read; and how many runs were left out (not finished)."""
    runs = latest_per_trial(runs)
    diverged = col(runs, "tag_diverged", "").fillna("").astype(str) == "true"
    keep = (col(runs, "status", "FINISHED") == "FINISHED") | diverged
    r = runs[keep].copy()
    left_out = int((~keep).sum())
    threshold = _num(r, "fit_threshold").fillna(DEFAULT_FIT)
    final_train = _num(r, "final_train_acc").fillna(_num(r, "train_acc"))
    r["_fit_at"] = threshold
    r["_train"] = final_train
    r["_test"] = _num(r, "final_test_acc").fillna(_num(r, "test_acc"))
    r["_fitted"] = (final_train >= threshold - EPS) & ~diverged[keep]
    by_history = r["run_id"].map(_first_epoch(history, "train_acc", pd.Series(threshold.values, r["run_id"])))
    r["_etf"] = _num(r, "epochs_to_fit").fillna(by_history)
    r["_epochs"] = _num(r, "epochs_run").fillna(r["run_id"].map(history.groupby("run_id")["epoch"].max())
                                                if not history.empty else math.nan)
    dataset = col(r, "dataset", "").astype(str)
    r["_k"] = _num(r, "num_classes").fillna(dataset.map(TEN_CLASS))
    r["_noise"] = _num(r, "label_noise", 0.0).fillna(0.0)
    r["_corruption"] = col(r, "corruption", "none").fillna("none").astype(str)
    r["_kind"] = corruption_type(r)
    augment = col(r, "augment", "").fillna("").astype(str)
    r["_crop"] = augment.str.split(",").map(lambda names: "crop" in names)
    r["_wd"] = _num(r, "weight_decay", 0.0).fillna(0.0) > 0
    r["_dropout"] = _num(r, "dropout", 0.0).fillna(0.0) > 0
    r["_plain"] = (augment.str.strip() == "") & ~r["_wd"] & ~r["_dropout"]
    r["_name"] = col(r, "run_name", "").fillna(r["run_id"]).astype(str)
    # Only what the claims read: an export has ~80 columns, and every selection below would copy them all.
    needed = ["run_id", *SETUP, *(c for c in r.columns if c.startswith("_"))]
    return r[[c for c in dict.fromkeys(needed) if c in r.columns]], left_out


def _groups(r: pd.DataFrame, treated: pd.Series) -> Iterator[tuple[str, pd.DataFrame]]:
    """(label, runs) per architecture and setup that ran the claim's manipulation (`treated`: label noise,
    a pixel corruption, a regularizer): a group with only the shared baseline run is not a subject of the
    claim. The label names the setup only where it tells groups apart."""
    cols = [c for c in SETUP if c in r.columns]
    if r.empty or "arch" not in cols:
        return
    # Missing values (batch_norm None, no subset) are a setup too: as text, so groupby keeps them.
    keyed = r.assign(**{c: r[c].map(lambda v: "None" if pd.isna(v) else str(v)).astype(object) for c in cols})
    varying = [c for c in cols if c != "arch" and keyed[c].nunique() > 1]
    for key, g in keyed.groupby(cols, sort=True, dropna=False):
        if not treated[g.index].any():
            continue
        values = dict(zip(cols, key if isinstance(key, tuple) else (key,)))
        label = values["arch"] + "".join(f" {c}={values[c]}" for c in varying)
        yield label, r.loc[g.index]


# -- small formatting and censoring helpers -------------------------------------------------------
def _f(v: float, digits: int = 3) -> str:
    return "?" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _names(rows: pd.DataFrame) -> str:
    return ", ".join(rows["_name"])


def _fit_desc(row: pd.Series) -> str:
    if row["_fitted"]:
        return f"{row['_name']} (train_acc {_f(row['_train'])}, fitted at epoch {_f(row['_etf'], 0)})"
    return (f"{row['_name']} (train_acc {_f(row['_train'])} < {row['_fit_at']:g} after "
            f"{_f(row['_epochs'], 0)} epochs: not fitted)")


@dataclass
class Bound:
    """Mean epochs to fit over a set of runs: exact when all fitted, else only a lower bound."""

    lo: float
    hi: float  # inf when a run never fitted
    names: str

    def __str__(self) -> str:
        return f"{_f(self.lo, 1)}" if self.hi == self.lo else f"> {_f(self.lo - 1, 0)} (not fitted)"


def _bound(rows: pd.DataFrame) -> Bound:
    """A run that never fitted would need more than the epochs it ran."""
    lo = rows["_etf"].where(rows["_etf"].notna(), rows["_epochs"] + 1)
    hi = math.inf if rows["_etf"].isna().any() else rows["_etf"].mean()
    return Bound(float(lo.mean()), hi, _names(rows))


def _le(a: Bound, b: Bound, factor: float = 1.0) -> bool | None:
    """Is a <= factor * b? True/False when the bounds decide it, None when they cannot."""
    if a.hi <= factor * b.lo + EPS:
        return True
    if a.lo > factor * b.hi + EPS:
        return False
    return None


def _decide(results: list[tuple[bool | None, str]]) -> str:
    """FAIL if any part fails; PASS if all pass; NOT RUN when a part is undecided."""
    if any(ok is False for ok, _ in results):
        return FAIL
    return PASS if all(ok for ok, _ in results) else NOT_RUN


# -- the claims -----------------------------------------------------------------------------------
def _fitting_claim(claim: Claim, rows: pd.DataFrame) -> Claim:
    """Every run in `rows` is fitted: one check listing them."""
    if rows.empty:
        return claim
    missed = rows[~rows["_fitted"]]
    status = PASS if missed.empty else FAIL
    shown = missed if not missed.empty else rows
    head = f"{len(rows) - len(missed)}/{len(rows)} fitted"
    claim.checks.append(Check("all runs", status, f"{head}: " + "; ".join(_fit_desc(r) for _, r in shown.iterrows())))
    return claim


def c1(r: pd.DataFrame) -> Claim:
    claim = Claim("C1", "Deep nets fit random labels (Fig. 1a, Table 1)",
                  "every run with label_noise = 1 and no input corruption is fitted")
    return _fitting_claim(claim, r[(r["_noise"] == 1) & (r["_corruption"] == "none")])


def c2(r: pd.DataFrame) -> Claim:
    claim = Claim("C2", "Test error rises with label noise towards chance (Fig. 1c)",
                  "per arch, test_acc over label_noise never rises by more than 0.02 from one level to the next, "
                  "and at p = 1 it is within 0.03 of 1/K")
    noise = r[r["_plain"] & (r["_corruption"] == "none")]
    for label, g in _groups(noise, noise["_noise"] > 0):
        levels = g.groupby("_noise")["_test"].mean().sort_index()
        k = g["_k"].iloc[0]
        if 1.0 not in levels.index or len(levels) < 2 or math.isnan(k):
            why = "no p = 1 run" if 1.0 not in levels.index else "one level only" if len(levels) < 2 else UNKNOWN_K
            claim.checks.append(Check(label, NOT_RUN, f"{why} (levels {list(levels.index)})"))
            continue
        curve = " -> ".join(f"p{p:g} {_f(a)}" for p, a in levels.items())
        rises = [(p, b - a) for (_, a), (p, b) in zip(levels.items(), list(levels.items())[1:]) if b - a > 0.02 + EPS]
        gap = abs(levels[1.0] - 1 / k)
        ok = not rises and gap <= 0.03 + EPS
        why = "; ".join([f"rises by {_f(d)} at p{p:g} (> 0.02)" for p, d in rises]
                        + ([f"|test_acc(p1) - 1/K| = {_f(gap)} > 0.03"] if gap > 0.03 + EPS else []))
        evidence = f"test_acc {curve}; |test_acc(p1) - 1/{k:g}| = {_f(gap)}" + (f"; {why}" if why else "")
        claim.checks.append(Check(label, PASS if ok else FAIL, f"{evidence} [{_names(g)}]"))
    return claim


def c3(r: pd.DataFrame) -> Claim:
    claim = Claim("C3", "Fitting takes longer as labels get noisier, by a small constant factor (Fig. 1b)",
                  "per arch, epochs_to_fit at p = 1 is at least that at p = 0 and at most 10 times it")
    noise = r[r["_plain"] & (r["_corruption"] == "none")]
    for label, g in _groups(noise, noise["_noise"] > 0):
        clean, noisy = g[g["_noise"] == 0], g[g["_noise"] == 1]
        if clean.empty or noisy.empty:
            claim.checks.append(Check(label, NOT_RUN, f"needs p = 0 and p = 1 runs (has {_names(g)})"))
            continue
        e0, e1 = _bound(clean), _bound(noisy)
        parts = [(_le(e0, e1), "p1 >= p0"), (_le(e1, e0, 10.0), "p1 <= 10 x p0")]
        status = _decide(parts)
        ratio = f"ratio {_f(e1.lo / e0.lo, 2)}" if e0.hi == e0.lo and e1.hi == e1.lo else "ratio undecided"
        failed = [what for ok, what in parts if ok is False]
        undecided = [what for ok, what in parts if ok is None]
        evidence = f"epochs_to_fit p0 {e0} [{e0.names}], p1 {e1} [{e1.names}]; {ratio}"
        if failed:
            evidence += "; fails " + ", ".join(failed)
        elif undecided:
            evidence += "; undecided: " + ", ".join(undecided) + " (a run did not fit: needs a longer budget)"
        claim.checks.append(Check(label, status, evidence))
    return claim


def c4(r: pd.DataFrame) -> Claim:
    claim = Claim("C4", "Input corruptions are fitted too, random labels the slowest (Fig. 1a)",
                  "every shuffled_pixels, random_pixels and gaussian run is fitted; per arch, epochs_to_fit of "
                  "true labels <= shuffled pixels <= random labels, and gaussian and random pixels each lie "
                  "between true labels and random labels")
    corrupted = r[r["_corruption"].isin(["shuffled_pixels", "random_pixels", "gaussian"])]
    _fitting_claim(claim, corrupted)
    if not claim.checks:
        return claim
    order = [("true labels", "shuffled pixels"), ("shuffled pixels", "random labels"),
             ("true labels", "gaussian"), ("gaussian", "random labels"),
             ("true labels", "random pixels"), ("random pixels", "random labels")]
    fig1a = r[r["_plain"] & r["_kind"].notna()]
    for label, g in _groups(fig1a, fig1a["_kind"].isin(PIXEL_KINDS)):
        kinds = {k: _bound(g[g["_kind"] == k]) for k in g["_kind"].unique()}
        parts = [(_le(kinds[a], kinds[b]), f"{a} <= {b}") for a, b in order if a in kinds and b in kinds]
        missing = [k for k in ("true labels", "random labels", *PIXEL_KINDS) if k not in kinds]
        status = _decide(parts)
        if status == PASS and missing:
            status = NOT_RUN
        evidence = "epochs_to_fit " + ", ".join(f"{k} {kinds[k]}" for k in sorted(kinds, key=_kind_rank))
        failed = [w for ok, w in parts if ok is False]
        evidence += (f"; fails {', '.join(failed)}" if failed else "")
        evidence += (f"; missing {', '.join(missing)}" if missing else "")
        evidence += (f"; undecided: {', '.join(w for ok, w in parts if ok is None)}"
                     if any(ok is None for ok, _ in parts) and not failed else "")
        claim.checks.append(Check(label, status, f"{evidence} [{_names(g)}]"))
    return claim


def _kind_rank(kind: str) -> int:
    return ["true labels", "shuffled pixels", "random pixels", "gaussian", "random labels"].index(kind)


def c5(r: pd.DataFrame, convnet: Callable[[str], bool | None]) -> Claim:
    claim = Claim("C5", "Inputs without structure do not generalize (Fig. 1a)",
                  "random_pixels and gaussian runs have test_acc within 0.10 of 1/K; shuffled pixels lie below "
                  "true labels for convnets")
    noise_inputs = r[r["_corruption"].isin(["random_pixels", "gaussian"])]
    pairs = r[r["_plain"] & r["_kind"].isin(["true labels", "shuffled pixels"])]
    pairs = pairs[pairs["arch"].astype(str).map(convnet).fillna(False).astype(bool)] if "arch" in pairs else pairs[:0]
    if noise_inputs.empty and not (pairs["_kind"] == "shuffled pixels").any():
        return claim
    if noise_inputs.empty or noise_inputs["_k"].isna().any():
        why = "no random_pixels or gaussian runs" if noise_inputs.empty else UNKNOWN_K
        claim.checks.append(Check("random pixels, gaussian", NOT_RUN, why))
    else:
        gaps = (noise_inputs["_test"] - 1 / noise_inputs["_k"]).abs()
        far = noise_inputs[~(gaps <= 0.10 + EPS)]
        rows = "; ".join(f"{n} test_acc {_f(t)} (1/K {_f(1 / k)})"
                         for n, t, k in zip(noise_inputs["_name"], noise_inputs["_test"], noise_inputs["_k"]))
        claim.checks.append(Check("random pixels, gaussian", PASS if far.empty else FAIL,
                                  f"{len(noise_inputs) - len(far)}/{len(noise_inputs)} within 0.10 of 1/K: {rows}"))
    for label, g in _groups(pairs, pairs["_kind"] == "shuffled pixels"):
        true, shuffled = g[g["_kind"] == "true labels"], g[g["_kind"] == "shuffled pixels"]
        if true.empty or shuffled.empty:
            claim.checks.append(Check(label, NOT_RUN, f"needs true labels and shuffled pixels (has {_names(g)})"))
            continue
        a, b = shuffled["_test"].mean(), true["_test"].mean()
        claim.checks.append(Check(label, PASS if a < b else FAIL,
                                  f"test_acc shuffled pixels {_f(a)} < true labels {_f(b)}? [{_names(g)}]"))
    if not (pairs["_kind"] == "shuffled pixels").any():
        claim.checks.append(Check("convnets", NOT_RUN, "no convnet run with shuffled pixels"))
    return claim


def c6(r: pd.DataFrame) -> Claim:
    claim = Claim("C6", "Explicit regularization is not necessary to generalize (Table 1)",
                  "per arch, the run with neither crop nor weight decay has test_acc at most 0.10 below the best "
                  "regularized setting and at least 3/K")
    clean = r[(r["_noise"] == 0) & (r["_corruption"] == "none")]
    augment = col(clean, "augment", "").fillna("").astype(str).str.split(",")
    # Table 1's settings: crop and/or weight decay, nothing else (no dropout, no other augmentation).
    only_table1 = ~clean["_dropout"] & augment.map(lambda a: set(a) <= {"", "crop"})
    setting = pd.Series("neither", index=clean.index).where(~clean["_crop"], "crop only")
    setting = setting.where(~clean["_wd"], setting.map({"neither": "wd only", "crop only": "crop+wd"}))
    table1 = clean[only_table1].assign(_setting=setting[only_table1])
    for label, g in _groups(table1, table1["_setting"] != "neither"):
        neither, regs = g[g["_setting"] == "neither"], g[g["_setting"] != "neither"]
        if neither.empty or regs.empty:
            claim.checks.append(Check(label, NOT_RUN, f"needs 'neither' and a regularized setting (has {_names(g)})"))
            continue
        means = regs.groupby("_setting")["_test"].mean()
        best_name, best = means.idxmax(), means.max()
        plain, k = neither["_test"].mean(), g["_k"].iloc[0]
        if math.isnan(k):
            claim.checks.append(Check(label, NOT_RUN, UNKNOWN_K))
            continue
        close, above = plain >= best - 0.10 - EPS, plain >= 3 / k - EPS
        ok = close and above
        evidence = (f"test_acc neither {_f(plain)}, best regularized ({best_name}) {_f(best)}, 3/K {_f(3 / k)} "
                    f"({', '.join(f'{s} {_f(v)}' for s, v in means.items())})")
        why = ([f"{_f(best - plain)} below the best (> 0.10)"] if not close else []) + (
            [f"neither {_f(plain)} < 3/K"] if not above else [])
        evidence += f"; fails: {', '.join(why)}" if why else ""
        claim.checks.append(Check(label, PASS if ok else FAIL, f"{evidence} [{_names(g)}]"))
    return claim


def c7(r: pd.DataFrame) -> Claim:
    claim = Claim("C7", "Regularizers do not stop memorization (Sec. 2.2)",
                  "every random-label run with weight decay, dropout or crop on is fitted")
    rows = r[(r["_noise"] == 1) & (r["_corruption"] == "none") & (r["_wd"] | r["_dropout"] | r["_crop"])]
    return _fitting_claim(claim, rows)


def c8(r: pd.DataFrame, history: pd.DataFrame) -> Claim:
    claim = Claim("C8", "Clean examples are learned before noisy ones (Arpit et al. 2017)",
                  "for 0 < p < 1, train_acc_clean reaches 0.9 at an earlier epoch than train_acc_noisy")
    rows = r[(r["_noise"] > 0) & (r["_noise"] < 1)]
    at = pd.Series(0.9, index=rows["run_id"].values)
    clean_at, noisy_at = _first_epoch(history, "train_acc_clean", at), _first_epoch(history, "train_acc_noisy", at)
    for _, row in rows.sort_values(["_name"]).iterrows():
        ec, en = clean_at.get(row["run_id"], math.nan), noisy_at.get(row["run_id"], math.nan)
        last = row["_epochs"]
        if math.isnan(ec) and math.isnan(en):
            status, what = NOT_RUN, f"neither subset reached 0.9 in {_f(last, 0)} epochs"
        elif math.isnan(en):  # noisy reaches it after the run ended, if ever: later than the clean subset
            status, what = PASS, f"clean at epoch {ec:g}, noisy not within {_f(last, 0)} epochs"
        elif math.isnan(ec):
            status, what = FAIL, f"noisy at epoch {en:g}, clean never"
        else:
            status, what = (PASS if ec < en else FAIL), f"clean at epoch {ec:g}, noisy at epoch {en:g}"
        claim.checks.append(Check(row["_name"], status, f"p = {row['_noise']:g}: {what}"))
    return claim


def _registry_convnet(arch: str) -> bool | None:
    """Whether the model registry calls `arch` a convnet (None for a name it does not know)."""
    from rgsweep.models import MODELS  # imports torch: only when a shuffled-pixels comparison needs it

    spec = MODELS.get(arch)
    return None if spec is None else spec.convnet


def judge(runs: pd.DataFrame, history: pd.DataFrame,
          convnet: Callable[[str], bool | None] = _registry_convnet) -> tuple[list[Claim], int]:
    """Every claim on the exported frames; also how many runs were left out as not finished."""
    r, left_out = prepare(runs, history)
    return [c1(r), c2(r), c3(r), c4(r), c5(r, convnet), c6(r), c7(r), c8(r, history)], left_out


def failed(claims: list[Claim]) -> list[Claim]:
    return [c for c in claims if c.status == FAIL]


# -- output ---------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(claims: list[Claim], left_out: int = 0) -> str:
    """The report's "Claims" section body: a summary table, then each claim's rule and evidence."""
    counts = {s: sum(c.status == s for c in claims) for s in (PASS, FAIL, NOT_RUN)}
    lines = [
        "Each claim of the paper judged on this experiment's runs, with the paper's claims and thresholds as "
        "the README lists them "
        "(`rgsweep report --check` exits 1 when one FAILs; NOT RUN: the runs it needs are missing "
        f"or undecided). {counts[PASS]} PASS, {counts[FAIL]} FAIL, {counts[NOT_RUN]} NOT RUN."
        + (f" {left_out} run(s) that did not finish (and did not diverge) are left out." if left_out else ""),
        "", "| claim | verdict | on |", "|---|---|---|",
    ]
    lines += [f"| {c.id} {_cell(c.title)} | **{c.status}** | {_cell(c.summary())} |" for c in claims]
    for c in claims:
        lines += ["", f"### {c.id}: {c.status}", "", f"{c.title}. Judged as: {c.rule}.", ""]
        lines += [f"- {ch.status} {_cell(ch.subject)}: {ch.evidence}" for ch in c.checks] or ["- no runs of this kind"]
    return "\n".join(lines)


def to_json(claims: list[Claim]) -> str:
    return json.dumps([{"id": c.id, "title": c.title, "rule": c.rule, "status": c.status,
                        "checks": [asdict(ch) for ch in c.checks]} for c in claims], indent=1)


def check_lines(claims: list[Claim]) -> list[str]:
    """What `report --check` prints: one line per claim."""
    return [f"{c.id} {c.status:7} {c.title}: {c.summary()}" for c in claims]
