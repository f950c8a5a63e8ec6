"""The service's API tokens: a real sqlite store, the `hpo-mlops token` commands in a
subprocess, and the FastAPI dependency behind a real app served by uvicorn on 127.0.0.1
(Starlette's TestClient needs httpx, which is not installed; a live server is no weaker)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from hpo_mlops.errors import ConfigError
from hpo_mlops.service.tokens import (
    Forbidden,
    RedactTokens,
    TokenStore,
    Unauthorized,
    default_path,
    require,
)


@pytest.fixture
def store(tmp_path):
    s = TokenStore(tmp_path / "sub" / "tokens.db")
    yield s
    s.close()


@contextlib.contextmanager
def serve(app):
    """``app`` served by a real uvicorn on a free port of 127.0.0.1, in a thread; its base URL."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def cli(*args, env_path=None, cwd=None):
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    if env_path is not None:
        env["HPO_MLOPS_TOKENS"] = str(env_path)
    return subprocess.run([sys.executable, "-m", "hpo_mlops.cli", "token", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_a_token_is_stored_hashed_and_works_only_for_its_study(store):
    token, info = store.create("mnist", days=30)
    assert token.startswith(f"hpo_{info.id}_") and len(token) == 4 + 12 + 1 + 43
    assert info.study == "mnist" and not info.admin and info.revoked is None
    assert info.expires - info.created == pytest.approx(30 * 86400)
    assert store.verify(token, "mnist") == info
    with pytest.raises(Forbidden, match="is for study 'mnist', not 'cifar'"):
        store.verify(token, "cifar")
    with pytest.raises(Forbidden, match="needs an admin token"):
        store.verify(token, None)
    raw = store.path.read_bytes() + (store.path.parent / "tokens.db-wal").read_bytes()
    assert token.encode() not in raw and token.split("_")[2].encode() not in raw
    import hashlib

    assert hashlib.sha256(token.encode()).hexdigest().encode() in raw


def test_an_admin_token_opens_every_study_and_the_pages(store):
    token, info = store.create("*", admin=True)
    assert info.admin and info.study == "*"
    assert store.verify(token, "any") == info and store.verify(token, None) == info
    _, again = store.create("", admin=True, days=1)
    assert again.admin
    with pytest.raises(ConfigError, match="give no study with admin"):
        store.create("mnist", admin=True)


@pytest.mark.parametrize("days", [0, 0.5, 366, -1, "30", True, None])
def test_days_must_be_between_1_and_365(store, days):
    with pytest.raises(ConfigError, match=r"days: must be between 1 and 365, got "):
        store.create("s", days=days)
    assert store.list() == []


def test_days_message_is_exact(store):
    with pytest.raises(ConfigError) as e:
        store.create("s", days=0)
    assert str(e.value) == "days: must be between 1 and 365, got 0"


def test_every_rejection_says_why_and_never_echoes_the_token(store):
    token, info = store.create("s", days=1)
    other, _ = store.create("s", days=1)
    forged = token[:-5] + ("AAAAA" if not token.endswith("AAAAA") else "BBBBB")
    unknown = "hpo_0123456789ab_" + token.split("_", 2)[2]
    cases = {None: "missing token", "": "missing token", "Bearer x": "malformed token",
             token + "x": "malformed token", forged: "unknown token",
             unknown: "unknown token hpo_0123456789ab_..."}
    for secret, why in cases.items():
        with pytest.raises(Unauthorized) as e:
            store.verify(secret, "s")
        assert why in str(e.value) and "hpo-mlops token create" in str(e.value)
        assert token.split("_", 2)[2][:10] not in str(e.value)
    store.revoke(info.id)
    with pytest.raises(Unauthorized, match=f"token {info.id} was revoked on "):
        store.verify(token, "s")
    with sqlite3.connect(store.path) as db:  # as if 1 day had passed
        db.execute("UPDATE tokens SET expires = ? WHERE id != ?", (time.time() - 1, info.id))
    with pytest.raises(Unauthorized, match="expired on"):
        store.verify(other, "s")


def test_list_and_revoke(store):
    t1, a = store.create("a")
    _, b = store.create("b")
    _, adm = store.create("*", admin=True)
    assert [i.id for i in store.list()] == [a.id, b.id, adm.id]
    assert [i.id for i in store.list("b")] == [b.id]
    assert [i.id for i in store.list("*")] == [adm.id]
    assert [i.state() for i in store.list()] == ["active"] * 3
    first = store.revoke(a.id)
    assert first.revoked is not None and first.state() == "revoked"
    assert store.revoke(t1).revoked == first.revoked, "a whole token names its id; kept once"
    with pytest.raises(ConfigError, match="no token 'nope'"):
        store.revoke("nope")
    assert [i.state() for i in store.list()] == ["revoked", "active", "active"]


def test_default_path(monkeypatch, tmp_path):
    monkeypatch.delenv("HPO_MLOPS_TOKENS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_path() == tmp_path / ".hpo-mlops" / "tokens.db"
    monkeypatch.setenv("HPO_MLOPS_TOKENS", str(tmp_path / "t.db"))
    assert default_path() == tmp_path / "t.db"


def test_threads_verify_while_others_create_and_revoke(store):
    good, _ = store.create("s")
    errors, counts = [], []

    def verify_many():
        n = 0
        try:
            for _ in range(300):
                store.verify(good, "s")
                n += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        counts.append(n)

    def churn():
        for _ in range(30):
            _, info = store.create("s", days=1)
            store.revoke(info.id)

    threads = [threading.Thread(target=verify_many) for _ in range(6)]
    threads.append(threading.Thread(target=churn))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and counts == [300] * 6
    assert len(store.list()) == 31


def test_cli_create_list_revoke_and_a_store_in_another_process(tmp_path):
    db = tmp_path / "tokens.db"
    out = cli("create", "mnist", "--days", "7", "--tokens", str(db))
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.startswith("hpo_") and len(out.stdout.splitlines()) == 1, "stdout: the token"
    assert "study 'mnist'" in out.stderr and "expires" in out.stderr and "shown once" in out.stderr
    store = TokenStore(db)  # the service's view: no cache, so the new token works at once
    info = store.verify(token, "mnist")
    assert out.stderr.startswith(f"id {info.id},")
    adm = cli("create", "--admin", env_path=db)
    assert adm.returncode == 0 and "every study (admin)" in adm.stderr
    listing = cli("list", env_path=db)
    assert listing.returncode == 0
    assert info.id in listing.stdout and "mnist" in listing.stdout and "* (admin)" in listing.stdout
    assert token not in listing.stdout + listing.stderr and "hpo_" not in listing.stdout
    rev = cli("revoke", info.id, "--tokens", str(db))
    assert rev.returncode == 0 and f"token {info.id} (study 'mnist') revoked" in rev.stdout
    with pytest.raises(Unauthorized, match="revoked"):
        store.verify(token, "mnist")
    only = cli("list", "--study", "mnist", "--tokens", str(db))
    assert "revoked" in only.stdout and "admin" not in only.stdout
    store.close()


@pytest.mark.parametrize(("args", "message"), [
    (["create", "s", "--days", "0"], "days: must be between 1 and 365, got 0"),
    (["create", "s", "--days", "400"], "days: must be between 1 and 365, got 400"),
    (["create"], "give a STUDY, or --admin"),
    (["create", "s", "--admin"], "give a STUDY, or --admin"),
    (["revoke", "abc"], "no token 'abc'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    out = cli(*args, "--tokens", str(tmp_path / "t.db"))
    assert out.returncode == 2
    assert out.stderr.strip() == f"hpo-mlops: error: {out.stderr.strip().split('error: ', 1)[1]}"
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_list_of_an_empty_store(tmp_path):
    out = cli("list", "--tokens", str(tmp_path / "t.db"))
    assert out.returncode == 0 and "no tokens" in out.stdout


# -- the FastAPI dependency ------------------------------------------------------------------
@pytest.fixture
def api(store):
    import requests
    from fastapi import Depends, FastAPI

    app = FastAPI()
    calls: list[str] = []

    @app.post("/studies/{study}/tell")
    def tell(study: str, info=Depends(require(store))):  # noqa: B008
        calls.append(study)
        return {"study": study, "token": info.id}

    @app.get("/admin", dependencies=[Depends(require(store))])
    def admin():
        calls.append("admin")
        return {"ok": True}

    with serve(app) as base, requests.Session() as http:
        http.base_url = base
        yield http, calls


def test_the_dependency_answers_401_and_403_and_changes_nothing(store, api):
    http, calls = api

    def post(path, headers=None):
        return http.post(http.base_url + path, headers=headers, timeout=30)

    def get(path, headers=None):
        return http.get(http.base_url + path, headers=headers, timeout=30)
    token, info = store.create("mnist")
    revoked, rinfo = store.create("mnist")
    store.revoke(rinfo.id)
    other, _ = store.create("cifar")
    cases = [
        ({}, 401, "missing token"),
        ({"Authorization": f"Basic {token}"}, 401, "missing token"),
        ({"Authorization": "Bearer nonsense"}, 401, "malformed token"),
        ({"Authorization": f"Bearer {revoked}"}, 401, "was revoked"),
        ({"Authorization": f"Bearer {other}"}, 403, "is for study 'cifar', not 'mnist'"),
    ]
    for headers, code, why in cases:
        r = post("/studies/mnist/tell", headers=headers)
        assert r.status_code == code, (headers, r.text)
        assert why in r.json()["detail"]
        for secret in (token, revoked, other):
            assert secret not in r.text
        if code == 401:
            assert r.headers["www-authenticate"] == "Bearer"
    assert calls == [], "a rejected request reached no endpoint"
    r = post("/studies/mnist/tell", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json() == {"study": "mnist", "token": info.id}
    r = get("/admin", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    adm, _ = store.create("*", admin=True)
    for path, method in (("/admin", get), ("/studies/cifar/tell", post)):
        assert method(path, headers={"Authorization": f"Bearer {adm}"}).status_code == 200
    assert calls == ["mnist", "admin", "cifar"]
    schema = get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_log_redaction_removes_tokens_from_uvicorn_style_records(store):
    token, _ = store.create("s")
    rec = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                            '%s - "%s %s HTTP/%s" %d',
                            ("127.0.0.1:5", "GET", f"/?token={token}&x=1", "1.1", 303), None)
    RedactTokens().filter(rec)
    line = rec.getMessage()
    assert token not in line and "/?token=[redacted]&x=1" in line
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, f"oops {token} here", None, None)
    RedactTokens().filter(rec)
    assert rec.getMessage() == "oops [redacted] here"
