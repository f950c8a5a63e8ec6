"""The ``hpo-mlops`` command line: run a study described in ``params.yaml`` and inspect it.

The progress display subscribes to the study's trial events (``Study.subscribe``): which
trial started on which worker, which finished, as the ledger moves them. ``optimize`` runs
in the main thread (so Ctrl-C reaches it and leaves the study resumable); the display draws
from a second thread what the events told it.

Exit codes: 0 success; 1 the study failed (too many failures, no completed trial, or an
unexpected error); 2 a bad configuration or command line; 130 interrupted (Ctrl-C).
Errors are one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from hpo_mlops.errors import ConfigError, HPOError, RegistryError, SpaceError, TooManyFailures

EXAMPLES = """
\b
Examples:
  hpo-mlops run                                  # the study in ./params.yaml
  hpo-mlops run params.yaml --set study.n_trials=20 --set sampler=random
  hpo-mlops run params.yaml --out results/search # + trials.csv, best_params.yaml, plots
  hpo-mlops resume params.yaml                   # continue after Ctrl-C or a crash
  hpo-mlops status                               # trials by state, best, running trials
  hpo-mlops best --format json                   # best parameters and value
  hpo-mlops export -o trials.csv                 # the trials table as CSV
  hpo-mlops cluster job-script --set cluster.kind=slurm   # the batch script, not submitted
  dvc exp run -S study.n_trials=20               # the same from a DVC pipeline
"""

app = typer.Typer(
    name="hpo-mlops",
    help="Hyperparameter optimization on Dask, tracked in MLflow, driven by params.yaml.",
    epilog=EXAMPLES,
    rich_markup_mode=None,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ParamsArg = Annotated[Path, typer.Argument(help="the study's params.yaml")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", "-S", metavar="KEY=VALUE",
    help="override a value of params.yaml, e.g. study.n_trials=20 (repeatable; YAML values)")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show the traceback of an error")]


class ProgressMode(str, Enum):
    auto = "auto"
    live = "live"
    plain = "plain"
    quiet = "quiet"


class Format(str, Enum):
    yaml = "yaml"
    json = "json"


# -- errors: one line, a code -------------------------------------------------------------------
def _fail(message: str, code: int, debug: bool) -> typer.Exit:
    if debug:
        traceback.print_exc()
    first = " ".join(message.strip().splitlines()[:1]) or "failed"
    print(f"hpo-mlops: error: {first}", file=sys.stderr)
    return typer.Exit(code)


def _errors(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn every error of a command into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        debug = bool(kwargs.get("debug")) or os.environ.get("HPO_MLOPS_DEBUG") == "1"
        try:
            fn(*args, **kwargs)
        except typer.Exit:
            raise
        except (ConfigError, SpaceError, RegistryError) as exc:
            raise _fail(str(exc), 2, debug) from None
        except (TooManyFailures, HPOError) as exc:
            raise _fail(str(exc), 1, debug) from None
        except BrokenPipeError:  # `hpo-mlops export | head`: the reader had enough
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            raise _fail("interrupted; the running trials were recorded as interrupted and "
                        "`hpo-mlops resume` runs them again", 130, debug) from None
        except Exception as exc:  # noqa: BLE001 - the CLI's contract is one line + a code
            hint = "" if debug else " (run with --debug for the traceback)"
            raise _fail(f"{type(exc).__name__}: {exc}{hint}", 1, debug) from None

    return wrapper


class StudyFailed(HPOError):
    """The study ran but produced nothing usable (e.g. no completed trial)."""


# -- progress -----------------------------------------------------------------------------------
def _fmt_time(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


class Progress:
    """Listens to the study's trial events; draws a live panel or prints plain lines, and
    keeps ``.hpo-mlops/<study>.json`` up to date for ``hpo-mlops status``.

    Why events: the display learns of a trial the moment the ledger moves it (started on a
    worker, paused, finished), in the manager's thread and in order, instead of polling the
    study's records from another thread and retrying when it caught them changing.
    """

    def __init__(self, study: Any, client: Any, mode: ProgressMode, n_trials: int | None,
                 timeout: float | None, status_file: Path | None, interval: float = 0.5) -> None:
        self.study, self.client, self.mode = study, client, mode
        self.n_trials, self.timeout, self.status_file = n_trials, timeout, status_file
        self.interval = interval
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._running: dict[int, dict[str, Any]] = {}
        self._finished: dict[int, Any] = {}
        self._new: list[Any] = []  # finished since the last plain print
        self._base = 0
        self._snapshot: dict[str, Any] = {}

    # -- data -----------------------------------------------------------------------------
    def on_event(self, kind: str, rec: Any) -> None:
        """A subscriber of the study (``Study.subscribe``): called in the manager's thread."""
        with self._lock:
            if kind == "started":
                self._running[rec.number] = {"trial": rec.number, "worker": rec.worker,
                                             "state": "running", "since": time.time()}
                return
            self._running.pop(rec.number, None)
            if kind == "finished":
                self._finished[rec.number] = rec
                self._new.append(rec)

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            trials = list(self._finished.values())
            running = [{**{k: v for k, v in r.items() if k != "since"},
                        "seconds": now - r["since"]}
                       for _, r in sorted(self._running.items())]
        counts = {s: 0 for s in ("COMPLETE", "PRUNED", "FAILED")}
        for t in trials:
            counts[t.state.value] = counts.get(t.state.value, 0) + 1
        best = None
        if len(self.study.metrics) == 1:
            with contextlib.suppress(ValueError, HPOError):
                b = self.study.best_trial
                best = {"trial": b.number, "value": b.value, "params": b.params}
        done_now = len(trials) - self._base
        elapsed = now - self.started
        eta = None
        if self.n_trials is not None and done_now > 0:
            eta = elapsed / done_now * max(0, self.n_trials - len(trials))
        if self.timeout is not None:
            eta = min(eta if eta is not None else float("inf"), max(0.0, self.timeout - elapsed))
        return {"study": self.study.name, "pid": os.getpid(), "started": self.started,
                "updated": now, "finished": len(trials), "counts": counts,
                "running": running, "best": best, "elapsed": elapsed, "eta": eta,
                "n_trials": self.n_trials}

    # -- drawing --------------------------------------------------------------------------
    def _line(self, s: dict[str, Any]) -> str:
        c = s["counts"]
        total = f"/{s['n_trials']}" if s["n_trials"] else ""
        n_run = sum(1 for r in s["running"] if r["state"] == "running")
        best = (f"best {self.study.metrics[0]}={s['best']['value']:.6g} (trial {s['best']['trial']})"
                if s["best"] else "best -")
        return (f"done {s['finished']}{total}  running {n_run}  complete {c['COMPLETE']}  "
                f"pruned {c['PRUNED']}  failed {c['FAILED']}  {best}  "
                f"elapsed {_fmt_time(s['elapsed'])}  eta {_fmt_time(s['eta'])}")

    def _print_new(self, s: dict[str, Any]) -> None:
        """One line per newly finished trial, then one status line (CI logs, pipes)."""
        with self._lock:
            new, self._new = self._new, []
        for t in new:
            if t.state.value == "FAILED":
                what = f"error: {(t.error or '?').splitlines()[0][:200]}"
            else:
                what = " ".join(f"{m}={v:.6g}" for m, v in
                                zip(self.study.metrics, t.values or [], strict=False))
            where = f" at step {t.pruned_step}" if t.pruned_step is not None else ""
            print(f"trial {t.number} {t.state.value.lower()}{where}: {what}", flush=True)
        if new:
            print(f"  [{self._line(s)}]", flush=True)

    def _panel(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        s = self._snapshot
        if not s:
            return f"{self.study.name}: starting..."
        table = Table.grid(padding=(0, 2))
        table.add_row(f"[bold]{self.study.name}[/]", self._line(s))
        bar = Table.grid(padding=(0, 2))  # a grid row ends its line; a bare bar does not
        bar.add_row(ProgressBar(total=s["n_trials"] or None, completed=s["finished"], width=60),
                    f"{s['finished']}/{s['n_trials'] or '?'} trials")
        rows: list[Any] = [table, bar]
        if s["running"]:
            run = Table(show_header=True, header_style="dim", box=None, padding=(0, 2))
            for col in ("trial", "worker", "state", "for"):
                run.add_column(col)
            for r in s["running"][:12]:
                run.add_row(str(r["trial"]), r["worker"], r["state"],
                            f"{r['seconds']:.1f}s" if r["seconds"] is not None else "")
            rows.append(run)
        if s["best"]:
            rows.append(f"best params: {s['best']['params']}")
        return Group(*rows)

    def _write_status(self, s: dict[str, Any], final: bool = False) -> None:
        if self.status_file is None:
            return
        doc = {**s, "done": final}
        self.status_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, default=str))
        tmp.replace(self.status_file)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def tick(self) -> None:
        try:
            self._snapshot = self.snapshot()
            if self.mode is ProgressMode.plain:
                self._print_new(self._snapshot)
            self._write_status(self._snapshot)
        except Exception:  # noqa: BLE001 - a display must never stop the study
            pass

    @contextlib.contextmanager
    def show(self) -> Iterator[None]:
        self._finished = {t.number: t for t in self.study.trials}  # an earlier run's
        self._base = len(self._finished)
        unsubscribe = self.study.subscribe(self.on_event)
        live = None
        if self.mode is ProgressMode.live:
            from rich.live import Live

            live = Live(get_renderable=self._panel, refresh_per_second=4, transient=False)
            live.start()
        self._thread = threading.Thread(target=self._loop, name="hpo-progress", daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            unsubscribe()
            self._stop.set()
            self._thread.join()
            self.tick()
            if live is not None:
                live.stop()
            if self._snapshot:
                self._write_status(self._snapshot, final=True)


def _progress_mode(mode: ProgressMode) -> ProgressMode:
    if mode is not ProgressMode.auto:
        return mode
    tty = sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    return ProgressMode.live if tty else ProgressMode.plain


def _status_file(cfg: Any) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in cfg.study.name)
    return cfg.base_dir / ".hpo-mlops" / f"{safe}.json"


# -- commands -----------------------------------------------------------------------------------
def _load(params: Path, overrides: list[str] | None, **kw: Any) -> Any:
    from hpo_mlops.config import load_config

    return load_config(params, overrides or (), **kw)


def _run(params: Path, overrides: list[str] | None, out: Path | None, progress: ProgressMode,
         resume: bool | None) -> None:
    from hpo_mlops.cluster import connect
    from hpo_mlops.config import optimize_kwargs
    from hpo_mlops.pipeline import provenance_tags, summary, tag_runs, write_outputs
    from hpo_mlops.study import Study

    cfg = _load(params, overrides)
    if resume is not None:
        cfg.study.resume = resume
    kwargs = optimize_kwargs(cfg)
    study = Study.from_config(cfg)
    mode = _progress_mode(progress)
    started = time.time()
    address, cluster = kwargs.pop("address", None), kwargs.pop("cluster", None)
    if mode is not ProgressMode.quiet:
        where = address or f"{cluster.get('kind', 'local')} cluster"
        budget = " and ".join(b for b in (
            f"{cfg.study.n_trials} trials" if cfg.study.n_trials else "",
            f"{cfg.study.timeout:g} s" if cfg.study.timeout else "") if b) or "the whole grid"
        print(f"study {study.name}: {budget}, sampler {study.sampler.describe().get('name')}, "
              f"on {where}", flush=True)
    try:
        with connect(address=address, cluster=cluster) as client:
            reporter = Progress(study, client, mode, cfg.study.n_trials, cfg.study.timeout,
                                _status_file(cfg))
            with reporter.show():
                study.optimize(client=client, **kwargs)
    finally:
        if cfg.tracking.enabled:
            try:
                tag_runs(study, provenance_tags(cfg.tracking.dvc_data, cfg.base_dir), started)
            except Exception as exc:  # noqa: BLE001 - the study's own outcome comes first
                print(f"hpo-mlops: warning: could not tag the MLflow runs with the git commit "
                      f"and data hash: {exc}", file=sys.stderr)
    report = summary(study, started)
    if not report.get("complete"):
        last = next((t.error for t in reversed(study.trials) if t.error), None)
        raise StudyFailed(f"study {study.name!r} has no completed trial ({report['failed']} "
                          f"failed, {report['pruned']} pruned)"
                          + (f"; last error: {last}" if last else ""))
    if out is not None:
        write_outputs(study, out, report, log_plots=cfg.tracking.enabled)
    if mode is not ProgressMode.quiet:
        if "best_value" in report:
            print(f"best trial {report['best_trial']}: {study.metrics[0]}="
                  f"{report['best_value']:.6g} {json.dumps(report['best_params'])}", flush=True)
        if out is not None:
            print(f"outputs in {out}/", flush=True)


@app.command()
@_errors
def run(
    params: ParamsArg = Path("params.yaml"),
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="also write trials.csv, best_params.yaml, report.json, history.csv "
        "and plots/*.png here (plots are logged on the study's MLflow run too)")] = None,
    progress: Annotated[ProgressMode, typer.Option(
        help="live panel on a terminal, plain lines otherwise (auto)")] = ProgressMode.auto,
    debug: DebugOpt = False,
) -> None:
    """Run the study of PARAMS (resumes a recorded study of that name unless study.resume
    is false)."""
    _run(params, set_, out, progress, resume=None)


@app.command()
@_errors
def resume(
    params: ParamsArg = Path("params.yaml"),
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="as for run")] = None,
    progress: Annotated[ProgressMode, typer.Option(help="as for run")] = ProgressMode.auto,
    debug: DebugOpt = False,
) -> None:
    """Continue the recorded study of PARAMS: finished trials are kept, interrupted ones run
    again, study.n_trials counts the total."""
    _run(params, set_, out, progress, resume=True)


def _records(cfg: Any) -> list[Any]:
    """Every trial record of the study's latest run in MLflow (interrupted ones included);
    ``[]`` when there is none (a missing sqlite store is not created)."""
    from hpo_mlops.tracking import Tracker

    if not cfg.tracking.enabled:
        raise ConfigError("tracking.enabled: is false, so nothing was recorded to read")
    uri = cfg.tracking.uri
    if uri is None:
        import mlflow

        uri = mlflow.get_tracking_uri()
    # opening a missing sqlite store creates it, racing a `run` that is creating it now
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return []
    return Tracker(uri).find_study(cfg.study.name)


def _recorded(params: Path, overrides: list[str] | None) -> tuple[Any, Any]:
    """The config and the recorded study, its trials loaded; fails when nothing was
    recorded."""
    from hpo_mlops.study import Study

    cfg = _load(params, overrides, check=False)
    if not _records(cfg):
        raise StudyFailed(f"no recorded trial of study {cfg.study.name!r} in "
                          f"{cfg.tracking.uri or 'the default MLflow store'}")
    study = Study.from_config(cfg, resume=True)
    study.trials  # noqa: B018 - loads the records; best_trial alone does not
    return cfg, study


@app.command()
@_errors
def status(params: ParamsArg = Path("params.yaml"), set_: SetOpt = None,
           debug: DebugOpt = False) -> None:
    """Trials by state, the best so far, and the trials running now with their workers."""
    cfg = _load(params, set_, check=False)
    records = _records(cfg)
    live = _live_status(_status_file(cfg))
    if not records and live is None:
        raise StudyFailed(f"no recorded trial of study {cfg.study.name!r} in "
                          f"{cfg.tracking.uri or 'the default MLflow store'}")
    counts: dict[str, int] = {}
    for r in records:
        counts[r.state.value.lower()] = counts.get(r.state.value.lower(), 0) + 1
    print(f"study {cfg.study.name}")
    print(f"trials: {len(records)}  " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if records:
        _, study = _recorded(params, set_)
        if len(study.metrics) == 1:
            try:
                b = study.best_trial
                print(f"best: {study.metrics[0]}={b.value:.6g} (trial {b.number}) "
                      f"{json.dumps(b.params)}")
            except ValueError:
                print("best: - (no completed trial)")
        else:
            print(f"pareto front: trials {[t.number for t in study.best_trials]}")
    if live is None:
        print("running: none (no hpo-mlops run of this study is active here)")
        return
    rows = list(live["running"])
    age = time.time() - live["updated"]
    print(f"running: {sum(r['state'] == 'running' for r in rows)} "
          f"(hpo-mlops pid {live['pid']}, elapsed {_fmt_time(live['elapsed'])}, "
          f"eta {_fmt_time(live['eta'])}, updated {age:.0f}s ago)")
    for r in rows:
        took = f" for {r['seconds']:.1f}s" if r.get("seconds") is not None else ""
        print(f"  trial {r['trial']} {r['state']} on {r['worker']}{took}")


def _live_status(path: Path) -> dict[str, Any] | None:
    """The status file of a run still going (its process alive), else None."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if doc.get("done"):
        return None
    try:
        os.kill(int(doc["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None
    return doc


@app.command()
@_errors
def best(
    params: ParamsArg = Path("params.yaml"),
    set_: SetOpt = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="yaml or json")] = Format.yaml,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to a file")] = None,
    schedule: Annotated[bool, typer.Option(
        "--schedule", help="PBT: the best member's params over budget, as YAML")] = False,
    debug: DebugOpt = False,
) -> None:
    """The best parameters and value (the Pareto front for several metrics)."""
    _, study = _recorded(params, set_)
    try:
        if schedule:
            text = study.export_best_schedule(str(output) if output else None)
        else:
            text = study.export_best(str(output) if output else None, fmt=format.value)
    except ValueError as exc:
        raise StudyFailed(str(exc)) from None
    if output is None:
        sys.stdout.write(text)


@app.command()
@_errors
def export(
    params: ParamsArg = Path("params.yaml"),
    set_: SetOpt = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="CSV file (default: stdout)")] = None,
    debug: DebugOpt = False,
) -> None:
    """The trials table (one row per trial: state, values, params, metrics) as CSV."""
    _, study = _recorded(params, set_)
    df = study.trials_dataframe()
    if output is None:
        df.to_csv(sys.stdout, index=False)
    else:
        df.to_csv(output, index=False)


cluster_app = typer.Typer(help="The cluster of a study's params.yaml.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")

from hpo_mlops.cli_tokens import token_app  # noqa: E402 - its commands use _errors above

app.add_typer(token_app, name="token")

import hpo_mlops.cli_plot  # noqa: E402,F401 - registers `plot` (it uses _errors above)
import hpo_mlops.cli_serve  # noqa: E402,F401 - registers `serve` (it uses _errors above)


@cluster_app.command("job-script")
@_errors
def job_script(params: ParamsArg = Path("params.yaml"), set_: SetOpt = None,
               debug: DebugOpt = False) -> None:
    """The batch script one worker job would be submitted with (nothing is submitted)."""
    from hpo_mlops import cluster
    from hpo_mlops.config import cluster_spec

    cfg = _load(params, set_, check=False)
    if cfg.cluster.address is not None:
        raise ConfigError("cluster.address: a running scheduler submits no batch jobs")
    spec = cluster_spec(cfg.cluster)
    sys.stdout.write(cluster.job_script({"kind": spec.pop("name"), **spec}).rstrip("\n") + "\n")


def main() -> None:
    """Console-script entry point (``hpo-mlops``)."""
    app()


if __name__ == "__main__":
    main()
