"""Hardening: sharded-index confinement, API-key redaction in endpoint errors."""

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jaxvalues.data.chat import GenerationError, OpenAIChat, redact
from jaxvalues.errors import CheckpointError, JaxValuesError

KEY = "sk-test-SECRET-9876/xyz+q"


# ---------------------------------------------------------------- HTTP redaction


@pytest.fixture
def echo_server():
    """Answers every POST with `state["code"]` and a reason phrase / body / header carrying the key."""
    state = {"code": 500, "n": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            state["n"] += 1
            auth = self.headers.get("Authorization", "")
            body = (f'{{"error": "bad key {KEY}", "got": "{auth}", "escaped": {json.dumps(KEY)}}}\n'
                    + "x" * 280 + KEY).encode()
            self.send_response(state["code"], f"Bad Bearer {KEY}")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Echo", auth)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()
    httpd.server_close()


def _no_key(text: str):
    assert KEY not in text
    assert "SECRET" not in text  # no prefix or suffix of the key either
    assert "9876" not in text


@pytest.mark.parametrize("code", [500, 429])
def test_retried_error_reason_phrase_is_redacted(echo_server, caplog, code):
    echo_server["code"] = code
    chat = OpenAIChat(echo_server["url"], "m", api_key=KEY, max_retries=2, timeout=5, sleep=lambda s: None)
    with caplog.at_level(logging.DEBUG), pytest.raises(GenerationError) as e:
        chat.complete([{"role": "user", "content": "hi"}])
    msg = str(e.value)
    assert f"HTTP {code} Bad Bearer ***" in msg and "giving up after 3 attempts" in msg
    assert "\n" not in msg
    _no_key(msg)
    _no_key(caplog.text)
    assert caplog.text.count("Bad Bearer ***") == 2  # two retries logged, both redacted
    assert echo_server["n"] == 3


@pytest.mark.parametrize("code", [400, 401, 403])
def test_fatal_error_reason_phrase_and_body_are_redacted(echo_server, caplog, code):
    echo_server["code"] = code
    chat = OpenAIChat(echo_server["url"], "m", api_key=KEY, max_retries=2, timeout=5, sleep=lambda s: None)
    with caplog.at_level(logging.DEBUG), pytest.raises(GenerationError) as e:
        chat.complete([{"role": "user", "content": "hi"}])
    msg = str(e.value)
    assert f"HTTP {code} Bad Bearer ***" in msg and "bad key ***" in msg and '"got": "Bearer ***"' in msg
    assert "\n" not in msg and echo_server["n"] == 1
    _no_key(msg)
    _no_key(caplog.text)
    assert e.value.__cause__ is None and e.value.__context__ is None  # the HTTPError (raw reason) is not chained


def test_redact_forms():
    from urllib.parse import quote

    assert redact(f"Bearer {KEY}", KEY) == "Bearer ***"
    assert redact(f"authorization: bearer {KEY[:8]}", KEY) == "authorization: bearer ***"  # partial key
    assert redact(f"k={quote(KEY, safe='')}", KEY) == "k=***"
    assert redact(json.dumps({"k": KEY}), KEY) == '{"k": "***"}'
    assert redact("Bearer other-token", None) == "Bearer ***"
    assert redact("plain text", KEY) == "plain text"
    assert redact(f"{KEY}{KEY}", KEY) == "******"
