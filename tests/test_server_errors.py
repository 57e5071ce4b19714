"""Error cases, API keys, /health while loading, and SIGTERM, on a live server started with --api-key.

Every bad request must get its documented 4xx and protocol-shaped body, and the server must answer the next one.
The SIGTERM test runs last: it stops this module's server.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import ollama
import openai
import pytest

from test_server_support import MODEL, needs_model, start_server

pytestmark = [needs_model, pytest.mark.slow]
KEY = "sk-test-123"
LONG = "word " * 400  # beyond the 256-token context


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "errors", ["--ctx-size", "256", "--threads", "1",
                                                    "--shutdown-timeout", "3"], api_key=KEY)
    try:
        srv.wait_listening()
        srv.while_loading = (httpx.get(srv.url + "/health").status_code,
                             httpx.get(srv.url + "/v1/models", headers=srv.headers).status_code)
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_health_is_503_while_loading_then_ok(server):
    assert server.while_loading == (503, 503)
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_api_key_is_required_everywhere_but_health(server):
    for path in ("/v1/models", "/api/tags", "/metrics"):
        r = httpx.get(server.url + path)
        assert r.status_code == 401, path
        assert httpx.get(server.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(server.url + path, headers=server.headers).status_code == 200
    assert httpx.get(server.url + "/v1/models").json()["error"]["code"] == "invalid_api_key"
    assert isinstance(httpx.get(server.url + "/api/tags").json()["error"], str)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0).models.list().data[0].id == MODEL
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=server.url).list()
    assert err.value.status_code == 401
    assert ollama.Client(host=server.url, headers=server.headers).list().models


CHAT = "/v1/chat/completions"
OK_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
GEN = "/api/generate"
OK_GEN = {"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
CASES = [  # (path, body: dict merged over the good one, or raw text; status; OpenAI param/code or Ollama message part)
    (CHAT, '{"model": ', 400, "malformed JSON"),
    (CHAT, {"temperature": "hot"}, 400, "temperature"),
    (CHAT, {"messages": "Hi"}, 400, "messages"),
    (CHAT, {"messages": []}, 400, "messages"),
    (CHAT, {"messages": [{"role": "wizard", "content": "Hi"}]}, 400, "messages.0.role"),
    (CHAT, {"model": None}, 400, "model"),
    (CHAT, {"model": "gpt-9"}, 404, "model_not_found"),
    (CHAT, {"messages": [{"role": "user", "content": LONG}]}, 400, "context_length_exceeded"),
    (CHAT, {"max_tokens": 0}, 400, "max_tokens"),
    (CHAT, {"max_completion_tokens": -3}, 400, "max_tokens"),
    (CHAT, {"n": 2}, 400, "unsupported_value"),
    (CHAT, {"temperature": 5}, 400, "temperature"),
    (CHAT, {"top_p": 0}, 400, "top_p"),
    (CHAT, {"stop": ["", "x"]}, 400, "stop"),
    (CHAT, {"presence_penalty": 1.0}, 400, "unsupported_value"),
    (CHAT, {"response_format": {"type": "json_schema"}}, 400, "unsupported_value"),
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "unsupported_value"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "unsupported_value"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "unsupported_value"),
    ("/v1/completions", {"prompt": "a", "suffix": "z"}, 400, "unsupported_value"),
    ("/v1/completions", {"prompt": "a", "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": LONG}, 400, "context_length_exceeded"),
    ("/v1/completions", {"prompt": [1, 2, 10 ** 9]}, 400, "token ids"),
    ("/v1/nowhere", {}, 404, None),
    (GEN, "{not json", 400, "malformed JSON"),
    (GEN, {"model": "llama9:70b"}, 404, "not found"),
    (GEN, {"options": {"num_predict": 0}}, 400, "num_predict"),
    (GEN, {"options": {"temperature": "x"}}, 400, "temperature"),
    (GEN, {"options": {"num_ctx": 100000}}, 400, "num_ctx"),
    (GEN, {"prompt": LONG}, 400, "context holds"),
    (GEN, {"images": ["aGk="]}, 400, "images"),
    (GEN, {"format": {"type": "object"}}, 400, "format"),
    (GEN, {"stream": "no"}, 400, "stream"),
    (GEN, {"context": [1, -5]}, 400, "token ids"),
    ("/api/chat", {"messages": "Hi"}, 400, "messages"),
    ("/api/chat", {"messages": [{"role": "user", "content": "Hi"}], "tools": [{"type": "function"}]}, 400, "tools"),
    ("/api/show", {"model": "nope"}, 404, "not found"),
    ("/api/nowhere", {}, 404, "no such endpoint"),
]


@pytest.mark.parametrize("path, body, status, expect", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_requests_get_documented_errors_and_the_server_goes_on(server, path, body, status, expect):
    if isinstance(body, dict):
        base = OK_CHAT if path.startswith("/v1/chat") else {"model": MODEL, "max_tokens": 2} \
            if path.startswith("/v1/") else OK_GEN if path == GEN else {"model": MODEL}
        body = json.dumps({k: v for k, v in {**base, **body}.items() if v is not None})
    r = httpx.post(server.url + path, content=body, headers=server.headers, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if path.startswith("/api/"):
        assert isinstance(err, str) and (expect is None or expect in err), err
    else:
        assert set(err) >= {"message", "type", "param", "code"} and err["message"]
        assert expect is None or any(expect in (s or "") for s in (err["param"], err["code"], err["message"])), err
    assert httpx.get(server.url + "/v1/models", headers=server.headers).status_code == 200


def test_wrong_method_and_then_a_real_generation(server):
    assert httpx.get(server.url + CHAT, headers=server.headers).status_code == 405
    r = httpx.post(server.url + CHAT, json={**OK_CHAT, "response_format": {"type": "json_object"}},
                   headers=server.headers, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["usage"]["completion_tokens"] == 2 or out["choices"][0]["finish_reason"] == "stop"
    m = server.metrics()
    assert m['compactkv_requests_total{endpoint="/v1/chat/completions",status="400"}'] >= 10


def test_sigterm_ends_in_flight_streams_cleanly_and_exits(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 200,
            "temperature": 0.7, "seed": 1234, "stream": True}  # seeded: an unseeded sample once ended (EOS) first
    lines, first = [], threading.Event()

    def read():
        with httpx.stream("POST", server.url + CHAT, json=body, headers=server.headers, timeout=120) as r:
            for line in r.iter_lines():
                lines.append(line)
                if '"content"' in line:
                    first.set()
    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(120), server.log()
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    reader.join(60)
    events = [line[6:] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]", lines[-5:]
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    server.proc.wait(30)
    assert time.monotonic() - sent < 30
    assert "Application shutdown complete" in server.log()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/health", timeout=2)
