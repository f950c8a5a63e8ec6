"""The HTTP service: studies whose trials are asked, reported and told over HTTP.

Why over the ledger and not beside it: a study already has one owner of its trials' state
(:class:`hpo_mlops.ledger.Ledger`, hosted by the Dask scheduler plugin), one writer to
MLflow and every sampler behind ask/tell. So an HTTP client is just one more kind of slot:
``ask`` takes a job from the same ledger a Dask worker's slot pulls from (under a lease),
``report`` goes to the same rule, ``tell`` hands in the outcome the way a slot does. Trials
from HTTP clients and from Dask workers share one study, one sampler and one MLflow
experiment, and a resumed study is the same study whichever way its trials came.

The service process is the study's manager (one :meth:`Study.optimize` thread per
study, ``serving=True``) and the Dask client; the handlers only translate HTTP into the
scheduler plugin's ``hpo_ask`` / ``hpo_remote_report`` / ``hpo_tell`` calls, awaited on the
Dask client's event loop so that 200 clients waiting on asks hold no thread each.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from hpo_mlops.errors import ConfigError
from hpo_mlops.objective import TrialFailed, as_metrics
from hpo_mlops.results import TrialRecord, TrialState
from hpo_mlops.service.tokens import TokenInfo, TokenStore, require

#: the largest request body taken (bytes); a tell with a long error text fits
MAX_BODY = 64 * 1024
#: how long an ask waits for a trial before it answers why there is none (seconds)
ASK_WAIT = 10.0
API = "/api/v1"


class ServedStudy:
    """One study of the service: its :class:`Study`, its manager thread, its run's key."""

    def __init__(self, study: Any, kwargs: dict[str, Any]) -> None:
        self.study, self.kwargs = study, kwargs
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.key: str | None = None

    def start(self, client: Any) -> None:
        def run() -> None:
            try:
                self.study.optimize(client=client, serving=True,
                                    **{"objective": None, **self.kwargs})
            except KeyboardInterrupt:
                pass  # the service stopped it: recorded as interrupted, resumable
            except BaseException as exc:  # noqa: BLE001 - kept and shown by /health
                self.error = exc

        self.thread = threading.Thread(target=run, name=f"hpo-serve-{self.study.name}",
                                       daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


class Service:
    """Several studies served at once on one Dask client.

    ``studies`` are ``(Study, optimize keyword arguments)`` pairs; a study whose arguments
    name an ``objective`` also runs trials on the Dask workers (``workers`` local worker
    processes, or the scheduler at ``address``), sharing the study with the HTTP clients.
    ``lease``: seconds an HTTP client may stay silent (no report, no tell) before its
    trial is taken back and asked again.
    """

    def __init__(self, studies: Sequence[tuple[Any, dict[str, Any]]], tokens: TokenStore, *,
                 workers: int = 0, address: str | None = None, lease: float = 300.0,
                 ask_wait: float = ASK_WAIT) -> None:
        names = [s.name for s, _ in studies]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"study.name: each served study needs its own name, got {dup} "
                              "more than once")
        for study, _ in studies:
            if getattr(study.rule_class, "clones_checkpoints", False):
                raise ConfigError(
                    f"scheduler: {study.rule_class.name!r} (study {study.name!r}) copies one "
                    "trial's checkpoint into another, which HTTP clients on other machines "
                    "cannot share; run it with `hpo-mlops run` on a cluster with a shared "
                    "checkpoint_dir, or serve it with another scheduler")
        if not (isinstance(lease, int | float) and math.isfinite(lease) and lease > 0):
            raise ConfigError(f"lease: must be a number of seconds > 0, got {lease!r}")
        self.studies = {s.name: ServedStudy(s, kw) for s, kw in studies}
        self.tokens, self.workers, self.address = tokens, workers, address
        self.lease, self.ask_wait = float(lease), ask_wait
        self.client: Any = None
        self._cluster: Any = None

    # -- life cycle -------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        """Start the Dask side and every study's manager; return once each can take asks."""
        from distributed import Client

        from hpo_mlops.cluster import make_factory

        if self.address is not None:
            self.client = Client(self.address)
        else:
            self._cluster = make_factory({"kind": "local", "n_workers": self.workers}).create()
            self.client = Client(self._cluster)
        for served in self.studies.values():
            served.start(self.client)
        until = time.monotonic() + timeout
        for served in self.studies.values():
            while served.key is None:
                run = served.study.active_run
                if run is not None and self._registered(run.key):
                    served.key = run.key
                    break
                if served.error is not None:
                    raise served.error
                if time.monotonic() > until:
                    raise RuntimeError(f"study {served.study.name!r} did not start within "
                                       f"{timeout:g} s")
                time.sleep(0.05)

    def _registered(self, key: str) -> bool:
        with contextlib.suppress(Exception):
            return bool(self.client.sync(self.client.scheduler.hpo_info, key=key))
        return False

    def stop(self, timeout: float = 60.0) -> None:
        """Stop every study as Ctrl-C would: running trials INTERRUPTED, resumable."""
        for served in self.studies.values():
            run = served.study.active_run
            if run is not None:
                run.request_stop()
        for served in self.studies.values():
            if served.thread is not None:
                served.thread.join(timeout)
        with contextlib.suppress(Exception):
            self.client.close()
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close()

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the scheduler plugin's calls -------------------------------------------------------
    async def call(self, op: str, **kwargs: Any) -> Any:
        """One call to the scheduler plugin, awaited on the Dask client's own loop."""
        coro = getattr(self.client.scheduler, op)(**kwargs)
        fut = asyncio.run_coroutine_threadsafe(coro, self.client.loop.asyncio_loop)
        return await asyncio.wrap_future(fut)

    def served(self, name: str) -> ServedStudy:
        served = self.studies.get(name)
        if served is None:
            raise HTTPError(404, f"study: no study named {name!r} here; served: "
                                 f"{', '.join(sorted(self.studies)) or 'none'}")
        return served


class HTTPError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


# -- request bodies ---------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AskBody(_Body):
    client: str = Field("anonymous", min_length=1, max_length=200,
                        description="who asks (recorded as the trial's worker: http:<client>)")


class ReportBody(_Body):
    step: StrictInt = Field(ge=0, description="epoch, iteration...: increasing integers")
    value: float = Field(allow_inf_nan=False, description="the study's first metric")
    job: str | None = Field(None, max_length=100, description="the job id ask returned")


class TellBody(_Body):
    state: Literal["COMPLETE", "PRUNED", "FAILED"] = "COMPLETE"
    value: float | None = Field(None, allow_inf_nan=False, description="single objective")
    values: list[float] | None = Field(None, description="one value per metric, in order")
    metrics: dict[str, float] | None = Field(None, description="every metric by name")
    error: str | None = Field(None, max_length=8000, description="why it failed")
    host: str | None = Field(None, max_length=200, description="where it ran")
    job: str | None = Field(None, max_length=100, description="the job id ask returned")


def outcome(body: TellBody, metrics: list[str]) -> dict[str, Any]:
    """A tell as the outcome dict a Dask slot hands in (see :func:`runner._execute`)."""
    out: dict[str, Any] = {"state": body.state, "error": body.error, "metrics": {},
                           "values": None, "tags": {}}
    if body.host:
        out["host"] = body.host
    given = [v for v in (body.metrics, body.values, body.value) if v is not None]
    if len(given) > 1:
        raise HTTPError(422, "body: give one of value, values or metrics, not several")
    if body.state == "FAILED":
        out["error"] = body.error or "failed (the client gave no reason)"
        return out
    if not given:
        if body.state == "PRUNED":
            return out  # its last report is its value
        raise HTTPError(422, f"body.value: a COMPLETE trial needs a value (or values, or "
                             f"metrics with {metrics})")
    try:
        out["metrics"] = as_metrics(given[0], metrics)
    except TrialFailed as exc:
        raise HTTPError(422, f"body: {exc}") from None
    out["values"] = [out["metrics"][m] for m in metrics]
    return out


def record_json(rec: TrialRecord, metrics: list[str]) -> dict[str, Any]:
    return {"number": rec.number, "state": rec.state.value, "params": rec.params,
            "value": rec.value, "values": dict(zip(metrics, rec.values or [], strict=False)),
            "metrics": rec.metrics, "budget": rec.budget, "attempts": rec.attempts,
            "worker": rec.worker, "start": rec.start, "end": rec.end, "error": rec.error,
            "reports": [list(x) for x in rec.intermediate], "run_id": rec.run_id}


# -- the app ----------------------------------------------------------------------------------
def create_app(service: Service) -> FastAPI:
    """The service's FastAPI app: the API under ``/api/v1``, the web pages at ``/``."""
    app = FastAPI(title="hpo-mlops service", version="1",
                  description="ask / report / tell for hpo-mlops studies; every trial is an "
                              "MLflow run. Authorization: Bearer <token> (hpo-mlops token "
                              "create STUDY).")
    auth = Depends(require(service.tokens))
    app.add_middleware(BodyLimit, limit=MAX_BODY)

    @app.exception_handler(HTTPError)
    async def http_error(_: Request, exc: HTTPError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    async def hub(op: str, **kwargs: Any) -> dict[str, Any]:
        reply = await service.call(op, **kwargs)
        if reply.get("error"):
            raise HTTPError(reply["status"], reply["error"])
        return reply

    def running(name: str) -> ServedStudy:
        served = service.served(name)
        if served.key is None or not served.running:
            why = f": {served.error}" if served.error else ""
            raise HTTPError(410, f"study {name!r} is not running any more{why}")
        return served

    @app.get(f"{API}/health", tags=["service"])
    async def health() -> dict[str, Any]:
        """No token needed: whether each study runs (for load balancers and probes)."""
        return {"status": "ok", "studies": {
            n: {"running": s.running, "error": str(s.error) if s.error else None}
            for n, s in service.studies.items()}}

    @app.post(f"{API}/studies/{{study}}/ask", tags=["trials"])
    async def ask(study: str, body: AskBody | None = None, _: TokenInfo = auth) -> dict[str, Any]:
        """The next trial: its number, params, budget, and the job id to report and tell
        with. ``trial`` is null when there is none now (``reason``, ``retry_after``)."""
        served = running(study)
        reply = await service.call("hpo_ask", key=served.key,
                                   client=(body or AskBody()).client, lease=service.lease,
                                   wait=service.ask_wait)
        job = reply.get("job")
        if job is None:
            if reply.get("over"):
                raise HTTPError(410, f"study {study!r}: {reply['reason']}")
            return {"trial": None, "reason": reply["reason"],
                    "retry_after": reply.get("retry_after", 1.0)}
        s = served.study
        return {"trial": job["number"], "params": job["params"], "budget": job["budget"],
                "attempt": job["attempt"], "job": job["job"], "lease": job["lease"],
                "metrics": s.metrics, "modes": s.modes}

    @app.post(f"{API}/studies/{{study}}/trials/{{number}}/report", tags=["trials"])
    async def report(study: str, number: int, body: ReportBody, _: TokenInfo = auth) -> dict[str, Any]:
        """A value at a step; ``prune`` says whether the trial should stop now."""
        served = running(study)
        reply = await hub("hpo_remote_report", key=served.key, trial=number, step=body.step,
                          value=body.value, job=body.job)
        return {"prune": reply["prune"]}

    @app.post(f"{API}/studies/{{study}}/trials/{{number}}/tell", tags=["trials"])
    async def tell(study: str, number: int, body: TellBody, _: TokenInfo = auth) -> dict[str, Any]:
        """The trial's outcome; sent again after a lost answer, it is recorded once."""
        served = running(study)
        out = outcome(body, served.study.metrics)
        reply = await hub("hpo_tell", key=served.key, trial=number, out=out, job=body.job)
        return {"recorded": reply["recorded"], "duplicate": reply["duplicate"],
                "state": reply["state"]}

    @app.get(f"{API}/studies/{{study}}/best", tags=["results"])
    async def best(study: str, _: TokenInfo = auth) -> dict[str, Any]:
        s = service.served(study).study
        if len(s.metrics) > 1:
            return {"pareto": [record_json(r, s.metrics) for r in s.best_trials]}
        try:
            return record_json(s.best_trial, s.metrics)
        except ValueError:
            raise HTTPError(404, f"study {study!r} has no completed trial yet") from None

    @app.get(f"{API}/studies/{{study}}/trials", tags=["results"])
    async def trials(study: str, state: str | None = None, _: TokenInfo = auth) -> dict[str, Any]:
        """Every trial known to the study (``?state=COMPLETE`` for one state)."""
        s = service.served(study).study
        if state is not None and state not in TrialState.__members__:
            raise HTTPError(422, f"state: must be one of {', '.join(TrialState.__members__)}, "
                                 f"got {state!r}")
        recs = sorted(list(s.table.records.values()), key=lambda r: r.number)
        return {"trials": [record_json(r, s.metrics) for r in recs
                           if state is None or r.state.value == state]}

    from hpo_mlops.service import web

    app.include_router(web.router(
        lambda: {n: s.study for n, s in service.studies.items()}, service.tokens))
    return app


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, before any handler reads them.

    A plain ASGI middleware, not ``@app.middleware("http")``: Starlette's
    ``BaseHTTPMiddleware`` adds a task and a stream per request, and py-spy showed the
    HTTP layer as the service's bottleneck under 100 clients. A body without a
    Content-Length (chunked) is read here, up to the limit, and handed on from memory.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = dict(scope.get("headers") or ()).get(b"content-length")
        if size is not None:
            if size.isdigit() and int(size) > self.limit:
                await self._refuse(send, f"body: {int(size)} bytes, more than the {self.limit} "
                                         "allowed")
                return
            await self.app(scope, receive, send)
            return
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            more = message.get("more_body", False)
            if total > self.limit:
                await self._refuse(send, f"body: more than the {self.limit} bytes allowed")
                return
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Callable, detail: str) -> None:
        payload = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line naming each field (``body.step: ...``)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        if err.get("type") == "json_invalid":
            parts.append(f"body: not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
        elif err.get("type") == "extra_forbidden":
            parts.append(f"{loc}: unknown field")
        else:
            parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts) or json.dumps(exc.errors(), default=str)
