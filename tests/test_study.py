"""The manager on a real 2-worker LocalCluster with a real MLflow store."""

from __future__ import annotations

import itertools
import math
import sys
import textwrap

import objectives as obj
import pytest
from conftest import runs_of

from hpo_mlops import ConfigError, RegistryError, TooManyFailures, TrialState
from hpo_mlops.study import Study

SPACE = {"x": "uniform(-5, 5)", "lr": "loguniform(1e-5, 1e-1)",
         "layers": "randint(1, 4)", "act": "choices(['relu', 'tanh'])"}


def make(name, uri, **kw):
    kw.setdefault("sampler", "random")
    kw.setdefault("seed", 0)
    return Study(name, SPACE if "space" not in kw else kw.pop("space"), tracking_uri=uri, **kw)


def test_twenty_trials_give_parent_and_twenty_nested_runs(dask_client, mlflow_uri):
    study = make("quad", mlflow_uri, scheduler="fifo")
    study.optimize(obj.quadratic, n_trials=20, client=dask_client)
    assert len(study.trials) == 20
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    parents, trials = runs_of(mlflow_uri, "quad")
    assert len(parents) == 1 and sorted(trials) == list(range(20))
    parent = parents[0]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    for n, run in trials.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["hpo.state"] == "COMPLETE"
        assert set(run.data.params) == set(SPACE), "params under exactly the space's names"
        rec = study.table.records[n]
        assert float(run.data.params["x"]) == pytest.approx(rec.params["x"])
        assert run.data.metrics["loss"] == pytest.approx(rec.value)
        assert run.data.metrics["aux"] == 1.0
        assert run.data.tags["hpo.worker"].startswith("tcp://")
        assert float(run.data.tags["hpo.duration_s"]) >= 0
    history = client.get_metric_history(trials[3].info.run_id, "loss")
    assert [m.step for m in history if m.step in (1, 2)] == [1, 2], "each report is a step"
    best = min(study.trials, key=lambda t: t.value)
    assert study.best_trial.number == best.number
    assert parent.data.metrics["best_loss"] == pytest.approx(best.value)
    assert parent.data.tags["hpo.best_trial"] == str(best.number)
    assert parent.data.params["sampler.name"] == "random"
    assert parent.data.tags["hpo.n_trials"] == "20"
    assert parent.data.params["space.lr"] == "loguniform(1e-05, 0.1)"
    assert parent.info.status == "FINISHED"
    df = study.trials_dataframe()
    assert len(df) == 20 and {"params_x", "value", "state", "metrics_aux"} <= set(df.columns)


def test_failing_objective_is_recorded_and_study_goes_on(dask_client, mlflow_uri):
    study = make("fails", mlflow_uri, space={"x": "uniform(-1, 1)"})
    study.optimize(obj.sometimes_fails, n_trials=16, client=dask_client)
    failed = [t for t in study.trials if t.state is TrialState.FAILED]
    done = [t for t in study.trials if t.state is TrialState.COMPLETE]
    assert failed and done and len(failed) + len(done) == 16
    assert all(t.params["x"] < 0 for t in failed)
    assert "ValueError: x=" in failed[0].error and "sometimes_fails" in failed[0].traceback
    assert study.best_trial.params["x"] >= 0
    _, runs = runs_of(mlflow_uri, "fails")
    run = runs[failed[0].number]
    assert run.info.status == "FAILED" and run.data.tags["hpo.state"] == "FAILED"
    assert "is negative" in run.data.tags["hpo.error"]


def test_max_failures_stops_with_a_clear_message_and_keeps_records(dask_client, mlflow_uri):
    study = make("maxfail", mlflow_uri, space={"x": "uniform(-1, -0.5)"})
    with pytest.raises(TooManyFailures, match="more than max_failures=3"):
        study.optimize(obj.sometimes_fails, n_trials=50, client=dask_client, max_failures=3)
    parents, runs = runs_of(mlflow_uri, "maxfail")
    assert parents[0].info.status == "FAILED"
    failed = [r for r in runs.values() if r.data.tags["hpo.state"] == "FAILED"]
    assert len(failed) >= 4 and len(runs) < 50


@pytest.mark.parametrize("fn, message", [(obj.returns_nan, "is nan"),
                                         (obj.returns_text, "is not a number")])
def test_non_finite_or_non_numeric_result_is_failed_never_best(dask_client, mlflow_uri, fn, message):
    study = make("nan", mlflow_uri, space={"x": "uniform(-1, 1)"})
    study.optimize(fn, n_trials=10, client=dask_client)
    failed = [t for t in study.trials if t.state is TrialState.FAILED]
    assert failed and all(message in t.error for t in failed)
    if fn is obj.returns_nan:
        assert math.isfinite(study.best_value) and study.best_trial.params["x"] >= 0
    else:
        with pytest.raises(ValueError, match="no completed trial"):
            _ = study.best_trial


def test_external_command_objective(dask_client, mlflow_uri, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        x = float(sys.argv[2])
        print("training...")
        for step in (1, 2):
            print(json.dumps({"step": step, "loss": x * x + 1 / step}), flush=True)
        if x < -4:
            print("diverged", file=sys.stderr)
            sys.exit(3)
        print(json.dumps({"loss": x * x, "acc": 0.5}))
    """))
    study = make("cmd", mlflow_uri, space={"x": "uniform(-5, 5)"}, scheduler="fifo", seed=3)
    study.optimize([sys.executable, str(script), "--x", "{x}"], n_trials=12, client=dask_client)
    done = [t for t in study.trials if t.state is TrialState.COMPLETE]
    assert done and all(t.value == pytest.approx(t.params["x"] ** 2) for t in done)
    assert all(t.metrics["acc"] == 0.5 and [s for s, _ in t.intermediate] == [1, 2] for t in done)
    failed = [t for t in study.trials if t.state is TrialState.FAILED]
    assert all(t.params["x"] < -4 and "code 3" in t.error and "diverged" in t.error for t in failed)


def test_command_in_another_language(dask_client, mlflow_uri):
    study = make("shell", mlflow_uri, space={"x": "randint(1, 5)"}, scheduler="fifo")
    study.optimize(["sh", "-c", 'echo "{{\\"loss\\": $(( {x} * 2 ))}}"'], n_trials=4,
                   client=dask_client)
    assert all(t.value == 2 * t.params["x"] for t in study.trials)


def test_resume_runs_no_finished_trial_twice(dask_client, mlflow_uri, tmp_path, monkeypatch):
    log = tmp_path / "ran.txt"
    monkeypatch.setenv("HPO_TEST_LOG", str(log))
    # the workers are already running: hand them the log path through the objective instead
    first = make("resume", mlflow_uri, space={"x": "uniform(-3, 3)"})
    first.optimize(_logging(log), n_trials=10, client=dask_client)
    second = make("resume", mlflow_uri, space={"x": "uniform(-3, 3)"})
    assert len(second.trials) == 10, "the finished trials were loaded back"
    second.optimize(_logging(log), n_trials=15, client=dask_client)
    ran = [int(n) for n in log.read_text().split()]
    assert sorted(ran) == list(range(15)), "each trial ran exactly once"
    parents, runs = runs_of(mlflow_uri, "resume")
    assert len(parents) == 1 and sorted(runs) == list(range(15))
    assert second.best_trial.value == min(t.value for t in second.trials)


def _logging(path):
    def objective(params, trial):
        with open(path, "a") as fh:
            fh.write(f"{trial.number}\n")
        return (params["x"] - 1) ** 2
    return objective


def test_resume_with_a_changed_space_is_refused(dask_client, mlflow_uri):
    make("changed", mlflow_uri, space={"x": "uniform(-3, 3)"}).optimize(
        obj.returns_nan, n_trials=2, client=dask_client)
    with pytest.raises(ConfigError, match="was run with another space"):
        make("changed", mlflow_uri, space={"x": "uniform(0, 3)"}).optimize(
            obj.returns_nan, n_trials=4, client=dask_client)


def test_multi_objective_pareto_front(dask_client, mlflow_uri):
    study = make("multi", mlflow_uri, space={"x": "uniform(-3, 3)"},
                 metric=["loss", "latency"], mode=["min", "min"])
    study.optimize(obj.two_metrics, n_trials=20, client=dask_client)
    front = study.best_trials
    numbers = {t.number for t in front}

    def dominates(a, b):
        return all(x <= y for x, y in zip(a.values, b.values, strict=True)) and a.values != b.values

    # on this problem every -1 <= x <= 1 is Pareto-optimal (loss falls, latency rises)
    for t in study.trials:
        if -1 <= t.params["x"] <= 1:
            assert t.number in numbers
        others_dominate = any(dominates(o, t) for o in study.trials)
        assert (t.number in numbers) == (not others_dominate)
    assert len(front) < len(study.trials)
    with pytest.raises(ConfigError, match="best_trials"):
        _ = study.best_trial
    assert "values_latency" in study.trials_dataframe().columns


def test_workers_are_refilled_as_soon_as_one_finishes(dask_client, mlflow_uri):
    """Trial 0 takes 2 s; the other worker must keep going meanwhile (no lock-step batches)."""
    study = make("busy", mlflow_uri, space={"x": "uniform(0, 1)"}, scheduler="fifo")
    study.optimize(obj.sleepy, n_trials=12, client=dask_client)
    t0 = study.table.records[0]
    during = [t for t in study.trials if t.number and t.end <= t0.end]
    assert len(during) >= 8, f"only {len(during)} short trials ran while trial 0 was running"


def test_median_rule_prunes_weak_trials_on_the_scheduler(dask_client, mlflow_uri):
    study = make("prune", mlflow_uri, space={"x": "uniform(-5, 5)"},
                 scheduler={"name": "median", "min_trials": 3})
    study.optimize(obj.pruned_when_bad, n_trials=30, client=dask_client)
    pruned = [t for t in study.trials if t.state is TrialState.PRUNED]
    done = [t for t in study.trials if t.state is TrialState.COMPLETE]
    assert pruned and done
    assert min(abs(t.params["x"]) for t in pruned) > min(abs(t.params["x"]) for t in done)
    assert all(t.pruned_step == t.intermediate[-1][0] <= 10 for t in pruned)
    assert any(t.pruned_step < 10 for t in pruned), "stopped early, not only at the end"
    _, runs = runs_of(mlflow_uri, "prune")
    run = runs[pruned[0].number]
    assert run.data.tags["hpo.state"] == "PRUNED" and run.info.status == "KILLED"
    assert run.data.tags["hpo.pruned_step"] == str(pruned[0].pruned_step)


def test_setup_runs_once_per_worker_including_late_joiners(mlflow_uri, tmp_path, monkeypatch):
    import threading

    from distributed import Client, LocalCluster

    log = tmp_path / "setup.txt"
    monkeypatch.setenv("HPO_TEST_LOG", str(log))  # inherited by the workers started below
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        threading.Timer(1.0, lambda: cluster.scale(2)).start()
        study = make("setup", mlflow_uri, space={"x": "uniform(0, 1)"}, scheduler="fifo")
        study.optimize(obj.uses_context, n_trials=24, client=client, setup=obj.load_context)
    setup_pids = [int(p) for p in log.read_text().split()]
    trial_pids = {int(t.metrics["pid"]) for t in study.trials}
    assert len(setup_pids) == len(set(setup_pids)) == 2, "setup ran once on each worker"
    assert trial_pids == set(setup_pids), "the worker that joined later ran setup too"
    assert all(t.metrics["ctx_pid"] == t.metrics["pid"] for t in study.trials)


def test_default_local_cluster_is_closed_afterwards(mlflow_uri):
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    study = make("local", mlflow_uri, space={"x": "uniform(0, 1)"}, scheduler="fifo")
    # trials that take a moment: an instant one would all be pulled by the first slot
    study.optimize(obj.nap, n_trials=10, n_workers=2)
    assert len({t.worker for t in study.trials}) == 2, "one worker process per requested worker"
    psutil.wait_procs([p for p in me.children(recursive=True) if p.pid not in before], timeout=10)
    left = {p.pid for p in me.children(recursive=True) if p.is_running()} - before
    assert not left, f"worker processes left behind: {left}"


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"sampler": "tpee"}, RegistryError, "unknown sampler 'tpee' (did you mean 'tpe'?); registered: "),
        ({"scheduler": "hyperbandd"}, RegistryError, "unknown scheduler 'hyperbandd'"),
        ({"mode": "minimize"}, ConfigError, "mode: needs 'min' or 'max'"),
        ({"metric": ""}, ConfigError, "metric: must be a name"),
        ({"sampler": {"seed": 1}}, ConfigError, "needs a 'name' key"),
        ({"sampler": {"name": "random", "bogus": 1}}, None, None),
    ],
)
def test_bad_study_arguments(mlflow_uri, kwargs, error, message):
    if error is None:
        make("ok", mlflow_uri, **kwargs)
        return
    with pytest.raises(error) as info:
        make("bad", mlflow_uri, **kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_trials": 0}, "n_trials: must be an integer >= 1, got 0"),
        ({"timeout": -1, "n_trials": 2}, "timeout: must be a number of seconds > 0"),
        ({}, "give n_trials or timeout"),
        ({"n_trials": 2, "max_failures": -1}, "max_failures: must be an integer >= 0"),
    ],
)
def test_bad_optimize_arguments_fail_before_anything_runs(mlflow_uri, kwargs, message):
    study = make("badopt", mlflow_uri)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        study.optimize(obj.quadratic, **kwargs)
    assert not study.trials


def test_missing_metric_in_returned_dict_fails_the_trial(dask_client, mlflow_uri):
    study = make("nometric", mlflow_uri, metric="accuracy", mode="max")
    study.optimize(obj.quadratic, n_trials=2, client=dask_client)
    assert all("without the study metric(s) ['accuracy']" in t.error for t in study.trials)


@pytest.mark.parametrize("sampler", ["tpe", "hyperopt.tpe"])
def test_seed_makes_a_sequential_run_reproducible(dask_client, tmp_path, sampler):
    runs = []
    for i in range(2):
        study = Study(f"seeded-{i}", SPACE, sampler=sampler, seed=7, scheduler="fifo",
                      tracking_uri=f"sqlite:///{tmp_path}/{i}.db")
        study.optimize(obj.quadratic, n_trials=14, client=dask_client, max_concurrent=1)
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1]
    other = Study("seeded-other", SPACE, sampler=sampler, seed=8, scheduler="fifo",
                  tracking_uri=f"sqlite:///{tmp_path}/other.db")
    other.optimize(obj.quadratic, n_trials=3, client=dask_client, max_concurrent=1)
    assert [t.params for t in other.trials] != runs[0][:3]


@pytest.mark.parametrize("sampler", ["random", "grid", "tpe", "hyperopt.tpe"])
def test_seed_among_the_sampler_options_seeds_the_search(tmp_path, sampler):
    """sampler={"name": ..., "seed": 7} (or --set sampler.seed=7) is Study(seed=7): the
    built-in samplers used to ignore it and draw a different sequence every run."""
    space = {"x": "uniform(-5, 5)", "k": "choices([1, 2, 3])"} if sampler != "grid" else \
        {"x": "choices([1, 2, 3, 4])", "k": "choices([1, 2, 3])"}

    def asks(**kw):
        study = Study("seeds", space, scheduler="fifo", tracking=False, **kw)
        return study.sampler.ask(6), study.seed

    as_option, seed = asks(sampler={"name": sampler, "seed": 7})
    assert seed == 7  # logged on the study's run as its seed
    assert as_option == asks(sampler={"name": sampler, "seed": 7})[0]
    assert as_option == asks(sampler=sampler, seed=7)[0]
    assert as_option != asks(sampler={"name": sampler, "seed": 8})[0]
    with pytest.raises(ConfigError, match=r"sampler.seed \(7\) and the study's seed \(8\) differ"):
        Study("seeds", space, sampler={"name": sampler, "seed": 7}, seed=8, tracking=False)
    with pytest.raises(ConfigError, match="sampler.seed: must be an integer >= 0, got 'x'"):
        Study("seeds", space, sampler={"name": sampler, "seed": "x"}, tracking=False)


def test_address_timeout_and_max_concurrent(dask_client, mlflow_uri):
    """address= connects to a running scheduler; timeout ends submitting; max_concurrent caps
    how many trials overlap."""
    study = make("limits", mlflow_uri, space={"x": "uniform(0, 1)"}, scheduler="fifo")
    study.optimize(obj.nap, timeout=1.5, address=dask_client.scheduler.address,
                   max_concurrent=1)
    trials = sorted(study.trials, key=lambda t: t.start)
    assert 2 <= len(trials) < 60, "the timeout ended the study (each trial sleeps >= 50 ms)"
    overlaps = sum(1 for a, b in itertools.pairwise(trials) if b.start < a.end - 1e-3)
    assert overlaps == 0, "max_concurrent=1 ran trials one at a time"
