"""Population Based Training: the rule on scripted reports, then a real study on a
LocalCluster with MLflow (sqlite), then the clear error when checkpoints are not shared."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import pytest
from conftest import runs_of

from hpo_mlops import registry
from hpo_mlops.errors import ConfigError
from hpo_mlops.schedulers.base import Decision, Scheduler
from hpo_mlops.space import Space

SPACE = {"lr": "loguniform(0.001, 1.0)", "layers": "randint(1, 8)",
         "act": "choices(['relu', 'tanh', 'gelu'])"}


def make(**options: Any) -> Scheduler:
    spec = {"name": "pbt", "perturbation_interval": 2, "max_budget": 6, **options}
    rule = registry.create(registry.SCHEDULERS, spec, Scheduler)
    rule.bind_space(SPACE)
    return rule


def start_population(rule: Scheduler, n: int) -> list[dict[str, Any]]:
    """Start ``n`` members as the ledger does: params told, then ``on_start``."""
    params = [{"lr": 0.01 * (i + 1), "layers": 4, "act": "tanh"} for i in range(n)]
    for trial, p in enumerate(params):
        job = rule.plan(1)[0]
        assert job.trial is None and job.budget == 2
        rule.on_params(trial, p)
        rule.on_start(trial, job.budget, job.bracket)
    rule.end_new_trials()
    return params


def land(rule: Scheduler, trial: int, value: float, first: int, budget: int) -> None:
    """A job of ``trial`` reports ``value`` at every step from ``first`` to ``budget``."""
    for step in range(first, budget + 1):
        assert rule.on_report(trial, step, value) is Decision.CONTINUE
    rule.on_complete(trial, "COMPLETE", value)


def test_bottom_member_exploits_a_top_member_and_top_members_continue_unchanged() -> None:
    rule = make(seed=3)
    params = start_population(rule, 4)  # quantile 0.25 of 4: one top, one bottom
    # asynchronous, as Ray Tune: a member is judged on the scores landed so far, so these
    # land in an order where only the last (trial 3, the worst) is ever in the bottom
    for trial, value in [(2, 0.6), (1, 0.5), (0, 0.1), (3, 0.9)]:
        land(rule, trial, value, 1, 2)
    jobs = {j.trial: j for j in rule.plan(4)}
    assert set(jobs) == {0, 1, 2, 3} and all(j.budget == 4 for j in jobs.values())
    for trial in (0, 1, 2):  # not in the bottom: their own params and checkpoint
        assert jobs[trial].clone is None and jobs[trial].params == params[trial]
    bottom = jobs[3]
    assert bottom.clone == [0, 2]  # the top member's checkpoint at budget 2
    assert bottom.params != params[3]
    space = Space.from_dict(SPACE)
    assert space.validate_params(bottom.params) == bottom.params  # inside the space
    assert bottom.params["act"] in ("relu", "gelu", "tanh")
    info = rule.trial_info(3)
    assert info["pbt_donors"] == [[2, 0]]
    assert info["pbt_schedule"] == [[0, params[0], None], [2, bottom.params, 0]]
    assert rule.trial_info(0)["pbt_schedule"] == [[0, params[0], None], [2, params[0], None]]


def test_perturbation_multiplies_by_a_factor_and_clips_to_the_bounds() -> None:
    rule = make(resample_probability=0.0, perturbation_factors=[2.0])
    rule.bind_space({"lr": "uniform(0.1, 1.0)", "n": "randint(1, 10)",
                     "act": "choices(['a', 'b', 'c'])"})
    for trial, p in enumerate([{"lr": 0.3, "n": 3, "act": "b"}, {"lr": 0.8, "n": 7, "act": "a"},
                               {"lr": 0.5, "n": 5, "act": "c"}, {"lr": 0.5, "n": 5, "act": "c"}]):
        rule.on_params(trial, p)
        rule.on_start(trial, 2, None)
    for trial, value in [(1, 0.1), (2, 0.5), (3, 0.6), (0, 0.9)]:
        land(rule, trial, value, 1, 2)
    rule.end_new_trials()
    # trial 0 is the bottom: it takes trial 1 (the top: 0.8, 7, 'a') and doubles its
    # numbers, clipped to the bounds; a choice moves to a neighbour ('a' has one: 'b')
    job = {j.trial: j for j in rule.plan(4)}[0]
    assert job.clone == [1, 2] and job.budget == 4
    assert job.params["lr"] == 1.0 and job.params["n"] == 10
    assert job.params["act"] in ("a", "b")
    moved = set()
    for seed in range(8):
        other = make(resample_probability=0.0, perturbation_factors=[0.5], seed=seed)
        other.bind_space({"lr": "uniform(0.1, 1.0)", "n": "randint(1, 10)",
                          "act": "choices(['a', 'b', 'c'])"})
        for trial, p in enumerate([{"lr": 0.3, "n": 6, "act": "b"}] * 4):
            other.on_params(trial, p)
            other.on_start(trial, 2, None)
        for trial, value in [(1, 0.1), (2, 0.5), (3, 0.6), (0, 0.9)]:
            land(other, trial, value, 1, 2)
        new = other.trial_info(0)["pbt_schedule"][-1][1]
        assert new["lr"] == 0.15 and new["n"] == 3 and isinstance(new["n"], int)
        moved.add(new["act"])
    assert moved == {"a", "c"}  # 'b' moves to either neighbour, never stays


def test_resample_probability_one_gives_a_fresh_sample() -> None:
    draws = set()
    for seed in range(5):
        rule = make(resample_probability=1.0, seed=seed)
        params = start_population(rule, 4)
        for trial, value in enumerate([0.1, 0.5, 0.6, 0.9]):
            land(rule, trial, value, 1, 2)
        new = rule.trial_info(3)["pbt_schedule"][-1][1]
        assert new["lr"] not in {p["lr"] for p in params}  # not a perturbed 0.01 * k
        assert not any(math.isclose(new["lr"], p["lr"] * f) for p in params for f in (1.2, 0.8))
        draws.add(new["lr"])
    assert len(draws) == 5  # the seed decides the draw


def test_every_member_reaches_max_budget_and_the_population_is_time_shared() -> None:
    """6 members, 2 slots: paused members wait; each trains 6 budget units in all."""
    rule = make(population_size=6, seed=1)
    running: dict[int, int] = {}
    started, trained = 0, dict.fromkeys(range(6), 0)
    finished: dict[int, str] = {}
    while True:
        for job in rule.plan(2 - len(running)):
            trial = started if job.trial is None else job.trial
            if job.trial is None:
                rule.on_params(trial, {"lr": 0.01 * (trial + 1), "layers": 2, "act": "relu"})
                started += 1
            rule.on_start(trial, job.budget, job.bracket)
            first = (job.clone[1] if job.clone else trained[trial]) + 1
            running[trial] = first
        if not running:
            break
        trial = next(iter(running))  # the job that started first ends first
        first = running.pop(trial)
        budget = rule.budget_for(trial)
        land(rule, trial, 1.0 / (1 + trial) + 0.01 * first, first, budget)
        trained[trial] = budget
        finished.update(rule.pop_finished())
        if started == 6:
            rule.end_new_trials()
    assert started == 6 and finished == dict.fromkeys(range(6), "COMPLETE")
    assert all(rule.trial_info(t)["budget"] == 6 for t in range(6))
    assert rule.budget_summary()["exploits"] >= 1


def test_failed_member_leaves_the_population_and_donors_skip_it() -> None:
    rule = make()
    start_population(rule, 4)
    rule.on_report(0, 1, 0.0)
    rule.on_complete(0, "FAILED")
    assert rule.pop_finished() == [(0, "FAILED")]
    for trial, value in [(1, 0.1), (2, 0.5), (3, 0.9)]:
        land(rule, trial, value, 1, 2)
    jobs = {j.trial: j for j in rule.plan(4)}
    assert set(jobs) == {1, 2, 3} and jobs[3].clone == [1, 2]


def test_state_round_trips_with_params_and_schedules() -> None:
    rule = make(seed=2)
    start_population(rule, 4)
    for trial, value in enumerate([0.1, 0.5, 0.6, 0.9]):
        land(rule, trial, value, 1, 2)
    text = json.dumps(rule.state(), allow_nan=False)
    back = type(rule).from_state(json.loads(text), perturbation_interval=2, max_budget=6, seed=2)
    back.bind_space(SPACE)
    back.end_new_trials()  # said again by a resumed study, once its trials are started
    assert back.state() == rule.state() and back.plan(4) == rule.plan(4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"perturbation_interval": 0}, r"^scheduler\.perturbation_interval: must be a number > 0"),
        ({"max_budget": 1}, r"^scheduler\.max_budget: must be a number >= perturbation_interval"),
        ({"population_size": 1}, r"^scheduler\.population_size: must be an integer >= 2"),
        ({"quantile_fraction": 0.7}, r"^scheduler\.quantile_fraction: must be a number in \(0, 0\.5\]"),
        ({"resample_probability": 2}, r"^scheduler\.resample_probability: must be a number in \[0, 1\]"),
        ({"perturbation_factors": []}, r"^scheduler\.perturbation_factors: must be a non-empty list"),
        ({"seed": "x"}, r"^scheduler\.seed: must be an integer"),
        ({"eta": 3}, r"^scheduler\.eta: unknown option for 'pbt'; known options: mode, "
                     r"perturbation_interval"),
    ],
)  # fmt: skip
def test_bad_options_name_the_option_and_what_is_allowed(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make(**options)


# -- the engine: the ledger, the slot's checkpoint copy, a real study -------------------------
def test_ledger_gives_the_job_its_params_and_donor_and_a_rerun_keeps_them() -> None:
    from hpo_mlops.ledger import Ledger

    rule = make(seed=3)
    ledger = Ledger(rule, n_trials=4)
    asked = iter([{"lr": 0.01 * (i + 1), "layers": 4, "act": "tanh"} for i in range(4)])
    jobs = [ledger.assign("w", lambda: (next(asked), None)) for _ in range(4)]
    assert [j.snapshot for j in jobs] == [True] * 4 and all(j.clone is None for j in jobs)
    for n, value in [(2, 0.6), (1, 0.5), (0, 0.1), (3, 0.9)]:
        ledger.finish_job(n, {"state": "COMPLETE", "values": [value], "intermediate": [[2, value]]})
    assert set(ledger.paused) == {0, 1, 2, 3}
    again = {j.number: j for j in (ledger.assign("w", lambda: None) for _ in range(4))}
    assert again[3].clone == [0, 2] and again[3].params != ledger.trials[3].params
    assert ledger.trials[3].params == {"lr": 0.04, "layers": 4, "act": "tanh"}  # the first
    schedule = json.loads(ledger.trials[3].tags["hpo.pbt_schedule"])
    assert schedule[-1] == [2, again[3].params, 0]
    ledger.lost(3, "worker gone")  # run again: the same params, from the same donor
    rerun = ledger.assign("w", lambda: None)
    assert (rerun.number, rerun.params, rerun.clone) == (3, again[3].params, [0, 2])
    assert rerun.to_wire()["clone"] == [0, 2] and rerun.to_wire()["snapshot"] is True


def test_a_donor_checkpoint_missing_on_this_worker_fails_the_trial_clearly(tmp_path) -> None:
    from hpo_mlops.runner import _execute, snapshot_checkpoint, snapshot_dir

    ran = []
    spec = {"number": 3, "params": {"lr": 0.1}, "budget": 4, "metrics": ["loss"],
            "checkpoint_dir": str(tmp_path / "trial-3"),
            "clone_from": snapshot_dir(str(tmp_path), 0, 2)}
    out = _execute(lambda p, t: ran.append(1) or 0.5, spec, None, None, None)
    assert out["state"] == "FAILED" and not ran
    assert "trial-0@2" in out["error"] and "not on this worker" in out["error"]
    assert "file system every worker shares: optimize(checkpoint_dir=...)" in out["error"]
    # where the donor's snapshot exists (a shared file system), the trial starts from it
    (tmp_path / "trial-0").mkdir()
    (tmp_path / "trial-0" / "checkpoint.pkl").write_bytes(b"donor")
    snapshot_checkpoint(str(tmp_path / "trial-0"), snapshot_dir(str(tmp_path), 0, 2))
    (tmp_path / "trial-0" / "checkpoint.pkl").write_bytes(b"later")  # the donor goes on
    seen = []

    def objective(params, trial):
        with open(os.path.join(trial.checkpoint_dir, "checkpoint.pkl"), "rb") as fh:
            seen.append(fh.read())
        return 0.5

    assert _execute(objective, spec, None, None, None)["state"] == "COMPLETE"
    assert seen == [b"donor"]


def make_objective(log: str):
    """A model with state kept by trial.save/trial.load: ``w`` moves towards 1 at a speed
    set by ``lr`` and ``momentum``; each job logs what it loaded and ran with."""

    def objective(params, trial):
        state = trial.load() or {"epoch": 0, "w": 0.0, "trained_by": []}
        loaded = dict(state)
        for epoch in range(state["epoch"] + 1, int(trial.budget) + 1):
            step = min(params["lr"] * (1 + params["momentum"]), 1.0)
            state["w"] += step * (1.0 - state["w"]) - 0.02 * params["lr"] ** 2
            state["epoch"] = epoch
            trial.report((1.0 - state["w"]) ** 2, epoch)
            trial.save({**state, "trained_by": [*state["trained_by"], trial.number]})
            state = trial.load()
        with open(log, "a") as fh:
            fh.write(json.dumps([trial.number, trial.budget, loaded["epoch"],
                                 loaded["trained_by"], params]) + "\n")
        return (1.0 - state["w"]) ** 2

    return objective


def test_pbt_study_on_a_local_cluster(dask_client, mlflow_uri, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from hpo_mlops.results import TrialState
    from hpo_mlops.study import Study

    log = tmp_path / "jobs.jsonl"
    space = {"lr": "loguniform(0.01, 0.5)", "momentum": "uniform(0.0, 0.9)"}
    scheduler = {"name": "pbt", "perturbation_interval": 2, "max_budget": 8, "seed": 0}
    study = Study("pbt-study", space, sampler="random", seed=1, scheduler=scheduler,
                  tracking_uri=mlflow_uri)
    study.optimize(make_objective(str(log)), n_trials=6, client=dask_client,
                   checkpoint_dir=str(tmp_path / "ckpt"))
    trials = study.trials
    assert len(trials) == 6 and {t.state for t in trials} == {TrialState.COMPLETE}
    assert all(t.intermediate[-1][0] == 8 for t in trials)  # every member reached max_budget
    jobs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(jobs) >= 6 * 4  # 4 intervals each, time-shared on 2 workers
    donors = {t.number: json.loads(t.tags["hpo.pbt_donors"]) for t in trials}
    exploits = [(n, at, donor) for n, d in donors.items() for at, donor in d]
    assert exploits, "at least one member exploited a top member"
    for n, at, donor in exploits:  # its next job started from the donor's checkpoint
        job = next(j for j in jobs if j[0] == n and j[2] == at and j[1] == at + 2)
        assert job[3][-1] == donor, (n, at, donor, job)
    for t in trials:  # the schedule holds the params each job ran with
        schedule = json.loads(t.tags["hpo.pbt_schedule"])
        ran = {j[1] - 2: j[4] for j in jobs if j[0] == t.number}
        assert schedule[-1][1] == ran[6] and schedule[-1][0] == 6
        assert t.params == next(j[4] for j in jobs if j[0] == t.number and j[1] == 2)
    best = study.best_trial
    tag = json.loads(best.tags["hpo.pbt_schedule"])
    assert study.best_schedule() == [{"budget": b, "params": p} for b, p, _ in tag]
    assert [e["budget"] for e in study.best_schedule()] == [0, 2, 4, 6]
    # the study as the store holds it: the same schedule, written as YAML
    import yaml

    again = Study("pbt-study", space, sampler="random", seed=1, scheduler=scheduler,
                  tracking_uri=mlflow_uri)
    assert again.best_schedule() == study.best_schedule()
    doc = yaml.safe_load(again.export_best_schedule(str(tmp_path / "schedule.yaml")))
    assert doc["trial"] == best.number and doc["schedule"] == study.best_schedule()
    assert yaml.safe_load((tmp_path / "schedule.yaml").read_text()) == doc
    # MLflow draws each member's params over steps (pbt.<param>)
    client = MlflowClient(mlflow_uri)
    _, runs = runs_of(mlflow_uri, "pbt-study")
    changed = [n for n, _, _ in exploits]
    history = client.get_metric_history(runs[changed[0]].info.run_id, "pbt.lr")
    # one point per job, the lr that member's own job ran with (a member written while
    # paused and again after an exploit rewrote its lineage schedule gets no second points)
    assert sorted(m.step for m in history) == [0, 2, 4, 6]
    assert len({m.value for m in history}) > 1
    own = {j[1] - 2: j[4]["lr"] for j in jobs if j[0] == changed[0]}
    assert {m.step: m.value for m in history} == pytest.approx(own)
    assert json.loads(runs[changed[0]].data.tags["hpo.pbt_donors"]) == donors[changed[0]]


def test_best_schedule_of_a_study_without_pbt_is_a_clear_error(dask_client, mlflow_uri,
                                                              tmp_path) -> None:
    import objectives as obj

    from hpo_mlops.study import Study

    study = Study("no-pbt", {"x": "uniform(-5, 5)"}, sampler="random", seed=1,
                  scheduler={"name": "fifo", "max_budget": 3}, tracking_uri=mlflow_uri)
    study.optimize(obj.curve, n_trials=2, client=dask_client, checkpoint_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"has no PBT schedule; only a study run with "
                                          r"scheduler: \{name: pbt"):
        study.best_schedule()


PBT_OBJECTIVE = '''
def objective(params, trial):
    state = trial.load() or {"w": 0.0, "step": 0}
    for step in range(state["step"] + 1, trial.budget + 1):
        state["w"] += params["lr"]
        state["step"] = step
        trial.report(state["w"], step)
        trial.save(state)
    return state["w"]
'''


@pytest.mark.slow
def test_cli_best_schedule_writes_the_best_members_schedule_as_yaml(tmp_path):
    """`hpo-mlops run` a PBT study, then `hpo-mlops best --schedule`: the YAML a later training
    follows; a study that did not run PBT gets one line and exit 2."""
    import subprocess
    import sys

    import yaml

    from hpo_mlops.study import Study

    (tmp_path / "obj.py").write_text(PBT_OBJECTIVE)
    cfg = {"study": {"name": "pbt-cli", "metric": "score", "mode": "max", "n_trials": 4,
                     "seed": 0, "checkpoint_dir": "ck"},
           "space": {"lr": "uniform(0.1, 1.0)"}, "sampler": "random",
           "scheduler": {"name": "pbt", "perturbation_interval": 2, "max_budget": 4,
                         "quantile_fraction": 0.5, "seed": 0},
           "cluster": {"n_workers": 2},
           "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
           "objective": {"function": "obj.py:objective"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    hpo = [sys.executable, "-c", "from hpo_mlops.cli import main; main()"]
    run = subprocess.run([*hpo, "run", "params.yaml", "--progress", "quiet"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = subprocess.run([*hpo, "best", "params.yaml", "--schedule", "-o", "schedule.yaml"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = yaml.safe_load((tmp_path / "schedule.yaml").read_text())
    study = Study.from_config(tmp_path / "params.yaml", resume=True)
    assert doc["trial"] == study.best_trial.number
    assert doc["schedule"] == study.best_schedule()
    assert [e["budget"] for e in doc["schedule"]] == [0, 2]
    assert all(0.1 <= e["params"]["lr"] <= 1.0 for e in doc["schedule"])
    cfg["scheduler"] = {"name": "fifo", "max_budget": 4}
    cfg["study"]["name"] = "fifo-cli"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    subprocess.run([*hpo, "run", "params.yaml", "--progress", "quiet"], cwd=tmp_path,
                   capture_output=True, text=True, timeout=300, check=True)
    bad = subprocess.run([*hpo, "best", "params.yaml", "--schedule"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "pbt" in bad.stderr.lower() and "Traceback" not in bad.stderr
