"""A client for OpenAI-compatible ``/v1/chat/completions`` endpoints (notebook 01).

The chat teacher (:mod:`vlkit.chat_teacher`, notebook 01) and the chat judge
(:class:`vlkit.benchmarks.llava_bench.ChatJudge`, notebook 03) both talk to such an endpoint
through one :class:`ChatClient`: ``complete(messages, **params)`` returns the reply's text, or
None for a reply that is not a chat completion. Standard library only (``urllib``), so no
vendor SDK is needed.

The API key is read from the environment variable ``api_key_env`` at request time and is
never stored on the object, printed, or put into an exception.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any


class ChatClientError(RuntimeError):
    """The endpoint could not be reached or refused the request (after retries)."""


def missing_endpoint(kwargs: dict, who: str) -> None:
    """Raise a clear ValueError when ``kwargs`` lacks the ``base_url`` or ``model`` a client needs."""
    missing = [k for k in ("base_url", "model") if not kwargs.get(k)]
    if missing:
        raise ValueError(f"{who} needs {' and '.join(missing)}")


class ChatClient:
    """An OpenAI-compatible chat-completions endpoint (notebook 01).

    Transient failures (timeouts, connection errors, 429, 5xx) are retried with exponential
    backoff (``backoff * 2**attempt`` seconds); other HTTP errors, and running out of
    retries, raise :class:`ChatClientError`. ``n_requests`` counts HTTP requests (retries
    included), ``n_retries`` the retries, ``n_malformed`` the replies that were not a chat
    completion (not JSON, or no message text).
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_retries: int = 4, backoff: float = 1.0):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model, self.api_key_env = model, api_key_env
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.n_requests = self.n_retries = self.n_malformed = 0

    def __repr__(self) -> str:
        return (f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, "
                f"api_key_env={self.api_key_env!r})")

    @property
    def url(self) -> str:
        # Accept both ".../v1" and the bare server root.
        return self.base_url + ("/chat/completions" if self.base_url.endswith("/v1") else "/v1/chat/completions")

    def complete(self, messages: list[dict], **params) -> str | None:
        """The reply text to ``messages``; None (counted in ``n_malformed``) for a malformed reply.

        ``params`` go into the request beside ``model`` and ``messages`` (e.g. ``temperature``).
        """
        data = self._post({"model": self.model, "messages": messages, **params})
        try:
            reply = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            reply = None
        if not isinstance(reply, str):
            self.n_malformed += 1
            return None
        return reply

    def _post(self, payload: dict) -> Any:
        """POST ``payload`` with retries; the decoded JSON reply, ``{}`` when it is not JSON."""
        key = os.environ.get(self.api_key_env)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = "Bearer " + key
        body = json.dumps(payload).encode()
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.n_retries += 1
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.n_requests += 1
            try:
                raw = self._send(body, headers)
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code} {e.reason}"
                if e.code == 429 or e.code >= 500:
                    continue
                raise ChatClientError(f"{self.url}: {last}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
                continue
            try:
                return json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                return {}  # not JSON: a malformed reply, counted by complete()
        raise ChatClientError(f"{self.url}: gave up after {self.max_retries + 1} attempts ({last})")

    def _send(self, body: bytes, headers: dict[str, str]) -> bytes:
        """One HTTP request: POST ``body`` to :attr:`url`, return the response body.

        Raises what ``urllib`` raises; :meth:`_post` decides what is retried.
        """
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return r.read()
