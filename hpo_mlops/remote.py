"""Run trials of a served study from any machine: ``RemoteStudy(url, token)``.

For compute that cannot reach a Dask scheduler (a GPU at another site, a cloud VM, a
laptop): the study runs in ``hpo-mlops serve`` and this client asks it for trials over
HTTP(S), reports, and tells the outcome. An objective written for :meth:`Study.optimize`
runs unchanged (``trial.report``, ``trial.should_prune``, ``trial.budget``, ``trial.save``/
``load`` in a local folder), because it runs through the very function a Dask slot uses.

Connection errors and 502/503/504 answers are retried with exponential backoff for up to
``retry_for`` seconds (a service restarting, a proxy hiccup); a tell sent again after a
lost answer is recorded once by the service. A 4xx answer is the client's mistake or the
study's end, and raises :class:`RemoteError` with the service's own message.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hpo_mlops.errors import HPOError

RETRY_STATUS = (502, 503, 504)


class RemoteError(HPOError):
    """The service refused a request; ``status`` is its HTTP code, the message its reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StudyOver(RemoteError):
    """The study ended (all its trials, or it was stopped): no trial will come."""


class RemoteStudy:
    """A study served by ``hpo-mlops serve``, seen from a client machine.

    ``url`` is the study's page on the service, ``http(s)://HOST:PORT/studies/NAME`` (or
    give the service's root and ``study=NAME``); ``token`` one of ``hpo-mlops token create
    NAME``. ``client`` names this machine in the trials' records (``http:<client>``).
    """

    def __init__(self, url: str, token: str, study: str | None = None, *,
                 client: str | None = None, timeout: float = 60.0, retry_for: float = 120.0,
                 verify: bool | str = True, checkpoint_dir: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url: must be http(s)://HOST:PORT/studies/NAME, got {url!r}")
        path = parts.path.rstrip("/")
        if study is None:
            head, _, name = path.rpartition("/studies/")
            if not name or "/" in name:
                raise ValueError(f"url: must end with /studies/NAME (or give study=), got {url!r}")
            study, path = name, head
        self.study = study
        self.base = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        self.client = client or f"{socket.gethostname()}-{os.getpid()}"
        self.timeout, self.retry_for, self.verify = timeout, retry_for, verify
        self.checkpoint_dir = checkpoint_dir or os.path.join(
            tempfile.gettempdir(), "hpo-mlops-remote", study)
        import requests

        self._http = requests.Session()
        self._http.headers["Authorization"] = f"Bearer {token}"
        self._jobs: dict[int, str] = {}  # trial -> the job id its ask returned

    # -- the protocol -----------------------------------------------------------------------
    def ask(self, wait: bool = True) -> dict[str, Any] | None:
        """The next trial (``trial``, ``params``, ``budget``, ``job``, ``metrics``...), or
        ``None`` once the study is over. ``wait=False``: also ``None`` when none is ready
        now (the answer's ``reason`` then says why)."""
        while True:
            try:
                reply = self._post("ask", {"client": self.client})
            except StudyOver:
                return None
            if reply.get("trial") is not None:
                self._jobs[reply["trial"]] = reply["job"]
                return reply
            if not wait:
                return None
            time.sleep(float(reply.get("retry_after", 1.0)))

    def report(self, trial: int, step: int, value: float) -> bool:
        """Report ``value`` at ``step``; True when the trial should stop now."""
        reply = self._post(f"trials/{trial}/report",
                           {"step": step, "value": value, "job": self._jobs.get(trial)})
        return bool(reply["prune"])

    def tell(self, trial: int, value: float | None = None, *, state: str = "COMPLETE",
             values: list[float] | None = None, metrics: dict[str, float] | None = None,
             error: str | None = None) -> dict[str, Any]:
        """The trial's outcome (one of ``value``, ``values``, ``metrics``; or ``state=
        "FAILED"`` with an ``error``). Safe to repeat: it is recorded once."""
        body = {"state": state, "value": value, "values": values, "metrics": metrics,
                "error": error, "host": socket.gethostname(), "job": self._jobs.get(trial)}
        reply = self._post(f"trials/{trial}/tell", {k: v for k, v in body.items()
                                                     if v is not None})
        self._jobs.pop(trial, None)
        return reply

    def best(self) -> dict[str, Any]:
        return self._get("best")

    def trials(self, state: str | None = None) -> list[dict[str, Any]]:
        return self._get("trials", {"state": state} if state else None)["trials"]

    # -- the loop -----------------------------------------------------------------------------
    def optimize(self, objective: Callable[..., Any], n_trials: int | None = None,
                 setup: Callable[[], Any] | None = None) -> int:
        """Run trials here until ``n_trials`` of them ran (``None``: until the study is
        over); ``objective(params, trial)`` as for :meth:`Study.optimize`. ``setup()`` runs
        once and its result is ``trial.context``. Returns how many trials ran here."""
        from hpo_mlops.runner import _execute

        context = setup() if setup is not None else None
        done = 0
        while n_trials is None or done < n_trials:
            job = self.ask()
            if job is None:
                break
            number = job["trial"]
            spec = {"number": number, "params": job["params"], "budget": job["budget"],
                    "metrics": job["metrics"], "attempt": job["attempt"],
                    "checkpoint_dir": os.path.join(self.checkpoint_dir, f"trial-{number}")}
            out = _execute(objective, spec, lambda n, s, v: self.report(n, s, v), context, None)
            error = out.get("error")
            if out.get("traceback"):
                error = f"{error}\n{out['traceback']}"[-8000:]
            if out["state"] == "FAILED":
                self.tell(number, state="FAILED", error=error)
            else:
                self.tell(number, state=out["state"], metrics=out["metrics"] or None)
            done += 1
        return done

    # -- HTTP ---------------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.base}/api/v1/studies/{self.study}/{path}"

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", path, json=body)

    def _get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._request("GET", path, params=params)

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One request, retried with backoff while the service cannot be reached."""
        import requests

        until, pause = time.monotonic() + self.retry_for, 0.25
        while True:
            try:
                resp = self._http.request(method, self._url(path), timeout=self.timeout,
                                          verify=self.verify, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                why = f"cannot reach {self.base}: {type(exc).__name__}"
                resp = None
            else:
                if resp.status_code not in RETRY_STATUS:
                    break
                why = f"{self.base} answered {resp.status_code}"
            if time.monotonic() + pause > until:
                raise RemoteError(503, f"{why}; gave up after retrying for {self.retry_for:g} s")
            time.sleep(pause)
            pause = min(pause * 2, 10.0)
        try:
            payload = resp.json()
        except ValueError:
            payload = {"detail": resp.text[:500]}
        if resp.status_code >= 400:
            detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
            cls = StudyOver if resp.status_code == 410 else RemoteError
            raise cls(resp.status_code, f"{method} {path}: {resp.status_code} {detail}")
        return payload

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteStudy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
