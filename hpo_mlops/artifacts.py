"""Small JSON documents kept as artifacts of the study's MLflow run (the rule's state).

Why an artifact and not tags: a tag holds 8,000 characters, so the reports a rule decides
on had to be cut to the latest few hundred per trial, and a study whose trials report
thousands of steps could not be resumed exactly; an artifact has no such limit.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

log = logging.getLogger("hpo_mlops.artifacts")
_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def save_json(tracker: Any, path: str, doc: Any) -> None:
    """Write ``doc`` as ``path`` among the study run's artifacts (replacing it)."""
    try:
        tracker.client.log_text(tracker.parent_run_id, json.dumps(doc), path)
    except Exception as exc:  # noqa: BLE001 - the study goes on; resume then replays reports
        log.warning("could not save %s on the study run: %s", path, exc)


def load_json(tracker: Any, path: str) -> Any:
    """``path`` from the study run's artifacts, or ``None`` if it was never written."""
    old = os.environ.get(_BAR)
    os.environ[_BAR] = "false"  # MLflow draws a progress bar for every download
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = tracker.client.download_artifacts(tracker.parent_run_id, path, tmp)
        except Exception:  # noqa: BLE001 - absent (an older study) or unreadable
            return None
        finally:
            if old is None:
                os.environ.pop(_BAR, None)
            else:
                os.environ[_BAR] = old
        if not os.path.isfile(local):
            return None
        with open(local) as fh:
            return json.load(fh)
