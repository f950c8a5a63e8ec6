"""Plots of a study, for people who would rather look than read a trials table.

* :func:`optimization_history` -- every trial's value and the best-so-far line,
* :func:`parallel_coordinates` -- which regions of the space the good trials came from,
* :func:`param_importance` -- which parameters mattered (random-forest importances),
* :func:`learning_curves` -- reported values by step, grouped by the rung where each trial
  stopped (only for studies whose objective reports, i.e. that can be pruned).

Each returns a :class:`matplotlib.figure.Figure` built without ``pyplot``: no global state
and no display backend, so they are safe on a headless node and in the manager's
threads. :func:`save_plots` writes the PNGs that the CLI logs on the study's MLflow run and
that ``dvc.yaml`` declares as plots.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from hpo_mlops.results import TrialRecord, TrialState
from hpo_mlops.space import Choices, Distribution, Normal, RandInt, Space, Uniform

__all__ = [
    "PLOTS",
    "learning_curves",
    "optimization_history",
    "parallel_coordinates",
    "param_importance",
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
    if isinstance(dist, Uniform | RandInt):
        lo, hi = float(dist.low), float(dist.high)
    else:
        finite = nums[np.isfinite(nums)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    log = _is_log(dist) and lo > 0 and not isinstance(dist, Normal)
    f = np.log10 if log else (lambda a: a)
    flo, fhi = f(lo), f(hi)
    span = (fhi - flo) or 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (f(nums) - flo) / span
    fmt = "{:.3g}" if not isinstance(dist, RandInt) else "{:.0f}"
    return out, [(0.0, fmt.format(lo)), (1.0, fmt.format(hi))]


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


def param_importance(study: Any) -> Figure:
    """How much each parameter explains the objective: a random forest's (mean decrease in
    impurity) importances over the trials, normalised to 100 %, as Optuna's fANOVA-style
    evaluators do; with a handful of trials read it as a hint, not a measurement."""
    from sklearn.ensemble import RandomForestRegressor

    space: Space = study.space
    trials, y, source = _importance_data(study)
    fig = Figure(figsize=(_SIZE[0], max(3.0, 0.55 * len(space) + 1.8)), dpi=_DPI,
                 layout="constrained")
    ax = fig.add_subplot()
    fig.suptitle(f"Parameter importance for {study.metrics[0]}: {study.name}", fontsize=13)
    if len(trials) < 3 or len(set(np.round(y, 12))) < 2:
        return _empty(fig, ax, f"needs at least 3 trials with different values ({source})")
    forest = RandomForestRegressor(n_estimators=100, random_state=0)
    forest.fit(_design(space, trials), y)
    imp = forest.feature_importances_
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


PLOTS = {
    "history": optimization_history,
    "parallel_coordinates": parallel_coordinates,
    "importance": param_importance,
    "learning_curves": learning_curves,
}


def save_plots(study: Any, out_dir: str | Path) -> dict[str, Path]:
    """Write every plot as ``<out_dir>/<name>.png``; ``learning_curves`` only when trials
    reported intermediate values. Returns ``{name: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    has_curves = any(t.intermediate for t in study.trials)
    paths = {}
    for name, make in PLOTS.items():
        if name == "learning_curves" and not has_curves:
            continue
        fig = make(study)
        path = out / f"{name}.png"
        fig.savefig(path)
        paths[name] = path
    return paths
