"""Glue between a study and a DVC pipeline: what ``search`` writes, and provenance tags.

Why tags: a trial in the MLflow UI must point to the exact code and data that produced
it. Every run the pipeline writes (the study run, each trial run, the model) is tagged
with ``mlflow.source.git.commit`` (the tag the MLflow UI shows as the source version) and,
for each DVC-tracked path listed in ``tracking.dvc_data``, its hash from ``dvc.lock``
(``dvc.data.<path>``, and ``dvc.data_hash`` for all of them together). ``dvc repro`` writes
a stage's ``dvc.lock`` entry as soon as that stage ends, so while ``search`` runs the hash
of the data ``prepare`` produced is already there.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpo_mlops.results import TrialState

GIT_COMMIT = "mlflow.source.git.commit"
DATA_HASH = "dvc.data_hash"


def git_commit(cwd: str | os.PathLike[str] | None = None) -> tuple[str | None, bool]:
    """``(HEAD commit, working tree dirty?)``, or ``(None, False)`` outside a git repo."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=20, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=20,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, False
    return sha or None, bool(dirty)


def dvc_hashes(paths: Sequence[str], root: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """``{path: md5}`` of each path found as an output (or dependency) in ``dvc.lock``;
    ``"untracked"`` for a path the lock does not know yet. ``{}`` without a ``dvc.lock``."""
    import yaml

    base = Path(root or os.environ.get("DVC_ROOT") or ".")
    lock = base / "dvc.lock"
    if not paths or not lock.is_file():
        return {}
    doc = yaml.safe_load(lock.read_text()) or {}
    known: dict[str, str] = {}
    for stage in (doc.get("stages") or {}).values():
        for kind in ("deps", "outs"):  # outs win: they are what the producing stage wrote
            for entry in stage.get(kind) or []:
                h = entry.get("md5") or entry.get("hash") or entry.get("etag")
                if entry.get("path") and h and (kind == "outs" or entry["path"] not in known):
                    known[os.path.normpath(entry["path"])] = str(h)
    return {p: known.get(os.path.normpath(p), "untracked") for p in paths}


def provenance_tags(data: Sequence[str] = (), root: str | os.PathLike[str] | None = None
                    ) -> dict[str, str]:
    """Tags that tie a run to its code (git) and data (DVC); see the module docstring."""
    tags: dict[str, str] = {}
    sha, dirty = git_commit(root)
    if sha:
        tags[GIT_COMMIT] = sha
        tags["git.dirty"] = str(dirty).lower()
    hashes = dvc_hashes(data, root)
    for path, h in hashes.items():
        tags[f"dvc.data.{path}"] = h
    if hashes:
        joined = ";".join(f"{p}={h}" for p, h in sorted(hashes.items()))
        tags[DATA_HASH] = (next(iter(hashes.values())) if len(hashes) == 1
                           else hashlib.md5(joined.encode()).hexdigest())
    return tags


def study_run_id(study: Any) -> str | None:
    """The MLflow run id of the study (``None`` when tracking is off or nothing ran).

    Read from the study's tracker: the study has no public accessor for it yet."""
    tracker = getattr(study, "_tracker", None)
    return getattr(tracker, "parent_run_id", None)


def tag_runs(study: Any, tags: dict[str, str], since: float | None = None) -> int:
    """Tag the study's run and its trial runs that ended after ``since`` (unix time; all of
    them when ``None``), so trials an earlier invocation ran keep their own commit and
    data. Returns how many runs were tagged."""
    run_id = study_run_id(study)
    if not tags or run_id is None:
        return 0
    from mlflow.entities import RunTag

    client = study._tracker.client
    batch = [RunTag(k, v) for k, v in tags.items()]
    ids = [run_id] + [t.run_id for t in study.trials if t.run_id is not None
                      and (since is None or (t.end or 0) >= since)]
    for rid in ids:
        client.log_batch(rid, tags=batch)
    return len(ids)


def summary(study: Any, started: float | None = None) -> dict[str, Any]:
    """Counts by state, the best trial and where the study lives: the search report."""
    trials = study.trials
    states = {s.value.lower(): sum(1 for t in trials if t.state is s)
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED)}
    out: dict[str, Any] = {"study": study.name, "metric": study.metrics[0] if len(study.metrics) == 1
                           else list(study.metrics),
                           "mode": study.modes[0] if len(study.modes) == 1 else list(study.modes),
                           "n_trials": len(trials), **states}
    if len(study.metrics) == 1 and any(t.state is TrialState.COMPLETE for t in trials):
        try:
            best = study.best_trial
        except ValueError:  # loaded without a best (e.g. every value failed)
            best = None
        if best is not None:
            out.update(best_value=best.value, best_trial=best.number, best_params=best.params)
    elif len(study.metrics) > 1:
        out["pareto_front"] = [t.number for t in study.best_trials]
    if started is not None:
        out["duration_s"] = round(time.time() - started, 3)
    tracker = getattr(study, "_tracker", None)
    if tracker is not None:
        out.update(tracking_uri=tracker.tracking_uri, experiment_id=tracker.experiment_id,
                   study_run_id=study_run_id(study))
    return out


def write_outputs(study: Any, out_dir: str | os.PathLike[str], report: dict[str, Any],
                  log_plots: bool = True) -> dict[str, Path]:
    """What the ``search`` stage hands on: ``trials.csv``, ``best_params.yaml``,
    ``report.json`` (the whole report), ``metrics.json`` (its numbers, for ``dvc metrics
    show`` / ``dvc exp show``), ``history.csv`` (a DVC data plot) and ``plots/*.png``; the
    PNGs and the report are also logged on the study's MLflow run."""
    from hpo_mlops.plots import save_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"trials": out / "trials.csv", "report": out / "report.json",
             "metrics": out / "metrics.json", "history": out / "history.csv"}
    df = study.trials_dataframe()
    df.to_csv(paths["trials"], index=False)
    if "best_trial" in report or "pareto_front" in report:
        paths["best_params"] = out / "best_params.yaml"
        study.export_best(str(paths["best_params"]))
    _history_csv(study, paths["history"])
    paths["report"].write_text(json.dumps(report, indent=2, default=str) + "\n")
    numbers = {k: report[k] for k in ("n_trials", "complete", "pruned", "failed", "duration_s")
               if k in report}
    if "best_value" in report:
        numbers = {f"best_{report['metric']}": report["best_value"], **numbers}
    paths["metrics"].write_text(json.dumps(numbers, indent=2) + "\n")
    plots = save_plots(study, out / "plots")
    paths.update({f"plot:{k}": v for k, v in plots.items()})
    run_id = study_run_id(study)
    if log_plots and run_id is not None:
        client = study._tracker.client
        for p in plots.values():
            client.log_artifact(run_id, str(p), "plots")
        client.log_artifact(run_id, str(paths["report"]))
    return paths


def _history_csv(study: Any, path: Path) -> None:
    """trial, value, best_so_far (completed trials, first metric): DVC draws it natively."""
    sign = 1 if study.modes[0] == "min" else -1
    best = None
    lines = ["trial,value,best_so_far"]
    for t in study.trials:
        if t.state is not TrialState.COMPLETE or t.value is None:
            continue
        best = t.value if best is None or sign * t.value < sign * best else best
        lines.append(f"{t.number},{t.value},{best}")
    path.write_text("\n".join(lines) + "\n")
