"""Plots of a study, for people who would rather look than read a trials table.

* :func:`optimization_history` -- every trial's value and the best-so-far line,
* :func:`parallel_coordinates` -- which regions of the space the good trials came from,
* :func:`param_importance` -- which parameters mattered (random-forest importances),
* :func:`learning_curves` -- reported values by step, grouped by the rung where each trial
  stopped (only for studies whose objective reports, i.e. that can be pruned),
* :func:`regret` -- best so far against trials and against wall time, several studies on
  one figure (two samplers on one task),
* :func:`partial_dependence` -- the objective against one parameter (a line with a band)
  or two (a heatmap), from a random forest fitted to the trials.

Each returns a :class:`matplotlib.figure.Figure` built without ``pyplot``: no global state
and no display backend, so they are safe on a headless node and in the manager's
threads. :func:`save_plots` writes the PNGs that the CLI logs on the study's MLflow run and
that ``dvc.yaml`` declares as plots.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from hpo_mlops.errors import ConfigError
from hpo_mlops.results import TrialRecord, TrialState
from hpo_mlops.space import Choices, Distribution, Normal, RandInt, Space, Uniform

__all__ = [
    "PLOTS",
    "learning_curves",
    "optimization_history",
    "parallel_coordinates",
    "param_importance",
    "partial_dependence",
    "regret",
    "save_plots",
]

_COLORS = {"COMPLETE": "#1f77b4", "PRUNED": "#9e9e9e", "FAILED": "#d62728", "best": "#ff7f0e"}
#: pruned trials, by the rung where they stopped (earliest first)
_RUNG_COLORS = ["#9ecae1", "#4292c6", "#08519c", "#6a51a3", "#3f007d"]
_SIZE = (9, 5.2)
_DPI = 110


def _direction(mode: str) -> str:
    return "lower is better" if mode == "min" else "higher is better"


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _empty(fig: Figure, ax: Any, text: str) -> Figure:
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color="#555555",
            transform=ax.transAxes, wrap=True)
    return fig


# -- optimization history ---------------------------------------------------------------------
def optimization_history(study: Any) -> Figure:
    """Value of every trial by trial number, and the best value so far (one panel a metric).

    Pruned trials are drawn at the last value they reported (they never reached the full
    budget, so they never count as best); failed trials, which have no value, are ticks on
    the x axis so a run of failures stays visible."""
    trials: list[TrialRecord] = study.trials
    metrics, modes = list(study.metrics), list(study.modes)
    fig = Figure(figsize=(_SIZE[0], _SIZE[1] * (1 if len(metrics) == 1 else 0.75 * len(metrics))),
                 dpi=_DPI, layout="constrained")
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    fig.suptitle(f"Optimization history: {study.name} ({len(trials)} trials)", fontsize=13)
    for i, (metric, mode, ax) in enumerate(zip(metrics, modes, axes, strict=True)):
        sign = 1 if mode == "min" else -1
        for state, marker, label in ((TrialState.COMPLETE, "o", "complete"),
                                     (TrialState.PRUNED, "x", "pruned (last report)")):
            pts = [(t.number, t.values[i]) for t in trials
                   if t.state is state and t.values and len(t.values) > i and _finite(t.values[i])]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.scatter(x, y, marker=marker, s=28, color=_COLORS[state.value],
                           alpha=0.8 if state is TrialState.COMPLETE else 0.6,
                           label=f"{label} ({len(pts)})", zorder=2)
        done = sorted((t.number, t.values[i]) for t in trials if t.state is TrialState.COMPLETE
                      and t.values and len(t.values) > i and _finite(t.values[i]))
        if done:
            xs, best, cur = [], [], math.inf
            for n, v in done:
                cur = min(cur, sign * v)
                xs.append(n)
                best.append(sign * cur)
            last = max(t.number for t in trials)
            ax.step([*xs, last], [*best, best[-1]], where="post", color=_COLORS["best"],
                    linewidth=2.2, label=f"best so far ({best[-1]:.4g})", zorder=3)
        failed = [t.number for t in trials if t.state is TrialState.FAILED]
        if failed:
            ax.plot(failed, [0.0] * len(failed), "|", color=_COLORS["FAILED"], markersize=14,
                    markeredgewidth=2, transform=ax.get_xaxis_transform(),
                    label=f"failed ({len(failed)})", clip_on=False)
        if not trials:
            _empty(fig, ax, "no finished trial yet")
            continue
        ax.set_xlabel("trial number")
        ax.set_ylabel(f"{metric} ({_direction(mode)})")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9, framealpha=0.9)
    return fig


# -- parallel coordinates ---------------------------------------------------------------------
def _is_log(dist: Distribution) -> bool:
    return bool(getattr(dist, "log", False))


def _axis(dist: Distribution, values: list[Any]) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Values of one parameter mapped to [0, 1] (NaN where inactive) and its tick labels."""
    if isinstance(dist, Choices):
        opts = list(dist.options)
        pos = {repr(o): (k / (len(opts) - 1) if len(opts) > 1 else 0.5) for k, o in enumerate(opts)}
        out = np.array([pos.get(repr(v), np.nan) if v is not _MISSING else np.nan for v in values])
        return out, [(p, str(o)) for o, p in zip(opts, pos.values(), strict=True)]
    nums = np.array([float(v) if v is not _MISSING and _finite(v) else np.nan for v in values])
    lo, hi, log = _bounds(dist, nums)
    f = np.log10 if log else (lambda a: a)
    flo, fhi = f(lo), f(hi)
    span = (fhi - flo) or 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (f(nums) - flo) / span
    fmt = "{:.3g}" if not isinstance(dist, RandInt) else "{:.0f}"
    return out, [(0.0, fmt.format(lo)), (1.0, fmt.format(hi))]


def _bounds(dist: Distribution, nums: np.ndarray) -> tuple[float, float, bool]:
    """``(low, high, log)`` of a numeric parameter's axis: the distribution's bounds (the
    trials' range for an unbounded one), log-scaled when the distribution is."""
    if isinstance(dist, Uniform | RandInt):
        lo, hi = float(dist.low), float(dist.high)
    else:
        finite = nums[np.isfinite(nums)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return lo, hi, _is_log(dist) and lo > 0 and not isinstance(dist, Normal)


_MISSING = object()


def parallel_coordinates(study: Any, top: int | None = None) -> Figure:
    """One line per trial across the parameter axes and the objective.

    Completed trials are coloured by the objective (bright = good) and the best one is
    drawn bold on top; pruned trials are thin grey lines that stop before the objective
    axis (their last value came from a smaller budget, so it is not comparable). A
    conditional parameter that was not active in a trial leaves a gap on its axis."""
    space: Space = study.space
    metric, mode = study.metrics[0], study.modes[0]
    trials = study.trials
    done = [t for t in trials
            if t.state is TrialState.COMPLETE and t.values and _finite(t.values[0])]
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    fig = Figure(figsize=(max(_SIZE[0], 1.6 * (len(space) + 1)), _SIZE[1]), dpi=_DPI,
                 layout="constrained")
    ax = fig.add_subplot()
    fig.suptitle(f"Parallel coordinates: {study.name} ({len(done)} completed, "
                 f"{len(pruned)} pruned trials)", fontsize=13)
    if not done:
        return _empty(fig, ax, "no completed trial yet")
    sign = 1 if mode == "min" else -1
    done.sort(key=lambda t: -sign * t.values[0])  # worst first: the best are drawn on top
    if top is not None:
        done = done[-top:]
    rows = pruned + done
    names = space.names
    columns, ticks = [], []
    for name in names:
        col, tk = _axis(space[name].dist, [t.params.get(name, _MISSING) for t in rows])
        columns.append(col)
        ticks.append(tk)
    vals = np.array([t.values[0] for t in done])
    vlo, vhi = float(vals.min()), float(vals.max())
    scaled = (vals - vlo) / ((vhi - vlo) or 1.0) if vhi > vlo else np.full(len(vals), 0.5)
    columns.append(np.concatenate([np.full(len(pruned), np.nan), scaled]))
    ticks.append([(0.0, f"{vlo:.4g}"), (1.0, f"{vhi:.4g}")])
    data = np.vstack(columns).T  # trials x axes
    norm = mpl.colors.Normalize(vlo, vhi if vhi > vlo else vlo + 1e-12)
    cm = mpl.colormaps["viridis_r" if mode == "min" else "viridis"]
    xs = np.arange(data.shape[1])
    for k, row in enumerate(data[: len(pruned)]):
        ax.plot(xs, row, color="#b0b0b0", alpha=0.5, linewidth=0.8,
                label=f"pruned ({len(pruned)})" if k == 0 else None)
    for row, v in zip(data[len(pruned):-1], vals[:-1], strict=True):
        ax.plot(xs, row, color=cm(norm(v)), alpha=0.75, linewidth=1.4)
    ax.plot(xs, data[-1], color="#d62728", linewidth=3, label=f"best: trial {done[-1].number}",
            zorder=5)
    for x, tk in zip(xs, ticks, strict=True):
        ax.axvline(x, color="#333333", linewidth=1, zorder=1)
        for pos, text in tk:
            ax.text(x - 0.03, pos, text, fontsize=8, va="center", ha="right", color="#222222",
                    zorder=10, bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none",
                                     "pad": 0.6})
    ax.set_xticks(xs, [*names, metric], fontsize=10)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlim(-0.6, xs[-1] + 0.2)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    sm = mpl.cm.ScalarMappable(norm=norm, cmap=cm)
    fig.colorbar(sm, ax=ax, label=f"{metric} ({_direction(mode)})", pad=0.01)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, fontsize=9, frameon=False)
    logs = [n for n in names if _is_log(space[n].dist)]
    if logs:
        ax.set_xlabel(f"log-scaled axes: {', '.join(logs)}", fontsize=9, color="#555555")
    return fig


# -- parameter importance ---------------------------------------------------------------------
def _design(space: Space, trials: Sequence[TrialRecord]) -> np.ndarray:
    """Parameters as features: log10 of log-scaled ones, option index of choices, -1 (an
    otherwise impossible code after scaling to [0, 1]) where a conditional one is inactive."""
    cols = []
    for p in space:
        col, _ = _axis(p.dist, [t.params.get(p.name, _MISSING) for t in trials])
        cols.append(np.where(np.isnan(col), -1.0, col))
    return np.vstack(cols).T


def _importance_data(study: Any) -> tuple[list[TrialRecord], np.ndarray, str]:
    """Completed trials' values; when pruning left too few of them, every trial's value at
    the step the most trials reported (all values then come from the same budget)."""
    done = [t for t in study.trials
            if t.state is TrialState.COMPLETE and t.values and _finite(t.values[0])]
    if len(done) >= 8:
        return done, np.array([t.values[0] for t in done]), f"{len(done)} completed trials"
    steps = Counter(s for t in study.trials for s, v in t.intermediate if _finite(v))
    if steps:
        step, n = max(steps.items(), key=lambda kv: (kv[1], kv[0]))
        if n > len(done):
            rows = [(t, dict(t.intermediate)[step]) for t in study.trials
                    if _finite(dict(t.intermediate).get(step))]
            return ([t for t, _ in rows], np.array([v for _, v in rows]),
                    f"{len(rows)} trials' values at step {step}")
    return done, np.array([t.values[0] for t in done]), f"{len(done)} completed trials"


class _Surrogate(NamedTuple):
    trials: list[TrialRecord]
    X: np.ndarray  # the trials, encoded by _design
    y: np.ndarray
    source: str  # which values, said in an axis label
    forest: Any  # a fitted RandomForestRegressor; None with too few distinct values


def _surrogate(study: Any) -> _Surrogate:
    """A random forest fitted to the trials (the data of :func:`_importance_data` on the
    :func:`_design` encoding): what the importance and partial-dependence plots read."""
    from sklearn.ensemble import RandomForestRegressor

    trials, y, source = _importance_data(study)
    X = _design(study.space, trials) if trials else np.empty((0, len(study.space)))
    if len(trials) < 3 or len(set(np.round(y, 12))) < 2:
        return _Surrogate(trials, X, y, source, None)
    forest = RandomForestRegressor(n_estimators=100, random_state=0)
    forest.fit(X, y)
    return _Surrogate(trials, X, y, source, forest)


def param_importance(study: Any) -> Figure:
    """How much each parameter explains the objective: a random forest's (mean decrease in
    impurity) importances over the trials, normalised to 100 %, as Optuna's fANOVA-style
    evaluators do; with a handful of trials read it as a hint, not a measurement."""
    space: Space = study.space
    fig = Figure(figsize=(_SIZE[0], max(3.0, 0.55 * len(space) + 1.8)), dpi=_DPI,
                 layout="constrained")
    ax = fig.add_subplot()
    fig.suptitle(f"Parameter importance for {study.metrics[0]}: {study.name}", fontsize=13)
    fit = _surrogate(study)
    if fit.forest is None:
        return _empty(fig, ax, f"needs at least 3 trials with different values ({fit.source})")
    source = fit.source
    imp = fit.forest.feature_importances_
    imp = imp / imp.sum() if imp.sum() > 0 else imp
    order = np.argsort(imp)
    names = [space.names[i] for i in order]
    bars = ax.barh(names, imp[order] * 100, color="#1f77b4")
    for bar, v in zip(bars, imp[order], strict=True):
        ax.text(bar.get_width() + 0.5, bar.get_y() + bar.get_height() / 2, f"{v:.0%}",
                va="center", fontsize=10)
    ax.set_xlabel(f"importance (%), from {source}")
    ax.set_xlim(0, max(imp) * 100 * 1.15 + 1)
    ax.grid(axis="x", alpha=0.3)
    return fig


# -- learning curves --------------------------------------------------------------------------
def learning_curves(study: Any) -> Figure:
    """Reported values by step, one line a trial, coloured by where it stopped.

    With a pruning scheduler trials stop at rungs (ASHA: ``min_budget * eta**k``); the
    distinct steps where trials were pruned are drawn as dotted rung lines, so it is plain
    which trials each rung cut and how the survivors went on."""
    trials = [t for t in study.trials if t.intermediate]
    metric, mode = study.metrics[0], study.modes[0]
    fig = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    fig.suptitle(f"Learning curves by rung: {study.name} ({len(trials)} trials)", fontsize=13)
    if not trials:
        return _empty(fig, ax, "no trial reported intermediate values (trial.report)")
    rungs = sorted({t.pruned_step for t in trials if t.pruned_step is not None})
    groups: dict[tuple[int, str], list[TrialRecord]] = {}
    for t in trials:
        last = t.pruned_step if t.pruned_step is not None else t.intermediate[-1][0]
        groups.setdefault((last, t.state.value), []).append(t)
    keys = sorted(groups)
    stops = [k for k in keys if k[1] == "PRUNED"]
    sign = 1 if mode == "min" else -1
    finals = [t for t in trials if t.state is TrialState.COMPLETE and t.value is not None]
    best = min(finals, key=lambda t: sign * t.value) if finals else None
    for key in keys:
        step, state = key
        color = (_RUNG_COLORS[stops.index(key) % len(_RUNG_COLORS)] if key in stops
                 else _COLORS.get(state, "#2ca02c") if state != "COMPLETE" else "#2ca02c")
        label = (f"pruned at step {step} ({len(groups[key])})" if state == "PRUNED"
                 else f"{state.lower()} at step {step} ({len(groups[key])})")
        for j, t in enumerate(groups[key]):
            xs, ys = zip(*t.intermediate, strict=True)
            ax.plot(xs, ys, color=color, alpha=0.75, linewidth=1.3, label=label if j == 0 else None,
                    marker="x" if state == "PRUNED" else None, markevery=[len(xs) - 1])
    if best is not None:
        xs, ys = zip(*best.intermediate, strict=True)
        ax.plot(xs, ys, color="#d62728", linewidth=2.8, label=f"best: trial {best.number}",
                zorder=5)
    for r in rungs:
        ax.axvline(r, color="#555555", linestyle=":", linewidth=1.2)
        ax.text(r, 1.0, f" rung {r}", transform=ax.get_xaxis_transform(), fontsize=8,
                va="bottom", ha="center", color="#555555")
    steps = [s for t in trials for s, _ in t.intermediate]
    if min(steps) > 0 and max(steps) / min(steps) >= 9:
        ax.set_xscale("log")  # geometric rungs are evenly spaced on a log axis
        ticks = sorted({*rungs, min(steps), max(steps)})
        ax.set_xticks(ticks, [str(int(s)) if float(s).is_integer() else f"{s:g}" for s in ticks])
        ax.minorticks_off()
    ax.set_xlabel("step (budget: epochs, iterations...)")
    ax.set_ylabel(f"{metric} ({_direction(mode)})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    return fig


# -- regret -----------------------------------------------------------------------------------
def _best_so_far(trials: Sequence[TrialRecord], mode: str, key: Any) -> tuple[list[float],
                                                                                list[float]]:
    """``(x, best value so far)`` over the completed trials taken in ``key`` order (``key``
    gives each trial's x, None to leave it out): the running minimum (maximum for max)."""
    sign = 1 if mode == "min" else -1
    pts = sorted((key(t), t.values[0]) for t in trials if t.state is TrialState.COMPLETE
                 and t.values and _finite(t.values[0]) and key(t) is not None)
    xs, best, cur = [], [], math.inf
    for x, v in pts:
        cur = min(cur, sign * v)
        xs.append(float(x))
        best.append(sign * cur)
    return xs, best


def regret(studies: Any, optimum: float | None = None) -> Figure:
    """Best value so far against the trial number (left) and the wall time since the
    study's first trial started (right), one line a study, so that several studies of one
    task (two samplers, two schedulers) compare at a glance: lower and further left wins
    for ``min``.

    ``studies``: a study or a sequence of them (live :class:`~hpo_mlops.study.Study`
    objects, or loaded ones); they must share the first metric's direction. ``optimum``:
    the known best value of the task (a benchmark); the y axis is then the simple regret
    ``|best so far - optimum|`` on a log scale, which falls for either direction."""
    studies = [studies] if hasattr(studies, "trials") else list(studies)
    if not studies:
        raise ConfigError("regret: needs at least one study")
    modes = {s.modes[0] for s in studies}
    if len(modes) > 1:
        raise ConfigError("regret: the studies must share one direction (mode), got "
                          + ", ".join(f"{s.name}: {s.modes[0]}" for s in studies))
    mode = modes.pop()
    metrics = list(dict.fromkeys(s.metrics[0] for s in studies))
    fig = Figure(figsize=(_SIZE[0] * 1.45, _SIZE[1]), dpi=_DPI, layout="constrained")
    ax_n, ax_t = fig.subplots(1, 2)
    fig.suptitle(f"{'Regret' if optimum is not None else 'Best so far'}: "
                 f"{', '.join(s.name for s in studies)}", fontsize=13)
    colors = mpl.colormaps["tab10"].colors
    for k, study in enumerate(studies):
        trials = study.trials
        starts = [t.start for t in trials if t.start is not None] or \
            [t.end for t in trials if t.end is not None]
        t0 = min(starts) if starts else None
        by_number = _best_so_far(trials, mode, lambda t: t.number)
        by_time = _best_so_far(trials, mode, lambda t, t0=t0: None if t.end is None or t0 is None
                               else t.end - t0)
        last = max((t.number for t in trials), default=0)
        n_done = sum(1 for t in trials if t.state is TrialState.COMPLETE)
        if not by_number[0]:
            label = f"{study.name}: no completed trial"
            ax_n.plot([], [], color=colors[k % 10], label=label)
            continue
        final = by_number[1][-1]
        shown = (f"regret {abs(final - optimum):.3g}" if optimum is not None
                 else f"best {final:.4g}")
        label = f"{study.name} ({n_done} completed, {shown})"
        for ax, (xs, ys), end in ((ax_n, by_number, last), (ax_t, by_time, None)):
            if not xs:
                continue
            ys = [abs(y - optimum) for y in ys] if optimum is not None else ys
            end = xs[-1] if end is None else max(end, xs[-1])
            ax.step([*xs, end], [*ys, ys[-1]], where="post", color=colors[k % 10],
                    linewidth=2, label=label)
            ax.plot(xs, ys, "o", color=colors[k % 10], markersize=3.5)
    ylabel = (f"|best {metrics[0]} - {optimum:g}| (log)" if optimum is not None
              else f"best {' / '.join(metrics)} so far ({_direction(mode)})")
    for ax, xlabel in ((ax_n, "trial number"), (ax_t, "wall time since the first trial (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if optimum is not None and ax.get_lines():
            ax.set_yscale("symlog", linthresh=1e-6)
    ax_n.legend(loc="best", fontsize=9, framealpha=0.9)
    return fig


# -- partial dependence -----------------------------------------------------------------------
class _Grid(NamedTuple):
    codes: np.ndarray  # positions in the _design encoding, in [0, 1]
    values: list[Any]  # the parameter's values there
    labels: list[str] | None  # option names of a choice parameter
    log: bool


def _grid(dist: Distribution, observed: list[Any], n: int) -> _Grid:
    """Where to evaluate a partial dependence: every option of a choice, else ``n`` points
    evenly spaced in the encoding (so in log space for a log parameter)."""
    if isinstance(dist, Choices):
        opts = list(dist.options)
        codes = np.array([k / (len(opts) - 1) if len(opts) > 1 else 0.5
                          for k in range(len(opts))])
        return _Grid(codes, opts, [str(o) for o in opts], False)
    nums = np.array([float(v) for v in observed if _finite(v)])
    lo, hi, log = _bounds(dist, nums)
    codes = np.linspace(0.0, 1.0, n)
    vals = 10 ** (np.log10(lo) + codes * (np.log10(hi) - np.log10(lo))) if log \
        else lo + codes * (hi - lo)
    if isinstance(dist, RandInt):
        ints = np.unique(np.round(vals))
        vals = ints
        codes = (ints - lo) / ((hi - lo) or 1.0)
    return _Grid(codes, list(vals), None, log)


def _dependence(fit: _Surrogate, columns: list[int], grids: list[_Grid],
                max_rows: int = 200) -> np.ndarray:
    """Per-tree partial dependence: ``(trees, *grid shape)``, each the tree's prediction
    averaged over the trials (those where every parameter in ``columns`` was active) with
    those parameters set to each grid point."""
    rows = fit.X[np.all(fit.X[:, columns] >= 0, axis=1)]
    if len(rows) > max_rows:  # the average needs a sample of the others' values, not all
        rows = rows[np.random.default_rng(0).choice(len(rows), max_rows, replace=False)]
    mesh = np.meshgrid(*[g.codes for g in grids], indexing="ij")
    points = np.stack([m.ravel() for m in mesh], axis=1)  # (G, len(columns))
    X = np.repeat(rows[None, :, :], len(points), axis=0)  # (G, R, D)
    X[:, :, columns] = points[:, None, :]
    flat = X.reshape(-1, X.shape[-1])
    per_tree = np.stack([tree.predict(flat) for tree in fit.forest.estimators_])
    return per_tree.reshape(len(per_tree), len(points), len(rows)).mean(-1).reshape(
        len(per_tree), *mesh[0].shape)


def partial_dependence(study: Any, params: Sequence[str] | None = None, top: int = 1,
                       resolution: int = 40) -> Figure:
    """How the objective depends on one parameter (a line, with a band: 10-90 % of the
    surrogate's trees) or two (a heatmap), the others averaged over the trials.

    The surrogate is a random forest fitted to the trials (:func:`param_importance`'s);
    read it where the trials (the dots) are, not as a measurement between them. A
    conditional parameter's dependence averages over the trials where it was active.
    ``params``: one or two names of the space; by default the ``top`` (1 or 2) most
    important ones (:func:`param_importance`'s ranking)."""
    space: Space = study.space
    metric, mode = study.metrics[0], study.modes[0]
    names = list(space.names)
    if params is not None:
        params = [params] if isinstance(params, str) else list(params)
        unknown = [p for p in params if p not in names]
        if unknown or not 1 <= len(params) <= 2 or len(set(params)) != len(params):
            raise ConfigError(f"partial dependence: params must be one or two distinct names of "
                              f"the space {names}, got {params}")
    fit = _surrogate(study)
    if params is None:
        if top not in (1, 2):
            raise ConfigError(f"partial dependence: top must be 1 or 2, got {top!r}")
        imp = fit.forest.feature_importances_ if fit.forest is not None else np.zeros(len(names))
        params = [names[k] for k in np.argsort(-imp, kind="stable")[:top]]
    fig = Figure(figsize=_SIZE if len(params) == 1 else (_SIZE[0], _SIZE[1] * 1.3), dpi=_DPI,
                 layout="constrained")
    ax = fig.add_subplot()
    fig.suptitle(f"Partial dependence of {metric} on {' and '.join(params)}: {study.name}",
                 fontsize=13)
    if fit.forest is None:
        return _empty(fig, ax, f"needs at least 3 trials with different values ({fit.source})")
    cols = [names.index(p) for p in params]
    # a heatmap's cells cost resolution**2 forest predictions each: a coarser grid there
    n = resolution if len(params) == 1 else max(2, min(resolution, 25))
    grids = [_grid(space[p].dist, [t.params.get(p) for t in fit.trials], n) for p in params]
    active = np.all(fit.X[:, cols] >= 0, axis=1)
    if not active.any():
        return _empty(fig, ax, f"no trial had {' and '.join(params)} active together")
    pd = _dependence(fit, cols, grids, max_rows=200 if len(params) == 1 else 100)
    sign = 1 if mode == "min" else -1
    best = int(np.argmin(np.where(active, sign * fit.y, np.inf)))  # of the trials drawn
    best_label = (f"best: trial {fit.trials[best].number}"
                  if sign * fit.y[best] <= np.min(sign * fit.y)
                  else f"best with {' and '.join(params)}: trial {fit.trials[best].number}")
    label_y = f"{metric} ({_direction(mode)})"
    if len(params) == 1:
        g, mean = grids[0], pd.mean(0)
        lo, hi = np.percentile(pd, [10, 90], axis=0)
        x = np.arange(len(g.values)) if g.labels else np.asarray(g.values, dtype=float)
        obs_x = (fit.X[active, cols[0]] * (len(g.values) - 1) if g.labels
                 else np.array([float(t.params[params[0]]) for t, a in zip(fit.trials, active,
                                                                        strict=True) if a]))
        ax.scatter(obs_x, fit.y[active], s=18, color="#9e9e9e", alpha=0.7,
                   label=f"trials ({int(active.sum())})", zorder=2)
        if g.labels:
            ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt="o-", color="#1f77b4",
                        linewidth=2, capsize=5, label="partial dependence (forest mean)",
                        zorder=3)
            ax.set_xticks(x, g.labels)
        else:
            ax.fill_between(x, lo, hi, color="#1f77b4", alpha=0.2,
                            label="10-90 % of the forest's trees")
            ax.plot(x, mean, color="#1f77b4", linewidth=2.2,
                    label="partial dependence (forest mean)", zorder=3)
            if g.log:
                ax.set_xscale("log")
        bx = obs_x[int(np.flatnonzero(active).tolist().index(best))]
        ax.scatter([bx], [fit.y[best]], marker="*", s=220, color="#d62728", label=best_label,
                   zorder=5)
        ax.set_xlabel(params[0])
        ax.set_ylabel(label_y)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9, framealpha=0.9)
    else:
        gx, gy = grids
        mean = pd.mean(0)  # (len(gx), len(gy))
        cm = "viridis_r" if mode == "min" else "viridis"
        mesh = ax.pcolormesh(_edges(gx.codes), _edges(gy.codes), mean.T, cmap=cm,
                             shading="flat")
        fig.colorbar(mesh, ax=ax, label=f"{label_y}, forest mean", pad=0.01)
        ax.scatter(fit.X[active, cols[0]], fit.X[active, cols[1]], s=16, color="white",
                   edgecolor="#333333", linewidth=0.6, label=f"trials ({int(active.sum())})")
        ax.scatter([fit.X[best, cols[0]]], [fit.X[best, cols[1]]], marker="*", s=260,
                   color="#d62728", edgecolor="white", label=best_label)
        for g, axis, name in ((gx, ax.xaxis, params[0]), (gy, ax.yaxis, params[1])):
            pos, text = _ticks(g)
            axis.set_ticks(pos, text)
            axis.set_label_text(name + (" (log scale)" if g.log else ""))
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=2, fontsize=9, frameon=False)
    fig.text(0.99, 0.005, f"surrogate: random forest on {fit.source}", ha="right",
             va="bottom", fontsize=8, color="#555555")
    return fig


def _edges(codes: np.ndarray) -> np.ndarray:
    """Cell edges around grid points (for pcolormesh): midpoints, padded at both ends."""
    if len(codes) == 1:
        return np.array([codes[0] - 0.5, codes[0] + 0.5])
    mid = (codes[1:] + codes[:-1]) / 2
    return np.concatenate([[2 * codes[0] - mid[0]], mid, [2 * codes[-1] - mid[-1]]])


def _ticks(g: _Grid, n: int = 5) -> tuple[list[float], list[str]]:
    """A heatmap axis's ticks, in the encoding's positions, labelled with real values."""
    if g.labels:
        return list(g.codes), g.labels
    lo, hi = float(g.values[0]), float(g.values[-1])
    if g.log and hi / lo >= 100:  # decades, where a log axis's reader looks for them
        ks = np.arange(np.ceil(np.log10(lo) - 1e-9), np.floor(np.log10(hi) + 1e-9) + 1)
        span = np.log10(hi) - np.log10(lo)
        return [float((k - np.log10(lo)) / span) for k in ks], [f"{10 ** k:g}" for k in ks]
    idx = np.unique(np.linspace(0, len(g.codes) - 1, n).round().astype(int))
    return [float(g.codes[i]) for i in idx], [f"{float(g.values[i]):.3g}" for i in idx]


PLOTS = {
    "history": optimization_history,
    "parallel_coordinates": parallel_coordinates,
    "importance": param_importance,
    "learning_curves": learning_curves,
    "regret": regret,
    "partial_dependence": partial_dependence,
    "partial_dependence_2d": functools.partial(partial_dependence, top=2),
}


def save_plots(study: Any, out_dir: str | Path) -> dict[str, Path]:
    """Write every plot as ``<out_dir>/<name>.png``; ``learning_curves`` only when trials
    reported intermediate values, ``partial_dependence_2d`` (the two most important
    parameters) only for a space of two or more. Returns ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    has_curves = any(t.intermediate for t in study.trials)
    paths = {}
    for name, make in PLOTS.items():
        if (name == "learning_curves" and not has_curves
                or name == "partial_dependence_2d" and len(study.space) < 2):
            continue
        fig = make(study)
        path = out / f"{name}.png"
        fig.savefig(path)
        paths[name] = path
    return paths
