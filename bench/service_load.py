"""Load test of the HTTP service (issue 15): many clients in ask -> 5 reports -> tell loops.

One ``hpo-mlops serve`` process (one study, scheduler fifo, MLflow on a fresh sqlite store,
no Dask workers) on 127.0.0.1, and ``--clients`` threads in this process, each with its own
``requests.Session``, each looping ask -> 5 reports -> tell until the study is over (410),
``--trials`` trials were asked, or ``--seconds`` passed (then it finishes the trial it holds).
Once per sampler (``random``, then ``tpe``), each in a fresh server and a fresh store.

Prints requests/s, trials/s and p50/p99 latency of ask, report and tell, then checks that
nothing is lost: every ask that returned a trial is exactly one COMPLETE trial of the study
(``GET /api/v1/studies/NAME/trials``) and exactly one child run of the study's MLflow run.
Exits 1 if any is lost.

Side by side (``--optuna``, on by default): the same loop in the same number of threads
against Optuna's gRPC storage proxy (``run_grpc_proxy_server`` in its own process over a
sqlite ``RDBStorage``; each thread ``optuna.load_study(storage=GrpcStorageProxy(...))``,
``study.ask()``, ``trial.report()`` x5, ``study.tell()``); its ``ask`` includes the
client-side sampling, and it logs nothing to MLflow (storage only).

    python bench/service_load.py [--clients 200] [--trials 1000] [--seconds 25]
                                 [--samplers random,tpe] [--no-optuna]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import requests

SPACE = {"x": "uniform(-5, 5)", "y": "uniform(-5, 5)"}
HPO = [sys.executable, "-c", "from hpo_mlops.cli import main; main()"]
REPORTS = 5
KINDS = ("ask", "report", "tell")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loss(params: dict[str, float]) -> float:
    return params["x"] ** 2 + params["y"] ** 2


class Tally:
    """What the clients saw: latencies by kind, asked and told trials, errors."""

    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = defaultdict(list)  # list.append is atomic
        self.asked: list[int] = []
        self.told: list[int] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.n_asks = 0
        self.start = self.end = 0.0

    def timed(self, kind: str, fn: Any, *args: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args, **kw)
        self.lat[kind].append(time.perf_counter() - t)
        return out

    def take_ask(self, limit: int) -> bool:
        """One more ask allowed (the clients together ask at most ``limit`` trials)."""
        with self.lock:
            if self.n_asks >= limit:
                return False
            self.n_asks += 1
            return True


def run_threads(n: int, target: Any, tally: Tally) -> None:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    tally.start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tally.end = time.perf_counter()


# -- hpo-mlops serve ------------------------------------------------------------------------
@contextlib.contextmanager
def serve(tmp: Path, name: str, sampler: str, n_trials: int) -> Any:
    params = tmp / "params.yaml"
    uri = f"sqlite:///{tmp}/mlflow.db"
    params.write_text(json.dumps({
        "study": {"name": name, "metric": "loss", "mode": "min", "n_trials": n_trials},
        "space": SPACE, "sampler": {"name": sampler, "seed": 0}, "scheduler": "fifo",
        "tracking": {"uri": uri}}))
    env = {**os.environ, "HPO_MLOPS_TOKENS": str(tmp / "tokens.db")}
    made = subprocess.run([*HPO, "token", "create", name, "--days", "1"], env=env,
                          capture_output=True, text=True, check=True)
    token = next(w for w in made.stdout.split() if w.startswith("hpo_"))
    port = free_port()
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*HPO, "serve", str(params), "--port", str(port), "--workers", "0"],
                            env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        until = time.monotonic() + 120
        while True:
            with contextlib.suppress(requests.ConnectionError):
                requests.get(f"{base}/api/v1/health", timeout=5)
                break
            if proc.poll() is not None or time.monotonic() > until:
                raise RuntimeError("hpo-mlops serve did not start:\n"
                                   + (tmp / "serve.log").read_text()[-3000:])
            time.sleep(0.2)
        yield {"base": base, "token": token, "uri": uri, "proc": proc}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def hpo_clients(s: dict[str, Any], name: str, clients: int, trials: int, seconds: float,
                tally: Tally) -> None:
    api = f"{s['base']}/api/v1/studies/{name}"
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {s['token']}"
        try:
            while time.monotonic() < deadline and tally.take_ask(trials):
                r = tally.timed("ask", http.post, f"{api}/ask", json={"client": f"c{i}"},
                                timeout=120)
                if r.status_code == 410:
                    return  # the study is over
                r.raise_for_status()
                got = r.json()
                if got["trial"] is None:  # none now: the answer says when to come back
                    with tally.lock:
                        tally.n_asks -= 1
                    time.sleep(min(float(got.get("retry_after", 0.5)), 1.0))
                    continue
                number, job = got["trial"], got["job"]
                tally.asked.append(number)
                value = loss(got["params"])
                for step in range(1, REPORTS + 1):
                    r = tally.timed("report", http.post, f"{api}/trials/{number}/report",
                                    json={"step": step, "value": value + 1.0 / step, "job": job},
                                    timeout=120)
                    r.raise_for_status()
                r = tally.timed("tell", http.post, f"{api}/trials/{number}/tell",
                                json={"value": value, "job": job}, timeout=120)
                r.raise_for_status()
                tally.told.append(number)
        except Exception as exc:  # noqa: BLE001 - counted and shown, the others go on
            tally.errors.append(f"client {i}: {type(exc).__name__}: {exc}"[:300])
        finally:
            http.close()

    run_threads(clients, client, tally)


def study_children(uri: str, name: str) -> tuple[int, list[float]]:
    """The study's MLflow runs: how many child runs the study run has, their losses."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return 0, []
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    tops = {r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags}
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in tops]
    return len(kids), [r.data.metrics.get("loss") for r in kids]


def bench_hpo(sampler: str, args: argparse.Namespace) -> dict[str, Any]:
    name = f"load-{sampler}"
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="bench-service-") as d:
        tmp = Path(d)
        with serve(tmp, name, sampler, args.trials) as s:
            hpo_clients(s, name, args.clients, args.trials, args.seconds, tally)
            # the trials list is the manager's view, rebuilt from the ledger's events on its
            # next poll (<= 0.25 s): wait until the last tells show there (at most 10 s)
            until = time.monotonic() + 10
            while True:
                r = requests.get(f"{s['base']}/api/v1/studies/{name}/trials",
                                 headers={"Authorization": f"Bearer {s['token']}"}, timeout=60)
                r.raise_for_status()
                recorded = r.json()["trials"]
                if (not any(t["state"] == "RUNNING" for t in recorded)
                        or time.monotonic() > until):
                    break
                time.sleep(0.25)
        # the server stopped (SIGINT): its MLflow writes are done
        n_runs, _ = study_children(s["uri"], name)
    complete = [t["number"] for t in recorded if t["state"] == "COMPLETE"]
    return {"name": f"hpo-mlops {sampler}", "tally": tally,
            "check": check(tally, complete, {"recorded": len(recorded), "mlflow runs": n_runs})}


def check(tally: Tally, complete: list[int], counts: dict[str, int]) -> dict[str, Any]:
    """Lost: asked but not exactly one COMPLETE trial; every count must equal the asks."""
    asked = tally.asked
    seen = defaultdict(int)
    for n in complete:
        seen[n] += 1
    lost = sum(1 for n in set(asked) if seen.get(n, 0) != 1)
    lost += len(asked) - len(set(asked))  # one trial handed out twice
    lost += sum(abs(c - len(asked)) for c in counts.values())
    lost += abs(len(complete) - len(asked)) + abs(len(tally.told) - len(asked))
    return {"asked": len(asked), "told": len(tally.told), "complete": len(complete),
            **counts, "lost": lost}


# -- Optuna's gRPC storage proxy -------------------------------------------------------------
PROXY = """
import logging, sys, optuna
from optuna.storages import RDBStorage, run_grpc_proxy_server
optuna.logging.set_verbosity(optuna.logging.ERROR)
logging.getLogger().setLevel(logging.ERROR)
run_grpc_proxy_server(RDBStorage(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]))
"""


def optuna_available() -> str | None:
    """None where Optuna's gRPC proxy can run here, else why not."""
    try:
        import optuna.storages as st
    except ImportError as exc:
        return f"optuna not importable ({exc})"
    if not hasattr(st, "GrpcStorageProxy"):
        return "this Optuna has no GrpcStorageProxy"
    try:
        import grpc  # noqa: F401
    except ImportError:
        return "grpcio is not installed (pip install grpcio)"
    return None


def bench_optuna(sampler: str, args: argparse.Namespace) -> dict[str, Any]:
    import warnings

    import optuna
    from optuna.storages import GrpcStorageProxy

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    name = f"load-{sampler}"
    tally = Tally()

    def make_sampler(seed: int) -> Any:
        if sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)

    with tempfile.TemporaryDirectory(prefix="bench-optuna-") as d:
        url = f"sqlite:///{d}/optuna.db"
        optuna.create_study(study_name=name, storage=url, direction="minimize")
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-c", PROXY, url, str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            until = time.monotonic() + 60
            while True:
                try:
                    optuna.load_study(study_name=name,
                                      storage=GrpcStorageProxy(host="127.0.0.1", port=port))
                    break
                except Exception:
                    if proc.poll() is not None or time.monotonic() > until:
                        raise RuntimeError("Optuna's gRPC proxy did not start") from None
                    time.sleep(0.3)
            deadline = time.monotonic() + args.seconds

            def client(i: int) -> None:
                try:
                    study = optuna.load_study(
                        study_name=name, sampler=make_sampler(i),
                        storage=GrpcStorageProxy(host="127.0.0.1", port=port))
                    while time.monotonic() < deadline and tally.take_ask(args.trials):
                        trial = tally.timed("ask", study.ask)
                        x = trial.suggest_float("x", -5, 5)
                        y = trial.suggest_float("y", -5, 5)
                        tally.asked.append(trial.number)
                        value = loss({"x": x, "y": y})
                        for step in range(1, REPORTS + 1):
                            tally.timed("report", trial.report, value + 1.0 / step, step)
                        tally.timed("tell", study.tell, trial, value)
                        tally.told.append(trial.number)
                except Exception as exc:  # noqa: BLE001
                    tally.errors.append(f"client {i}: {type(exc).__name__}: {exc}"[:300])

            run_threads(args.clients, client, tally)
        finally:
            proc.terminate()
            proc.wait(30)
        trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    complete = [t.number for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {"name": f"optuna grpc {sampler}", "tally": tally,
            "check": check(tally, complete, {"recorded": len(trials)})}


# -- output ----------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] * 1000


def row(result: dict[str, Any]) -> str:
    t: Tally = result["tally"]
    wall = max(t.end - t.start, 1e-9)
    n_req = sum(len(v) for v in t.lat.values())
    cells = [f"{result['name']:<20}", f"{len(t.told):>6}", f"{wall:>6.1f}",
             f"{n_req / wall:>7.0f}", f"{len(t.told) / wall:>7.1f}"]
    for kind in KINDS:
        cells.append(f"{pct(t.lat[kind], 0.5):>6.1f} / {pct(t.lat[kind], 0.99):<7.1f}")
    return "| " + " | ".join(cells) + f" | {result['check']['lost']} |"


HEADER = ("| contender            | trials | wall s |   req/s | trials/s | ask p50 / p99 ms  "
          "| report p50 / p99 ms | tell p50 / p99 ms | lost |\n"
          "|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=200, help="concurrent clients (threads)")
    ap.add_argument("--trials", type=int, default=1000, help="trials per study")
    ap.add_argument("--seconds", type=float, default=25.0,
                    help="stop asking after this long (each contender)")
    ap.add_argument("--samplers", default="random,tpe", help="comma-separated: random,tpe")
    ap.add_argument("--no-optuna", dest="optuna", action="store_false",
                    help="skip Optuna's gRPC proxy")
    args = ap.parse_args(argv)
    samplers = [s for s in args.samplers.split(",") if s]
    print(f"{args.clients} clients, {args.trials} trials a study, ask -> {REPORTS} reports "
          f"-> tell, at most {args.seconds:g} s of asking each; {os.cpu_count()} CPUs",
          flush=True)
    why_not = optuna_available() if args.optuna else "--no-optuna"
    results = []
    for sampler in samplers:
        res = bench_hpo(sampler, args)
        results.append(res)
        print(f"{res['name']}: {res['check']}", flush=True)
        if why_not is None:
            res = bench_optuna(sampler, args)
            results.append(res)
            print(f"{res['name']}: {res['check']}", flush=True)
    if why_not is not None:
        print(f"optuna grpc proxy: skipped ({why_not})")
    print()
    print(HEADER)
    for res in results:
        print(row(res))
    errors = [e for res in results for e in res["tally"].errors]
    for e in errors[:10]:
        print("client error:", e)
    lost = sum(res["check"]["lost"] for res in results)
    print(f"lost: {lost}")
    return 1 if lost or errors else 0


if __name__ == "__main__":
    sys.exit(main())
