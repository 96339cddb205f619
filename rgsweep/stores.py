"""Where the MLflow store is, from the URI as the user gave it: string and path work only, no MLflow import,
no folder created (tunefile.py's --dry-run prints these without touching anything). tracking.py opens
the store; its `resolve_tracking_uri` is `absolute_uri` plus the SQLite file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from rgsweep.config import ConfigError

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def given_uri(uri: str | None = None) -> str:
    """The store as the user gave it: flag > $MLFLOW_TRACKING_URI > the default (relative paths kept)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, as written (`sqlite:///rel/x.db` relative to the current
    directory, `sqlite:////abs/x.db` absolute); None for any other store."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def absolute_uri(uri: str | None = None) -> str:
    """Flag > $MLFLOW_TRACKING_URI > ./mlruns/mlflow.db. Relative SQLite paths become absolute so that
    processes started elsewhere (Ray workers, notebooks) open the same file."""
    uri = given_uri(uri)
    db = sqlite_file(uri)
    if db is not None:
        if not db.is_absolute():
            uri = f"sqlite:///{db.resolve()}"
    elif uri.startswith("file:") or "://" not in uri:
        raise ConfigError(  # a ValueError: exit 2 with this line at the command line
            f"tracking URI {uri!r}: MLflow's file store is refused since 3.13; "
            "use sqlite:///mlruns/mlflow.db or an http(s):// tracking server"
        )
    return uri


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store go beside the database (mlruns/); a server decides for itself."""
    db = sqlite_file(uri)
    return db.parent.as_uri() if db is not None else None
