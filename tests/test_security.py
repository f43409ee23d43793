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


# ---------------------------------------------------------------- sharded index confinement


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A tiny llama saved in several shards (pristine; tests copy it)."""
    from jaxvalues.testing import tiny_hf_model

    base = tmp_path_factory.mktemp("tiny")
    model = tiny_hf_model("llama", base / "single")
    out = base / "sharded"
    model.save_pretrained(str(out), max_shard_size="100KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst, dst / "model.safetensors.index.json"


def _edit(index_path, fn):
    idx = json.loads(index_path.read_text())
    key = sorted(idx["weight_map"])[0]
    idx["weight_map"][key] = fn(idx["weight_map"][key])
    index_path.write_text(json.dumps(idx))
    return key


def test_sharded_index_loads_when_clean(sharded, tmp_path):
    from jaxvalues.loading.safetensors_io import SafetensorsCheckpoint

    d, _ = _copy(sharded, tmp_path / "m")
    ck = SafetensorsCheckpoint(d)
    assert len({ck.source(k) for k in ck.keys()}) > 1
    # a shard in a subfolder of the model directory is fine
    (d / "sub").mkdir()
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    first = sorted(set(idx["weight_map"].values()))[0]
    (d / first).rename(d / "sub" / first)
    idx["weight_map"] = {k: (f"sub/{v}" if v == first else v) for k, v in idx["weight_map"].items()}
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    assert set(SafetensorsCheckpoint(d).keys()) == set(ck.keys())


def _refused(d, index, key, bad, why):
    from jaxvalues.loading.safetensors_io import SafetensorsCheckpoint

    with pytest.raises(CheckpointError) as e:
        SafetensorsCheckpoint(d)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{index}: weight_map entry {key!r} -> {bad!r}"), msg
    assert why in msg, msg
    return msg


def test_sharded_index_refuses_parent_path(sharded, tmp_path):
    d, index = _copy(sharded, tmp_path / "m")
    # the escaping shard exists (a real safetensors file), so only confinement stops it
    victim = tmp_path / "outside.safetensors"
    first = sorted(set(json.loads(index.read_text())["weight_map"].values()))[0]
    victim.write_bytes((d / first).read_bytes())
    key = _edit(index, lambda v: "../outside.safetensors")
    _refused(d, index, key, "../outside.safetensors", "may not contain '..'")
    key = _edit(index, lambda v: "sub/../../outside.safetensors")
    _refused(d, index, key, "sub/../../outside.safetensors", "may not contain '..'")


def test_sharded_index_refuses_absolute_path(sharded, tmp_path):
    d, index = _copy(sharded, tmp_path / "m")
    first = sorted(set(json.loads(index.read_text())["weight_map"].values()))[0]
    absolute = str((d / first).resolve())  # even one pointing back inside: names must be relative
    key = _edit(index, lambda v: absolute)
    _refused(d, index, key, absolute, "absolute path")
    key = _edit(index, lambda v: "C:\\x.safetensors")
    _refused(d, index, key, "C:\\x.safetensors", "absolute path")


def test_sharded_index_refuses_symlink_out(sharded, tmp_path):
    d, index = _copy(sharded, tmp_path / "m")
    first = sorted(set(json.loads(index.read_text())["weight_map"].values()))[0]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (d / first).rename(outside / first)
    os.symlink(outside / first, d / first)  # same name, but the file lies outside
    idx = json.loads(index.read_text())
    key = next(k for k, v in idx["weight_map"].items() if v == first)
    msg = _refused(d, index, key, first, "outside the model directory")
    assert str((outside / first).resolve()) in msg
    # a symlinked folder counts too
    (d / first).unlink()
    os.symlink(outside, d / "linkdir")
    idx["weight_map"] = {k: (f"linkdir/{v}" if v == first else v) for k, v in idx["weight_map"].items()}
    index.write_text(json.dumps(idx))
    _refused(d, index, key, f"linkdir/{first}", "outside the model directory")


def test_sharded_index_refuses_non_string_entry(sharded, tmp_path):
    d, index = _copy(sharded, tmp_path / "m")
    key = _edit(index, lambda v: ["x"])
    _refused(d, index, key, ["x"], "expected a shard file name")


def test_hf_cache_snapshot_symlinks_to_blobs_are_allowed(sharded, tmp_path):
    """The hub cache layout: snapshots/<rev>/<file> -> ../../blobs/<hash>; that must keep loading."""
    from jaxvalues.loading.safetensors_io import SafetensorsCheckpoint

    repo = tmp_path / "models--org--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(sharded.iterdir())):
        (blobs / f"blob{i}").write_bytes(f.read_bytes())
        os.symlink(f"../../blobs/blob{i}", snap / f.name)
    assert len(SafetensorsCheckpoint(snap).keys()) > 0


def test_load_model_reports_the_bad_entry(sharded, tmp_path):
    import jaxvalues as jv

    d, index = _copy(sharded, tmp_path / "m")
    key = _edit(index, lambda v: "../../etc/passwd")
    with pytest.raises(JaxValuesError, match=r"weight_map entry .* -> '\.\./\.\./etc/passwd'"):
        jv.load_model(d, tokenizer=False)


def test_reply_echoing_the_key_is_redacted(echo_server):
    import http.server

    # a 200 whose content echoes the key: the key is masked, other text (even "bearer bonds") is kept
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"choices": [{"message": {"content": f"bearer bonds; key {KEY}"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        chat = OpenAIChat(f"http://127.0.0.1:{httpd.server_address[1]}/v1", "m", api_key=KEY, timeout=5)
        assert chat.complete([{"role": "user", "content": "hi"}]) == "bearer bonds; key ***"
    finally:
        httpd.shutdown()
        httpd.server_close()
