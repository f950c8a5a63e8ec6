"""Objectives: a Python callable or an external command, and their result parsing.

``as_metrics`` is the one place that decides what a returned value means, so a NaN or a
string is a failed trial with a message, never a best value.
"""

from __future__ import annotations

import json
import math
import numbers
import shlex
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hpo_mlops.trial import Trial

Objective = Callable[[dict[str, Any], Trial], Any]


class TrialFailed(Exception):  # noqa: N818
    """The objective's result is unusable (message says why); the trial is FAILED."""


def as_metrics(raw: Any, metrics: Sequence[str]) -> dict[str, float]:
    """Turn an objective's return value into ``{metric: float}``.

    Accepted: a number (single objective), a sequence of numbers in metric order, or a
    dict holding every study metric (other numeric entries are kept as extra metrics).
    """
    if isinstance(raw, Mapping):
        missing = [m for m in metrics if m not in raw]
        if missing:
            raise TrialFailed(
                f"objective returned {_short(raw)} without the study metric(s) {missing}"
            )
        out = {}
        for k, v in raw.items():
            if hasattr(v, "item") and not isinstance(v, str):
                v = v.item()  # numpy / torch scalars
            if k in metrics:
                out[str(k)] = _number(v, str(k))
            elif isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
                out[str(k)] = float(v)
        return out
    if isinstance(raw, Sequence) and not isinstance(raw, str | bytes):
        if len(raw) != len(metrics):
            raise TrialFailed(
                f"objective returned {len(raw)} values for {len(metrics)} metric(s) {list(metrics)}"
            )
        return {m: _number(v, m) for m, v in zip(metrics, raw, strict=True)}
    if len(metrics) > 1:
        raise TrialFailed(
            f"a multi-objective study needs a dict or list with {list(metrics)}, got {_short(raw)}"
        )
    return {metrics[0]: _number(raw, metrics[0])}


def _number(v: Any, name: str) -> float:
    if hasattr(v, "item") and not isinstance(v, str):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TrialFailed(f"metric {name!r} is not a number: {_short(v)}")
    v = float(v)
    if not math.isfinite(v):
        raise TrialFailed(f"metric {name!r} is {v}; a trial needs a finite value")
    return v


def _short(v: Any, n: int = 200) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


class Command:
    """An external program as objective, in any language.

    ``argv`` (a list, or a string split like a shell) may hold ``{param}`` placeholders,
    plus ``{trial_number}`` and ``{budget}``. The last line of stdout that parses as JSON
    is the result. A JSON line printed earlier that holds ``"step"`` and the primary
    metric is a report (so commands can be pruned: the process is then terminated).
    A non-zero exit is a failed trial, with the tail of stderr recorded.
    """

    def __init__(self, argv: str | Sequence[str], cwd: str | None = None,
                 env: Mapping[str, str] | None = None, metric: str | None = None) -> None:
        self.argv = shlex.split(argv) if isinstance(argv, str) else [str(a) for a in argv]
        if not self.argv:
            raise ValueError("objective command is empty")
        self.cwd = cwd
        self.env = dict(env) if env else None
        self.metric = metric

    def __repr__(self) -> str:
        return f"Command({shlex.join(self.argv)!r})"

    def render(self, params: Mapping[str, Any], trial: Trial) -> list[str]:
        values = {**params, "trial_number": trial.number, "budget": trial.budget}
        try:
            return [a.format_map(values) for a in self.argv]
        except KeyError as exc:
            raise TrialFailed(
                f"command placeholder {{{exc.args[0]}}} is not a parameter; "
                f"known: {', '.join(values)}"
            ) from None

    def __call__(self, params: dict[str, Any], trial: Trial) -> Any:
        import os

        argv = self.render(params, trial)
        env = {**os.environ, **(self.env or {}), "HPO_TRIAL_NUMBER": str(trial.number)}
        try:
            proc = subprocess.Popen(
                argv, cwd=self.cwd, env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1,
            )
        except OSError as exc:
            raise TrialFailed(f"cannot start {argv[0]!r}: {exc}") from None
        stderr_tail: deque[str] = deque(maxlen=40)
        drain = threading.Thread(target=lambda: stderr_tail.extend(proc.stderr), daemon=True)
        drain.start()
        last = None
        assert proc.stdout is not None
        for line in proc.stdout:
            parsed = _json_line(line)
            if parsed is None:
                continue
            last = parsed
            if (isinstance(parsed, dict) and "step" in parsed and self.metric in parsed
                    and isinstance(parsed["step"], int)):
                trial.report(parsed[self.metric], parsed["step"])
                if trial.should_prune():
                    proc.terminate()
                    proc.wait()
                    return parsed
        code = proc.wait()
        drain.join(timeout=5)
        if code != 0:
            tail = "".join(stderr_tail).strip()
            raise TrialFailed(f"command exited with code {code}: {tail[-2000:] or '(no stderr)'}")
        if last is None:
            raise TrialFailed("command printed no JSON line on stdout (the last one is the result)")
        return last


def _json_line(line: str) -> Any:
    line = line.strip()
    if not line:
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None


def make_objective(objective: Any, metric: str) -> Objective:
    """A callable stays as it is; a list or string of argv becomes a :class:`Command`."""
    if isinstance(objective, Command):
        if objective.metric is None:
            objective.metric = metric
        return objective
    if isinstance(objective, str) or (
        isinstance(objective, Sequence) and objective and all(isinstance(a, str) for a in objective)
    ):
        return Command(objective, metric=metric)
    if callable(objective):
        return objective
    raise TypeError(
        "objective must be a callable objective(params, trial) or a command "
        f"(a list of strings such as ['python', 'train.py', '--lr', '{{lr}}']), got {objective!r}"
    )
