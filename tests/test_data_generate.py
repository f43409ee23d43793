"""Generation pipeline against a real HTTP server on 127.0.0.1 (a fake OpenAI-compatible endpoint)
with 429s, 5xx, malformed bodies, timeouts and bad replies; resume, dedup, key hygiene, local backend."""

import itertools
import json
import logging
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jaxvalues.errors import DataError

from jaxvalues.data.generate import GenerationError, LocalChat, OpenAIChat, generate_records, parse_json_reply
from jaxvalues.data.io import load_records

KEY = "sk-test-SECRET-4242"


class FakeLLM:
    """Deterministic replies for each pipeline step; `faults` are applied to the next requests in order."""

    def __init__(self):
        self.faults: list[str] = []
        self.requests: list[tuple[dict, dict]] = []
        self.n = itertools.count()
        self.last_story: dict | None = None
        self.lock = threading.Lock()

    def content(self, body) -> str:
        prompt = body["messages"][-1]["content"]
        system = body["messages"][0]["content"]
        value = re.search(r"about the value (.+?) \(", system).group(1)
        langs = [lang for lang in ("en", "zh") if f'"story_{lang}"' in prompt or f'"aligned_{lang}"' in prompt
                 or f'"rationale_{lang}"' in prompt or f'"{lang}"' in prompt]
        n = next(self.n)
        if '"conflicts"' in prompt:
            k = int(re.search(r"List (\d+)", prompt).group(1))
            return json.dumps({"conflicts": [{"en": f"{value} vs temptation {i}", "zh": f"价值 vs 诱惑{i}"}
                                             for i in range(k)]}, ensure_ascii=False)
        if '"story_' in prompt:
            self.last_story = {f"story_{l}": (f"I am narrator number {n} and my choice about {value} is hard. "
                                              "I must decide today." if l == "en" else f"我是第{n}号讲述者，今天必须做出选择。")
                               for l in langs}
            return "Here you go:\n```json\n" + json.dumps(self.last_story, ensure_ascii=False) + "\n```"
        if '"aligned_' in prompt:
            out = {}
            for l in langs:
                out[f"aligned_{l}"] = f"I keep my word, case {n}." if l == "en" else f"我信守承诺，第{n}例。"
                out[f"violating_{l}"] = f"I break my word, case {n}." if l == "en" else f"我违背承诺，第{n}例。"
            return json.dumps(out, ensure_ascii=False)
        if '"rationale_' in prompt:
            return json.dumps({f"rationale_{l}": ("Keeping my word matters more than the gain." if l == "en"
                                                  else "守信比眼前的利益更重要。") for l in langs}, ensure_ascii=False)
        return "I cannot help with that."

    def reply(self, handler):
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        with self.lock:
            self.requests.append((dict(handler.headers), body))
            fault = self.faults.pop(0) if self.faults else None
        if fault == "429":
            return self.send(handler, 429, b'{"error": "rate limited"}', {"Retry-After": "0.25"})
        if fault == "500":
            return self.send(handler, 503, b"upstream overloaded")
        if fault == "401":
            return self.send(handler, 401, b'{"error": "invalid key ' + KEY.encode() + b'"}')
        if fault == "timeout":
            time.sleep(1.5)
        if fault == "malformed":
            return self.send(handler, 200, b'{"choices": [{"message": ')
        if fault == "bad_content":
            content = "Sure! Here is a story about a hard choice, without any JSON."
        elif fault == "dup_story" and self.last_story:
            content = json.dumps(self.last_story, ensure_ascii=False)
        else:
            content = self.content(body)
        data = json.dumps({"id": "x", "object": "chat.completion",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
        self.send(handler, 200, data.encode())

    @staticmethod
    def send(handler, code, data, headers=None):
        try:
            handler.send_response(code)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                handler.send_header(k, v)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass


@pytest.fixture
def server():
    fake = FakeLLM()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/v1/chat/completions":
                return fake.send(self, 404, b"not found")
            fake.reply(self)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield fake
    httpd.shutdown()
    httpd.server_close()


def client(fake, sleeps, **kw):
    kw = {"api_key": KEY, "timeout": 0.5, "max_retries": 5, "backoff": 0.1, "sleep": sleeps.append, **kw}
    return OpenAIChat(fake.base_url, "fake-model", **kw)


def test_pipeline_survives_faults_and_writes_valid_pairs(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    server.faults = ["429", "malformed", "timeout", "500", "bad_content"]
    sleeps = []
    out = tmp_path / "gen.jsonl"
    report = generate_records(client(server, sleeps), out, kind="activation", values=["integrity", "诚信", "Harmony"][::2],
                              per_value=3, topics_per_value=2, batch_size=2)
    assert report.failed == [] and report.written == 12 and report.skipped_existing == 0
    assert sleeps[:4] == [0.25, 0.2, 0.4, 0.8]  # Retry-After, then exponential backoff 0.1·2^k
    recs = load_records(out)  # strict: everything written is valid
    assert len(recs) == 12
    assert Counter((r.value, r.lang) for r in recs) == {(v, l): 3 for v in ("integrity", "harmony") for l in ("zh", "en")}
    assert {r.id for r in recs} >= {"gen-act-integrity-000-zh", "gen-act-integrity-002-en", "gen-act-harmony-001-zh"}
    by_pair = {}
    for r in recs:
        by_pair.setdefault(r.pair_id, {})[r.lang] = r
    assert all(set(d) == {"zh", "en"} for d in by_pair.values())
    en_topics = Counter(r.conflict for r in recs if r.lang == "en" and r.value == "integrity")
    assert en_topics == {"Integrity vs temptation 0": 2, "Integrity vs temptation 1": 1}  # cycled topics
    assert all(r.rationale for r in recs)
    # the key went out in the header, and nowhere else
    assert all(h.get("Authorization") == f"Bearer {KEY}" for h, _ in server.requests)
    assert all(b["model"] == "fake-model" for _, b in server.requests)
    assert KEY not in out.read_text(encoding="utf-8") and KEY not in caplog.text
    assert "HTTP 429" in caplog.text and "malformed response body" in caplog.text and "timed out" in caplog.text


def test_resume_skips_done_pairs_dedups_and_repairs_a_partial_line(server, tmp_path):
    out = tmp_path / "gen.jsonl"
    backend = client(server, [])
    r1 = generate_records(backend, out, kind="evaluation", values=["integrity"], per_value=2, topics_per_value=3)
    assert r1.written == 4 and r1.failed == []
    out.write_text(out.read_text(encoding="utf-8") + '{"id": "gen-eval-integrity-002-zh", "ki', encoding="utf-8")
    n_before = len(server.requests)
    server.faults = ["dup_story"]  # the first new story repeats one already in the file
    r2 = generate_records(backend, out, kind="evaluation", values=["integrity"], per_value=3, topics_per_value=3)
    assert r2.skipped_existing == 2 and r2.written == 2 and r2.failed == []
    # topics (1 request: only 2 of 3 known) + story twice (duplicate rejected) + actions = 4
    assert len(server.requests) - n_before == 4
    recs = load_records(out)  # the partial line was dropped; strict load passes
    assert [r.id for r in recs][-2:] == ["gen-eval-integrity-002-zh", "gen-eval-integrity-002-en"]
    assert len({r.context for r in recs}) == len(recs)
    assert all(r.kind == "evaluation" and r.violating_action for r in recs)
    n_before = len(server.requests)
    r3 = generate_records(backend, out, kind="evaluation", values=["integrity"], per_value=3)
    assert (r3.written, r3.skipped_existing, len(server.requests) - n_before) == (0, 3, 0)


def test_one_language_and_given_conflicts(server, tmp_path):
    out = tmp_path / "en.jsonl"
    topics = {"integrity": [{"en": "Integrity vs saving face"}, {"en": "Integrity vs loyalty"}]}
    rep = generate_records(client(server, []), out, values=["integrity"], per_value=2, langs=("en",), conflicts=topics)
    assert rep.written == 2 and rep.failed == []
    assert [r.conflict for r in load_records(out)] == ["Integrity vs saving face", "Integrity vs loyalty"]
    assert not any('"conflicts"' in b["messages"][-1]["content"] for _, b in server.requests)
    assert not any('"story_zh"' in b["messages"][-1]["content"] for _, b in server.requests)


def test_items_that_keep_failing_are_reported_not_written(server, tmp_path):
    out = tmp_path / "gen.jsonl"
    server.faults = ["bad_content"] * 3  # the story step of the only item, all attempts
    rep = generate_records(client(server, []), out, values=["harmony"], per_value=1, langs=("en",),
                           conflicts={"harmony": [{"en": "Harmony vs being right"}]}, max_attempts=3)
    assert rep.written == 0 and rep.failed == [("gen-act-harmony-000", "step story: reply is not a JSON object (after 3 attempts)")]
    assert not out.exists() or load_records(out) == []


def test_http_errors_are_clear_and_never_show_the_key(server):
    server.faults = ["401"]
    with pytest.raises(GenerationError) as e:
        client(server, []).complete([{"role": "user", "content": "hi"}])
    assert "HTTP 401" in str(e.value) and "check the API key" in str(e.value) and KEY not in str(e.value)
    server.faults = ["429"] * 3
    sleeps = []
    with pytest.raises(GenerationError, match="giving up after 3 attempts; last error: HTTP 429"):
        client(server, sleeps, max_retries=2).complete([{"role": "user", "content": "hi"}])
    assert sleeps == [0.25, 0.25]
    dead = OpenAIChat("http://127.0.0.1:9/v1", "m", api_key=KEY, timeout=0.5, max_retries=1, sleep=lambda s: None)
    with pytest.raises(GenerationError, match="connection failed"):
        dead.complete([{"role": "user", "content": "hi"}])
    assert KEY not in repr(dead) and "api_key=set" in repr(dead)


def test_key_comes_from_the_environment(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("JAXVALUES_API_KEY", "env-key-1")
    c = OpenAIChat(server.base_url, "m", sleep=lambda s: None)
    c.complete([{"role": "system", "content": "about the value Integrity (诚信)"}, {"role": "user", "content": "x"}])
    assert server.requests[-1][0]["Authorization"] == "Bearer env-key-1"
    monkeypatch.delenv("JAXVALUES_API_KEY")
    c = OpenAIChat(server.base_url, "m", sleep=lambda s: None)
    c.complete([{"role": "system", "content": "about the value Integrity (诚信)"}, {"role": "user", "content": "x"}])
    assert "Authorization" not in server.requests[-1][0]


def test_generate_command(server, tmp_path, monkeypatch, capsys):
    from jaxvalues.cli import main

    monkeypatch.setenv("JAXVALUES_API_KEY", KEY)
    out = tmp_path / "cli.jsonl"
    rc = main(["data", "generate", "--base-url", server.base_url, "--model", "fake", "-o", str(out),
               "--values", "integrity", "--per-value", "2", "--kind", "evaluation", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["written"] == 4 and res["failed"] == []
    assert KEY not in out.read_text(encoding="utf-8")


class FakeLM:
    """Stands in for a jaxvalues LanguageModel: generate(prompts, max_new_tokens) -> list[str]."""

    def __init__(self, echo_prompt=False, tokenizer=None):
        self.fake, self.echo, self.tokenizer, self.prompts = FakeLLM(), echo_prompt, tokenizer, []

    def generate(self, prompts, max_new_tokens=32):
        assert isinstance(prompts, list) and max_new_tokens == 300
        self.prompts += prompts
        outs = []
        for p in prompts:
            system, user = p.split("\n\n", 1) if self.tokenizer is None else ("about the value Integrity (", p)
            body = {"messages": [{"content": system}, {"content": user}]}
            outs.append((p if self.echo else "") + self.fake.content(body))
        return outs


@pytest.mark.parametrize("echo", [False, True])
def test_local_backend_batches_through_generate(tmp_path, echo):
    lm = FakeLM(echo_prompt=echo)
    backend = LocalChat(lm, max_new_tokens=300)
    out = tmp_path / "local.jsonl"
    rep = generate_records(backend, out, values=["integrity"], per_value=3, batch_size=3, topics_per_value=2)
    assert rep.written == 6 and rep.failed == []
    assert backend.calls == 4  # topics, then one batched call per step (story, actions, rationale)
    assert len(load_records(out)) == 6


def test_local_backend_uses_the_chat_template():
    class Tok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    backend = LocalChat(FakeLM(tokenizer=Tok()), max_new_tokens=300)
    assert backend.prompt([{"role": "user", "content": "hi"}]) == "<user>hi<assistant>"


def test_parse_json_reply():
    assert parse_json_reply('```json\n{"a": "b"}\n```') == {"a": "b"}
    assert parse_json_reply('Sure: {"a": {"b": 1}} hope it helps') == {"a": {"b": 1}}
    assert parse_json_reply("no json") is None and parse_json_reply('{"a": ') is None
    assert parse_json_reply("[1, 2]") is None


def test_a_half_written_pair_is_regenerated_whole(server, tmp_path):
    out = tmp_path / "gen.jsonl"
    backend = client(server, [])
    generate_records(backend, out, kind="evaluation", values=["integrity"], per_value=2, langs=("zh", "en"))
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # killed before the last pair's en line
    rep = generate_records(backend, out, kind="evaluation", values=["integrity"], per_value=2)
    assert (rep.skipped_existing, rep.written) == (1, 2)
    recs = load_records(out)  # strict: no duplicate ids
    assert [r.id for r in recs] == ["gen-eval-integrity-000-zh", "gen-eval-integrity-000-en",
                                    "gen-eval-integrity-001-zh", "gen-eval-integrity-001-en"]


def _hand_made(path):
    """Two hand-made records whose pairs lack the other language (ids a generator could also use)."""
    from jaxvalues.data.io import read_records

    recs = read_records("builtin").records
    zh = next(r for r in recs if r.lang == "zh" and r.kind == "evaluation")
    en = next(r for r in recs if r.lang == "en" and r.kind == "evaluation" and r.pair_id != zh.pair_id)
    lines = [json.dumps({**zh.to_dict(), "id": "gen-eval-integrity-000-zh", "pair_id": "gen-eval-integrity-000",
                         "value": "integrity"}, ensure_ascii=False),
             json.dumps({**en.to_dict(), "id": "mine-1-en", "pair_id": "mine-1"}, ensure_ascii=False)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path.read_bytes()


def test_generate_refuses_a_file_it_did_not_write(server, tmp_path):
    out = tmp_path / "hand.jsonl"
    before = _hand_made(out)
    backend = client(server, [])
    with pytest.raises(DataError, match=r"hand.jsonl: exists and was not written by `data generate`.*--append"):
        generate_records(backend, out, kind="evaluation", values=["integrity"], per_value=2)
    assert out.read_bytes() == before and backend.calls == 0


def test_generate_append_never_deletes_records_it_did_not_write(server, tmp_path):
    from jaxvalues.data.generate import sidecar_path

    out = tmp_path / "hand.jsonl"
    before = _hand_made(out)
    rep = generate_records(client(server, []), out, kind="evaluation", values=["integrity"], per_value=2, append=True)
    after = out.read_bytes()
    assert after.startswith(before)  # every hand-made line kept byte for byte
    # pair 000 is the user's (one language only): skipped, never regenerated over
    assert rep.skipped_existing == 1 and rep.written == 2
    owned = json.loads(sidecar_path(out).read_text())["ids"]
    assert owned == ["gen-eval-integrity-001-en", "gen-eval-integrity-001-zh"]
    # a rerun (the file now has a sidecar) still keeps the user's lone records
    generate_records(client(server, []), out, kind="evaluation", values=["integrity"], per_value=2)
    assert out.read_bytes().startswith(before)


def test_generate_cli_append_flag(server, tmp_path, monkeypatch, capsys):
    from jaxvalues.cli import main

    monkeypatch.setenv("JAXVALUES_API_KEY", KEY)
    out = tmp_path / "hand.jsonl"
    before = _hand_made(out)
    argv = ["data", "generate", "--base-url", server.base_url, "--model", "fake", "-o", str(out), "--kind",
            "evaluation", "--values", "integrity", "--per-value", "1", "--json"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "--append" in err and "Traceback" not in err and out.read_bytes() == before
