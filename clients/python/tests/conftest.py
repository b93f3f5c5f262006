"""Fixtures: the real `switchyard serve` on free ports, and a local HTTP
stand-in that speaks the OpenAI and Anthropic APIs and returns known usage."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[3]

RULES = """
[[models]]
name = "small"
provider = "openai"
api_model = "small-2026-01-01"
input_per_mtok = 2.0
cached_input_per_mtok = 0.5
output_per_mtok = 8.0
context_window = 100000
max_output_tokens = 4000
tiers = { general = 2 }

[[models]]
name = "sonnet"
provider = "anthropic"
api_model = "claude-sonnet-4-5-20250929"
input_per_mtok = 3.0
cached_input_per_mtok = 0.3
output_per_mtok = 15.0
context_window = 200000
max_output_tokens = 64000
tiers = { general = 4 }

[[workflows]]
name = "support"
allowed_models = ["small"]
learning = { enabled = false }
budget = { limit_usd = 100.0, period = "day" }

[[workflows]]
name = "drafting"
allowed_models = ["sonnet"]
learning = { enabled = false }

[[workflows]]
name = "tight-escalate"
allowed_models = ["small"]
learning = { enabled = false }
budget = { limit_usd = 0.000000001, period = "day", on_limit = "escalate" }

[[workflows]]
name = "tight-deny"
allowed_models = ["small"]
learning = { enabled = false }
budget = { limit_usd = 0.000000001, period = "day", on_limit = "deny" }
"""


def switchyard_bin() -> str:
    explicit = os.environ.get("SWITCHYARD_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(Path(target) / "debug" / "switchyard")


class Server:
    """`switchyard serve` with the test rules, on free ports."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="switchyard-py-")
        rules = Path(self.dir.name) / "rules.toml"
        rules.write_text(RULES)
        self.state = Path(self.dir.name) / "state"
        self.rules = rules
        env = dict(os.environ)
        # Spans on (to an address nobody answers), so Route hands back a
        # traceparent of its own for the provider call.
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_TRACES_SAMPLER="always_on")
        self.proc = subprocess.Popen(
            [switchyard_bin(), "serve", "--rules", str(rules), "--state-dir", str(self.state),
             "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--shutdown-grace-s", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
        )
        line = self.proc.stdout.readline()
        match = re.search(r"grpc=(\S+)", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"switchyard did not start: {line!r}")
        self.target = match.group(1)

    def report(self, workflow: str) -> dict:
        """`switchyard report --format json` for one workflow, read beside the server."""
        out = subprocess.run(
            [switchyard_bin(), "report", "--rules", str(self.rules), "--state-dir", str(self.state),
             "--workflow", workflow, "--format", "json"],
            capture_output=True, text=True, check=True,
        )
        return next(w for w in json.loads(out.stdout)["workflows"] if w["workflow"] == workflow)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.dir.cleanup()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.stop()


class Provider:
    """What the stand-in saw and will answer."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.fail_next = False
        self.openai_usage = {"prompt_tokens": 1200, "completion_tokens": 80, "total_tokens": 1280,
                             "prompt_tokens_details": {"cached_tokens": 1024}}
        self.anthropic_usage = {"input_tokens": 300, "cache_read_input_tokens": 1000,
                                "cache_creation_input_tokens": 0, "output_tokens": 90}


def _handler(provider: Provider):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def _send(self, code: int, body: object, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
            provider.requests.append({"path": self.path, "body": body, "headers": dict(self.headers)})
            if provider.fail_next:
                provider.fail_next = False
                self._send(500, {"error": {"message": "the stand-in failed on purpose", "type": "server_error"}})
                return
            if self.path.endswith("/chat/completions"):
                self._chat(body)
            elif self.path.endswith("/messages"):
                self._messages(body)
            else:
                self._send(404, {"error": {"message": f"no {self.path}"}})

        def _chat(self, body: dict) -> None:
            message = {"role": "assistant", "content": "Your order ships tomorrow."}
            base = {"id": "chatcmpl-1", "created": int(time.time()), "model": body["model"]}
            if not body.get("stream"):
                self._send(200, {**base, "object": "chat.completion", "usage": provider.openai_usage,
                                 "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})
                return
            chunks = [
                {**base, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Your order "}, "finish_reason": None}]},
                {**base, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": {"content": "ships tomorrow."}, "finish_reason": "stop"}]},
            ]
            if (body.get("stream_options") or {}).get("include_usage"):
                chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": provider.openai_usage})
            sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            self._send(200, sse.encode(), "text/event-stream")

        def _messages(self, body: dict) -> None:
            self._send(200, {
                "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": "Here is the draft."}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": provider.anthropic_usage,
            })

    return Handler


@pytest.fixture()
def provider() -> Iterator[tuple[Provider, str]]:
    p = Provider()
    http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(p))
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield p, f"http://127.0.0.1:{http.server_address[1]}"
    http.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
