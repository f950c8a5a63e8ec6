"""The study plots on hand-made trials: what is drawn is what the trials say."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hpo_mlops import TrialRecord, TrialState
from hpo_mlops.plots import (
    learning_curves,
    optimization_history,
    parallel_coordinates,
    param_importance,
    save_plots,
)
from hpo_mlops.space import Space

SPACE = Space.from_dict({"lr": "loguniform(1e-4, 1e-1)", "opt": "choices(['sgd', 'adam'])",
                         "momentum": "uniform(0.5, 0.99) if opt == 'sgd'"})


def fake_study(metrics=("loss",), modes=("min",), n=12, seed=0):
    rng = np.random.default_rng(seed)
    trials = []
    for i in range(n):
        opt = ["sgd", "adam"][i % 2]
        params = {"lr": float(10 ** rng.uniform(-4, -1)), "opt": opt}
        if opt == "sgd":
            params["momentum"] = float(rng.uniform(0.5, 0.99))
        value = 10 * params["lr"] + (0.5 if opt == "sgd" else 0.0) + 0.01 * i
        curve = [(s, value + 1 / s) for s in (1, 2, 3, 4, 5, 6, 7, 8, 9)]
        if i % 4 == 3:
            state, curve, pruned = TrialState.PRUNED, curve[:1 if i % 8 == 3 else 3], None
        elif i == 5:
            state, curve = TrialState.FAILED, []
        else:
            state = TrialState.COMPLETE
        rec = TrialRecord(i, params, state=state, intermediate=curve)
        if state is TrialState.PRUNED:
            rec.pruned_step = pruned or curve[-1][0]
            rec.values = [curve[-1][1]]
        elif state is TrialState.COMPLETE:
            rec.values = [value, 1.0 / (1 + i)][: len(metrics)]
        trials.append(rec)
    return SimpleNamespace(name="fake", trials=trials, metrics=list(metrics), modes=list(modes),
                           space=SPACE)


def test_history_draws_every_trial_and_the_best_so_far_line():
    study = fake_study()
    fig = optimization_history(study)
    ax = fig.axes[0]
    done = [t for t in study.trials if t.state is TrialState.COMPLETE]
    best_line = next(ln for ln in ax.get_lines() if ln.get_label().startswith("best so far"))
    ys = best_line.get_ydata()
    assert ys[-1] == pytest.approx(min(t.value for t in done))
    assert all(a >= b for a, b in zip(ys, ys[1:], strict=False)), "best so far never worsens"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"complete ({len(done)})" in labels and "pruned (last report) (3)" in labels
    assert "failed (1)" in labels
    maxed = optimization_history(fake_study(modes=("max",)))
    line = next(ln for ln in maxed.axes[0].get_lines() if ln.get_label().startswith("best"))
    assert list(line.get_ydata()) == sorted(line.get_ydata()), "for max the line only rises"


def test_multi_objective_history_has_a_panel_per_metric():
    fig = optimization_history(fake_study(metrics=("loss", "latency"), modes=("min", "min")))
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss (lower is better)",
                                                     "latency (lower is better)"]


def test_parallel_coordinates_and_importance_and_curves():
    study = fake_study(n=16)
    pc = parallel_coordinates(study)
    ax = pc.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["lr", "opt", "momentum", "loss"]
    best = next(ln for ln in ax.get_lines() if ln.get_label().startswith("best: trial"))
    assert best.get_ydata()[-1] == pytest.approx(0.0), "min: the best sits at the low end"
    imp = param_importance(study)
    bars = {b.get_y(): b.get_width() for b in imp.axes[0].patches}
    assert sum(bars.values()) == pytest.approx(100.0)
    names = [t.get_text() for t in imp.axes[0].get_yticklabels()]
    assert names[-1] in ("lr", "opt"), "the parameters the value depends on come out on top"
    lc = learning_curves(study)
    labels = [t.get_text() for t in lc.axes[0].get_legend().get_texts()]
    assert "pruned at step 1 (2)" in labels and "pruned at step 3 (2)" in labels
    assert "complete at step 9 (11)" in labels
    rungs = [t.get_text().strip() for t in lc.axes[0].texts]
    assert rungs == ["rung 1", "rung 3"]


def test_save_plots_skips_curves_without_reports(tmp_path):
    study = fake_study()
    for t in study.trials:
        t.intermediate = []
    paths = save_plots(study, tmp_path)
    assert sorted(paths) == ["history", "importance", "parallel_coordinates",
                             "partial_dependence", "partial_dependence_2d", "regret"]
    assert all(p.stat().st_size > 10_000 for p in paths.values())
    empty = SimpleNamespace(name="e", trials=[], metrics=["loss"], modes=["min"], space=SPACE)
    assert sorted(save_plots(empty, tmp_path / "e")) == [
        "history", "importance", "parallel_coordinates", "partial_dependence",
        "partial_dependence_2d", "regret"]
