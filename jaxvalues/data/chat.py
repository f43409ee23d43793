"""Chat backends for data generation: an OpenAI-compatible HTTP endpoint, or a local model.

Conventions:
- A backend exposes `complete_many(list of messages) -> list[str]` and `complete(messages)`
  (messages = OpenAI-style [{"role": ..., "content": ...}]) and counts its requests in `calls`.
- `OpenAIChat` posts to ``{base_url}/chat/completions`` with urllib (no extra dependency). The API
  key comes from the argument or the environment (JAXVALUES_API_KEY, then OPENAI_API_KEY); it is
  only ever sent in the Authorization header, never logged, written, or shown in a repr or an
  error (server messages are redacted). HTTP 429 and 5xx, timeouts, connection errors and
  malformed response bodies are retried with exponential backoff `backoff * 2**attempt`
  (Retry-After honoured), capped at `max_backoff`; other HTTP errors raise `GenerationError` at once.
- `LocalChat` wraps any object with `generate(prompts, max_new_tokens=...) -> list[str]` (a
  jaxvalues LanguageModel): messages are rendered with `lm.tokenizer`'s chat template when it has
  one (generation prompt added), else joined as plain text; a returned text that starts with its
  prompt has the prompt removed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from http.client import HTTPException

from jaxvalues.errors import DataError

log = logging.getLogger(__name__)
API_KEY_ENV = ("JAXVALUES_API_KEY", "OPENAI_API_KEY")


class GenerationError(DataError):
    """The generation endpoint failed for good (bad key, bad URL, retries exhausted)."""


class OpenAIChat:
    """Client for an OpenAI-compatible /v1/chat/completions endpoint (stdlib urllib)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 5, backoff: float = 1.0, max_backoff: float = 30.0,
                 temperature: float = 0.9, max_tokens: int = 1024, extra_body: dict | None = None,
                 sleep=time.sleep):  # fmt: skip
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._key = api_key if api_key is not None else next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.temperature, self.max_tokens = temperature, max_tokens
        self.extra_body = dict(extra_body or {})
        self.sleep = sleep
        self.calls = 0  # HTTP requests made, retries included

    def __repr__(self) -> str:
        return f"OpenAIChat(url={self.url!r}, model={self.model!r}, api_key={'set' if self._key else 'unset'})"

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def complete_many(self, batch: list[list[dict]]) -> list[str]:
        return [self.complete(m) for m in batch]

    def complete(self, messages: list[dict]) -> str:
        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens, **self.extra_body}  # fmt: skip
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            self.calls += 1
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                content = _content(raw)
                if content is not None:
                    return content
                last = "malformed response body (expected JSON with choices[0].message.content)"
            except urllib.error.HTTPError as e:
                detail = self._redact(e.read()[:300].decode("utf-8", "replace"))
                if e.code != 429 and e.code < 500:
                    hint = " (check the API key)" if e.code in (401, 403) else ""
                    raise GenerationError(f"{self.url}: HTTP {e.code} {e.reason}{hint}: {detail}") from None
                last = f"HTTP {e.code} {e.reason}"
                retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
            except (TimeoutError, socket.timeout):
                last = f"timed out after {self.timeout:g} s"
            except urllib.error.URLError as e:
                if isinstance(e.reason, (TimeoutError, socket.timeout)):
                    last = f"timed out after {self.timeout:g} s"
                else:
                    last = f"connection failed ({self._redact(str(e.reason))})"
            except (ConnectionError, HTTPException, OSError) as e:
                last = f"connection failed ({type(e).__name__})"
            if attempt == self.max_retries:
                break
            delay = min(self.max_backoff, retry_after if retry_after is not None else self.backoff * 2**attempt)
            log.warning("%s: %s; retry %d/%d in %.1f s", self.url, last, attempt + 1, self.max_retries, delay)
            self.sleep(delay)
        raise GenerationError(f"{self.url}: giving up after {self.max_retries + 1} attempts; last error: {last}")


def _content(raw: bytes) -> str | None:
    try:
        obj = json.loads(raw.decode("utf-8"))
        content = obj["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
        return None
    return content if isinstance(content, str) else None


def _retry_after(value) -> float | None:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


class LocalChat:
    """Backend over a local model: any object with `generate(prompts, max_new_tokens=...)`."""

    def __init__(self, lm, max_new_tokens: int = 512, template_kwargs: dict | None = None):
        self.lm, self.max_new_tokens, self.template_kwargs = lm, max_new_tokens, template_kwargs or {}
        self.calls = 0

    def prompt(self, messages: list[dict]) -> str:
        tok = getattr(self.lm, "tokenizer", None)
        if tok is not None and getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **self.template_kwargs)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def complete_many(self, batch: list[list[dict]]) -> list[str]:
        prompts = [self.prompt(m) for m in batch]
        self.calls += 1
        outs = self.lm.generate(prompts, max_new_tokens=self.max_new_tokens)
        return [o[len(p):] if isinstance(o, str) and o.startswith(p) else str(o) for o, p in zip(outs, prompts)]

    def complete(self, messages: list[dict]) -> str:
        return self.complete_many([messages])[0]
