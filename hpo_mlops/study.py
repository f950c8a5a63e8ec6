"""The study: the user's handle on an optimization, its results, and its resume.

``Study.optimize`` hands the work to the manager loop (:mod:`hpo_mlops.manager`);
everything tool-specific lives behind the sampler, scheduler, cluster and tracker
interfaces. The trials' state is owned by the study run's ledger (:mod:`hpo_mlops.ledger`);
the study keeps its view of them in a :class:`~hpo_mlops.trials.TrialTable` rebuilt from
the ledger's events, and subscribes its sampler, MLflow writer and best-so-far to it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from hpo_mlops import registry
from hpo_mlops.cluster import connect
from hpo_mlops.errors import ConfigError
from hpo_mlops.ledger import BUDGET_KEY, FINISHED, INTERRUPTED, PAUSED
from hpo_mlops.manager import ASKS, Run
from hpo_mlops.objective import make_objective
from hpo_mlops.results import TrialRecord, TrialState, is_number
from hpo_mlops.samplers.base import Sampler, split_seed
from hpo_mlops.schedulers.base import Scheduler
from hpo_mlops.space import Space
from hpo_mlops.tracking import Tracker
from hpo_mlops.trials import Subscriber, TrialTable

_DIRECTIONS = {"min": "minimize", "max": "maximize"}
#: the rule's exact state on the study run (saved as the study goes and at close)
RULE_STATE = "hpo/scheduler_state.json"


def _as_list(x: str | Sequence[str], what: str) -> list[str]:
    items = [x] if isinstance(x, str) else list(x)
    if not items or not all(isinstance(i, str) and i for i in items):
        raise ConfigError(f"{what}: must be a name or a list of names, got {x!r}")
    return items


class Study:
    """A named optimization whose trials are MLflow runs nested under the study's run.

    Running a study with the same ``name`` against the same tracking store again resumes
    it: finished trials are told to the sampler and never run again; ``n_trials`` counts
    the total; interrupted trials run again. ``resume=False`` starts a new study run.
    """

    def __init__(
        self,
        name: str,
        space: dict[str, Any] | Space,
        metric: str | Sequence[str] = "loss",
        mode: str | Sequence[str] = "min",
        sampler: str | dict[str, Any] | Sampler = "tpe",
        scheduler: str | dict[str, Any] = "median",
        seed: int | None = None,
        tracking_uri: str | None = None,
        resume: bool = True,
        tracking: bool = True,
        tags: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"name: must be a non-empty string, got {name!r}")
        self.name = name
        self.space = Space.from_dict(space)
        self.metrics = _as_list(metric, "metric")
        modes = _as_list(mode, "mode")
        if len(modes) == 1 and len(self.metrics) > 1:
            modes = modes * len(self.metrics)
        bad = [m for m in modes if m not in _DIRECTIONS]
        if bad or len(modes) != len(self.metrics):
            raise ConfigError(
                f"mode: needs 'min' or 'max' for each metric {self.metrics}, got {mode!r}"
            )
        self.modes = modes
        sampler, seed = split_seed(sampler, seed)
        self.sampler_spec = sampler
        self.sampler: Sampler = registry.create(registry.SAMPLERS, sampler, Sampler)
        self.sampler.setup(self.space, [_DIRECTIONS[m] for m in modes], seed)
        if isinstance(scheduler, Scheduler):
            raise ConfigError(
                "scheduler: give a name or a dict {'name': ..., **options}; the rule is "
                "built on the Dask scheduler"
            )
        # Build it here once to validate options before anything runs.
        self._scheduler_rule = registry.create(registry.SCHEDULERS, scheduler, Scheduler,
                                               mode=modes[0])
        if getattr(self.sampler, "chooses_budgets", False) and self._scheduler_rule.plans_budgets:
            raise ConfigError(
                f"scheduler: {self._scheduler_rule.name!r} plans the trials' budgets, but "
                f"sampler {self.sampler.name!r} chooses each trial's budget itself; use a rule "
                "that plans none: fifo (or asha / median to stop trials early too)")
        self.scheduler_spec = scheduler
        self.seed = seed
        self.resume = resume
        self._tracker = Tracker(tracking_uri) if tracking else None
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if self._tracker is not None:
            self._tracker.default_tags = dict(self.tags)
        self._id = uuid.uuid4().hex[:8]  # names this object's checkpoints when not tracked
        self._opened = False
        self._loaded = False
        #: every trial of the study known here, rebuilt from the ledger's events
        self.table = TrialTable()
        self._central = True  # whether the sampler here asks (else: copies on the workers)
        self._asked: dict[str, dict] = {}  # asked ahead, not yet started
        # trial -> the dict the sampler asked for it (kept, as the sampler may key on its id)
        self._own: dict[int, dict] = {}
        self._n_asked = 0
        self._best: TrialRecord | None = None
        self.budget_summary: dict[str, Any] | None = None
        #: the ``optimize`` call running now (its ``key`` names the study run on the Dask
        #: scheduler; ``request_stop()`` stops it from another thread), else ``None``
        self.active_run: Run | None = None
        self.table.subscribe(self._on_event)

    @classmethod
    def from_config(cls, cfg: Any, resume: bool | None = None) -> Study:
        """The study a ``params.yaml`` describes: a path, a parsed mapping or a
        :class:`hpo_mlops.config.Config` (validated there, errors name the key path).
        ``hpo_mlops.config.optimize_kwargs(cfg)`` gives the matching ``optimize`` arguments."""
        from hpo_mlops.config import build_study

        return build_study(cfg, resume=resume)

    # -- results ------------------------------------------------------------------------
    @property
    def trials(self) -> list[TrialRecord]:
        """Every finished trial, by number (an earlier run's trials included)."""
        self._load()
        return self.table.finished()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(kind, trial)`` as trials change while the study runs: kind is
        ``"started"``, ``"paused"`` (waiting at a rung), ``"finished"``, ``"interrupted"``
        or ``"retried"`` (its worker was lost). Called in the manager's thread, in order;
        returns a function that unsubscribes."""
        return self.table.subscribe(fn)

    @property
    def run_id(self) -> str | None:
        """The study's MLflow run (``None`` before it is opened or without tracking)."""
        if self._tracker is None:
            return None
        self._load()
        return self._tracker.parent_run_id

    @property
    def tracking_uri(self) -> str | None:
        return None if self._tracker is None else self._tracker.tracking_uri

    @property
    def best_trial(self) -> TrialRecord:
        self._load()
        if len(self.metrics) > 1:
            raise ConfigError("a multi-objective study has no single best trial; use best_trials")
        if self._best is None:
            raise ValueError(f"study {self.name!r} has no completed trial yet")
        return self._best

    @property
    def best_trials(self) -> list[TrialRecord]:
        """The Pareto front of the completed trials (the best trial for one objective)."""
        done = [t for t in self.trials if t.state is TrialState.COMPLETE and t.values]
        signs = [1 if m == "min" else -1 for m in self.modes]
        keys = [[s * v for s, v in zip(signs, t.values, strict=True)] for t in done]

        def dominated(i: int) -> bool:
            return any(all(a <= b for a, b in zip(keys[j], keys[i], strict=True))
                       and keys[j] != keys[i] for j in range(len(done)))

        return [t for i, t in enumerate(done) if not dominated(i)]

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best_trial.params)

    @property
    def best_value(self) -> float | None:
        return self.best_trial.value

    def trials_dataframe(self) -> Any:
        """One row per trial (pandas): number, state, value(s), params_*, metrics, timing."""
        import pandas as pd

        rows = []
        for t in self.trials:
            row: dict[str, Any] = {"number": t.number, "state": t.state.value}
            if len(self.metrics) == 1:
                row["value"] = t.value
            else:
                for i, m in enumerate(self.metrics):
                    row[f"values_{m}"] = t.values[i] if t.values else None
            row.update({f"params_{k}": v for k, v in t.params.items()})
            row.update({f"metrics_{k}": v for k, v in t.metrics.items() if k not in self.metrics})
            row.update(datetime_start=pd.to_datetime(t.start, unit="s") if t.start else None,
                       duration=t.duration, worker=t.worker, pruned_step=t.pruned_step,
                       error=t.error, run_id=t.run_id)
            rows.append(row)
        return pd.DataFrame(rows)

    def export_best(self, path: str | None = None, fmt: str | None = None) -> str:
        """The best params (and value) as YAML or JSON text; written to ``path`` if given."""
        fmt = fmt or ("json" if path and path.endswith(".json") else "yaml")
        if fmt not in ("yaml", "json"):
            raise ConfigError(f"format: must be 'yaml' or 'json', got {fmt!r}")
        if len(self.metrics) > 1:
            doc: Any = [{"trial": t.number, "params": t.params,
                         "values": dict(zip(self.metrics, t.values or [], strict=False))}
                        for t in self.best_trials]
        else:
            best = self.best_trial
            doc = {"trial": best.number, "params": best.params,
                   "value": {self.metrics[0]: best.value}}
        if fmt == "json":
            text = json.dumps(doc, indent=2) + "\n"
        else:
            import yaml

            text = yaml.safe_dump(doc, sort_keys=False)
        if path:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    # -- PBT (hpo_mlops/schedulers/pbt.py) -------------------------------------------------
    def best_schedule(self) -> list[dict[str, Any]]:
        """The best PBT member's hyperparameters over budget, as ``[{"budget": 0, "params":
        {...}}, {"budget": 4, "params": {...}}, ...]``: each entry holds from its budget to
        the next. It follows the member's lineage (a donor's schedule up to where the member
        copied its checkpoint), so it is what trained the best weights, and a later training
        can follow it. Only a study run with ``scheduler: {name: pbt}`` has one."""
        best = self.best_trial
        text = best.tags.get("hpo.pbt_schedule")
        if not text:
            raise ConfigError(
                f"study {self.name!r}: best trial {best.number} has no PBT schedule; only a "
                "study run with scheduler: {name: pbt, ...} records one (this study's "
                f"scheduler: {self.scheduler_spec!r})")
        return [{"budget": step, "params": params} for step, params, _ in json.loads(text)]

    def export_best_schedule(self, path: str | None = None) -> str:
        """:meth:`best_schedule` as YAML (with the trial and its value); written to ``path``
        if given."""
        import yaml

        best = self.best_trial
        doc = {"trial": best.number, "value": {self.metrics[0]: best.value},
               "schedule": self.best_schedule()}
        text = yaml.safe_dump(doc, sort_keys=False)
        if path:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    # -- ensembles (hpo_mlops/ensemble.py) ---------------------------------------------------
    def ensemble(self, k: int = 5, method: str = "caruana", **options: Any) -> Any:
        """An ensemble of up to ``k`` trials from their saved validation predictions
        (``trial.save_predictions``): Caruana's greedy selection, or the ``"topk"`` best
        with equal weights. Options: ``n_init``, ``tol``, ``max_steps``, ``y_true``, ``kind``
        (see :func:`hpo_mlops.ensemble.select`). Its ``log_model`` logs it on this study's run."""
        from hpo_mlops.ensemble import select

        ens = select(self.trials, k=k, method=method, **options)
        ens.run_id, ens.tracking_uri, ens.study = self.run_id, self.tracking_uri, self.name
        return ens

    def keep_ensemble(self, k: int = 5, method: str = "caruana", **options: Any) -> Any:
        """Select the ensemble again after every finished trial, so one is always ready:
        returns a :class:`hpo_mlops.ensemble.KeptEnsemble` whose ``latest`` is it
        (``None`` until a trial saved predictions); its ``unsubscribe()`` stops it."""
        from hpo_mlops.ensemble import KeptEnsemble

        kept = KeptEnsemble(lambda: self.table.finished(), k=k, method=method, **options)
        kept.unsubscribe = self.subscribe(kept)
        return kept

    # -- the manager loop ------------------------------------------------------------------
    def optimize(
        self,
        objective: Callable[..., Any] | Sequence[str] | str,
        n_trials: int | None = None,
        timeout: float | None = None,
        n_workers: int | None = None,
        client: Any = None,
        address: str | None = None,
        cluster: Any = None,
        max_concurrent: int | None = None,
        setup: Callable[[], Any] | None = None,
        max_failures: int | None = None,
        resources: dict[str, float] | None = None,
        queue_per_worker: int = 1,
        max_retries: int = 3,
        checkpoint_dir: str | None = None,
        asks: str = "auto",
        serving: bool = False,
    ) -> Study:
        """Run trials until ``n_trials`` (in total) are finished or ``timeout`` seconds passed.

        ``objective(params, trial)`` returns a float, a list (one per metric) or a dict of
        metrics; or give a command (list of argv with ``{param}`` placeholders) whose last
        JSON line on stdout is the result. ``setup()`` runs once per worker and its result
        is ``trial.context``. ``resources`` (e.g. ``{"GPU": 1}``) are Dask worker resources
        each trial holds. A trial whose worker is lost (its batch job was cancelled, killed or
        ran out of walltime) runs again, up to ``max_retries`` times, then is FAILED with the
        reason; it is recorded once, with its attempts in the ``hpo.attempts`` tag.
        ``checkpoint_dir`` is where ``trial.save``/``trial.load`` keep each trial's state
        between its jobs (a promoted trial resumes from it), in a folder per study run (a
        resumed study finds its own, another study never does); on HPC give a shared path.
        ``asks``: ``"workers"`` runs a copy of the sampler in every worker process, each
        asking for its own slots over the shared history (a sampler must be ``replicable``);
        ``"central"`` asks here, a few configurations ahead of the slots; ``"auto"`` (the
        default) picks ``"workers"`` where the sampler allows it (see docs/design.md).
        ``serving``: trials also come from HTTP clients (``hpo-mlops serve``, see
        docs/service.md): asks are central, the study waits for clients rather than
        stopping without workers, ``objective`` may be ``None`` (HTTP clients only) and,
        with neither ``n_trials`` nor ``timeout``, it runs until the service stops.
        """
        _check_positive(n_trials=n_trials, max_concurrent=max_concurrent, n_workers=n_workers)
        if timeout is not None and not (is_number(timeout) and timeout > 0):
            raise ConfigError(f"timeout: must be a number of seconds > 0, got {timeout!r}")
        if max_failures is not None and (not isinstance(max_failures, int) or max_failures < 0):
            raise ConfigError(f"max_failures: must be an integer >= 0, got {max_failures!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries: must be an integer >= 0, got {max_retries!r}")
        if (n_trials is None and timeout is None and not hasattr(self.sampler, "size")
                and not serving):
            raise ConfigError("give n_trials or timeout (or both): nothing else ends the study")
        fn = None if objective is None and serving else make_objective(objective, self.metrics[0])
        self.asks_centrally(asks)  # refuse a bad value before anything starts
        self._open()
        with connect(client, address, cluster, n_workers) as dask_client:
            run = Run(self, dask_client, fn, setup, n_trials, timeout, max_concurrent,
                      max_failures, resources, queue_per_worker, max_retries, checkpoint_dir,
                      asks, serving)
            self.active_run = run
            try:
                run.execute()
            finally:
                self.active_run = None
        return self

    def _load(self) -> None:
        """Read what an earlier run of this study recorded (read-only, once)."""
        if self._loaded or self._tracker is None or not self.resume:
            return
        self._loaded = True
        self._absorb(self._tracker.find_study(self.name))

    def _open(self) -> None:
        """Open (or resume) the study's MLflow run."""
        if self._opened or self._tracker is None:
            return
        params = {
            "metric": ",".join(self.metrics), "mode": ",".join(self.modes),
            "sampler": self.sampler.describe(), "scheduler": self._scheduler_rule.describe(),
            "space": self.space.to_dict(), "seed": self.seed,
        }
        self._load()
        if self._tracker.parent_run_id is not None:
            stored = self._tracker.stored_space()
            if stored is not None and json.loads(stored) != self.space.to_dict():
                raise ConfigError(
                    f"study {self.name!r} in {self._tracker.tracking_uri} was run with another "
                    f"space {json.loads(stored)}; use another name or resume=False"
                )
        self._tracker.open_study(self.name, params, self.space.to_json(), self.resume)
        self._opened = True

    def _tell(self, rec: TrialRecord) -> None:
        """Tell the sampler a trial's outcome, or, while it waits at a rung, pause it there
        with what ``tell`` would say if the rung stopped it: PRUNED, its reports so far."""
        params = self._own.get(rec.number, rec.params)
        if rec.state is not TrialState.PAUSED:
            self.sampler.tell(params, rec.to_result())
        elif rec.intermediate:
            self.sampler.pause(params, replace(rec.to_result(), state=TrialState.PRUNED))

    def _absorb(self, previous: list[TrialRecord]) -> None:
        for rec in previous:
            if rec.state.finished and rec.values is None and rec.state is not TrialState.FAILED:
                rec.values = [rec.metrics.get(m) for m in self.metrics]
        self.table.load(previous)
        for rec in previous:
            if rec.state.finished or rec.state is TrialState.PAUSED:
                self._tell(rec)
                self._update_best(rec, log=False)

    def _on_event(self, kind: str, rec: TrialRecord) -> None:
        """The study's own subscribers: its sampler (central asks), MLflow, the best."""
        if kind not in (PAUSED, FINISHED, INTERRUPTED):
            return
        if self._central and kind != INTERRUPTED:
            self._tell(rec)
        if self._tracker is not None:
            self._tracker.log_trial(rec, self.metrics)
        if kind == FINISHED:
            self._update_best(rec)

    # -- what the manager loop asks of the study --------------------------------------------
    def asks_centrally(self, asks: str) -> bool:
        """Whether this run asks here (``"central"``) or on the workers; checks ``asks``."""
        if asks not in ASKS:
            raise ConfigError(f"asks: must be one of {', '.join(ASKS)}, got {asks!r}")
        replicable = (getattr(self.sampler, "replicable", False)
                      and not isinstance(self.sampler_spec, Sampler))
        if asks == "workers" and not replicable:
            why = ("a sampler given as an object cannot be copied to the workers; give its "
                   "name" if isinstance(self.sampler_spec, Sampler) else
                   f"sampler {self.sampler.name!r} asks centrally (it is not replicable)")
            raise ConfigError(f"asks='workers': {why}; use asks='central' or 'auto'")
        self._central = asks == "central" or not replicable
        return self._central

    def ask_ahead(self, n: int) -> tuple[list[dict[str, Any]], list[str]]:
        """``n`` configurations from the sampler for the ledger's queue, and their names.

        The sampler is told with the very dict it asked (its contract), so each is kept
        here until the ledger says which trial it became (:meth:`bind_asked`)."""
        params = self.sampler.ask(n)
        origins = []
        for p in params:
            self._n_asked += 1
            origin = f"central#{self._n_asked}"
            self._asked[origin] = p
            origins.append(origin)
        budget_of = (self.sampler.budget_of if getattr(self.sampler, "chooses_budgets", False)
                     else lambda _: None)
        budgets = [budget_of(p) for p in params]  # the ledger takes it off (DEHB's fidelity)
        return [dict(p) if b is None else {**p, BUDGET_KEY: b}
                for p, b in zip(params, budgets, strict=True)], origins

    def bind_asked(self, events: list[list[Any]]) -> None:
        """New trials in these events get the dict the sampler asked for them."""
        for _kind, number, _, origin in events:
            if origin is not None and origin in self._asked:
                self._own[number] = self._asked.pop(origin)

    def copy_spec(self) -> dict[str, Any]:
        """What a worker needs to build its own copy of the sampler."""
        return {"spec": self.sampler_spec, "space": self.space.to_dict(),
                "directions": [_DIRECTIONS[m] for m in self.modes], "seed": self.seed}

    @property
    def rule_class(self) -> type[Scheduler]:
        return type(self._scheduler_rule)

    def checkpoint_name(self) -> str:
        """The folder of this study run's checkpoints (below the checkpoint root)."""
        return f"{self.name}-{self.run_id or self._id}"

    def saved_rule_state(self) -> dict[str, Any] | None:
        """The rule's exact state as the study run last saved it (resume), if any."""
        if self._tracker is None or self._tracker.parent_run_id is None:
            return None
        from hpo_mlops.artifacts import load_json

        return load_json(self._tracker, RULE_STATE)

    def save_rule_state(self, state: dict[str, Any] | None) -> None:
        if state is not None and self._tracker is not None:
            from hpo_mlops.artifacts import save_json

            save_json(self._tracker, RULE_STATE, state)

    def log_study(self, metrics: dict[str, float], tags: dict[str, str]) -> None:
        if self._tracker is not None:
            self._tracker.log_study_metrics(metrics, tags)

    def close_run(self, status: str, summary: dict[str, Any] | None,
                  rule_state: dict[str, Any] | None) -> None:
        """The end of an ``optimize`` call: the budget summary, the rule's state, MLflow."""
        self.budget_summary = summary
        if self._tracker is None:
            return
        summary = summary or {}
        self.log_study({k: v for k, v in summary.items() if is_number(v)},
                       {f"hpo.{k}": json.dumps(v) for k, v in summary.items()
                        if isinstance(v, dict)})
        self.save_rule_state(rule_state)
        self._tracker.close(status)

    def _update_best(self, rec: TrialRecord, log: bool = True) -> None:
        if rec.state is not TrialState.COMPLETE or len(self.metrics) > 1 or rec.value is None:
            return
        sign = 1 if self.modes[0] == "min" else -1
        if self._best is None or sign * rec.value < sign * self._best.value:
            self._best = rec
            if log and self._tracker is not None:
                self._tracker.log_best(rec, self.metrics, len(self.table.finished()))

    def __repr__(self) -> str:
        return (f"Study(name={self.name!r}, trials={len(self.table.finished())}, "
                f"sampler={self.sampler.name!r})")


def _check_positive(**values: Any) -> None:
    for key, v in values.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{key}: must be an integer >= 1, got {v!r}")
