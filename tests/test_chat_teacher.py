"""ChatClient, ChatTeacher and ChatJudge against a real HTTP server on loopback that speaks chat-completions."""
import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vlkit import data
from vlkit.chat_client import ChatClient, ChatClientError
from vlkit.chat_teacher import ChatTeacher
from vlkit.errors import ServiceError, UserError
from vlkit.teacher import make_teacher

KEY = "sk-test-SECRET-0123456789"
CONTEXT = "A red circle and a blue square.\n\nred circle: [0.1, 0.1, 0.3, 0.3]\nblue square: [0.6, 0.6, 0.9, 0.9]\n"
GOOD = {
    "conversation": "Question: What colour is the circle?\nAnswer: The circle is red.\n"
                    "Question: Where is the square?\nAnswer: At the bottom right.",
    "detail": "A red circle sits at the top left and a blue square at the bottom right of a dark image.",
    "reasoning": "Question: Which object is closer to the top?\nAnswer: The red circle, since it is at the top left.",
}


def completion(content):
    return {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


class Server:
    """Replies from a script: each item is (status, body or callable(request) -> body, delay)."""

    def __init__(self):
        self.script, self.requests = [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, reply, delay = outer.script.pop(0) if outer.script else (200, None, 0)
                if reply is None:  # default: a good reply for whatever kind was asked
                    kind = next(k for k, p in _SYSTEM.items() if p == body["messages"][0]["content"])
                    reply = completion(GOOD[kind])
                time.sleep(delay)
                raw = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


from vlkit.chat_teacher import SYSTEM_PROMPTS as _SYSTEM  # noqa: E402


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def teacher(server, monkeypatch):
    monkeypatch.setenv("VLKIT_TEST_KEY", KEY)
    return ChatTeacher(ChatClient(server.url, "tiny-model", api_key_env="VLKIT_TEST_KEY",
                                  timeout=2, max_retries=2, backoff=0.01))


@pytest.mark.parametrize("kind", ["conversation", "detail", "reasoning"])
def test_good_reply_becomes_turns(server, teacher, kind):
    turns = teacher.generate(CONTEXT, kind)
    assert turns and [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    if kind == "conversation":
        assert turns[1]["value"] == "The circle is red." and len(turns) == 4
    req = server.requests[-1]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    msgs = req["body"]["messages"]
    assert req["body"]["model"] == "tiny-model"
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]  # few-shot pair
    assert msgs[-1]["content"] == CONTEXT


def test_server_error_then_success_is_retried(server, teacher):
    server.script = [(500, {"error": "boom"}, 0), (200, None, 0)]
    assert teacher.generate(CONTEXT, "detail")
    assert teacher.n_retries == 1 and teacher.n_requests == 2 and teacher.n_malformed == 0


def test_timeout_is_retried(server, monkeypatch):
    monkeypatch.setenv("VLKIT_TEST_KEY", KEY)
    t = ChatTeacher(ChatClient(server.url, "m", api_key_env="VLKIT_TEST_KEY", timeout=0.3, max_retries=1, backoff=0.01))
    server.script = [(200, completion(GOOD["detail"]), 0.8)]
    assert t.generate(CONTEXT, "detail")
    assert t.n_retries == 1


@pytest.mark.parametrize("reply", [
    completion("Sure! Here is a conversation about the image."),   # no Question/Answer format
    completion("Question: What is it?\nAnswer:"),                   # empty answer
    completion("Question: What?\nQuestion: Why?\nAnswer: Yes."),      # unpaired question
    {"choices": []},                                                # no choice
    b"<html>not json</html>",                                       # not JSON
])
def test_malformed_reply_is_skipped_and_counted(server, teacher, reply):
    server.script = [(200, reply, 0)]
    assert teacher.generate(CONTEXT, "conversation") is None
    assert teacher.n_malformed == 1


def test_key_never_leaks(server, teacher):
    server.script = [(500, {}, 0)] * 3
    with pytest.raises(ChatClientError) as e:
        teacher.generate(CONTEXT, "detail")
    assert "gave up after 3 attempts" in str(e.value) and KEY not in str(e.value)
    server.script = [(401, {"error": "bad key"}, 0)]
    with pytest.raises(ChatClientError) as e:
        teacher.generate(CONTEXT, "detail")
    assert "401" in str(e.value) and KEY not in str(e.value)
    assert KEY not in repr(teacher) and KEY not in str(vars(teacher))


def test_unknown_teacher_and_missing_endpoint():
    with pytest.raises(ValueError, match="unknown teacher"):
        make_teacher("gpt5")
    with pytest.raises(ValueError, match="base_url"):
        make_teacher("chat", model="m")


def test_dataset_with_chat_teacher_skips_malformed(server, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.script = [(200, completion("no format here"), 0), (200, None, 0), (500, {}, 0)]
    cfg = data.DataConfig(profile="test", n_images=4, teacher="chat", base_url=server.url,
                          model="m", samples_per_image=1, val_frac=0, test_frac=0, write_hf=False)
    t = make_teacher("chat", 0, base_url=server.url, model="m", backoff=0.01)
    stats = data.generate_dataset(tmp_path / "d", cfg, progress=False, teacher=t)
    recs = data.load_llava_json(tmp_path / "d" / "llava_instruct.json")
    assert stats["n_skipped_malformed"] == 1 and len(recs) == 3 == stats["records"]
    assert all("no format here" not in json.dumps(r) for r in recs)
    assert KEY not in (tmp_path / "d" / "stats.json").read_text()


def test_client_returns_the_reply_text_or_none_for_a_malformed_reply(server, monkeypatch):
    client = ChatClient(server.url + "/", "m", api_key_env="VLKIT_TEST_KEY", max_retries=0)
    monkeypatch.setenv("VLKIT_TEST_KEY", KEY)  # read when the request is made, not when the client is built
    server.script = [(200, completion("hello"), 0), (200, b"not json", 0), (200, completion(None), 0),
                     (200, {"choices": [{"message": {"content": 7}}]}, 0), (200, [1, 2], 0)]
    assert client.complete([{"role": "user", "content": "hi"}], temperature=0.2, max_tokens=5) == "hello"
    req = server.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["headers"]["Authorization"] == f"Bearer {KEY}"
    assert req["body"] == {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                           "temperature": 0.2, "max_tokens": 5}
    assert [client.complete([]) for _ in range(4)] == [None] * 4
    assert client.n_malformed == 4 and client.n_requests == 5 and client.n_retries == 0
    monkeypatch.delenv("VLKIT_TEST_KEY")
    server.script = [(200, completion("no key"), 0)]
    assert client.complete([]) == "no key" and "Authorization" not in server.requests[-1]["headers"]
    assert KEY not in repr(client) and KEY not in str(vars(client))


def test_client_makes_each_request_through_one_method(server, monkeypatch):
    # The HTTP request is one private method (a later change adds redirect handling there);
    # the retry loop around it counts one request per call.
    client = ChatClient(server.url, "m", max_retries=2, backoff=0.01)
    calls = []
    send = ChatClient._send
    monkeypatch.setattr(ChatClient, "_send", lambda self, body, headers: calls.append(1) or send(self, body, headers))
    server.script = [(503, {}, 0), (429, {}, 0), (200, completion("ok"), 0)]
    assert client.complete([]) == "ok"
    assert len(calls) == client.n_requests == 3 and client.n_retries == 2


def test_client_refuses_a_bad_endpoint():
    with pytest.raises(ValueError, match="base_url must start with http"):
        ChatClient("localhost:8000", "m")


def test_cli_chat_teacher_and_chat_judge_build_a_client(server, monkeypatch, tmp_path, capsys):
    from vlkit import cli
    monkeypatch.setenv("VLKIT_TEST_KEY", KEY)
    ctx = tmp_path / "scene.txt"
    ctx.write_text(CONTEXT)
    assert cli.main(["data", "from-context", str(ctx), "--kind", "conversation", "--teacher", "chat",
                     "--base-url", server.url, "--model", "m", "--api-key-env", "VLKIT_TEST_KEY"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["conversations"][0]["value"] == "<image>\nWhat colour is the circle?"
    assert server.requests[-1]["body"]["temperature"] == 0.7
    q, a = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    q.write_text(json.dumps({"question_id": 1, "text": "What colour is the circle?", "category": "conv",
                             "context": CONTEXT, "reference": "The circle is red."}) + "\n")
    a.write_text(json.dumps({"question_id": 1, "text": "It is red."}) + "\n")
    server.script = [(200, completion("8 6\nAssistant 1 is more precise."), 0)]
    assert cli.main(["eval", "llava-bench", "--questions", str(q), "--answers", str(a), "--judge", "chat",
                     "--base-url", server.url, "--model", "judge", "--api-key-env", "VLKIT_TEST_KEY", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["overall"]["relative"] == pytest.approx(75.0) and scores["malformed"] == 0
    body = server.requests[-1]["body"]
    assert body["model"] == "judge" and body["temperature"] == 0.0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert server.requests[-1]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert cli.main(["eval", "llava-bench", "--questions", str(q), "--answers", str(a), "--judge", "chat"]) == 2
    assert "base_url" in capsys.readouterr().err


# ------------------------------------------------------------------ redirects and out-of-schema replies

SECRET = "sk-test-secret"


class Recorder:
    """A loopback server that records every request (any method) and answers with ``respond``.

    ``respond(request) -> (status, headers, body bytes)``; ``requests`` holds
    ``{"method", "path", "headers", "body"}`` for each request received.
    """

    def __init__(self, respond):
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                req = {"method": self.command, "path": self.path, "headers": dict(self.headers),
                       "body": self.rfile.read(n) if n else b""}
                outer.requests.append(req)
                status, headers, raw = respond(req)
                try:
                    if isinstance(status, tuple):  # (code, reason phrase)
                        self.send_response(*status)
                    else:
                        self.send_response(status)
                    for k, v in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _any

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@contextlib.contextmanager
def running_servers():
    """``start(respond)`` starts a :class:`Recorder` on 127.0.0.1; all are shut down on exit."""
    started = []

    def start(respond):
        started.append(Recorder(respond))
        return started[-1]

    try:
        yield start
    finally:
        for s in started:
            s.close()


@pytest.fixture
def loopback():
    with running_servers() as start:
        yield start


def json_reply(obj, status=200):
    return lambda req: (status, {}, obj if isinstance(obj, bytes) else json.dumps(obj).encode())


def redirect_to(url, code):
    return lambda req: (code, {"Location": url}, b'{"error": "moved"}')


@pytest.fixture
def other_host(loopback):
    """Server B: would accept anything and answer it as a good chat completion."""
    return loopback(json_reply(completion(GOOD["detail"])))


REDIRECTS = [301, 302, 303, 307, 308]


@pytest.mark.parametrize("code", REDIRECTS)
def test_redirect_is_not_followed_and_the_key_stays_with_the_endpoint(loopback, other_host, monkeypatch, code):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    target = other_host.url + "/v1/chat/completions"
    a = loopback(redirect_to(target, code))
    client = ChatClient(a.url + "/v1", "m", timeout=5, max_retries=2, backoff=0.01)
    with pytest.raises(ChatClientError) as e:
        client.complete([{"role": "user", "content": "hi"}])
    msg = str(e.value)
    assert isinstance(e.value, ServiceError)
    assert f"redirect to {target}" in msg and "not followed" in msg and f"HTTP {code}" in msg
    assert SECRET not in msg and "\n" not in msg
    assert other_host.requests == []  # no request, so no Authorization header, reached server B
    # The configured endpoint got the one POST (a redirect is not retried), with the key.
    assert [(r["method"], r["path"]) for r in a.requests] == [("POST", "/v1/chat/completions")]
    assert a.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert client.n_requests == 1 and client.n_retries == 0 and client.n_malformed == 0


@pytest.mark.parametrize("code", [302, 307])
def test_chat_teacher_on_a_redirecting_endpoint_raises(loopback, other_host, monkeypatch, code):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    a = loopback(redirect_to(other_host.url + "/v1/chat/completions", code))
    t = make_teacher("chat", 0, base_url=a.url + "/v1", model="m", timeout=5, backoff=0.01)
    with pytest.raises(ChatClientError, match=f"redirect to {other_host.url}/v1/chat/completions"):
        t.generate(CONTEXT, "detail")
    assert other_host.requests == [] and t.n_malformed == 0


def test_a_location_echoing_the_key_is_redacted(loopback, other_host, monkeypatch):
    # An endpoint that puts what it received into Location: the key must still not be printed.
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    a = loopback(lambda req: (302, {"Location": other_host.url + "/steal?auth=" + req["headers"]["Authorization"]
                                    .replace(" ", "+")}, b""))
    with pytest.raises(ChatClientError) as e:
        ChatClient(a.url, "m", timeout=5, max_retries=0).complete([])
    assert "/steal?auth=Bearer+<API key>" in str(e.value) and SECRET not in str(e.value)
    assert other_host.requests == []


def test_http_error_gives_a_short_status_line_without_body_or_key(loopback, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    huge = json.dumps({"error": "x" * 1_000_000}).encode()
    # A long reason phrase that echoes the Authorization header, and a 1 MB body.
    a = loopback(lambda req: ((400, "Bad Request " + req["headers"]["Authorization"] + " y" * 3000), {}, huge))
    with pytest.raises(ChatClientError) as e:
        ChatClient(a.url, "m", timeout=5, max_retries=3, backoff=0.01).complete([])
    msg = str(e.value)
    assert msg.startswith(f"{a.url}/v1/chat/completions: HTTP 400 Bad Request") and len(msg) < 200
    assert SECRET not in msg and "xxxx" not in msg and "\n" not in msg
    assert len(a.requests) == 1  # a 4xx is not retried


@pytest.mark.parametrize("key, sent", [(SECRET + "\n", SECRET), ("  " + SECRET + " ", SECRET)])
def test_key_is_trimmed_before_it_is_sent(loopback, monkeypatch, key, sent):
    monkeypatch.setenv("OPENAI_API_KEY", key)  # e.g. export OPENAI_API_KEY="$(cat key.txt)"
    a = loopback(json_reply(completion("ok")))
    assert ChatClient(a.url, "m", timeout=5, max_retries=0).complete([]) == "ok"
    assert a.requests[0]["headers"]["Authorization"] == f"Bearer {sent}"


@pytest.mark.parametrize("key", [SECRET + "\nX-Injected: 1", SECRET + "\r\nHost: evil", "sk-tést-secret"])
def test_a_key_that_cannot_be_a_header_is_refused_without_printing_it(loopback, monkeypatch, key):
    monkeypatch.setenv("OPENAI_API_KEY", key)
    a = loopback(json_reply(completion("ok")))
    with pytest.raises(UserError) as e:
        ChatClient(a.url, "m", timeout=5, max_retries=0).complete([])
    assert "OPENAI_API_KEY" in str(e.value) and "sk-t" not in str(e.value) and "secret" not in str(e.value)
    assert a.requests == []


OUT_OF_SCHEMA = {
    "not JSON": b"<html>502 Bad Gateway</html>",
    "not UTF-8": b'{"choices": "\xff\xfe"}',
    "JSON list": b"[1, 2]",
    "JSON string": b'"hello"',
    "JSON null": b"null",
    "nested too deep": b"[" * 100_000,
    "no choices": b'{"error": "overloaded"}',
    "empty choices": b'{"choices": []}',
    "choices not a list": b'{"choices": {"0": {"message": {"content": "hi"}}}}',
    "choice not an object": b'{"choices": ["hi"]}',
    "no message": b'{"choices": [{"text": "hi"}]}',
    "message a string": b'{"choices": [{"message": "hi"}]}',
    "content null": b'{"choices": [{"message": {"content": null}}]}',
    "content a number": b'{"choices": [{"message": {"content": 7}}]}',
    "content a list": b'{"choices": [{"message": {"content": [{"type": "text", "text": "hi"}]}}]}',
    "over max_reply_bytes": json.dumps(completion("A long reply. " * 200)).encode(),
}


@pytest.mark.parametrize("name", OUT_OF_SCHEMA)
def test_out_of_schema_reply_is_none_and_counted(loopback, monkeypatch, name):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    a = loopback(json_reply(OUT_OF_SCHEMA[name]))
    cap = {"max_reply_bytes": 2000} if name == "over max_reply_bytes" else {}
    client = ChatClient(a.url, "m", timeout=5, max_retries=2, backoff=0.01, **cap)
    assert client.complete([{"role": "user", "content": "hi"}]) is None
    assert client.n_malformed == 1 and client.n_requests == 1 and client.n_retries == 0  # not retried
    t = ChatTeacher(client)
    assert t.generate(CONTEXT, "detail") is None
    assert t.n_malformed == 1 and client.n_malformed == 2
