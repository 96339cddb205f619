"""The walls between modules, checked in fresh interpreters (what a Ray worker or a notebook pays for).

- A Ray worker imports the module of its trainable (rgsweep.trials) and what the trainable imports when
  it runs: torch, Ray Tune, the training loop. Never MLflow, matplotlib or the drivers' modules (sweep,
  tune, lifecycle, tracking, analysis): each of those costs every new worker seconds before its first
  epoch (benchmarks/README.md, "Data hand-off").
- The training loop imports no Ray and no MLflow; the data and the models never import each other.
- Building the command line's parser (`rgsweep --help`) imports no MLflow, Ray or Optuna.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Each check runs in a child forked from one interpreter that has imported torch alone (a second each
# instead of a fresh torch import per check); a child sees exactly what its own imports loaded.
CHECKER = r"""
import json, os, sys
import torch  # every module below may import it
checks = json.loads(sys.argv[1])
out = {}
for name, (imports, banned) in checks.items():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        for m in imports:  # "module:function" also calls that function, with no arguments
            name, _, call = m.partition(":")
            mod = __import__(name, fromlist=["_"])
            if call:
                getattr(mod, call)()
        os.write(w, json.dumps([b for b in banned if b in sys.modules]).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    out[name] = json.loads(text) if status == 0 and text else f"child failed with status {status}"
print(json.dumps(out))
"""

DRIVER_ONLY = ["mlflow", "matplotlib", "rgsweep.tracking", "rgsweep.lifecycle", "rgsweep.sweep", "rgsweep.tune",
               "rgsweep.analysis", "rgsweep.preload", "rgsweep.progress"]
CHECKS = {
    "a Ray worker": (["ray.tune", "rgsweep.trials", "rgsweep.raytune", "rgsweep.train", "rgsweep.packed"],
                     DRIVER_ONLY),
    "the training loop": (["rgsweep.train", "rgsweep.packed"], ["ray", "mlflow", "optuna", "pandas"]),
    "the data": (["rgsweep.data.sources", "rgsweep.data.corruption", "rgsweep.data.augment",
                  "rgsweep.data.preprocess"], ["rgsweep.models"]),
    "the models": (["rgsweep.models"], ["rgsweep.data"]),
    # `rgsweep --help` and an unknown option: a command's module loads only when the command runs.
    "the command line's parser": (["rgsweep.cli:build_parser"], ["mlflow", "ray", "optuna", "pandas",
                                                                  "rgsweep.sweep", "rgsweep.tune"]),
}


def test_module_walls():
    out = subprocess.run([sys.executable, "-c", CHECKER, json.dumps(CHECKS)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(loaded) == set(CHECKS)
    broken = {name: mods for name, mods in loaded.items() if mods != []}
    assert broken == {}, f"imports across a wall: {broken}"


def test_the_command_line_and_the_sweep_and_tuning_files_import_no_torch():
    # `rgsweep --help`, a bad sweep or tuning file or option, and `rgsweep sweep FILE --dry-run` answer before torch,
    # MLflow, Ray or Optuna load (they took 3.5-7.7 s, all of it imports, before anything was checked).
    # `--dry-run --pack` too: packing is decided by the trials' GPU share (rgsweep/packing.py), not by torch.
    label_noise = REPO / "sweeps" / "label-noise.yaml"  # gpu: 0.25 per trial: its convnets pack 4 by 4
    code = ("import sys, json, contextlib, io\n"
            "import rgsweep.cli, rgsweep.sweepfile, rgsweep.tunefile, rgsweep.jobfile, rgsweep.stores, rgsweep.names\n"
            "import rgsweep.packing\n"
            "rgsweep.cli.build_parser()\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"    code = rgsweep.cli.main(['sweep', {str(label_noise)!r}, '--dry-run', '--pack', '4'])\n"
            "assert code == 0 and 'packing: 33 trials in 9 Ray trials' in out.getvalue(), out.getvalue()\n"
            "heavy = ('torch', 'numpy', 'mlflow', 'ray', 'optuna', 'pandas')\n"
            "print(json.dumps([m for m in heavy if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_model_registry_builds_exactly_the_names_config_accepts():
    # config.py checks `arch` against rgsweep/names.py without importing torch; the registry must agree
    # (the augmentations, corruptions and presets are each applied by name in their own tests).
    from rgsweep import names
    from rgsweep.models import MODELS, is_convnet

    assert tuple(MODELS) == names.MODEL_NAMES
    assert [n for n in MODELS if names.is_convnet(n) != is_convnet(n)] == []  # the driver packs by names.is_convnet
