"""Regret and partial-dependence plots: what each figure draws is what the trials say
(hand-made studies), and ``hpo-mlops plot`` on studies run on a real cluster and read back
from a real MLflow store, with its one-line errors."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import objectives as obj
import pytest
from matplotlib.collections import PolyCollection, QuadMesh
from mlflow_store import fresh_store
from test_cli import hpo_here
from test_plots import fake_study

from hpo_mlops import Study, TrialState
from hpo_mlops.errors import ConfigError
from hpo_mlops.plots import partial_dependence, regret, save_plots


def timed(name: str, seed: int, mode: str = "min", offset: float = 0.0):
    study = fake_study(n=24, seed=seed, modes=(mode,))
    study.name = name
    for t in study.trials:  # trial k starts at 1000 + 2k (+ offset) and takes 1.5 s
        t.start, t.end = 1000.0 + 2 * t.number + offset, 1001.5 + 2 * t.number + offset
    return study


def lines_by_label(ax):
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}


# -- regret -----------------------------------------------------------------------------------
def test_regret_draws_each_study_best_so_far_by_trial_and_by_time():
    a, b = timed("tpe", 0), timed("random", 1, offset=7.0)
    fig = regret([a, b])
    by_trial, by_time = fig.axes
    assert by_trial.get_xlabel() == "trial number"
    assert by_time.get_xlabel() == "wall time since the first trial (s)"
    for ax in (by_trial, by_time):
        lines = lines_by_label(ax)
        assert len(lines) == 2
        for study in (a, b):
            done = [t for t in study.trials if t.state is TrialState.COMPLETE]
            (line,) = [ln for label, ln in lines.items() if label.startswith(f"{study.name} (")]
            assert f"{len(done)} completed" in line.get_label()
            ys = line.get_ydata()
            assert all(y0 >= y1 for y0, y1 in zip(ys, ys[1:], strict=False)), \
                "min: best so far never rises"
            assert ys[-1] == pytest.approx(min(t.value for t in done))
            assert ys[0] == pytest.approx(done[0].value), "starts at the first completed trial"
    xs = lines_by_label(by_time)[next(iter(lines_by_label(by_time)))].get_xdata()
    assert xs[0] == pytest.approx(1.5), "wall time counts from the study's first start"
    xs = [ln for ln in by_trial.get_lines() if ln.get_label().startswith("tpe")][0].get_xdata()
    assert xs[-1] == max(t.number for t in a.trials), "the line runs to the last trial"


def test_regret_for_max_rises_and_with_an_optimum_falls_to_the_gap():
    up = regret([timed("m", 0, mode="max")]).axes[0]
    ys = next(iter(lines_by_label(up).values())).get_ydata()
    assert list(ys) == sorted(ys) and len(set(ys)) > 1, "max: best so far only rises"
    study = timed("m", 0)
    best = min(t.value for t in study.trials if t.state is TrialState.COMPLETE)
    fig = regret(study, optimum=best - 0.5)
    ys = next(iter(lines_by_label(fig.axes[0]).values())).get_ydata()
    assert all(y0 >= y1 for y0, y1 in zip(ys, ys[1:], strict=False))
    assert ys[-1] == pytest.approx(0.5) and "regret 0.5" in fig.axes[0].get_lines()[0].get_label()
    assert fig.axes[0].get_yscale() == "symlog"


def test_regret_refuses_studies_of_opposite_directions():
    with pytest.raises(ConfigError, match="share one direction.*a: min, b: max"):
        regret([timed("a", 0), timed("b", 1, mode="max")])


# -- partial dependence -----------------------------------------------------------------------
def test_partial_dependence_on_one_parameter_follows_the_trials():
    # fake_study's value: 10 * lr + 0.5 for sgd + 0.01 * trial number
    study = fake_study(n=40, seed=3)
    fig = partial_dependence(study, ["lr"])
    ax = fig.axes[0]
    line = lines_by_label(ax)["partial dependence (forest mean)"]
    x, y = line.get_xdata(), line.get_ydata()
    assert x[0] == pytest.approx(1e-4) and x[-1] == pytest.approx(1e-1), "the space's bounds"
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "lr"
    assert y[-1] - y[0] > 0.4, "loss grows with lr (10 * lr over 1e-4..1e-1)"
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert band.get_label() == "10-90 % of the forest's trees"
    best = min((t for t in study.trials if t.state is TrialState.COMPLETE), key=lambda t: t.value)
    assert f"best: trial {best.number}" in lines_by_label(ax) or any(
        c.get_label() == f"best: trial {best.number}" for c in ax.collections)

    opt = partial_dependence(study, "opt").axes[0]
    assert [t.get_text() for t in opt.get_xticklabels()] == ["sgd", "adam"]
    (bars,) = opt.containers  # an error bar a choice: the band of a choice parameter
    assert bars.get_label() == "partial dependence (forest mean)"
    sgd, adam = bars.lines[0].get_ydata()
    assert sgd - adam > 0.1, "sgd costs 0.5 more (a forest's average flattens it)"


def test_partial_dependence_on_two_parameters_is_a_heatmap():
    study = fake_study(n=40, seed=3)
    fig = partial_dependence(study, ["lr", "opt"])
    ax = fig.axes[0]
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    grid = np.asarray(mesh.get_array()).reshape(2, -1)  # rows: opt (sgd, adam); cols: lr
    assert grid.shape[1] == 25
    assert (grid[0] > grid[1]).mean() > 0.8, "sgd is worse almost everywhere"
    assert grid[:, -1].mean() > grid[:, 0].mean() + 0.4, "and high lr is worse"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["sgd", "adam"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0001", "0.001", "0.01", "0.1"]
    assert ax.get_xlabel() == "lr (log scale)" and ax.get_ylabel() == "opt"
    assert fig.axes[1].get_ylabel() == "loss (lower is better), forest mean"
    # a conditional parameter: only the trials where it was active (sgd) are drawn
    cond = partial_dependence(study, ["lr", "momentum"]).axes[0]
    n_sgd = sum(1 for t in study.trials if "momentum" in t.params
                and t.state is TrialState.COMPLETE)
    assert any(c.get_label() == f"trials ({n_sgd})" for c in cond.collections)


@pytest.mark.parametrize("params", [["nope"], ["lr", "opt", "momentum"], ["lr", "lr"], []])
def test_partial_dependence_names_the_allowed_parameters(params):
    with pytest.raises(ConfigError, match=r"one or two distinct names of the space "
                                          r"\['lr', 'opt', 'momentum'\]"):
        partial_dependence(fake_study(), params)


def test_save_plots_writes_regret_and_partial_dependence(tmp_path):
    paths = save_plots(fake_study(), tmp_path)
    assert {"regret", "partial_dependence", "partial_dependence_2d"} <= set(paths)
    image = matplotlib.image.imread(paths["partial_dependence_2d"])
    assert image.ndim == 3 and image.shape[0] > 400 and image.std() > 0.05, "not a blank page"


# -- the CLI on studies recorded in a real store ----------------------------------------------
@pytest.fixture(scope="module")
def recorded(tmp_path_factory, dask_client):
    """Two samplers on one task, and a study whose every trial failed, in one sqlite store."""
    uri = fresh_store(tmp_path_factory.mktemp("store") / "mlflow.db")
    space = {"x": "uniform(-2, 3)", "y": "uniform(-1, 1)"}
    live = {}
    for name, sampler in (("quad-random", "random"), ("quad-tpe", "tpe")):
        study = Study(name, space, metric="loss", sampler=sampler, scheduler="fifo", seed=1,
                      tracking_uri=uri)
        study.optimize(obj.quadratic, n_trials=12, client=dask_client)
        live[name] = study
    Study("all-failed", space, sampler="random", scheduler="fifo", tracking_uri=uri).optimize(
        obj.returns_text, n_trials=2, client=dask_client)
    return uri, live


def test_plot_regret_of_two_recorded_studies(recorded, tmp_path):
    from hpo_mlops.cli_plot import recorded_study

    uri, live = recorded
    out = tmp_path / "regret.png"
    code, stdout, stderr = hpo_here("plot", "regret", "quad-random", "quad-tpe", "-o", str(out),
                                    "--tracking-uri", uri)
    assert code == 0, stderr
    assert f"regret of quad-random, quad-tpe -> {out}" in stdout
    image = matplotlib.image.imread(out)
    assert image.shape[1] > 1000 and image.std() > 0.05
    # the figure the command drew: one study loaded by name, one live, side by side
    fig = regret([live["quad-random"], recorded_study("quad-tpe", uri)])
    lines = lines_by_label(fig.axes[0])
    assert sorted(label.split(" (")[0] for label in lines) == ["quad-random", "quad-tpe"]
    for study in live.values():
        (line,) = [ln for lbl, ln in lines.items() if lbl.startswith(study.name)]
        assert line.get_ydata()[-1] == pytest.approx(study.best_value)


def test_plot_partial_dependence_and_the_other_kinds(recorded, tmp_path):
    uri, _ = recorded
    for kind, extra in (("partial-dependence", ["--params", "x,y"]),
                        ("partial-dependence", []), ("history", []), ("curves", [])):
        out = tmp_path / f"{kind}{len(extra)}.png"
        code, _, stderr = hpo_here("plot", kind, "quad-tpe", "-o", str(out),
                                   "--tracking-uri", uri, *extra)
        assert code == 0, stderr
        assert matplotlib.image.imread(out).std() > 0.05


@pytest.mark.parametrize(("args", "message"), [
    (["nope", "quad-tpe"], "plot kind 'nope' is unknown; allowed: regret, partial-dependence, "
                           "history, parallel, importance, curves"),
    (["regret", "missing"], "study 'missing' is not recorded in sqlite:///"),
    (["regret", "missing"], "recorded: all-failed, quad-random, quad-tpe"),
    (["partial-dependence", "quad-tpe", "--params", "z"],
     "params must be one or two distinct names of the space ['x', 'y'], got ['z']"),
    (["history", "all-failed"], "study 'all-failed' has no completed trial (2 recorded: "
                                "0 pruned, 2 failed)"),
    (["history", "quad-tpe", "quad-random"], "plot history draws one study, got 2"),
    (["history", "quad-tpe", "-o", "out.gif"], "must end in one of .png, .svg, .pdf, .jpg"),
])
def test_plot_errors_are_one_line_and_exit_2(recorded, args, message):
    uri, _ = recorded
    code, stdout, stderr = hpo_here("plot", *args, "--tracking-uri", uri)
    assert code == 2, stdout + stderr
    assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_plot_a_missing_store_is_named(tmp_path):
    code, _, stderr = hpo_here("plot", "regret", "a", "--tracking-uri",
                               f"sqlite:///{tmp_path}/none.db")
    assert code == 2 and f"no MLflow store at {tmp_path}/none.db" in stderr
    assert not (tmp_path / "none.db").exists()
