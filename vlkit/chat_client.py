"""A client for OpenAI-compatible ``/v1/chat/completions`` endpoints (notebook 01).

The chat teacher (:mod:`vlkit.chat_teacher`, notebook 01) and the chat judge
(:class:`vlkit.benchmarks.llava_bench.ChatJudge`, notebook 03) both talk to such an endpoint
through one :class:`ChatClient`: ``complete(messages, **params)`` returns the reply's text, or
None for a reply that is not a chat completion. Standard library only (``urllib``), so no
vendor SDK is needed.

The API key is read from the environment variable ``api_key_env`` at request time and is
never stored on the object, printed, or put into an exception. It goes to the configured
endpoint only: the client follows no redirect (a POST API never needs one, and following it
would re-send the ``Authorization`` header to wherever the redirect points).
"""
from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from typing import Any

from vlkit.errors import ServiceError, UserError


class ChatClientError(ServiceError):
    """The endpoint could not be reached, refused the request, or redirected it (after retries)."""


def missing_endpoint(kwargs: dict, who: str) -> None:
    """Raise a clear UserError when ``kwargs`` lacks the ``base_url`` or ``model`` a client needs."""
    missing = [k for k in ("base_url", "model") if not kwargs.get(k)]
    if missing:
        raise UserError(f"{who} needs {' and '.join(missing)}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: the 30x reaches :meth:`ChatClient._post` as an ``HTTPError``."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError(code) with the response's headers


def _short(text: Any, limit: int = 160) -> str:
    """``text`` on one line, at most ``limit`` characters (a server's words in our errors)."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[:limit - 3] + "..."


def reply_text(data: Any) -> str | None:
    """``data["choices"][0]["message"]["content"]`` when ``data`` is a chat completion, else None."""
    if not isinstance(data, dict):
        return None
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    return content if isinstance(content, str) else None


_MALFORMED = object()  # what _post returns for a body that is not JSON (or too big)


class ChatClient:
    """An OpenAI-compatible chat-completions endpoint (notebook 01).

    Transient failures (timeouts, connection errors, 429, 5xx) are retried with exponential
    backoff (``backoff * 2**attempt`` seconds); other HTTP errors, a redirect (never followed),
    and running out of retries raise :class:`ChatClientError` (a
    :class:`vlkit.errors.ServiceError`) with a one-line message that never holds the key.
    ``n_requests`` counts HTTP requests (retries included), ``n_retries`` the retries,
    ``n_malformed`` the replies that were not a chat completion (not JSON, not a JSON object,
    no ``choices[0].message.content`` string, or over ``max_reply_bytes``).
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_retries: int = 4, backoff: float = 1.0,
                 max_reply_bytes: int = 16 * 2 ** 20):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise UserError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise UserError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self.base_url = base_url.rstrip("/")
        self.model, self.api_key_env = model, api_key_env
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.max_reply_bytes = max_reply_bytes
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
        reply = None if data is _MALFORMED else reply_text(data)
        if reply is None:
            self.n_malformed += 1
        return reply

    def _key(self) -> str | None:
        """The API key from the environment; a UserError (without the key) if it cannot be a header."""
        key = os.environ.get(self.api_key_env, "").strip()
        if key and not (key.isascii() and key.isprintable() and " " not in key):
            raise UserError(f"the API key in ${self.api_key_env} contains spaces, control or non-ASCII "
                            "characters; it was not sent")
        return key or None

    def _post(self, payload: dict) -> Any:
        """POST ``payload`` with retries; the decoded JSON reply, ``_MALFORMED`` when it is not JSON."""
        key = self._key()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = "Bearer " + key

        def fail(msg: str) -> ChatClientError:
            msg = f"{self.url}: {msg}"
            return ChatClientError(msg.replace(key, "<API key>") if key else msg)

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
                # The status line only: an error body can be huge, and is never read.
                last = f"HTTP {e.code} {_short(e.reason, 80)}"
                location = e.headers.get("Location") if e.headers is not None else None
                e.close()
                if 300 <= e.code < 400:
                    where = f"a redirect to {_short(location, 200)}" if location else "a redirect"
                    raise fail(f"the endpoint answered {last} with {where}, which was not followed "
                               "(the API key goes to the configured endpoint only; set base_url to "
                               "the final address)") from None
                if e.code == 429 or e.code >= 500:
                    continue
                raise fail(last) from None
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError,
                    OSError) as e:
                last = f"{type(e).__name__}: {_short(getattr(e, 'reason', e), 120)}"
                continue
            if raw is None:
                return _MALFORMED  # over max_reply_bytes
            try:
                return json.loads(raw)
            except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
                return _MALFORMED
        raise fail(f"gave up after {self.max_retries + 1} attempts ({last})")

    def _send(self, body: bytes, headers: dict[str, str]) -> bytes | None:
        """One HTTP request: POST ``body`` to :attr:`url`; the response body, None if too big.

        Redirects are not followed (they raise ``HTTPError``). Raises what ``urllib`` raises;
        :meth:`_post` decides what is retried.
        """
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        opener = urllib.request.build_opener(_NoRedirect)  # the default handlers, less redirects
        with opener.open(req, timeout=self.timeout) as r:
            raw = r.read(self.max_reply_bytes + 1)
        return None if len(raw) > self.max_reply_bytes else raw
