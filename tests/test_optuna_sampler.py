"""The Optuna adapters beyond the shared contract: how each distribution reaches Optuna,
what the Optuna study records for each outcome, and the defaults we chose.

The contract suite (test_sampler_contract.py) checks what every sampler must do; these
tests look inside the Optuna study (``sampler.study``) to check *how* it is done, since
that is what makes TPE/GP learn the right thing.
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings
from typing import Any

import hpo_mlops_optuna
import numpy as np
import optuna
import pytest
from hpo_mlops_optuna import MissingDependencyError, OptunaSampler
from hpo_mlops_optuna._mapping import plain
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState as OptunaState

from hpo_mlops import registry
from hpo_mlops.errors import ConfigError, HPOError
from hpo_mlops.results import Result, TrialState
from hpo_mlops.samplers import Sampler
from hpo_mlops.space import Space

NAMES = ["tpe", "cmaes", "gp", "qmc", "nsga2", "optuna.random"]


def make(
    spec: Any, space: dict | Space, directions: list[str] | None = None, seed: int | None = 0
) -> OptunaSampler:
    try:
        sampler = registry.create(registry.SAMPLERS, spec, Sampler)
    except ImportError as exc:
        pytest.skip(str(exc))
    sampler.setup(Space.from_dict(space), directions or ["minimize"], seed=seed)
    assert isinstance(sampler, OptunaSampler)
    return sampler


def ask_many(sampler: OptunaSampler, n: int) -> list[dict[str, Any]]:
    """Sequential ask/tell with a constant value: exercises the mapping, not the model."""
    out = []
    for _ in range(n):
        (p,) = sampler.ask()
        out.append(p)
        sampler.tell(p, Result(TrialState.COMPLETE, [1.0]))
    return out


def last_trial(sampler: OptunaSampler) -> optuna.trial.FrozenTrial:
    return sampler.study.trials[-1]


# -- capabilities -------------------------------------------------------------------------------


def test_capability_flags_match_optuna() -> None:
    expected = {
        "tpe": (True, True),
        "cmaes": (False, False),
        "gp": (False, True),
        "qmc": (False, True),
        "nsga2": (False, True),
        "optuna.random": (True, True),
    }
    for name, (conditional, multi) in expected.items():
        cls = registry.load(registry.SAMPLERS, name)
        assert issubclass(cls, OptunaSampler)
        assert (cls.supports_conditional, cls.supports_multi_objective) == (conditional, multi)
        assert cls.name == name


def test_cmaes_refuses_multi_objective_like_optuna() -> None:
    """CMA-ES is single-objective in Optuna too: the flag is not just caution."""
    pytest.importorskip("cmaes")
    study = optuna.create_study(
        directions=["minimize", "minimize"], sampler=optuna.samplers.CmaEsSampler(seed=0)
    )
    with pytest.raises(ValueError, match="multi-objective"):
        for _ in range(3):
            trial = study.ask()
            study.tell(trial, [trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)])


# -- mapping of each distribution ---------------------------------------------------------------


def test_uniform_maps_to_float() -> None:
    s = make("optuna.random", {"x": "uniform(-2, 3)"})
    values = [p["x"] for p in ask_many(s, 30)]
    assert last_trial(s).distributions["x"] == FloatDistribution(-2.0, 3.0)
    assert all(type(v) is float and -2 <= v <= 3 for v in values)
    assert [t.params["x"] for t in s.study.trials] == values  # no transformation


def test_uniform_with_q_uses_optuna_step_on_our_grid() -> None:
    s = make("optuna.random", {"x": "uniform(0.1, 1, q=0.2)"})
    values = {p["x"] for p in ask_many(s, 60)}
    # (1 - 0.1) is no multiple of 0.2: the grid's top is 0.9, given to Optuna as such
    assert last_trial(s).distributions["x"] == FloatDistribution(0.1, 0.9, step=0.2)
    assert values == {0.1, 0.3, 0.5, 0.7, 0.9}


def test_loguniform_with_q_samples_log_and_snaps() -> None:
    """Optuna cannot combine log and step: log-continuous there, snapped on our side."""
    s = make("optuna.random", {"lr": "loguniform(1e-4, 1e-1, q=1e-4)"})
    values = [p["lr"] for p in ask_many(s, 200)]
    assert last_trial(s).distributions["lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    for v, t in zip(values, s.study.trials, strict=True):
        assert v == pytest.approx(round(v / 1e-4) * 1e-4, abs=1e-12)
        assert abs(v - t.params["lr"]) <= 0.5e-4 + 1e-12
    # log scale: half of the mass below the geometric mean ~3.2e-3, not near 0.05
    assert 0.3 < np.mean(np.array(values) < 10**-2.5) < 0.7


def test_randint_includes_high_and_keeps_step_and_log() -> None:
    s = make(
        "optuna.random",
        {"a": "randint(1, 3)", "b": "randint(0, 10, q=3)", "c": "randint(1, 1000, log=True)"},
    )
    seen = ask_many(s, 80)
    dists = last_trial(s).distributions
    assert dists["a"] == IntDistribution(1, 3)
    assert dists["b"] == IntDistribution(0, 9, step=3)
    assert dists["c"] == IntDistribution(1, 1000, log=True)
    assert {p["a"] for p in seen} == {1, 2, 3}, "high is included"
    assert {p["b"] for p in seen} == {0, 3, 6, 9}
    assert statistics.median(p["c"] for p in seen) < 200, "log scale favours small values"
    assert all(type(p[k]) is int for p in seen for k in "abc")


def test_normal_is_searched_through_its_quantile() -> None:
    s = make("optuna.random", {"z": "normal(3, 2)", "w": "lognormal(0, 0.5)"}, seed=1)
    seen = ask_many(s, 400)
    space = s.space
    assert space is not None
    assert last_trial(s).distributions["z"] == FloatDistribution(0.0, 1.0)
    for p, t in zip(seen, s.study.trials, strict=True):
        assert p["z"] == space["z"].dist.from_quantile(t.params["z"])
    z = [p["z"] for p in seen]
    assert statistics.mean(z) == pytest.approx(3, abs=0.3)
    assert statistics.stdev(z) == pytest.approx(2, abs=0.3)
    assert min(p["w"] for p in seen) > 0
    assert statistics.median(math.log(p["w"]) for p in seen) == pytest.approx(0, abs=0.15)


def test_normal_with_q_is_snapped() -> None:
    s = make("optuna.random", {"z": "normal(0, 2, q=0.5)"})
    for p in ask_many(s, 50):
        assert p["z"] == round(p["z"] * 2) / 2


def test_choices_keep_their_values_and_types() -> None:
    s = make("optuna.random", {"act": "choices(['relu', None, 0.5, 3])"})
    seen = ask_many(s, 60)
    assert last_trial(s).distributions["act"] == CategoricalDistribution(["relu", None, 0.5, 3])
    assert {(type(p["act"]), p["act"]) for p in seen} == {
        (str, "relu"),
        (type(None), None),
        (float, 0.5),
        (int, 3),
    }


def test_choices_that_compare_equal_go_to_optuna_as_indices() -> None:
    """1 == 1.0 == True in Python, and Optuna finds a categorical value with ==."""
    s = make("optuna.random", {"v": "choices([1, 1.0, True])"})
    seen = ask_many(s, 60)
    assert last_trial(s).distributions["v"] == CategoricalDistribution([0, 1, 2])
    assert {(type(p["v"]), p["v"]) for p in seen} == {(int, 1), (float, 1.0), (bool, True)}
    # a recorded True must come back as index 2, not as the index of 1
    s.tell({"v": True}, Result(TrialState.COMPLETE, [0.0]))
    assert last_trial(s).params["v"] == 2


MIXED = {
    "x": "uniform(-5, 5)",
    "lrq": "loguniform(1e-4, 1e-1, q=1e-4)",
    "n": "randint(1, 8)",
    "k": "randint(2, 64, log=True)",
    "z": "normal(0, 1)",
    "act": "choices(['relu', 'tanh'])",
    "flag": [True, False],
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] if n == "gp" else []) for n in NAMES]
)
def test_values_are_plain_python_past_the_start_up_phase(name: str) -> None:
    """The model-based phase (after 10 start-up trials) is where numpy could leak."""
    s = make(name, MIXED)
    rng = np.random.default_rng(0)
    for _ in range(12):
        (p,) = s.ask()
        s.tell(p, Result(TrialState.COMPLETE, [float(rng.normal())]))
    for p in s.ask(3):
        assert {type(v) for v in p.values()} <= {int, float, str, bool}, p
        assert s.space is not None and s.space.validate_params(p) == p


def test_plain_unwraps_numpy_scalars() -> None:
    assert type(plain(np.float64(1.5))) is float
    assert type(plain(np.int64(3))) is int
    assert type(plain(np.bool_(True))) is bool
    assert plain("relu") == "relu" and plain(None) is None


# -- conditional spaces -------------------------------------------------------------------------

CONDITIONAL = {
    "optimizer": "choices(['sgd', 'adam'])",
    "lr": "loguniform(1e-4, 1e-1)",
    "momentum": "uniform(0.5, 0.99) if optimizer == 'sgd'",
    "beta": "uniform(0.8, 0.999) if optimizer == 'adam'",
}


def test_tpe_conditional_space_is_define_by_run_with_groups() -> None:
    s = make("tpe", CONDITIONAL)
    assert s.describe()["group"] is True, "multivariate TPE needs groups for dynamic spaces"
    for _ in range(25):  # well past TPE's 10 start-up trials
        (p,) = s.ask()
        expected = {"optimizer", "lr", "momentum" if p["optimizer"] == "sgd" else "beta"}
        assert set(p) == expected
        assert set(last_trial(s).params) == expected, "inactive params never reach Optuna"
        loss = p["lr"] + (0.0 if p["optimizer"] == "adam" else 1.0)
        s.tell(p, Result(TrialState.COMPLETE, [loss]))
    late = [t.params["optimizer"] for t in s.study.trials[-10:]]
    assert late.count("adam") >= 7, f"TPE learned the better branch: {late}"


def test_user_options_win_over_our_defaults() -> None:
    s = make({"name": "tpe", "constant_liar": False, "n_startup_trials": 3}, CONDITIONAL)
    desc = s.describe()
    assert desc["constant_liar"] is False and desc["n_startup_trials"] == 3
    assert desc["multivariate"] is True and desc["group"] is True
    assert s.study.sampler._n_startup_trials == 3  # passed through to Optuna


def test_unknown_option_is_a_config_error_listing_the_accepted_ones() -> None:
    with pytest.raises(ConfigError, match=r"tpe.*n_startup_trials"):
        registry.create(registry.SAMPLERS, {"name": "tpe", "n_startup": 5}, Sampler)


@pytest.mark.parametrize("name", ["cmaes", "gp", "qmc", "nsga2"])
def test_samplers_without_dynamic_spaces_refuse_conditional_ones(name: str) -> None:
    try:
        sampler = registry.create(registry.SAMPLERS, name, Sampler)
    except ImportError as exc:
        pytest.skip(str(exc))
    with pytest.raises(HPOError, match=rf"'{name}'.*momentum, beta"):
        sampler.setup(Space.from_dict(CONDITIONAL), ["minimize"], seed=0)


# -- multi-objective ----------------------------------------------------------------------------


def hypervolume_2d(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both minimized) inside the box up to ``ref``."""
    area, best_y = 0.0, ref[1]
    for x, y in sorted(points):
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def run_two_objectives(spec: Any) -> tuple[optuna.Study, float]:
    s = make(
        spec,
        {"x": "uniform(0, 2)", "y": "uniform(0, 2)"},
        directions=["minimize", "maximize"],
    )
    for i in range(40):
        batch = s.ask(4)
        for p in batch[:-1]:
            s.tell(p, Result(TrialState.COMPLETE, [p["x"] ** 2 + p["y"], p["x"] - p["y"]]))
        s.tell(batch[-1], Result(TrialState.FAILED if i % 2 else TrialState.PRUNED))
    front = [(t.values[0], -t.values[1]) for t in s.study.best_trials]
    return s.study, hypervolume_2d(front, (6.0, 2.0))


def test_nsga2_multi_objective_ask_tell_builds_a_pareto_front() -> None:
    study, hv = run_two_objectives({"name": "nsga2", "population_size": 8})
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    states = [t.state for t in study.trials]
    assert states.count(OptunaState.COMPLETE) == 120
    assert states.count(OptunaState.PRUNED) == 20 and states.count(OptunaState.FAIL) == 20
    assert all(t.values is None for t in study.trials if t.state == OptunaState.PRUNED)
    generations = [t.system_attrs.get("NSGAIISampler:generation", -1) for t in study.trials]
    assert max(generations) >= 10, "NSGA-II evolved over generations of 8"
    # same budget, same seed: the evolved front dominates more than random search's
    # (about 20.5 against 19.7 here; the box is 12)
    _, random_hv = run_two_objectives("optuna.random")
    assert hv > random_hv + 0.3, (hv, random_hv)


def test_multi_objective_needs_one_value_per_objective() -> None:
    s = make("nsga2", {"x": "uniform(0, 1)"}, directions=["minimize", "minimize"])
    (p,) = s.ask()
    with pytest.raises(ValueError, match="one value per objective"):
        s.tell(p, Result(TrialState.COMPLETE, [1.0]))
    s.tell(p, Result(TrialState.COMPLETE, [1.0, 2.0]))  # still pending: a good tell works
    assert s.study.trials[-1].values == [1.0, 2.0]


# -- parallel asks ------------------------------------------------------------------------------


def test_constant_liar_sees_pending_trials_and_asks_do_not_repeat() -> None:
    s = make("tpe", {"a": "randint(0, 9)", "b": "choices(['x', 'y', 'z'])"}, seed=3)
    assert s.describe()["constant_liar"] is True
    for p in ask_many(s, 12):
        assert p  # past start-up: TPE is modelling
    batch = s.ask(8)
    assert len({(p["a"], p["b"]) for p in batch}) == 8
    running = [t for t in s.study.trials if t.state == OptunaState.RUNNING]
    assert len(running) == 8, "pending asks stay RUNNING: that is what the liar lies about"


@pytest.mark.parametrize("name", ["optuna.random", "qmc", "nsga2"])
def test_pending_points_are_never_handed_out_twice(name: str) -> None:
    """Even samplers with no liar: the adapter re-asks, then picks a free point itself."""
    s = make(name, {"a": "randint(0, 3)", "b": "choices([True, False])"})
    batch = s.ask(8)  # exactly the 8 points of the space
    assert len({(p["a"], p["b"]) for p in batch}) == 8
    more = s.ask(2)  # nothing free: duplicates, but no error and no endless loop
    assert len(more) == 2
    s.tell(batch[0], Result(TrialState.COMPLETE, [1.0]))
    # duplicate re-asks are failed in Optuna, which every Optuna sampler ignores
    failed = [t for t in s.study.trials if t.state == OptunaState.FAIL]
    assert all(not t.values for t in failed)


# -- what tell records --------------------------------------------------------------------------


def test_pruned_trial_reports_its_intermediate_values_to_optuna() -> None:
    s = make("tpe", {"x": "uniform(0, 1)"})
    (p,) = s.ask()
    s.tell(
        p,
        Result(TrialState.PRUNED, [2.0], intermediate=[(1, 3.0), (2, 2.5), (2, 2.0)], budget=2),
    )
    t = last_trial(s)
    assert t.state == OptunaState.PRUNED
    assert t.intermediate_values == {1: 3.0, 2: 2.0}, "a repeated step: the last report wins"
    assert t.value == 2.0, "Optuna keeps the last intermediate value, which TPE learns from"


def test_pruned_trial_without_reports_keeps_its_value() -> None:
    s = make("tpe", {"x": "uniform(0, 1)"})
    (p,) = s.ask()
    s.tell(p, Result(TrialState.PRUNED, [4.0]))
    assert last_trial(s).value == 4.0


def test_tpe_learns_from_pruned_trials() -> None:
    """Only pruned trials tell it where x is bad; it must move away from there."""
    s = make("tpe", {"x": "uniform(0, 10)"}, seed=2)
    for _ in range(30):
        (p,) = s.ask()
        if p["x"] > 5:
            s.tell(p, Result(TrialState.PRUNED, [100.0], intermediate=[(1, 100.0)]))
        else:
            s.tell(p, Result(TrialState.COMPLETE, [p["x"]]))
    late = [p["x"] for p in ask_many(s, 10)]
    assert statistics.median(late) < 3, late


def _states(s: OptunaSampler) -> list[tuple[str, dict]]:
    return [(t.state.name, t.intermediate_values) for t in s.study.trials]


def test_tpe_is_told_a_paused_trial_as_pruned_at_its_rung() -> None:
    """SHA pauses a at its first rung, promotes it past the second to the end; b is stopped
    where it paused. Optuna holds a at each rung and its outcome, b once."""
    s = make("tpe", {"x": "uniform(0, 1)"})
    a, b = s.ask(2)
    s.pause(a, Result(TrialState.PRUNED, [3.0], intermediate=[(1, 3.0)]))
    s.pause(b, Result(TrialState.PRUNED, [4.0], intermediate=[(1, 4.0)]))
    assert _states(s) == [("PRUNED", {1: 3.0}), ("PRUNED", {1: 4.0})], "not RUNNING (worst)"
    s.pause(a, Result(TrialState.PRUNED, [2.0], intermediate=[(1, 3.0), (3, 2.0)]))
    s.pause(a, Result(TrialState.PRUNED, [2.0], intermediate=[(1, 3.0), (3, 2.0)]))  # again
    s.tell(b, Result(TrialState.PRUNED, [4.0], intermediate=[(1, 4.0)]))
    s.tell(a, Result(TrialState.COMPLETE, [1.0], intermediate=[(1, 3.0), (3, 2.0), (9, 1.0)]))
    assert _states(s) == [("PRUNED", {1: 3.0}), ("PRUNED", {1: 4.0}),
                          ("PRUNED", {1: 3.0, 3: 2.0}),
                          ("COMPLETE", {1: 3.0, 3: 2.0, 9: 1.0})]
    assert s.study.best_value == 1.0


def test_cmaes_keeps_a_paused_trial_pending_until_its_outcome() -> None:
    """CMA-ES ignores pruned trials and learns only from trials of its own generations
    (not added ones): a paused trial is told once, with its outcome."""
    s = make("cmaes", {"x": "uniform(0, 1)"})
    (a,) = s.ask()
    s.pause(a, Result(TrialState.PRUNED, [3.0], intermediate=[(1, 3.0)]))
    assert _states(s) == [("RUNNING", {})]
    s.tell(a, Result(TrialState.COMPLETE, [1.0], intermediate=[(1, 3.0), (9, 1.0)]))
    assert [t.state.name for t in s.study.trials] == ["COMPLETE"]


@pytest.mark.parametrize(
    ("state", "values"),
    [
        (TrialState.FAILED, None),
        (TrialState.INTERRUPTED, None),
        (TrialState.COMPLETE, [float("nan")]),
    ],
)
def test_failed_interrupted_and_nan_become_fail(state: TrialState, values: Any) -> None:
    s = make("tpe", {"x": "uniform(0, 1)"})
    (p,) = s.ask()
    s.tell(p, Result(state, values))
    assert last_trial(s).state == OptunaState.FAIL
    assert last_trial(s).values is None


def test_recorded_trials_are_added_with_native_values() -> None:
    space = {
        "x": "uniform(0, 1)",
        "z": "normal(0, 1)",
        "v": "choices([1, True])",
        "opt": "choices(['sgd', 'adam'])",
        "m": "uniform(0, 1) if opt == 'sgd'",
    }
    s = make("tpe", space)
    (asked,) = s.ask()
    asked_dists = dict(last_trial(s).distributions)
    s.tell(asked, Result(TrialState.COMPLETE, [0.5]))

    s.tell({"x": 0.25, "z": 0.0, "v": True, "opt": "adam"}, Result(TrialState.COMPLETE, [1.5]))
    t = last_trial(s)
    assert t.state == OptunaState.COMPLETE and t.value == 1.5
    assert t.params == {"x": 0.25, "z": 0.5, "v": 1, "opt": "adam"}  # quantile, index
    for name, dist in t.distributions.items():
        assert asked_dists.get(name, dist) == dist, "the same distributions as asked trials"

    s.tell(
        {"x": 0.5, "z": 1.0, "v": 1, "opt": "sgd", "m": 0.5},
        Result(TrialState.PRUNED, [7.0], intermediate=[(1, 9.0), (4, 7.0)]),
    )
    t = last_trial(s)
    assert t.state == OptunaState.PRUNED
    assert t.intermediate_values == {1: 9.0, 4: 7.0} and t.value == 7.0
    assert t.params["m"] == 0.5

    s.tell({"x": 0.5, "z": 0.0, "v": 1, "opt": "adam"}, Result(TrialState.FAILED))
    assert last_trial(s).state == OptunaState.FAIL
    n = len(s.study.trials)
    s.tell({"x": 0.5, "z": 0.0, "v": 1, "opt": "adam"}, Result(TrialState.INTERRUPTED))
    assert len(s.study.trials) == n, "an unfinished record teaches nothing"


def test_recorded_trial_outside_the_space_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = make("tpe", {"x": "uniform(0, 1)"})
    with caplog.at_level(logging.WARNING, logger="hpo_mlops_optuna"):
        s.tell({"x": 5.0}, Result(TrialState.COMPLETE, [1.0]))
    assert s.study.trials == []
    assert "outside the space" in caplog.text and "x: 5.0" in caplog.text


def test_cmaes_warm_starts_from_recorded_trials() -> None:
    pytest.importorskip("cmaes")
    s = make("cmaes", {"x": "uniform(-5, 5)", "y": "uniform(-5, 5)"})
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = {"x": float(rng.uniform(-5, 5)), "y": float(rng.uniform(-5, 5))}
        s.tell(p, Result(TrialState.COMPLETE, [(p["x"] - 2) ** 2 + (p["y"] + 1) ** 2]))
    s.ask()
    assert len(s.study.sampler._source_trials) == 20


def test_ask_before_setup_says_so() -> None:
    sampler = registry.create(registry.SAMPLERS, "tpe", Sampler)
    with pytest.raises(RuntimeError, match="setup"):
        sampler.ask()


# -- quiet, and honest about missing packages ---------------------------------------------------


def test_optuna_logs_and_experimental_warnings_are_silenced(
    capfd: pytest.CaptureFixture[str],
) -> None:
    before = optuna.logging.get_verbosity()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = make("tpe", CONDITIONAL)  # group=True is experimental in Optuna
        ask_many(s, 3)
    err = capfd.readouterr().err
    assert "finished with value" not in err and "A new study created" not in err
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
    assert optuna.logging.get_verbosity() == before, "the user's Optuna settings are restored"


def test_missing_optional_package_is_a_clear_import_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = hpo_mlops_optuna._adapter.importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "cmaes" else real(name, *args)

    monkeypatch.setattr(hpo_mlops_optuna._adapter.importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDependencyError, match="pip install cmaes") as info:
        registry.create(registry.SAMPLERS, "cmaes", Sampler)
    assert isinstance(info.value, ImportError) and isinstance(info.value, HPOError)
