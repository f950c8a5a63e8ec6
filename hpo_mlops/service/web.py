"""The service's web pages: the studies, one study live, and the tokens.

* ``/`` every study served: trials by state and the best value so far.
* ``/studies/{name}``: trials by state, the best so far (params and value; the Pareto front
  for several metrics), the history plot (``history.png``, drawn here by
  :func:`hpo_mlops.plots.optimization_history`: no CDN, as browsers on HPC sites are often
  offline), the running trials and the latest finished ones.
* ``/tokens``: list, create and revoke tokens.

Every page shows one consistent copy of the study's records (another thread applies the
ledger's events while a page is drawn). A page polls ``.../version`` every 2 s and reloads
when a trial started or finished; the plot is redrawn only when the version changed.

Login is Jupyter's: open any page once with ``?token=<admin token>``; the answer sets an
HttpOnly cookie and redirects to the same URL without the token (so it does not stay in the
address bar or history; uvicorn's access log has it redacted). Pages need an admin token
(``hpo-mlops token create --admin``). The cookie is ``SameSite=Strict``, so no other site's
page can send a form here with it; the forms also carry a token derived from the cookie,
because another user's page on the same host (another port of an HPC login node) is the
*same site* to a browser and SameSite would let it through. Responses forbid framing
(clickjacking) and caching, and a Content-Security-Policy allows only this page's own script.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import html
import io
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from hpo_mlops.errors import ConfigError, HPOError
from hpo_mlops.results import TrialRecord, TrialState
from hpo_mlops.service.tokens import (
    Forbidden,
    TokenInfo,
    TokenStore,
    Unauthorized,
    install_log_redaction,
)

__all__ = ["COOKIE", "router"]

COOKIE = "hpo_mlops_token"
POLL_MS = 2000
MAX_FORM = 4096  # bytes: a token form is a few dozen
_STATES = ("RUNNING", "PAUSED", "COMPLETE", "PRUNED", "FAILED", "INTERRUPTED")
_ORDER = {s: i for i, s in enumerate(_STATES)}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:baseline}
header a{color:#cfd8ea;text-decoration:none}header a:hover{color:#fff}
header b{font-size:16px;color:#fff}main{padding:18px 24px;max-width:1200px}
h1{font-size:22px;margin:4px 0 2px}h2{font-size:16px;margin:22px 0 8px}
.sub{color:#5b6475;margin-bottom:10px}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002;margin-bottom:6px}
th,td{padding:5px 12px;text-align:left;border-bottom:1px solid #e6e8ec;vertical-align:top}
th{background:#eef0f4;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:3px 10px;border-radius:11px;margin-right:6px;
font-weight:600;background:#e6e8ec}
.RUNNING{background:#dbeafe;color:#1e40af}.PAUSED{background:#ede9fe;color:#5b21b6}
.COMPLETE,.active{background:#dcfce7;color:#166534}.PRUNED,.expired{background:#eceff3;
color:#4b5563}.FAILED,.revoked{background:#fee2e2;color:#991b1b}
.INTERRUPTED{background:#fef3c7;color:#92400e}
.best{background:#fff;padding:10px 14px;box-shadow:0 1px 2px #0002;display:inline-block}
.best .v{font-size:20px;font-weight:700}img.plot{max-width:100%;background:#fff;
box-shadow:0 1px 2px #0002}code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace}
.secret{font-family:ui-monospace,Menlo,Consolas,monospace;background:#fff8db;padding:8px 12px;
border:1px solid #e9d98b;display:inline-block;word-break:break-all}
form.inline{display:inline;margin:0}button{cursor:pointer}
.err{background:#fee2e2;color:#7f1d1d;padding:10px 14px;border-radius:4px}
footer{color:#6b7280;padding:8px 24px 24px;font-size:12px}
.muted{color:#6b7280}
"""

_SCRIPT = """
(function () {
  var live = document.getElementById("live"), url = document.body.dataset.poll,
      seen = document.body.dataset.version;
  if (!url) return;
  function poll() {
    fetch(url, {credentials: "same-origin", cache: "no-store"}).then(function (r) {
      if (r.status === 401 || r.status === 403) {
        live.textContent = "signed out: open this page with ?token=<admin token>";
        return null;
      }
      return r.json();
    }).then(function (j) {
      if (j === null) return;
      if (j.version !== seen) { location.reload(); return; }
      live.textContent = "live: checked " + new Date().toLocaleTimeString();
      setTimeout(poll, POLL_MS);
    }).catch(function () {
      live.textContent = "the service does not answer; retrying";
      setTimeout(poll, POLL_MS);
    });
  }
  poll();
})();
""".replace("POLL_MS", str(POLL_MS))


# -- small formatters ---------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{_e(k)}={_e(_num(v))}" for k, v in params.items())


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return ""
    s = max(0, int(now - t))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


def _date(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _state_badges(counts: Counter[str]) -> str:
    shown = [s for s in _STATES if counts.get(s) or s in ("RUNNING", "COMPLETE", "PRUNED",
                                                          "FAILED")]
    return "".join(f'<span class="badge {s}">{s.lower()} {counts.get(s, 0)}</span>'
                   for s in shown)


# -- a consistent copy of a study ---------------------------------------------------------------
def _records(study: Any) -> list[TrialRecord]:
    """The study's records, copied: another thread applies events while a page is drawn."""
    return sorted(list(study.table.records.values()), key=lambda r: r.number)


def _version(records: list[TrialRecord]) -> str:
    """Changes when a trial appears, changes state or ends (not on every report)."""
    counts = sorted(Counter(r.state.value for r in records).items())
    last = max((r.end or 0.0 for r in records), default=0.0)
    return hashlib.sha1(repr((len(records), counts, last)).encode()).hexdigest()[:16]


def _best(study: Any, records: list[TrialRecord]) -> list[TrialRecord]:
    """The best trial (one metric) or the Pareto front (several), from ``records``: the
    study's own ``best_trial``/``best_trials`` on the same copy the page shows."""
    from hpo_mlops.study import Study

    view = SimpleNamespace(trials=[r for r in records if r.state.finished],
                           modes=study.modes, metrics=study.metrics)
    front = Study.best_trials.fget(view)  # the study's Pareto code, on this copy
    if len(study.metrics) == 1 and front:
        sign = 1 if study.modes[0] == "min" else -1
        return [min(front, key=lambda t: (sign * t.value, t.number))]
    return sorted(front, key=lambda t: t.number)


def router(studies: Callable[[], dict[str, Any]], tokens: TokenStore) -> APIRouter:
    """The pages, for ``app.include_router(router(...))``. ``studies()`` returns the served
    studies, ``{name: Study}``, read afresh on every request (a study added later shows up).
    Links between pages are relative, so the router also works under a prefix."""
    install_log_redaction()
    r = APIRouter(include_in_schema=False)
    plots: dict[str, tuple[str, bytes]] = {}  # study -> (version, png)
    plot_lock = threading.Lock()

    # -- login ----------------------------------------------------------------------------
    def login(request: Request) -> tuple[TokenInfo, str] | Response:
        """The admin token of the request (``?token=`` sets the cookie and redirects;
        else the ``Authorization`` header, else the cookie), or the page saying why not."""
        given = request.query_params.get("token")
        if given is not None:
            try:
                info = tokens.verify(given, None)
            except (Unauthorized, Forbidden) as exc:
                return _denied(request, exc, drop_cookie=False)
            rest = request.url.remove_query_params("token").query
            last = quote(unquote(request.url.path.rsplit("/", 1)[-1]), safe="")
            resp = RedirectResponse((last or "./") + (f"?{rest}" if rest else ""), 303)
            resp.set_cookie(COOKIE, given, max_age=max(1, int(info.expires - time.time())),
                            httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
            _no_cache(resp)
            return resp
        auth = request.headers.get("authorization", "")
        secret = (auth[7:].strip() if auth[:7].lower() == "bearer " else None) \
            or request.cookies.get(COOKIE)
        if not secret:
            return _denied(request, Unauthorized("this page needs an admin token"),
                           drop_cookie=False)
        try:
            return tokens.verify(secret, None), secret
        except (Unauthorized, Forbidden) as exc:
            return _denied(request, exc, drop_cookie=COOKIE in request.cookies)

    def page(title: str, body: str, nav: str = "", poll: str | None = None,
             version: str = "", status: int = 200) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        data = f' data-poll="{_e(poll)}" data-version="{_e(version)}"' if poll else ""
        live = ('<span id="live">live: the page reloads as trials start and finish</span>'
                if poll else "")
        doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)} - hpo-mlops</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="{nonce}">{_CSS}</style></head>
<body{data}><header><b>hpo-mlops</b><a href="{nav}./">studies</a><a href="{nav}tokens">tokens</a>
</header><main>{body}</main>
<footer>drawn {_e(time.strftime("%H:%M:%S"))}{" &middot; " if live else ""}{live}</footer>
<script nonce="{nonce}">{_SCRIPT}</script></body></html>"""
        resp = HTMLResponse(doc, status_code=status)
        resp.headers["Content-Security-Policy"] = (
            f"default-src 'none'; img-src 'self'; style-src 'nonce-{nonce}'; "
            f"script-src 'nonce-{nonce}'; connect-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")
        return _no_cache(resp)

    def _denied(request: Request, exc: HPOError, drop_cookie: bool) -> HTMLResponse:
        code = 403 if isinstance(exc, Forbidden) else 401
        why = str(exc).split("; create one with")[0]
        body = f"""<h1>{"Forbidden" if code == 403 else "Sign in"}</h1>
<p class="err">{_e(why)}</p>
<p>These pages need an <b>admin token</b>. On the machine running the service, create one
with</p><pre class="secret">hpo-mlops token create --admin</pre>
<p>(with the service's <code>--tokens</code> store, if it was given one) and open this page
once as <code>{_e(request.url.path)}?token=&lt;the token&gt;</code>. The browser keeps it
in a cookie for this site until the token expires.</p>"""
        resp = page("Sign in", body, nav=_nav(request), status=code)
        if drop_cookie:
            resp.delete_cookie(COOKIE, path="/")
        return resp

    def form_token(secret: str) -> str:
        return hmac.new(secret.encode(), b"hpo-mlops web form", hashlib.sha256).hexdigest()

    async def form(request: Request, secret: str) -> dict[str, str] | Response:
        body = await request.body()
        if len(body) > MAX_FORM:
            return page("Too large", '<p class="err">form too large</p>', status=413)
        fields = {k: v[-1] for k, v in parse_qs(body.decode(errors="replace")).items()}
        if not hmac.compare_digest(fields.get("csrf", ""), form_token(secret)):
            return page("Refused", '<p class="err">refused: this form was not sent from this '
                        'service\'s own token page (cross-site request); reload the token page '
                        'and try again</p>', nav=_nav(request), status=403)
        return fields

    def admin_study(name: str, request: Request) -> Any:
        """The served study ``name`` for a signed-in admin, or the page saying why not (the
        login page, or 404 naming the served studies)."""
        who = login(request)
        if isinstance(who, Response):
            return who
        found = studies().get(name)
        if found is None:
            names = ", ".join(sorted(studies())) or "none"
            return page("Not found", f'<p class="err">no study {_e(name)} is served here; '
                        f"served: {_e(names)}</p>", nav=_nav(request), status=404)
        return found

    # -- pages ----------------------------------------------------------------------------
    @r.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> Response:
        who = login(request)
        if isinstance(who, Response):
            return who
        served = studies()
        rows, versions = [], []
        for name in sorted(served):
            study = served[name]
            recs = _records(study)
            versions.append(name + _version(recs))
            counts = Counter(t.state.value for t in recs)
            best = _best(study, recs)
            if len(study.metrics) == 1:
                best_cell = (f'{_e(_num(best[0].value))} <span class="muted">(trial '
                             f'{best[0].number})</span>' if best else "-")
            else:
                best_cell = f"Pareto front: {len(best)} trials"
            metric = ", ".join(f"{m} ({mode})" for m, mode in zip(study.metrics, study.modes,
                                                                  strict=True))
            cells = "".join(f'<td class="n">{counts.get(s, 0)}</td>'
                            for s in ("RUNNING", "COMPLETE", "PRUNED", "FAILED"))
            rows.append(f'<tr><td><a href="studies/{quote(name, safe="")}">{_e(name)}</a></td>'
                        f"<td>{_e(metric)}</td>{cells}<td class=\"n\">{len(recs)}</td>"
                        f"<td>{best_cell}</td></tr>")
        table = ("<table><tr><th>study</th><th>metric</th><th>running</th><th>complete</th>"
                 "<th>pruned</th><th>failed</th><th>trials</th><th>best so far</th></tr>"
                 + "".join(rows) + "</table>") if rows else '<p class="muted">no study is ' \
            "served</p>"
        body = f"<h1>Studies</h1><div class=\"sub\">{len(served)} served</div>{table}"
        version = hashlib.sha1("|".join(versions).encode()).hexdigest()[:16]
        return page("Studies", body, nav=_nav(request), poll="version", version=version)

    @r.get("/version")
    def overview_version(request: Request) -> Response:
        who = login(request)
        if isinstance(who, Response):
            return _json_denied(who)
        served = studies()
        versions = [name + _version(_records(served[name])) for name in sorted(served)]
        return JSONResponse({"version": hashlib.sha1("|".join(versions).encode())
                             .hexdigest()[:16]}, headers={"Cache-Control": "no-store"})

    @r.get("/studies/{name}", response_class=HTMLResponse)
    def study_page(name: str, request: Request) -> Response:
        study = admin_study(name, request)
        if isinstance(study, Response):
            return study
        recs = _records(study)
        version = _version(recs)
        now = time.time()
        counts = Counter(t.state.value for t in recs)
        q = quote(name, safe="")
        metric = ", ".join(f"{m} ({'lower' if mode == 'min' else 'higher'} is better)"
                           for m, mode in zip(study.metrics, study.modes, strict=True))
        sampler = ""
        with contextlib.suppress(Exception):  # a sampler's description is decoration
            sampler = f" &middot; sampler {_e(study.sampler.describe().get('name', '?'))}"
        parts = [f"<h1>{_e(name)}</h1><div class=\"sub\">{_e(metric)}{sampler} &middot; "
                 f"{len(recs)} trials</div>", "<h2>Trials by state</h2>",
                 f"<div>{_state_badges(counts)}</div>", "<h2>Best so far</h2>"]
        best = _best(study, recs)
        if not best:
            parts.append('<p class="muted">no completed trial yet</p>')
        elif len(study.metrics) == 1:
            b = best[0]
            prow = "".join(f"<tr><th>{_e(k)}</th><td class=\"mono\">{_e(_num(v))}</td></tr>"
                           for k, v in b.params.items())
            parts.append(f'<div class="best"><div>trial {b.number}: {_e(study.metrics[0])} = '
                         f'<span class="v">{_e(_num(b.value))}</span></div>'
                         f"<table>{prow}</table></div>")
        else:
            head = "".join(f"<th>{_e(m)}</th>" for m in study.metrics)
            rows = "".join(
                f"<tr><td>{t.number}</td>"
                + "".join(f'<td class="n">{_e(_num(v))}</td>' for v in (t.values or []))
                + f'<td class="mono">{_params(t.params)}</td></tr>' for t in best[:20])
            parts.append(f"<p>Pareto front: {len(best)} trials</p><table><tr><th>trial</th>"
                         f"{head}<th>params</th></tr>{rows}</table>")
        parts.append(f'<h2>History</h2><img class="plot" src="{q}/history.png?v={version}" '
                     f'alt="optimization history of {_e(name)}" width="990" height="572">')
        running = [t for t in recs if t.state is TrialState.RUNNING]
        parts.append(f"<h2>Running trials ({len(running)})</h2>")
        if running:
            rows = "".join(
                f"<tr><td>{t.number}</td><td>{_e(_ago(t.start, now))}</td>"
                f"<td>{_e(t.worker or t.host or '')}</td><td class=\"mono\">"
                + (f"step {_e(_num(t.intermediate[-1][0]))}: {_e(_num(t.intermediate[-1][1]))}"
                   if t.intermediate else "")
                + f'</td><td class="mono">{_params(t.params)}</td></tr>' for t in running)
            parts.append("<table><tr><th>trial</th><th>started</th><th>where</th>"
                         f"<th>last report</th><th>params</th></tr>{rows}</table>")
        else:
            parts.append('<p class="muted">none</p>')
        done = sorted((t for t in recs if t.state.finished), key=lambda t: -(t.end or 0))[:15]
        if done:
            rows = "".join(
                f'<tr><td>{t.number}</td><td><span class="badge {t.state.value}">'
                f"{t.state.value.lower()}</span></td><td class=\"n\">"
                + _e(", ".join(_num(v) for v in (t.values or [])) or "-")
                + f'</td><td class="n">{_e(f"{t.duration:.3g} s" if t.duration else "")}</td>'
                + f'<td class="mono">{_params(t.params)}'
                + (f'<div class="err">{_e((t.error or "").splitlines()[0][:200])}</div>'
                   if t.error else "") + "</td></tr>" for t in done)
            parts.append(f"<h2>Latest finished ({len(done)} of "
                         f"{sum(t.state.finished for t in recs)})</h2><table><tr><th>trial</th>"
                         f"<th>state</th><th>{_e(', '.join(study.metrics))}</th><th>took</th>"
                         f"<th>params</th></tr>{rows}</table>")
        return page(name, "".join(parts), nav=_nav(request), poll=f"{q}/version",
                    version=version)

    @r.get("/studies/{name}/version")
    def study_version(name: str, request: Request) -> Response:
        who = login(request)
        if isinstance(who, Response):
            return _json_denied(who)
        study = studies().get(name)
        if study is None:
            return JSONResponse({"detail": f"no study {name!r} is served here"}, 404)
        return JSONResponse({"version": _version(_records(study))},
                            headers={"Cache-Control": "no-store"})

    @r.get("/studies/{name}/history.png")
    def history_png(name: str, request: Request) -> Response:
        from hpo_mlops.plots import optimization_history

        study = admin_study(name, request)
        if isinstance(study, Response):
            return study
        recs = _records(study)
        version = _version(recs)
        with plot_lock:
            cached = plots.get(name)
        if cached is None or cached[0] != version:
            view = SimpleNamespace(name=study.name, metrics=study.metrics, modes=study.modes,
                                   trials=[t for t in recs if t.state.finished])
            buf = io.BytesIO()
            optimization_history(view).savefig(buf, format="png")
            cached = (version, buf.getvalue())
            with plot_lock:
                plots[name] = cached
        return Response(cached[1], media_type="image/png",
                        headers={"Cache-Control": "private, no-cache"})

    # -- tokens ---------------------------------------------------------------------------
    def tokens_page(request: Request, who: tuple[TokenInfo, str], notice: str = "",
                    status: int = 200) -> HTMLResponse:
        """The token list and forms; ``who`` is the signed-in admin (its token is marked, as
        revoking it signs this browser out)."""
        me, secret = who
        now = time.time()
        csrf = f'<input type="hidden" name="csrf" value="{form_token(secret)}">'
        rows = []
        for info in reversed(tokens.list()):
            state = info.state(now)
            action = (f'<form class="inline" method="post" action="tokens/{_e(info.id)}/revoke">'
                      f'{csrf}<button type="submit">revoke</button></form>'
                      if state == "active" else "")
            mine = ' <span class="muted">(this browser)</span>' if info.id == me.id else ""
            rows.append(f'<tr><td class="mono">{_e(info.id)}{mine}</td><td>'
                        f'{"* (admin)" if info.admin else _e(info.study)}</td>'
                        f"<td>{_date(info.created)}</td><td>{_date(info.expires)}</td>"
                        f'<td><span class="badge {state}">{state}</span></td><td>{action}</td>'
                        "</tr>")
        table = ("<table><tr><th>id</th><th>study</th><th>created</th><th>expires</th>"
                 "<th>state</th><th></th></tr>" + "".join(rows) + "</table>") if rows else \
            '<p class="muted">no tokens</p>'
        options = "".join(f'<option value="{_e(n)}">' for n in sorted(studies()))
        body = f"""{notice}<h1>Tokens</h1><div class="sub">One study each, or every study
(admin). Clients send them as <code>Authorization: Bearer &lt;token&gt;</code>. Only their
hashes are kept: a token is shown once, when it is created.</div>
<h2>Create</h2>
<form method="post" action="tokens">{csrf}
<label>study <input name="study" list="studies" placeholder="study name" size="24"></label>
<datalist id="studies">{options}</datalist>
<label><input type="checkbox" name="admin" value="1"> admin (every study and these pages)
</label>
<label>days <input name="days" type="number" min="1" max="365" value="30" size="4"></label>
<button type="submit">create</button></form>
<h2>All tokens ({len(rows)})</h2>{table}"""
        return page("Tokens", body, nav=_nav(request), status=status)

    @r.get("/tokens", response_class=HTMLResponse)
    def tokens_get(request: Request) -> Response:
        who = login(request)
        if isinstance(who, Response):
            return who
        return tokens_page(request, who)

    @r.post("/tokens", response_class=HTMLResponse)
    async def tokens_create(request: Request) -> Response:
        who = login(request)
        if isinstance(who, Response):
            return who
        fields = await form(request, who[1])
        if isinstance(fields, Response):
            return fields
        admin = fields.get("admin") == "1"
        study = fields.get("study", "").strip()
        try:
            try:
                days = float(fields.get("days", "30"))
            except ValueError:
                raise ConfigError(f"days: must be between 1 and 365, got "
                                  f"{fields.get('days')!r}") from None
            token, info = tokens.create("*" if admin and not study else study, days=days,
                                        admin=admin)
        except ConfigError as exc:
            return tokens_page(request, who, f'<p class="err">{_e(exc)}</p>', status=400)
        scope = "every study (admin)" if info.admin else f"study {_e(info.study)}"
        notice = f"""<h2>New token</h2><p>For {scope}, id <code>{_e(info.id)}</code>,
expires {_date(info.expires)}. Copy it now: it is not shown again.</p>
<div class="secret" id="new-token">{_e(token)}</div>"""
        return tokens_page(request, who, notice)

    @r.post("/tokens/{token_id}/revoke")
    async def tokens_revoke(token_id: str, request: Request) -> Response:
        who = login(request)
        if isinstance(who, Response):
            return who
        fields = await form(request, who[1])
        if isinstance(fields, Response):
            return fields
        try:
            tokens.revoke(token_id)
        except ConfigError as exc:
            return tokens_page(request, who, f'<p class="err">{_e(exc)}</p>', status=404)
        return _no_cache(RedirectResponse("../../tokens", 303))

    return r


def _nav(request: Request) -> str:
    """The relative way from this page back to the router's root (``../`` per level)."""
    path = request.url.path
    for root in ("/studies/", "/tokens/"):
        if root in path:
            depth = path[path.index(root):].count("/") - 1
            return "../" * depth
    return ""


def _json_denied(resp: Response) -> Response:
    return JSONResponse({"detail": "sign in again: open the page with ?token=<admin token>"},
                        status_code=resp.status_code)


def _no_cache(resp: Response) -> Response:
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp
