"""Early stopping end to end: every scheduler on a real LocalCluster with a real MLflow store."""

from __future__ import annotations

import json

import objectives as obj
import pytest
from conftest import runs_of

from hpo_mlops import TooManyFailures, TrialState
from hpo_mlops.study import Study

RULES = {
    "fifo": {"name": "fifo", "max_budget": 9},
    "median": {"name": "median", "min_trials": 3, "max_budget": 9},
    "sha": {"name": "sha", "min_budget": 1, "max_budget": 9, "eta": 3},
    "asha": {"name": "asha", "min_budget": 1, "max_budget": 9, "eta": 3},
    "hyperband": {"name": "hyperband", "min_budget": 1, "max_budget": 9, "eta": 3},
    "async_hyperband": {"name": "async_hyperband", "min_budget": 1, "max_budget": 9, "eta": 3},
    "asha_promotion": {"name": "asha_promotion", "min_budget": 1, "max_budget": 9, "eta": 3},
}


def _study(name, uri, scheduler, **kw):
    return Study(name, {"x": "uniform(-5, 5)"}, sampler="random", seed=1,
                 scheduler=scheduler, tracking_uri=uri, **kw)


@pytest.mark.parametrize("rule", list(RULES))
def test_lifecycle_of_every_scheduler(rule, dask_client, mlflow_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    study = _study(f"life-{rule}", mlflow_uri, RULES[rule])
    budget = {} if "min_budget" in RULES[rule] else None  # the rung rules
    study.optimize(obj.curve, n_trials=18, client=dask_client,
                   checkpoint_dir=str(tmp_path / "ckpt"))
    states = [t.state for t in study.trials]
    assert len(states) == 18 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    if rule == "fifo":
        assert set(states) == {TrialState.COMPLETE}
    else:
        assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    parents, runs = runs_of(mlflow_uri, f"life-{rule}")
    assert sorted(runs) == list(range(18)), "one MLflow run per trial, promotions included"
    client = MlflowClient(mlflow_uri)
    for t in study.trials:
        run = runs[t.number]
        assert run.data.tags["hpo.state"] == t.state.value
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        reports = [s for s, _ in t.intermediate]
        assert reports == sorted(set(reports)), "steps continue across promotions"
        assert set(steps) == set(reports)
        if t.state is TrialState.COMPLETE and budget is not None:
            assert reports[-1] == 9, "a completed trial ran to max_budget"
        if t.state is TrialState.PRUNED:
            assert int(run.data.tags["hpo.pruned_step"]) == reports[-1]
            assert reports[-1] < 9 or rule == "median"  # median may stop at the last report
            assert run.info.status == "KILLED"
    if budget is not None:
        assert all("hpo.bracket" in r.data.tags and "hpo.budget_consumed" in r.data.tags
                   for r in runs.values())
        summary = study.budget_summary
        assert summary["budget_consumed"] < summary["budget_without_pruning"] == 18 * 9
        assert parents[0].data.metrics["budget_consumed"] == summary["budget_consumed"]


def test_hyperband_runs_exactly_the_bracket_table(dask_client, mlflow_uri, tmp_path):
    # max_budget=9, eta=3: s=2: 9@1, 3@3, 1@9; s=1: 3@3, 1@9; s=0: 3@9  -> 15 trials
    study = _study("table", mlflow_uri, RULES["hyperband"])
    study.optimize(obj.curve, n_trials=15, client=dask_client, checkpoint_dir=str(tmp_path))
    per_budget = {int(k): v for k, v in study.budget_summary["trials_per_budget"].items()}
    assert per_budget == {1: 9, 3: 6, 9: 5}
    assert sum(t.state is TrialState.COMPLETE for t in study.trials) == 3 + 1 + 1


def test_sync_quotas_hold_with_many_concurrent_reporters(mlflow_uri, tmp_path):
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.worker-saturation": float("inf")}), \
            LocalCluster(n_workers=1, threads_per_worker=8, processes=False,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        sha = _study("quota", mlflow_uri, RULES["sha"])
        sha.optimize(obj.curve, n_trials=27, client=client, checkpoint_dir=str(tmp_path / "a"))
        strict = _study("quota-asha", mlflow_uri, {**RULES["asha"], "strict_quota": True})
        strict.optimize(obj.curve, n_trials=27, client=client, checkpoint_dir=str(tmp_path / "b"))
    per_budget = {int(k): v for k, v in sha.budget_summary["trials_per_budget"].items()}
    assert per_budget == {1: 27, 3: 9, 9: 3}
    reached = {int(k): v for k, v in strict.budget_summary["trials_per_budget"].items()}
    assert reached[1] == 27 and reached[3] <= 9 and reached[9] <= 3


def _stop_then_resume(rule, name, mlflow_uri, dask_client, tmp_path, n_trials=15,
                      fail_number=10, **optimize):
    """Run ``rule`` until trial ``fail_number`` fails (max_failures=0), then resume the
    study; check that every trial ends recorded once and no trial finished before the stop
    runs again. Returns the resumed study, its runs and the (trial, budget) jobs run before
    the stop."""
    log, flag = tmp_path / "jobs.txt", tmp_path / "fail-now"
    flag.write_text("x")
    first = _study(name, mlflow_uri, RULES[rule])
    objective = obj.curve_logged(str(log), fail_number=fail_number, flag=str(flag))
    with pytest.raises(TooManyFailures):
        first.optimize(objective, n_trials=n_trials, client=dask_client, max_failures=0,
                       checkpoint_dir=str(tmp_path / "ckpt"), **optimize)
    flag.unlink()
    _, runs = runs_of(mlflow_uri, name)
    done_before = {n for n, r in runs.items()
                   if r.data.tags["hpo.state"] in ("COMPLETE", "PRUNED", "FAILED")}
    assert len(done_before) < n_trials, "the first run stopped in the middle"
    jobs_before = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    second = _study(name, mlflow_uri, RULES[rule])
    second.optimize(objective, n_trials=n_trials, client=dask_client,
                    checkpoint_dir=str(tmp_path / "ckpt"), **optimize)
    _, runs = runs_of(mlflow_uri, name)
    assert sorted(runs) == list(range(n_trials))
    assert all(r.data.tags["hpo.state"] in ("COMPLETE", "PRUNED", "FAILED") for r in runs.values())
    later = log.read_text().split()[2 * len(jobs_before):]
    rerun = {int(n) for n in later[::2]}
    assert not rerun & done_before, "no finished trial ran again"
    return second, runs, jobs_before


def test_resume_in_the_middle_of_an_asha_promotion_study(dask_client, mlflow_uri, tmp_path):
    study, _, _ = _stop_then_resume("asha_promotion", "ap-resume", mlflow_uri, dask_client,
                                    tmp_path)
    assert any(t.state is TrialState.COMPLETE and t.intermediate[-1][0] == 9
               for t in study.trials), "the best trial still reaches max_budget"


@pytest.mark.parametrize("rule", ["sha", "hyperband", "asha_promotion"])
def test_a_resumed_study_whose_trials_all_started_still_runs_its_promotions(
        rule, dask_client, mlflow_uri, tmp_path):
    """Every one of ``n_trials`` was started before the stop, so the resumed run starts no
    new trial; the promotions the rule decides when it hears that must still run (they were
    once dropped: the study ended at once with every waiting trial pruned)."""
    study, _, jobs_before = _stop_then_resume(
        rule, f"all-started-{rule}", mlflow_uri, dask_client, tmp_path, n_trials=5,
        fail_number=4, max_concurrent=1)
    assert not any(budget == 9 for _, budget in jobs_before)
    assert [t.number for t in study.trials] == list(range(5))
    assert any(t.state is TrialState.COMPLETE and t.intermediate[-1][0] == 9
               for t in study.trials), [(t.number, t.state.value) for t in study.trials]


def test_resume_in_the_middle_of_a_hyperband_study(dask_client, mlflow_uri, tmp_path):
    second, runs, _ = _stop_then_resume("hyperband", "hb-resume", mlflow_uri, dask_client,
                                        tmp_path)
    # the whole study, across the stop, still follows the bracket table:
    # s=2: 9@1, 3@3, 1@9 (bracket 0); s=1: 3@3, 1@9 (bracket 1); s=0: 3@9 (bracket 2)
    brackets = {}
    for t in second.trials:
        brackets.setdefault(int(runs[t.number].data.tags["hpo.bracket"]), []).append(t)
    assert {b: len(ts) for b, ts in brackets.items()} == {0: 9, 1: 3, 2: 3}
    reached = [json.loads(runs[t.number].data.tags["hpo.rungs_reached"]) for t in brackets[0]]
    assert sum(3 in r for r in reached) == 3 and sum(9 in r for r in reached) == 1


def test_studies_sharing_a_checkpoint_dir_do_not_resume_from_each_other(
        dask_client, mlflow_uri, tmp_path):
    """``checkpoint_dir`` is a root: each study run keeps its trials' checkpoints in a folder
    of its own below it, so trial 0 of a second study starts at epoch 1, not where trial 0
    of the first one stopped."""
    for name in ("first-study", "second-study"):
        study = _study(name, mlflow_uri, RULES["asha"])
        study.optimize(obj.curve, n_trials=4, client=dask_client,
                       checkpoint_dir=str(tmp_path / "shared"))
        assert all(t.intermediate and t.intermediate[0][0] == 1 for t in study.trials), \
            [(t.number, t.intermediate) for t in study.trials]
    assert len(list((tmp_path / "shared").iterdir())) == 2  # one folder per study run


def test_synchronous_rules_pause_trials_in_the_sampler_at_once(dask_client, tmp_path):
    """Under SHA a trial waits at its rung until the rung's last trial arrives. The sampler
    hears of it at once (``pause``, as PRUNED there), so the configurations asked while the
    rung fills are asked by a sampler that knows the rung so far (BOHB-like); ``tell``
    still comes once per trial, with its outcome."""
    from hpo_mlops.samplers.random import RandomSampler

    events: list[tuple] = []

    class Recording(RandomSampler):
        def ask(self, n=1):
            out = super().ask(n)
            events.extend(("ask", id(p)) for p in out)
            return out

        def pause(self, params, result):
            events.append(("pause", id(params), result.state, [s for s, _ in result.intermediate]))

        def tell(self, params, result):
            events.append(("tell", id(params), result.state, [s for s, _ in result.intermediate]))

    study = Study("paused", {"x": "uniform(-5, 5)"}, sampler=Recording(), seed=1,
                  scheduler=RULES["sha"], tracking=False)
    study.optimize(obj.curve, n_trials=27, client=dask_client, checkpoint_dir=str(tmp_path))
    number = {e[1]: i for i, e in enumerate(e for e in events if e[0] == "ask")}
    assert len(number) == 27
    kinds = [e[0] for e in events]
    first_pause, first_tell = kinds.index("pause"), kinds.index("tell")
    assert "ask" in kinds[first_pause:first_tell], \
        "configurations are asked after the sampler heard of paused trials, before any is told"
    seen: dict[int, list] = {}
    for e in events[1:]:
        if e[0] != "ask":
            seen.setdefault(number[e[1]], []).append((e[0], e[2], e[3]))
    for t in study.trials:
        steps = [s for s, _ in t.intermediate]
        *pauses, tell = seen[t.number]
        assert tell == ("tell", t.state, steps), "told once, last, with the outcome"
        # paused at the rungs it waited at (not one decided the moment it arrived)
        waited = [p[2] for p in pauses]
        assert all(p[:2] == ("pause", TrialState.PRUNED) for p in pauses)
        assert all(w == steps[: len(w)] and w[-1] in (1, 3) for w in waited), (t.number, waited)
        assert [len(w) for w in waited] == sorted({len(w) for w in waited})


@pytest.mark.parametrize("saved_state", [True, False], ids=["saved-state", "replayed"])
def test_a_study_whose_trials_report_400_steps_resumes(saved_state, dask_client, mlflow_uri):
    """Trials that report every one of 400 steps (more than the reports tag holds) and a
    resumed study: it used to stop with StopIteration while replaying the capped reports.
    Resumed from the rule's saved state, and, with that artifact gone (a study from an
    older version), from the replay of what the tags kept."""
    import shutil
    from urllib.parse import urlparse

    from mlflow.tracking import MlflowClient

    rule = {"name": "asha", "min_budget": 1, "max_budget": 400, "eta": 3}
    name = f"long-steps-{saved_state}"
    first = _study(name, mlflow_uri, rule)
    first.optimize(obj.every_step, n_trials=3, client=dask_client)
    assert max(t.intermediate[-1][0] for t in first.trials) == 400
    parents, before = runs_of(mlflow_uri, name)
    state_dir = urlparse(parents[0].info.artifact_uri).path + "/hpo"
    if not saved_state:
        shutil.rmtree(state_dir)
        assert not MlflowClient(mlflow_uri).list_artifacts(parents[0].info.run_id, "hpo")

    second = _study(name, mlflow_uri, rule)
    second.optimize(obj.every_step, n_trials=5, client=dask_client)
    assert [t.number for t in second.trials] == list(range(5))
    assert {t.state for t in second.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    _, after = runs_of(mlflow_uri, name)
    assert sorted(after) == list(range(5))
    assert {n: after[n].info.run_id for n in before} == {n: r.info.run_id for n, r in before.items()}, (
        "the three finished trials were not run again")
