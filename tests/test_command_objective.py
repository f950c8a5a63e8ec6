"""A command objective never leaves its processes behind.

``bash -c "python3 child.py {x}; exit $?"``: the Python grandchild is what holds a GPU, and
ending only ``bash`` (the old ``proc.terminate()``) left it running. Every test here runs
real processes and checks, with psutil, that the grandchild's pid is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from hpo_mlops.objective import Command, TrialFailed
from hpo_mlops.trial import Trial

# Reports {"step": k, "loss": ...} every STEP_S seconds up to the budget (argv[2], default
# 9), then prints the result. Its pid goes to pids/<pid> next to this script. Orphaned (its
# bash gone) it carries on for a minute, like a training job that never looks at its
# stdout; IGNORE_TERM=1 makes it ignore SIGTERM; BACKGROUND=1 prints nothing (a daemon).
CHILD = textwrap.dedent("""\
    import json, os, signal, sys, time
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(os.path.join(here, "pids"), exist_ok=True)
    with open(os.path.join(here, "pids", str(os.getpid())), "w") as fh:
        fh.write(str(os.getpid()))
    if os.environ.get("IGNORE_TERM") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    x = float(sys.argv[1])
    budget = int(float(sys.argv[2])) if len(sys.argv) > 2 else 9
    step_s = float(os.environ.get("STEP_S", "0.1"))
    parent = os.getppid()
    def say(obj):
        if os.environ.get("BACKGROUND") == "1":
            return
        try:
            print(json.dumps(obj), flush=True)
        except OSError:
            pass
    for step in range(1, budget + 1):
        time.sleep(step_s)
        if os.getppid() != parent:  # orphaned: nobody reads us, and we never notice
            time.sleep(60)
            sys.exit(0)
        say({"step": step, "loss": x + 1.0 / step})
    say({"loss": x})
""")

GRACE = 2.0


@pytest.fixture
def child(tmp_path: Path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    yield script
    for pid in _pids(script):  # never leave one behind, even when a test fails
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def _pids(script: Path) -> list[int]:
    d = script.parent / "pids"
    return sorted(int(p.name) for p in d.iterdir()) if d.exists() else []


def _alive(pid: int) -> bool:
    """Running; a zombie nobody reaps (PID 1 here may not) holds nothing and is gone."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for_pid(script: Path, n: int = 1, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(_pids(script)) < n:
        assert time.monotonic() < deadline, "the child never wrote its pid"
        time.sleep(0.02)
    return _pids(script)


def _bash(script: Path, tail: str = "") -> list[str]:
    return ["bash", "-c", f"{sys.executable} {script} {{x}} {{budget}}; exit $?{tail}"]


def _lit(text: str) -> str:
    """``text`` as an argv item: its braces are no placeholders."""
    return text.replace("{", "{{").replace("}", "}}")


class StopAt:
    """A reporter that says "stop" at ``step`` and notes when it did."""

    def __init__(self, step: int) -> None:
        self.step, self.stopped_at = step, None

    def __call__(self, number: int, step: int, value: float) -> bool:
        if step >= self.step:
            self.stopped_at = time.monotonic()
            return True
        return False


def test_pruned_command_ends_its_grandchild(child: Path) -> None:
    stop = StopAt(2)
    cmd = Command(_bash(child), metric="loss", grace=GRACE)
    out = cmd({"x": 0.5}, Trial(0, {"x": 0.5}, 9, stop))
    returned = time.monotonic()
    assert out == {"step": 2, "loss": 1.0}
    [pid] = _pids(child)
    assert not _alive(pid), "the Python grandchild outlived the pruned trial"
    took = returned - stop.stopped_at
    print(f"prune -> process group gone: {took * 1000:.0f} ms")
    assert took < GRACE  # it exits on SIGTERM: no waiting for the grace


def test_child_ignoring_sigterm_is_killed_after_the_grace(child: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IGNORE_TERM", "1")
    stop = StopAt(2)
    grace = 1.0
    cmd = Command(_bash(child), metric="loss", grace=grace)
    cmd({"x": 0.5}, Trial(0, {"x": 0.5}, 9, stop))
    took = time.monotonic() - stop.stopped_at
    [pid] = _pids(child)
    assert not _alive(pid), "a child that ignores SIGTERM must be SIGKILLed after the grace"
    print(f"prune -> SIGTERM-ignoring group gone: {took * 1000:.0f} ms (grace {grace:g} s)")
    assert grace <= took < grace + 2.0


def test_timeout_ends_the_group(child: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEP_S", "0.5")
    cmd = Command(_bash(child), metric="loss", grace=GRACE, timeout=1.0)
    start = time.monotonic()
    with pytest.raises(TrialFailed, match="timeout of 1 s"):
        cmd({"x": 0.5}, Trial(0, {"x": 0.5}, 30))  # no reporter: never pruned
    assert time.monotonic() - start < 1.0 + GRACE
    [pid] = _pids(child)
    assert not _alive(pid)


def test_exception_on_the_python_side_ends_the_group(child: Path) -> None:
    def reporter(number: int, step: int, value: float) -> bool:
        if step == 2:
            raise RuntimeError("the scheduler went away")
        return False

    cmd = Command(_bash(child), metric="loss", grace=GRACE)
    with pytest.raises(RuntimeError, match="went away"):
        cmd({"x": 0.5}, Trial(0, {"x": 0.5}, 9, reporter))
    [pid] = _pids(child)
    assert not _alive(pid)


def test_keyboard_interrupt_ends_the_group(child: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEP_S", "0.5")
    cmd = Command(_bash(child), metric="loss", grace=GRACE)

    def interrupt() -> None:
        _wait_for_pid(child)
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C to this (the calling) process

    t = threading.Thread(target=interrupt, daemon=True)
    t.start()
    with pytest.raises(KeyboardInterrupt):
        cmd({"x": 0.5}, Trial(0, {"x": 0.5}, 30))
    t.join()
    [pid] = _pids(child)
    assert not _alive(pid)


def test_normal_exit_ends_a_background_child(child: Path) -> None:
    # bash starts a silent daemon (holding stdout open), prints the result and exits
    bg = (f"BACKGROUND=1 STEP_S=0.5 {sys.executable} {child} 0 30 & "
          f"until ls {child.parent}/pids/* >/dev/null 2>&1; do sleep 0.02; done; ")
    cmd = Command(["bash", "-c", _lit(bg + "echo '{\"loss\": 0.25}'")], metric="loss",
                  grace=GRACE)
    start = time.monotonic()
    out = cmd({}, Trial(0, {}, None))
    assert out == {"loss": 0.25}
    assert time.monotonic() - start < GRACE + 2.0, "waited on the daemon's stdout"
    [pid] = _wait_for_pid(child)
    assert not _alive(pid), "the command exited, its background child must not live on"


def test_result_and_reports_of_a_fast_command_are_all_read(tmp_path: Path) -> None:
    lines = "; ".join(f"echo '{{\"step\": {k}, \"loss\": {k}}}'" for k in range(1, 51))
    seen: list[int] = []
    cmd = Command(["bash", "-c", _lit(lines + "; echo '{\"loss\": 7}'")], metric="loss")
    out = cmd({}, Trial(0, {}, None, lambda n, s, v: seen.append(s) or False))
    assert out == {"loss": 7} and seen == list(range(1, 51))
    with pytest.raises(TrialFailed, match="code 3: oops"):
        Command(["bash", "-c", "echo oops >&2; exit 3"], metric="loss")({}, Trial(0, {}))


def _run_in_task(argv: list[str]) -> None:
    Command(argv, metric="loss", grace=GRACE)({"x": 0.5}, Trial(0, {"x": 0.5}, 30))


def test_cancelled_dask_task_ends_the_group(child: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import Client, LocalCluster

    monkeypatch.setenv("STEP_S", "0.5")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        future = client.submit(_run_in_task, _bash(child), pure=False)
        [pid] = _wait_for_pid(child)
        assert _alive(pid)
        future.cancel()  # Dask does not stop the task's thread: the command must notice
        deadline = time.monotonic() + GRACE + 3.0
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the cancelled task's command lived on"


def test_study_under_asha_leaves_no_grandchild(child: Path, tmp_path: Path) -> None:
    import hpo_mlops

    study = hpo_mlops.Study(
        "cmd", {"x": "uniform(0, 1)"},
        scheduler={"name": "asha", "min_budget": 1, "max_budget": 9, "eta": 3},
        sampler="random", seed=1, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
    )
    study.optimize(_bash(child), n_trials=8, n_workers=2)
    states = [str(getattr(t.state, "name", t.state)) for t in study.trials]
    pids = _pids(child)
    assert len(pids) == 8
    assert "PRUNED" in states, f"nothing was pruned ({states}): the test proves nothing"
    alive = [p for p in pids if _alive(p)]
    assert not alive, f"{len(alive)} grandchild(ren) outlived the study (trials: {states})"
