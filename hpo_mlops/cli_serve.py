"""``hpo-mlops serve``: studies whose trials come over HTTP (see docs/service.md).

Its own module so that the CLI's main module stays free of the web stack: FastAPI and
uvicorn load only when a service starts.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from hpo_mlops.cli import DebugOpt, SetOpt, _errors, _load, app
from hpo_mlops.errors import ConfigError


@app.command()
@_errors
def serve(
    params: Annotated[list[Path], typer.Argument(
        help="one params.yaml per study to serve (several: several studies)")],
    set_: SetOpt = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    workers: Annotated[int, typer.Option(
        help="local Dask worker processes that also run the studies' objectives (0: trials "
             "come from HTTP clients only)")] = 0,
    address: Annotated[str | None, typer.Option(
        help="a running Dask scheduler instead of a local one")] = None,
    lease: Annotated[float, typer.Option(
        help="seconds an HTTP client may stay silent before its trial is asked again")] = 300.0,
    tokens: Annotated[Path | None, typer.Option(
        help="the token store (default: $HPO_MLOPS_TOKENS or .hpo-mlops/tokens.db)")] = None,
    certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM): serve HTTPS")] = None,
    keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    debug: DebugOpt = False,
) -> None:
    """Serve the studies of PARAMS over HTTP: ask / report / tell for clients anywhere
    (hpo_mlops.remote.RemoteStudy, or any language), web pages at /, the OpenAPI schema at
    /docs. Ctrl-C stops it; running trials are recorded as interrupted and serving the
    same files again resumes."""
    import uvicorn

    from hpo_mlops.config import optimize_kwargs
    from hpo_mlops.service.server import Service, create_app
    from hpo_mlops.service.tokens import TokenStore, default_path
    from hpo_mlops.study import Study

    if (certfile is None) != (keyfile is None):
        raise ConfigError("--certfile and --keyfile: give both to serve HTTPS, or neither")
    for path in (certfile, keyfile):
        if path is not None and not path.is_file():
            raise ConfigError(f"--certfile/--keyfile: no file {path}")
    if workers < 0:
        raise ConfigError(f"--workers: must be an integer >= 0, got {workers}")
    studies = []
    for p in params:
        cfg = _load(p, set_)
        kwargs = optimize_kwargs(cfg, need_objective=False)
        kwargs.pop("address", None), kwargs.pop("cluster", None)  # the service's cluster
        studies.append((Study.from_config(cfg), kwargs))
    store = TokenStore(tokens or default_path())
    service = Service(studies, store, workers=workers, address=address, lease=lease)
    scheme = "https" if certfile else "http"
    base = f"{scheme}://{host}:{port}"
    admin = [t for t in store.list() if t.admin and t.state() == "active"]
    login = ""
    if not admin:  # the first start: one admin token for the pages, shown once, as Jupyter does
        secret, _ = store.create("*", days=30, admin=True)
        login = f"{base}/?token={secret}"
    service.start()
    try:
        for name in service.studies:
            print(f"serving study {name} at {base}/studies/{name}", flush=True)
        print(f"API {base}/api/v1 (schema {base}/docs); tokens: hpo-mlops token create "
              "STUDY --tokens " + str(store.path), flush=True)
        if login:
            print(f"web pages (admin token created, shown once): {login}", flush=True)
        config = uvicorn.Config(create_app(service), host=host, port=port, log_level="warning",
                                ssl_certfile=str(certfile) if certfile else None,
                                ssl_keyfile=str(keyfile) if keyfile else None)
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
            uvicorn.Server(config).run()
    finally:
        service.stop()
    running = {n: s.error for n, s in service.studies.items() if s.error is not None}
    for name, error in running.items():
        print(f"hpo-mlops: study {name} failed: {error}", file=sys.stderr)
    print("service stopped; running trials were recorded as interrupted, and serving the same "
          "files again resumes them", flush=True)
    if running:
        raise typer.Exit(1)
