"""An empty MLflow sqlite store to copy: creating one runs MLflow's database migrations,
which take seconds; a copy of a migrated one takes none."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_template: Path | None = None


def fresh_store(path: Path) -> str:
    """Put an empty, migrated MLflow store at ``path``; returns its tracking URI."""
    global _template
    if _template is None:
        from mlflow.tracking import MlflowClient

        folder = tempfile.mkdtemp(prefix="hpo-mlflow-template-")
        atexit.register(shutil.rmtree, folder, True)
        _template = Path(folder) / "mlflow.db"
        MlflowClient(f"sqlite:///{_template}").search_experiments()
    shutil.copyfile(_template, path)
    return f"sqlite:///{path}"
