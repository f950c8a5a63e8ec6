"""``hpo-mlops token create | list | revoke``: the service's API tokens (hpo_mlops.service.tokens).

The token is printed once, by ``create``, and never again: ``list`` shows ids, studies, dates
and states only. The store is a sqlite file (``--tokens``, default ``$HPO_MLOPS_TOKENS`` else
``./.hpo-mlops/tokens.db``); a running ``hpo-mlops serve`` over the same file sees a new or
revoked token from its next request.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from hpo_mlops.errors import ConfigError

token_app = typer.Typer(
    help="API tokens of `hpo-mlops serve`: one study each, or every study with --admin.",
    no_args_is_help=True,
)

TokensOpt = Annotated[Path | None, typer.Option(
    "--tokens", help="the token store (default: $HPO_MLOPS_TOKENS, else "
    "./.hpo-mlops/tokens.db)", show_default=False)]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show the traceback of an error")]


def _store(path: Path | None):  # noqa: ANN202 - the import stays lazy
    from hpo_mlops.service.tokens import TokenStore, default_path

    return TokenStore(path or default_path())


def _date(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _errors(fn: Callable[..., None]) -> Callable[..., None]:
    """The CLI's one-line errors and exit codes (``hpo_mlops.cli._errors``), looked up at call
    time: cli.py imports this module to register it, so it cannot be imported from here."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from hpo_mlops.cli import _errors as errors

        errors(fn)(*args, **kwargs)

    return wrapper


@token_app.command("create")
@_errors
def create(
    study: Annotated[str | None, typer.Argument(help="the study the token may act on")] = None,
    days: Annotated[float, typer.Option(help="valid for this many days, 1 to 365")] = 30,
    admin: Annotated[bool, typer.Option(
        "--admin", help="every study, the web pages and the token page")] = False,
    tokens: TokensOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Create a token and print it (once: only its hash is kept)."""
    if admin == (study is not None):
        raise ConfigError("token create: give a STUDY, or --admin for every study "
                          "(not both)")
    token, info = _store(tokens).create(study or "*", days=days, admin=admin)
    scope = "every study (admin)" if info.admin else f"study {info.study!r}"
    print(token)
    print(f"id {info.id}, {scope}, expires {_date(info.expires)}; this token is shown "
          f"once: keep it secret (send it as `Authorization: Bearer <token>`)",
          file=sys.stderr)


@token_app.command("list")
@_errors
def list_(
    study: Annotated[str | None, typer.Option(
        "--study", help="only this study's tokens ('*': the admin tokens)")] = None,
    tokens: TokensOpt = None,
    debug: DebugOpt = False,
) -> None:
    """The tokens: id, study, created, expires and state (never the token)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    infos = _store(tokens).list(study)
    table = Table("id", "study", "created", "expires", "state")
    now = time.time()
    styles = {"active": "green", "expired": "yellow", "revoked": "red"}
    for info in infos:
        state = info.state(now)
        table.add_row(info.id, "* (admin)" if info.admin else escape(info.study),
                      _date(info.created), _date(info.expires),
                      f"[{styles[state]}]{state}[/]")
    if not infos:
        print("no tokens" + (f" of study {study!r}" if study else "")
              + " (create one with `hpo-mlops token create STUDY`)")
        return
    Console(width=max(100, Console().width)).print(table)


@token_app.command("revoke")
@_errors
def revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="the id `token list` shows")],
    tokens: TokensOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Revoke a token: from the service's next request on it gets 401."""
    info = _store(tokens).revoke(token_id)
    print(f"token {info.id} ({'admin' if info.admin else 'study ' + repr(info.study)}) "
          f"revoked on {_date(info.revoked or time.time())}")
