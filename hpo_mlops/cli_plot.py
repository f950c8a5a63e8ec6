"""``hpo-mlops plot KIND STUDY...``: a plot of recorded studies, as a PNG (or SVG, PDF).

    hpo-mlops plot regret tpe-digits random-digits -o regret.png
    hpo-mlops plot partial-dependence digits --params alpha,loss

Studies are read by name from the MLflow tracking store (``--tracking-uri``; by default the
``tracking.uri`` of ./params.yaml when there is one, else MLflow's default), so studies run
at different times, by different people, compare on one figure. Bad input (a kind, study or
parameter that does not exist, a study without a completed trial) exits with code 2 and
one line saying what is allowed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from hpo_mlops.cli import DebugOpt, _errors, _load, app
from hpo_mlops.errors import ConfigError

#: kind -> the function of hpo_mlops.plots that draws it
_DRAW = {"regret": "regret", "partial-dependence": "partial_dependence",
         "history": "optimization_history", "parallel": "parallel_coordinates",
         "importance": "param_importance", "curves": "learning_curves"}
KINDS = tuple(_DRAW)
FORMATS = (".png", ".svg", ".pdf", ".jpg")


def recorded_study(name: str, tracking_uri: str | None = None) -> Any:
    """Study ``name`` as its latest run recorded it in the tracking store, its trials
    loaded: a :class:`~hpo_mlops.study.Study` built from the stored space, metric and mode,
    for reading (plots, tables), not for running on (its sampler is a placeholder)."""
    from hpo_mlops.study import Study
    from hpo_mlops.tracking import Tracker

    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():  # opening a missing sqlite store would create it
            raise ConfigError(f"no MLflow store at {path} (tracking URI {tracking_uri}; "
                              f"give another with --tracking-uri)")
    tracker = Tracker(tracking_uri)
    tracker.find_study(name)
    if tracker.parent_run_id is None:
        names = sorted(e.name for e in tracker.client.search_experiments()
                       if e.name != "Default")
        raise ConfigError(f"study {name!r} is not recorded in {tracker.tracking_uri}; "
                          f"recorded: {', '.join(names) or 'none'}")
    run = tracker.client.get_run(tracker.parent_run_id)
    space = json.loads(run.data.tags["hpo.space"])
    metric = run.data.params.get("metric", "loss").split(",")
    mode = run.data.params.get("mode", "min").split(",")
    study = Study(name, space, metric, mode, sampler="random", scheduler="fifo",
                  tracking_uri=tracker.tracking_uri, resume=True)
    study.trials  # noqa: B018 - loads the records now, so errors surface here
    return study


def _default_uri() -> str | None:
    """``tracking.uri`` of ./params.yaml (where the CLI's other commands read it), else
    MLflow's default (``MLFLOW_TRACKING_URI``)."""
    if os.environ.get("MLFLOW_TRACKING_URI") or not Path("params.yaml").is_file():
        return None
    try:
        return _load(Path("params.yaml"), None, check=False).tracking.uri
    except ConfigError:
        return None


@app.command()
@_errors
def plot(
    kind: Annotated[str, typer.Argument(help=f"one of: {', '.join(KINDS)}")],
    studies: Annotated[list[str], typer.Argument(
        help="study names in the tracking store (several for regret)", show_default=False)],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="image file, .png/.svg/.pdf/.jpg (default: KIND.png)")] = None,
    params: Annotated[str | None, typer.Option(
        "--params", help="partial-dependence: one or two parameters, a,b (default: the most "
        "important one)")] = None,
    optimum: Annotated[float | None, typer.Option(
        help="regret: the task's known best value; plots |best so far - optimum|")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="MLflow store (default: tracking.uri of ./params.yaml, else "
        "MLflow's default)")] = None,
    debug: DebugOpt = False,
) -> None:
    """Draw KIND for STUDY (regret: one or more studies side by side) into an image."""
    if kind not in KINDS:
        raise ConfigError(f"plot kind {kind!r} is unknown; allowed: {', '.join(KINDS)}")
    if len(studies) > 1 and kind != "regret":
        raise ConfigError(f"plot {kind} draws one study, got {len(studies)}; only regret "
                          f"draws several")
    if params is not None and kind != "partial-dependence":
        raise ConfigError("--params: only for partial-dependence")
    if optimum is not None and kind != "regret":
        raise ConfigError("--optimum: only for regret")
    out = output or Path(f"{kind}.png")
    if out.suffix.lower() not in FORMATS:
        raise ConfigError(f"--output {out}: the file name must end in one of "
                          f"{', '.join(FORMATS)}")
    uri = tracking_uri or _default_uri()
    loaded = [recorded_study(name, uri) for name in studies]
    from hpo_mlops.results import TrialState

    for study in loaded:
        if not any(t.state is TrialState.COMPLETE for t in study.trials):
            counts = {s.value.lower(): sum(t.state is s for t in study.trials)
                      for s in (TrialState.PRUNED, TrialState.FAILED)}
            raise ConfigError(f"study {study.name!r} has no completed trial ({len(study.trials)} "
                              f"recorded: {counts['pruned']} pruned, {counts['failed']} "
                              f"failed); plots need at least one")
    from hpo_mlops import plots

    draw = getattr(plots, _DRAW[kind])
    if kind == "regret":
        fig = draw(loaded, optimum=optimum)
    elif kind == "partial-dependence":
        names = [p.strip() for p in params.split(",")] if params else None
        fig = draw(loaded[0], names)
    else:
        fig = draw(loaded[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"{kind} of {', '.join(studies)} -> {out}")
