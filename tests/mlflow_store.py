"""An empty MLflow sqlite store to copy: creating one runs MLflow's database migrations,
which take seconds; a copy of a migrated one takes none."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

_template: Path | None = None


def fresh_store(path: Path) -> str:
    """Put an empty, migrated MLflow store at ``path``; returns its tracking URI."""
    global _template
    if _template is None:
        from mlflow.tracking import MlflowClient

        folder = tempfile.mkdtemp(prefix="hpo-mlflow-template-")
        atexit.register(shutil.rmtree, folder, True)
        _template = Path(folder) / "mlflow.db"
        MlflowClient(f"sqlite:///{_template}").search_experiments()
    shutil.copyfile(_template, path)
    return f"sqlite:///{path}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` (on a fresh sqlite store unless ``store`` names one, e.g. a
    PostgreSQL URI), which a test can kill and start again."""

    def __init__(self, folder: Path, store: str | None = None) -> None:
        self.folder = folder
        self.store = store or fresh_store(folder / "server.db")
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts: list[float] = []  # seconds each start took until /health answered

    def start(self, timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        log = (self.folder / f"server-{len(self.starts)}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.store,
             "--artifacts-destination", str(self.folder / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"mlflow server did not start: {self.log()[-2000:]}")
            time.sleep(0.1)
        self.starts.append(time.monotonic() - t0)
        return self.starts[-1]

    def kill(self) -> None:
        """SIGKILL the server's whole process group; returns once the port refuses."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.05)

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.folder.glob("server-*.log")))
