"""The `rgsweep` command. Subcommands: train, show, models, sweep, tune, export, report, notebooks, ui.

Exit codes: 0 success, 1 a trial failed or diverged, 2 invalid input (nothing was run or logged),
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from typing import Any

from rgsweep.config import ConfigError, TrialConfig, load_yaml, make_config
from rgsweep.names import run_name

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141  # 128 + signal


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors keep exit code 2, on one line
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _shape(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,28,28, got {s!r}") from None


# Flags of `rgsweep train` map one to one onto TrialConfig fields (dest = field name).
TRAIN_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--dataset", {"help": "digits | cifar10 | mnist | fashion-mnist | synthetic | imagefolder:PATH"}),
    ("--data-dir", {"help": "folder with the dataset in torchvision's layout (default $RGSWEEP_DATA or ./data)"}),
    ("--download", {"action": "store_const", "const": True, "help": "download cifar10/mnist if missing"}),
    ("--subset", {"type": int, "help": "class-balanced subset of N training images"}),
    ("--val-fraction", {"type": float, "help": "hold out this share of the clean training set for validation"}),
    ("--arch", {"help": "model name (see `rgsweep models`)"}),
    ("--width", {"type": int, "help": "MLP hidden units"}),
    ("--depth", {"type": int, "help": "MLP hidden layers"}),
    ("--dropout", {"type": float}),
    ("--batch-norm", {"choices": ["true", "false"], "help": "override the architecture's default"}),
    ("--label-noise", {"type": float, "help": "probability p that a training label is redrawn (1 = random labels)"}),
    ("--corruption", {"help": "none | shuffled_pixels | random_pixels | gaussian"}),
    ("--corrupt-fraction", {"type": float, "help": "share of images whose pixels are corrupted"}),
    ("--pixel-fraction", {"type": float, "help": "share of pixel positions a shuffle permutes"}),
    ("--corruption-seed", {"type": int}),
    ("--preprocess", {"help": "paper | standard | none"}),
    ("--augment", {"help": "comma-separated: crop (the paper's random 28x28 window, needs --preprocess paper), "
                           "padcrop (4-pixel padded), flip, erase, rotate, affine, jitter, perspective (or none)"}),
    ("--epochs", {"type": int, "help": "maximum epochs"}),
    ("--batch-size", {"type": int}),
    ("--optimizer", {"help": "sgd | adam"}),
    ("--lr", {"type": float, "help": "initial learning rate"}),
    ("--lr-schedule", {"help": "exponential | step | cosine | plateau | constant"}),
    ("--lr-decay", {"type": float, "help": "exponential: factor per epoch (paper 0.95); step/plateau: factor"}),
    ("--lr-step", {"type": int, "help": "step: epochs between decays; plateau: patience"}),
    ("--momentum", {"type": float}),
    ("--weight-decay", {"type": float}),
    ("--fit-threshold", {"type": float, "help": "stop when train_acc reaches it (default 0.999)"}),
    ("--no-fit-stop", {"dest": "fit_threshold", "action": "store_const", "const": "none",
                       "help": "train all epochs even after fitting"}),
    ("--early-stopping", {"type": int, "help": "patience in epochs on val_acc (needs --val-fraction)"}),
    ("--seed", {"type": int, "help": "training seed"}),
    ("--device", {"help": "auto | cpu | cuda | cuda:N"}),
    ("--eval-batch-size", {"type": int}),
    ("--eval-every", {"help": "N: evaluate the full test set every N epochs and at the last (default 1); auto: "
                              "N such that the test set costs at most a tenth of the training-set evaluation"}),
]


def add_tracking_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)")


def config_from_args(args: argparse.Namespace) -> TrialConfig:
    """YAML file (if any) first, then flags on top; validated as one TrialConfig."""
    values: dict[str, Any] = load_yaml(args.config) if getattr(args, "config", None) else {}
    for flag, opts in TRAIN_FLAGS:
        dest = opts.get("dest", flag[2:].replace("-", "_"))
        v = getattr(args, dest, None)
        if v is None:
            continue
        if dest == "batch_norm":
            v = v == "true"
        if dest == "fit_threshold" and v == "none":
            v = None
        values[dest] = v
    return make_config(values, where=args.config if getattr(args, "config", None) else "")


def cmd_train(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # a bad flag or file is refused before torch and MLflow load (3-5 s)
    from rgsweep import tracking
    from rgsweep.data.sources import DatasetError
    from rgsweep.train import DivergedError, prepare_data, resolve_device, summary_line, train

    try:
        uri = tracking.resolve_tracking_uri(args.tracking_uri)
        device = resolve_device(config.device)
        t_prep = time.perf_counter()
        data = prepare_data(config, device)  # data errors surface here, before any run exists
        data_prep_s = time.perf_counter() - t_prep
    except (DatasetError, ValueError, RuntimeError) as e:
        print(f"rgsweep train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    client = tracking.get_client(uri)
    exp_id = tracking.get_experiment_id(client, args.experiment)
    name = args.run_name or run_name(config, ["label_noise", "corruption"])
    run = tracking.RunTracker.start(
        client, exp_id, name, params=config.flat_params(),
        tags={**tracking.trial_tags(config), **tracking.ui_trial_tags(config, args.config or "rgsweep train")},
    )
    run.title = f"{name} ({tracking.condition(config)})"
    print(f"run {run.run_id} ({name}) in experiment {args.experiment!r} at {uri}", file=sys.stderr)
    try:
        summary = train(config, run.log_epoch, data=data, progress=not args.quiet)
    except DivergedError as e:
        tracking.annotate_trial(run, config, e.summary)
        tracking.finish_trial(run, e.summary, diverged=True)
        print(f"{name}: DIVERGED at epoch {e.epoch} run_id={run.run_id}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        run.finish("KILLED")
        print(f"{name}: interrupted, run {run.run_id} closed as KILLED", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        run.fail(traceback.format_exc())
        raise
    summary["data_prep_s"] = data_prep_s
    tracking.annotate_trial(run, config, summary)
    tracking.finish_trial(run, summary)
    print(f"{name}: {summary_line(summary)} run_id={run.run_id}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    """The data figure of one trial (same flags as `train`): its training images next to the clean ones."""
    config = config_from_args(args)  # as in `train`: bad input is refused before the heavy imports
    if args.n < 1:
        print(f"rgsweep show: error: --n must be >= 1, got {args.n}", file=sys.stderr)
        return EXIT_USAGE
    from rgsweep.analysis import samples
    from rgsweep.data.sources import DatasetError

    try:
        path = samples.save([config], args.out or f"samples-{samples.slug(config)}.png", n=args.n)
    except (DatasetError, ValueError) as e:
        print(f"rgsweep show: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(path)
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from rgsweep.models import MODELS, build_model, count_params

    shape = args.input_shape
    if len(shape) != 3:
        print("rgsweep models: error: --input-shape needs C,H,W such as 3,28,28", file=sys.stderr)
        return EXIT_USAGE
    try:  # build_model checks the sizes (positive C, H, W and classes) before any row is printed
        counts = {name: count_params(build_model(name, shape, args.num_classes)) for name in MODELS}
    except ValueError as e:
        print(f"rgsweep models: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{'model':<16}{'parameters':>14}  description (input {','.join(map(str, shape))}, "
          f"{args.num_classes} classes)")
    for name, spec in MODELS.items():
        print(f"{name:<16}{counts[name]:>14,}  {getattr(spec, 'description', '')}")
    return EXIT_OK


DESCRIPTION = ("The experiments of Zhang et al., \"Understanding deep learning requires rethinking generalization\"\n"
               "(ICLR 2017): label noise, pixel corruptions, regularizers and architectures swept on Ray Tune,\n"
               "every trial an MLflow run.")
EXAMPLES = """examples (from the checkout; `make help` lists the same as make targets):
  rgsweep sweep sweeps/demo.yaml                  the offline demo: digits, label noise 0..1 and pixel corruptions
  rgsweep sweep sweeps/paper-cpu.yaml --dry-run   the trials a sweep file expands to, without running them
  rgsweep sweep sweeps/paper-cpu.yaml --resume    continue a stopped sweep: finished trials are kept
  rgsweep report --experiment demo --check        the paper's claims judged on the runs (exit 1 if one fails)
  rgsweep ui                                      the MLflow UI over ./mlruns/mlflow.db, on 127.0.0.1
  rgsweep train --label-noise 1 --epochs 20       one trial, no Ray: mlp1x512 on digits with random labels

`rgsweep COMMAND --help` for a command's options; README.md for the rest."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rgsweep", description=DESCRIPTION, epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train one trial (no Ray), tracked in MLflow")
    p.add_argument("--config", help="YAML file of trial settings (flags override it)")
    for flag, opts in TRAIN_FLAGS:
        p.add_argument(flag, **opts)
    p.add_argument("--experiment", default="train", help="MLflow experiment (default: train)")
    p.add_argument("--run-name", help="MLflow run name (default: arch-noiseP-...-seedS)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tracking_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("show", help="draw one trial's training images (same flags as train) to a PNG")
    p.add_argument("--config", help="YAML file of trial settings (flags override it)")
    for flag, opts in TRAIN_FLAGS:
        p.add_argument(flag, **opts)
    p.add_argument("--out", help="PNG to write (default: samples-<condition>.png here)")
    p.add_argument("--n", type=int, default=10, help="images per row (default 10: one per class)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("models", help="list the models with their parameter counts")
    p.add_argument("--input-shape", type=_shape, default=(3, 28, 28), help="C,H,W (default 3,28,28)")
    p.add_argument("--num-classes", type=int, default=10)
    p.set_defaults(func=cmd_models)

    # Other modules add their own subcommands; an import error there must not break `train`.
    for module in ("rgsweep.commands", "rgsweep.analysis.commands"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.register(sub)
    return parser


def unknown_args_error(command: str, extra: list[str], argv: list[str]) -> str:
    """argparse's "unrecognized arguments" line, named after the subcommand, and for `sweep` and `tune`
    the `--set` form of a trial key given as a flag (`--epochs 3` is `--set epochs=3` there)."""
    line = f"rgsweep {command}: error: unrecognized arguments: {' '.join(extra)}"
    if command not in ("sweep", "tune"):
        return line
    hints = []
    for arg in dict.fromkeys(a for a in extra if a.startswith("--")):
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key in TrialConfig.model_fields:
            if not eq:  # its value is the word after it on the command line (argparse may have taken it)
                i = argv.index(arg)
                nxt = argv[i + 1] if i + 1 < len(argv) else ""
                value = nxt if nxt and not nxt.startswith("--") else "VALUE"
            hints.append(f"--set {key}={value}")
    return line + (f"; trial keys go through --set: {' '.join(hints)}" if hints else "")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parser.parse_known_args(argv)
    if extra:
        print(unknown_args_error(args.command, extra, argv), file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"rgsweep {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `rgsweep models | head`: the reader left; no traceback, the shell's 141
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit fails too
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
