"""DEHB (``plugins/hpo_mlops_dehb``): it chooses each trial's budget, the engine runs it there.

The sampler contract (tests/test_sampler_contract.py) covers ask/tell/seeds; here: the
budgets DEHB chooses reach the trials on a real LocalCluster with a real MLflow store, a rule
that plans budgets itself is refused, and the options are checked.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest

pytest.importorskip(
    "dehb", reason="the dehb package is not installed: pip install --no-deps dehb ConfigSpace "
    "loguru (see README, DEHB; its metadata pins numpy<2, which it does not need)")

from conftest import runs_of  # noqa: E402

from hpo_mlops import registry  # noqa: E402
from hpo_mlops.errors import ConfigError  # noqa: E402
from hpo_mlops.results import Result, TrialState  # noqa: E402
from hpo_mlops.samplers import Sampler  # noqa: E402
from hpo_mlops.space import Space  # noqa: E402
from hpo_mlops.study import Study  # noqa: E402

DEHB = {"name": "dehb", "min_budget": 1, "max_budget": 9, "eta": 3}
SPACE = {"x": "uniform(-5, 5)", "y": "uniform(-5, 5)"}


def bowl(params, trial):
    """A learning curve: one report per epoch up to the trial's budget, better with epochs."""
    f = (params["x"] - 2) ** 2 + (params["y"] + 1) ** 2
    score = math.inf
    for epoch in range(1, int(trial.budget) + 1):
        score = f + 1.0 / epoch
        trial.report(score, epoch)
    return score


def test_trials_run_at_the_budgets_dehb_chooses(dask_client, mlflow_uri, tmp_path):
    study = Study("dehb-bowl", SPACE, sampler=DEHB, seed=0, scheduler="fifo",
                  tracking_uri=mlflow_uri)
    study.optimize(bowl, n_trials=60, client=dask_client, checkpoint_dir=str(tmp_path))
    trials = study.trials
    assert len(trials) == 60 and {t.state for t in trials} == {TrialState.COMPLETE}
    budgets = Counter(t.budget for t in trials)
    # max_budget=9, eta=3: DEHB's fidelities are 1, 3, 9; 60 jobs span several brackets
    # (one round of brackets is 9@1 3@3 1@9 | 3@3 1@9 | 3@9 = 20 jobs)
    assert set(budgets) == {1, 3, 9}, budgets
    assert budgets[1] >= 9 and budgets[9] >= 5, budgets
    for t in trials:
        assert set(t.params) == {"x", "y"}, "the budget travels beside the params, not in them"
        assert [s for s, _ in t.intermediate] == list(range(1, t.budget + 1))
    parents, runs = runs_of(mlflow_uri, "dehb-bowl")
    assert sorted(runs) == list(range(60))
    assert all(set(r.data.params) >= {"x", "y"} and "hpo.budget" not in r.data.params
               for r in runs.values())
    full = [t.value - 1 / 9 for t in trials if t.budget == 9]
    # the bowl's minimum is 0; a tenth of the box's range from it is a good value
    assert min(full) < 2.5, sorted(full)[:3]


def test_a_rule_that_plans_budgets_is_refused():
    with pytest.raises(ConfigError, match="chooses each trial's budget itself.*fifo"):
        Study("dehb-hb", SPACE, sampler=DEHB, tracking=False,
              scheduler={"name": "hyperband", "min_budget": 1, "max_budget": 9})


@pytest.mark.parametrize("options, match", [
    ({}, "max_budget: required"),
    ({"max_budget": 9, "min_budget": 0}, "min_budget: must be > 0"),
    ({"max_budget": 2, "min_budget": 1}, "max_budget: must be >= min_budget \\* eta"),
    ({"max_budget": 9, "eta": 1}, "eta: must be an integer >= 2"),
    ({"max_budget": 9, "strategy": "rand9_bin"}, "strategy: must be"),
    ({"max_budget": 9, "crossover_prob": 1.5}, "crossover_prob: must be in"),
    ({"max_budget": 9, "populaton": 3}, "bad options"),
])
def test_bad_options_name_the_key(options, match):
    with pytest.raises(ConfigError, match=match):
        registry.create(registry.SAMPLERS, {"name": "dehb", **options}, Sampler)


def _sampler(direction: str = "minimize", seed: int = 0) -> Sampler:
    sampler = registry.create(registry.SAMPLERS, DEHB, Sampler)
    sampler.setup(Space.from_dict({"x": "uniform(-5, 5)"}), [direction], seed)
    return sampler


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_dehb_is_told_what_it_minimizes(direction):
    """A maximized metric reaches DEHB negated; a failed trial as inf (its worst)."""
    sampler = _sampler(direction)
    sign = -1 if direction == "maximize" else 1
    asked = sampler.ask(3)
    assert all(sampler.budget_of(p) == 1 for p in asked)  # the first rung of the first bracket
    sampler.tell(asked[0], Result(TrialState.COMPLETE, [sign * 0.5], budget=1))
    sampler.tell(asked[1], Result(TrialState.FAILED))
    sampler.tell(asked[2], Result(TrialState.PRUNED, [sign * 2.0], intermediate=[(1, 2.0)]))
    fitness = sorted(f for *_, f, _, _, _ in sampler._dehb.history)
    assert fitness == [0.5, 2.0, math.inf]
    assert sampler.budget_of(asked[0]) is None, "told: no longer pending"


def test_recorded_trials_move_a_seeded_stream_on():
    """DEHB 0.1.x cannot be warm-started, so a resumed seeded sampler reseeds by the number
    of recorded trials instead of proposing the earlier run's configurations again."""
    first = [p for p in _sampler(seed=5).ask(5)]
    resumed = _sampler(seed=5)
    for p in first:
        resumed.tell(dict(p), Result(TrialState.COMPLETE, [1.0]))
    again = resumed.ask(5)
    assert not [p for p in again if p in first]
