"""ChatTeacher against a real HTTP server on loopback that speaks chat-completions."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from vlkit import data
from vlkit.teacher import ChatTeacher, TeacherError, make_teacher

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


from vlkit.teacher import SYSTEM_PROMPTS as _SYSTEM  # noqa: E402


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def teacher(server, monkeypatch):
    monkeypatch.setenv("VLKIT_TEST_KEY", KEY)
    return ChatTeacher(server.url, "tiny-model", api_key_env="VLKIT_TEST_KEY",
                       timeout=2, max_retries=2, backoff=0.01)


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
    t = ChatTeacher(server.url, "m", api_key_env="VLKIT_TEST_KEY", timeout=0.3, max_retries=1, backoff=0.01)
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
    with pytest.raises(TeacherError) as e:
        teacher.generate(CONTEXT, "detail")
    assert "gave up after 3 attempts" in str(e.value) and KEY not in str(e.value)
    server.script = [(401, {"error": "bad key"}, 0)]
    with pytest.raises(TeacherError) as e:
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
