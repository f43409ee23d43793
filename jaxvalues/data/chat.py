"""Chat backends for data generation: an OpenAI-compatible HTTP endpoint, or a local model.

Conventions:
- A backend exposes `complete_many(list of messages) -> list[str]` and `complete(messages)`
  (messages = OpenAI-style [{"role": ..., "content": ...}]) and counts its requests in `calls`.
- `OpenAIChat` posts to ``{base_url}/chat/completions`` with urllib (no extra dependency). The API
  key comes from the argument or the environment (JAXVALUES_API_KEY, then OPENAI_API_KEY); it is
  only ever sent in the Authorization header, never logged, written, or shown in a repr or an
  error: every text built from a response (status line, reason phrase, body excerpt, headers,
  connection errors) goes through `redact`, which replaces the key (also URL- or JSON-escaped) and
  any `Bearer <token>` credential with "***" before the text is cut to length. HTTP 429 and 5xx, timeouts, connection errors and
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
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException

from jaxvalues.errors import DataError

log = logging.getLogger(__name__)
API_KEY_ENV = ("JAXVALUES_API_KEY", "OPENAI_API_KEY")


def redact(text, key: str | None) -> str:
    """`text` with the API key and any bearer credential replaced by "***" (before truncating)."""
    text = str(text)
    if key:
        forms = {key, urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key), json.dumps(key)[1:-1]}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
    return _BEARER.sub(lambda m: m.group(1) + "***", text)


_BEARER = re.compile(r"(?i)(\bbearer\s+)(?!\*\*\*)[^\s\"',;]+")


def _excerpt(text: str, key: str | None, limit: int = 300) -> str:
    return redact(text, key)[:limit]


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

    def _redact(self, text) -> str:
        return redact(text, self._key)

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
            retry_after = fatal = None
            self.calls += 1
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                content = _content(raw)
                if content is not None:  # the key itself never reaches the data files either
                    return content.replace(self._key, "***") if self._key else content
                last = "malformed response body (expected JSON with choices[0].message.content)"
            except urllib.error.HTTPError as e:
                try:
                    body_text = e.read(64 * 1024).decode("utf-8", "replace")
                except (OSError, HTTPException):
                    body_text = ""
                detail = " ".join(_excerpt(body_text, self._key).split())
                status = self._redact(f"HTTP {e.code} {e.reason}")
                if e.code != 429 and e.code < 500:
                    hint = " (check the API key)" if e.code in (401, 403) else ""
                    fatal = self._redact(f"{self.url}: {status}{hint}: {detail}")
                last = status
                retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
            except (TimeoutError, socket.timeout):
                last = f"timed out after {self.timeout:g} s"
            except urllib.error.URLError as e:
                if isinstance(e.reason, (TimeoutError, socket.timeout)):
                    last = f"timed out after {self.timeout:g} s"
                else:
                    last = f"connection failed ({self._redact(str(e.reason))})"
            except (ConnectionError, HTTPException, OSError) as e:  # type name only: no server text
                last = f"connection failed ({type(e).__name__})"
            if fatal is not None:  # raised outside the except block: the HTTPError (server text) is not chained
                raise GenerationError(fatal)
            if attempt == self.max_retries:
                break
            delay = min(self.max_backoff, retry_after if retry_after is not None else self.backoff * 2**attempt)
            log.warning("%s: %s; retry %d/%d in %.1f s", self._redact(self.url), self._redact(last), attempt + 1,
                        self.max_retries, delay)
            self.sleep(delay)
        raise GenerationError(self._redact(f"{self.url}: giving up after {self.max_retries + 1} attempts; last error: {last}"))


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
