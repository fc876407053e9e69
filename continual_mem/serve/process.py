"""`cmem serve` as a child process on a free loopback port: for tests, benchmarks and scripts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class ServeProcess:
    """Starts `cmem --home HOME [--db URL] [--artifacts ROOT] serve --port P ARGS...`; `with` waits until ready.

    Its stderr (the server log) goes to `log_path`, read back with `log()`. Leaving the `with`
    block sends SIGTERM and waits for the exit code (`returncode`).
    """

    def __init__(
        self,
        home: Path,
        *args: str,
        db_url: str | None = None,
        artifacts: str | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        ready_timeout_s: float = 120.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        store = ["--db", db_url] if db_url else []
        store += ["--artifacts", artifacts] if artifacts else []
        self.command = [sys.executable, "-m", "continual_mem.cli", "--home", str(home), *store, "serve"]
        self.command += ["--port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path or Path(home) / f"serve-{self.port}.log"
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def __enter__(self) -> ServeProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cmem serve exited with {self.process.returncode}:\n{self.log()}")
            if self._ready():
                return
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"cmem serve not ready after {self.ready_timeout_s} s:\n{self.log()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int | None:
        if self.process is None or self.returncode is not None:
            return self.returncode
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.returncode = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.returncode = self.process.wait()
        return self.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
