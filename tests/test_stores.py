"""rgsweep/stores.py: where a store is, from its URI, without MLflow and without creating anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from rgsweep.config import ConfigError
from rgsweep.stores import absolute_uri, artifact_root, given_uri, sqlite_file


def test_sqlite_file_keeps_the_path_as_written():
    assert sqlite_file("sqlite:///mlruns/mlflow.db") == Path("mlruns/mlflow.db")
    assert sqlite_file("sqlite:////abs/x.db") == Path("/abs/x.db")
    assert sqlite_file("http://127.0.0.1:5000") is None
    assert sqlite_file("postgresql://u@h/db") is None


def test_absolute_uri_resolves_relative_sqlite_paths_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert given_uri() == "sqlite:///mlruns/mlflow.db"
    assert absolute_uri() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert absolute_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert artifact_root(absolute_uri()) == (tmp_path / "mlruns").as_uri()
    assert artifact_root("http://127.0.0.1:5000") is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "mlruns"])
def test_the_file_store_is_refused_as_a_config_error(uri):
    with pytest.raises(ConfigError, match="file store is refused"):
        absolute_uri(uri)
