"""The service's web pages on real studies (optimized on the LocalCluster, tracked in a tmp
sqlite MLflow store), served by a live uvicorn on 127.0.0.1, read with HTTP and rendered by
headless Chromium (Debian `chromium`)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import objectives as obj
import pytest
import requests
from mlflow_store import fresh_store
from test_service_tokens import serve

from hpo_mlops.plots import optimization_history
from hpo_mlops.service.tokens import TokenStore
from hpo_mlops.service.web import COOKIE, _num, router
from hpo_mlops.study import Study

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--hide-scrollbars"]
SPACE = {"x": "uniform(-5, 5)", "act": "choices(['relu', 'tanh'])"}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def site(dask_client, tmp_path_factory):
    """Two finished studies (one with failures) and an empty one, served with the pages."""
    d = tmp_path_factory.mktemp("web")
    uri = fresh_store(d / "mlflow.db")
    cwd = os.getcwd()
    os.chdir(d)  # the experiments' artifacts go to ./mlruns: keep them in the temp dir
    try:
        alpha = Study("alpha", SPACE, sampler="random", scheduler="fifo", seed=0,
                      tracking_uri=uri)
        alpha.optimize(obj.quadratic, n_trials=8, client=dask_client)
        beta = Study("beta <b>", {"x": "uniform(-1, 1)"}, sampler="random", scheduler="fifo",
                     seed=3, tracking_uri=uri)
        beta.optimize(obj.sometimes_fails, n_trials=6, client=dask_client)
    finally:
        os.chdir(cwd)
    served = {"alpha": alpha, "beta <b>": beta}
    store = TokenStore(d / "tokens.db")
    admin, _ = store.create("*", admin=True)
    user, _ = store.create("alpha")
    from fastapi import FastAPI

    app = FastAPI()
    app.include_router(router(lambda: dict(served), store))
    access = logging.getLogger("uvicorn.access")
    lines, level = Lines(), access.level
    access.addHandler(lines)
    access.setLevel(logging.INFO)
    try:
        with serve(app) as base:
            yield {"base": base, "store": store, "admin": admin, "user": user, "dir": d,
                   "served": served, "log": lines.lines, "uri": uri}
    finally:
        access.removeHandler(lines)
        access.setLevel(level)
        store.close()


def signed_in(site) -> requests.Session:
    http = requests.Session()
    r = http.get(f"{site['base']}/?token={site['admin']}", timeout=30)
    assert r.status_code == 200 and r.url == f"{site['base']}/"
    return http


def test_pages_need_an_admin_token_and_say_how_to_get_one(site):
    base = site["base"]
    for path in ("/", "/studies/alpha", "/tokens", "/studies/alpha/history.png"):
        r = requests.get(base + path, timeout=30)
        assert r.status_code == 401, path
        assert "hpo-mlops token create --admin" in r.text and "?token=" in r.text
    r = requests.get(f"{base}/studies/alpha?token={site['user']}", allow_redirects=False,
                     timeout=30)
    assert r.status_code == 403 and "needs an admin token" in r.text
    assert COOKIE not in r.headers.get("set-cookie", ""), "a study token signs nobody in"
    assert site["user"] not in r.text
    r = requests.get(f"{base}/", headers={"Authorization": f"Bearer {site['user']}"},
                     timeout=30)
    assert r.status_code == 403
    r = requests.get(f"{base}/", cookies={COOKIE: "hpo_0123456789ab_" + "A" * 43}, timeout=30)
    assert r.status_code == 401 and "unknown token" in r.text
    assert f'{COOKIE}=""' in r.headers["set-cookie"], "a dead cookie is dropped"
    assert requests.get(f"{base}/studies/alpha/version", timeout=30).status_code == 401


def test_the_token_in_the_url_becomes_a_strict_httponly_cookie_and_leaves_no_trace(site):
    base, admin = site["base"], site["admin"]
    http = requests.Session()
    r = http.get(f"{base}/studies/alpha?token={admin}&tab=1", allow_redirects=False,
                 timeout=30)
    assert r.status_code == 303 and r.headers["location"] == "alpha?tab=1"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={admin};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    max_age = int(re.search(r"Max-Age=(\d+)", cookie).group(1))
    assert 29 * 86400 < max_age <= 30 * 86400, "the cookie lasts as long as the token"
    r = http.get(f"{base}/studies/alpha", timeout=30)
    assert r.status_code == 200 and "<h1>alpha</h1>" in r.text
    assert admin not in r.text
    assert r.headers["cache-control"] == "no-store" and r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    log = "\n".join(site["log"])
    assert "/studies/alpha?token=[redacted]&tab=1" in log, log[-2000:]
    assert admin not in log and admin.split("_")[2] not in log


def test_the_overview_shows_every_study_by_state_and_its_best(site):
    http = signed_in(site)
    page = http.get(f"{site['base']}/", timeout=30).text
    alpha, beta = site["served"]["alpha"], site["served"]["beta <b>"]
    assert '<a href="studies/alpha">alpha</a>' in page
    assert '<a href="studies/beta%20%3Cb%3E">beta &lt;b&gt;</a>' in page, "names are escaped"
    for study in (alpha, beta):
        counts = {s: sum(t.state.value == s for t in study.trials)
                  for s in ("COMPLETE", "FAILED")}
        row = re.search(rf">{re.escape(study.name.replace('<', '&lt;').replace('>', '&gt;'))}"
                        r"</a></td>(.*?)</tr>", page).group(1)
        cells = re.findall(r'<td class="n">(\d+)</td>', row)
        assert cells == ["0", str(counts["COMPLETE"]), "0", str(counts["FAILED"]),
                         str(len(study.trials))]
        assert f"{_num(study.best_value)} <span class=\"muted\">(trial " \
               f"{study.best_trial.number})" in row
    assert sum(t.state.value == "FAILED" for t in beta.trials) > 0, "the fixture has failures"


def test_a_study_page_shows_best_params_plot_and_trials(site):
    http = signed_in(site)
    alpha = site["served"]["alpha"]
    r = http.get(f"{site['base']}/studies/alpha", timeout=30)
    page = r.text
    best = alpha.best_trial
    assert f"trial {best.number}: loss = <span class=\"v\">{_num(best.value)}</span>" in page
    assert f'<td class="mono">{best.params["act"]}</td>' in page
    assert f'<td class="mono">{_num(best.params["x"])}</td>' in page
    assert '<span class="badge COMPLETE">complete 8</span>' in page
    assert "Running trials (0)" in page and "Latest finished (8 of 8)" in page
    version = http.get(f"{site['base']}/studies/alpha/version", timeout=30).json()["version"]
    assert f'data-version="{version}"' in page and 'data-poll="alpha/version"' in page
    assert f'src="alpha/history.png?v={version}"' in page
    png = http.get(f"{site['base']}/studies/alpha/history.png?v={version}", timeout=30)
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    import io

    import matplotlib.image as mpimg
    import numpy as np

    pixels = mpimg.imread(io.BytesIO(png.content))
    assert pixels.shape[1] >= 900 and len(np.unique(pixels.reshape(-1, pixels.shape[-1]),
                                                    axis=0)) > 50, "a drawn plot, not blank"
    assert http.get(f"{site['base']}/studies/alpha/history.png", timeout=30).content \
        == png.content, "redrawn only when the study changed"
    r = http.get(f"{site['base']}/studies/nope", timeout=30)
    assert r.status_code == 404 and "no study nope is served here" in r.text
    beta = http.get(f"{site['base']}/studies/beta%20%3Cb%3E", timeout=30).text
    assert "<h1>beta &lt;b&gt;</h1>" in beta and "is negative" in beta, "failed trials' errors"


def test_pages_follow_a_study_as_its_trials_start_and_finish(site, dask_client):
    """A study optimized while the pages are read: its running trial is listed, and the
    version the page polls changes as trials finish (so the page reloads)."""
    live = Study("live", {"x": "uniform(0, 1)"}, sampler="random", scheduler="fifo", seed=1,
                 tracking=False)
    site["served"]["live"] = live
    http = signed_in(site)
    url = f"{site['base']}/studies/live"
    empty = http.get(url, timeout=30).text
    assert "no completed trial yet" in empty and "Running trials (0)" in empty
    assert http.get(url + "/history.png", timeout=30).headers["content-type"] == "image/png"
    versions, running_pages = [], []
    runner = threading.Thread(target=live.optimize, args=(obj.sleepy,),
                              kwargs={"n_trials": 4, "client": dask_client})
    runner.start()
    try:
        while runner.is_alive():
            v = http.get(url + "/version", timeout=30).json()["version"]
            if not versions or versions[-1] != v:
                versions.append(v)
                page = http.get(url, timeout=30).text
                if "Running trials (0)" not in page:
                    running_pages.append(page)
            time.sleep(0.05)
    finally:
        runner.join()
        del site["served"]["live"]
    final = http.get(url.replace("/live", "/alpha"), timeout=30)
    assert final.status_code == 200
    assert len(versions) >= 3, f"the version changed only {len(versions) - 1} times"
    assert any(re.search(r"Running trials \([1-9]\)</h2><table><tr><th>trial</th>", p)
               for p in running_pages), "the running trial was listed"
    assert any("<td>0</td><td>" in p and "s ago" in p for p in running_pages), \
        "trial 0 (the 2 s one) shown running with its start"


def test_the_token_page_creates_and_revokes_and_refuses_forged_forms(site):
    http = signed_in(site)
    base, store = site["base"], site["store"]
    page = http.get(f"{base}/tokens", timeout=30).text
    for info in store.list():
        assert info.id in page
    assert site["admin"] not in page and site["user"] not in page
    csrf = re.search(r'name="csrf" value="([0-9a-f]{64})"', page).group(1)
    n = len(store.list())
    forged = http.post(f"{base}/tokens", data={"study": "alpha", "days": "7"}, timeout=30)
    assert forged.status_code == 403 and "cross-site" in forged.text
    assert len(store.list()) == n, "a forged form created nothing"
    bad = http.post(f"{base}/tokens", data={"study": "alpha", "days": "0", "csrf": csrf},
                    timeout=30)
    assert bad.status_code == 400 and "days: must be between 1 and 365, got 0" in bad.text
    made = http.post(f"{base}/tokens", data={"study": "alpha", "days": "7", "csrf": csrf},
                     timeout=30)
    assert made.status_code == 200 and made.headers["cache-control"] == "no-store"
    token = re.search(r'id="new-token">(hpo_[0-9a-f]{12}_[A-Za-z0-9_-]{43})<', made.text).group(1)
    info = store.verify(token, "alpha")
    assert info.expires - info.created == pytest.approx(7 * 86400)
    assert len(store.list()) == n + 1
    listed = http.get(f"{base}/tokens", timeout=30).text
    assert info.id in listed and token not in listed, "shown once"
    r = http.post(f"{base}/tokens/{info.id}/revoke", data={}, timeout=30)
    assert r.status_code == 403 and store.verify(token, "alpha")
    r = http.post(f"{base}/tokens/{info.id}/revoke", data={"csrf": csrf},
                  allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["location"] == "../../tokens"
    assert [i.state() for i in store.list() if i.id == info.id] == ["revoked"]
    r = http.post(f"{base}/tokens", data={"admin": "1", "days": "1", "csrf": csrf}, timeout=30)
    assert r.status_code == 200 and "every study (admin)" in r.text
    assert requests.post(f"{base}/tokens", data={"study": "x", "csrf": csrf},
                         timeout=30).status_code == 401, "no cookie, no token"


def test_history_png_is_the_plots_modules_figure(site):
    """The page's plot is hpo_mlops.plots.optimization_history of the same trials."""
    alpha = site["served"]["alpha"]
    fig = optimization_history(alpha)
    assert fig.get_suptitle() == "Optimization history: alpha (8 trials)"


def screenshot(url: str, png: Path, profile: Path) -> str:
    proc = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1500",
         "--virtual-time-budget=1500", f"--screenshot={png}", "--dump-dom", url],
        capture_output=True, timeout=120)
    assert png.is_file() and png.stat().st_size > 20_000, proc.stderr.decode()[-2000:]
    return proc.stdout.decode()


NO_CHROMIUM = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not "
                                 "installed (Debian: apt-get update && apt-get install -y "
                                 "chromium)")


def render(site, name: str, path: str) -> str:
    """Chromium opens ``path`` with ``?token=`` (signs in, follows the redirect, runs the
    page's script); the screenshot must not be blank. Returns the rendered DOM."""
    import matplotlib.image as mpimg
    import numpy as np

    shots = Path(os.environ.get("HPO_UI_SCREENSHOTS", site["dir"]))
    shots.mkdir(parents=True, exist_ok=True)
    png = shots / f"service-{name}.png"
    dom = screenshot(f"{site['base']}{path}?token={site['admin']}", png,
                     site["dir"] / f"chromium-{name}")
    pixels = mpimg.imread(png)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 100, name
    assert "Sign in" not in dom and site["admin"] not in dom, name
    return dom


@NO_CHROMIUM
def test_chromium_renders_a_study_page_with_its_plot_and_live_refresh(site):
    dom = render(site, "study", "/studies/alpha")
    assert "<h1>alpha</h1>" in dom and "Best so far" in dom and "complete 8" in dom
    assert re.search(r'<img class="plot" src="alpha/history.png\?v=[0-9a-f]{16}"', dom)
    assert "live: checked" in dom, "the refresh script ran and reached the version endpoint"


@NO_CHROMIUM
@pytest.mark.slow
def test_chromium_renders_the_overview_and_the_token_page(site):
    dom = render(site, "overview", "/")
    assert ">alpha</a>" in dom and "beta &lt;b&gt;" in dom and "live: checked" in dom
    dom = render(site, "tokens", "/tokens")
    assert "<h1>Tokens</h1>" in dom and "* (admin)" in dom and "(this browser)" in dom
