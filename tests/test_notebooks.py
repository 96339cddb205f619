"""Every notebook in notebooks/ executes headless (real kernels, nbclient) on small exports the tests make."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from mlflow_fixtures import shared_store

from rgsweep.analysis.export import AnalysisError, export_runs, load_export
from rgsweep.analysis.notebooks import run_notebooks

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ["00_data.ipynb", "01_gen_gap_vs_label_noise.ipynb", "02_convergence_slowdown.ipynb",
             "03_corruption_types.ipynb", "04_regularizers.ipynb", "05_memorisation.ipynb"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    export_runs(shared_store(tmp_path_factory).uri, experiment="demo", out_dir=out)
    return out


def _outputs(path: Path) -> list[dict]:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{path.name}: a cell did not run"
    return [o for c in code for o in c.outputs]


def test_notebooks_are_stored_without_outputs():
    assert sorted(p.name for p in NB_DIR.glob("*.ipynb")) == NOTEBOOKS
    for path in NB_DIR.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.outputs == [] and c.execution_count is None for c in code), path.name
        # Thin: plotting lives in rgsweep.analysis, not in the notebooks.
        assert not any("plt." in c.source or "ax.plot" in c.source for c in code), path.name


def test_every_notebook_runs_on_a_small_export(export_dir, tmp_path, capfd):
    written = run_notebooks(NB_DIR, export_dir, tmp_path)
    # The kernels (children writing to this process's stderr) said nothing: over TCP each warned that it
    # ran without encryption, and a kernel left running warned "Parent appears to have exited" at exit.
    assert "IPKernelApp" not in capfd.readouterr().err
    assert [p.name for p in written] == NOTEBOOKS and all(p.exists() for p in written)
    for path in written:
        outputs = _outputs(path)
        assert not [o for o in outputs if o.output_type == "error"], path.name
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name}: no figure"
        # The notebook read the export it was given (RGSWEEP_EXPORT), not ../exports.
        assert f"12 finished trials of 13 in {export_dir}" in outputs[0]["text"]


def test_notebooks_survive_missing_factors_and_report_a_failing_one(export_dir, tmp_path):
    runs, history = load_export(export_dir)
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    # A sweep that never varied label noise or corruption and logged no clean/noisy split or steps.
    runs.drop(columns=["label_noise", "corruption", "swept"]).to_parquet(sparse / "runs.parquet")
    history = history.drop(columns=["train_acc_clean", "train_acc_noisy", "steps"])
    history.to_parquet(sparse / "history.parquet")
    nb_dir = tmp_path / "nbs"
    shutil.copytree(NB_DIR, nb_dir)
    broken = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise ValueError('boom')")])
    nbformat.write(broken, nb_dir / "99_broken.ipynb")

    with pytest.raises(AnalysisError, match=r"failed: 99_broken.ipynb: ValueError: boom \(executed"):
        run_notebooks(nb_dir, sparse, tmp_path / "out")
    for name in NOTEBOOKS:
        outputs = _outputs(tmp_path / "out" / name)
        assert not [o for o in outputs if o.output_type == "error"], name
    assert any(o.output_type == "error" for o in _outputs(tmp_path / "out" / "99_broken.ipynb"))


def test_every_notebook_runs_on_an_export_of_a_real_sweep(sweep_store, tmp_path):
    export_runs(sweep_store.uri, experiment=sweep_store.experiment, out_dir=tmp_path / "export")
    written = run_notebooks(NB_DIR, tmp_path / "export", tmp_path / "out")
    assert [p.name for p in written] == NOTEBOOKS
    for path in written:
        outputs = _outputs(path)
        assert not [o for o in outputs if o.output_type == "error"], path.name
    assert f"4 finished trials of 4 in {tmp_path / 'export'}" in _outputs(written[0])[0]["text"]


def test_run_notebooks_needs_an_export(tmp_path):
    with pytest.raises(AnalysisError, match="rgsweep export"):
        run_notebooks(NB_DIR, tmp_path, tmp_path / "out")


def test_the_command_finds_rgsweeps_notebooks_from_any_directory(tmp_path, monkeypatch, capsys):
    """From a directory without notebooks/ (where a user exported their runs) the checkout's own run; a
    notebooks/ folder with notebooks in the current directory wins, and --dir wins over both."""
    from rgsweep.analysis.notebooks import SHIPPED, notebook_dir
    from rgsweep.cli import main

    monkeypatch.chdir(tmp_path)
    assert notebook_dir(None) == SHIPPED == NB_DIR
    assert main(["notebooks", "--export", "exp"]) == 2  # past the notebooks, stopped at the missing export
    assert capsys.readouterr().err == "rgsweep notebooks: error: no export in exp: run `rgsweep export` first\n"
    (tmp_path / "notebooks").mkdir()
    assert notebook_dir(None) == SHIPPED  # an empty notebooks/ is not a notebooks folder
    shutil.copy(NB_DIR / "01_gen_gap_vs_label_noise.ipynb", tmp_path / "notebooks")
    assert notebook_dir(None) == Path("notebooks") and notebook_dir("mine") == Path("mine")
    assert main(["notebooks", "--dir", "mine"]) == 2
    assert capsys.readouterr().err == f"rgsweep notebooks: error: no notebooks in {tmp_path.resolve() / 'mine'}\n"
