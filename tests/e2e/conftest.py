"""End-to-end fixtures: the real `localimg serve` process on 127.0.0.1, with the tiny models, driven by the
official `openai` SDK."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.e2e.failing_server import failing_server
from tests.e2e.ready import wait_until_ok

STARTUP_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`localimg serve` in a child process; its output goes to `log_dir` (a pytest temporary folder, so logs of
    the last runs stay for a look and older ones are cleaned up)."""

    def __init__(self, config: Path, *extra_args: str, log_dir: Path) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"server-{self.port}.log"
        command = [sys.executable, "-m", "localimg.cli", "serve", "--config", str(config), "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--device", "cpu", *extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> None:
        def check_alive() -> None:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")

        try:
            wait_until_ok(f"{self.root}/ready", timeout_s=STARTUP_TIMEOUT_S, check_alive=check_alive)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}:\n{self.log()}") from None

    def log(self) -> str:
        """The log's end (readiness polls are logged only when their answer changes, so they do not fill it)."""
        return self.log_path.read_text()[-5000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


@pytest.fixture(scope="session")
def server(tiny_models_toml: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tiny_models_toml, "--preload", "all", log_dir=tmp_path_factory.mktemp("server"))
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def failing_root(tiny_models_toml: Path) -> Iterator[str]:
    """Root URL of an in-process server whose tiny-flux fails at its second denoising step."""
    with failing_server(tiny_models_toml, free_port()) as root:
        yield root


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=f"{server.root}/v1", api_key="sk-local", max_retries=0, timeout=120)
