"""The live server on the real default model, through the real `openai` and `ollama` Python clients.

One server (turbo4 K/V, context 512 tokens) serves the whole module; generations are kept to a few tokens.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import ollama
import openai
import pytest

from test_server_support import MODEL, needs_model, start_server

pytestmark = [needs_model, pytest.mark.slow]
GREEDY = {"temperature": 0, "max_tokens": 6}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "live", ["--ctx-size", "512", "--parallel", "8", "--threads", "1",
                                                  "--prefill-chunk", "128"])
    try:
        srv.wait_listening()
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def oll(server):
    return ollama.Client(host=server.url, timeout=300)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from compactkv.engine.model_files import default_gguf_path

    path = default_gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_discovery_endpoints(server, oai, oll):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert [m.id for m in oai.models.list()] == [MODEL]
    assert oai.models.retrieve(MODEL).id == MODEL
    assert [m.model for m in oll.list().models] == [f"{MODEL}:latest"]
    shown = oll.show(MODEL)
    assert shown.details.family == "llama" and shown.details.quantization_level == "Q4_1"
    assert shown.modelinfo["compactkv.k"] == "turbo4"
    assert oll.ps().models[0].context_length == 512
    assert httpx.get(server.url + "/api/version").json()["version"]


def test_openai_chat_usage_is_exact_and_stream_matches(oai, tokenizer):
    messages = chat("Name a colour.")
    resp = oai.chat.completions.create(model=MODEL, messages=messages, **GREEDY, extra_body={"cache_prompt": False})
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert resp.usage.prompt_tokens == len(prompt_ids)
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    n = resp.usage.completion_tokens
    assert (choice.finish_reason, n) == ("length", 6) or (choice.finish_reason == "stop" and 0 < n < 6)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + n
    timings = resp.model_extra["timings"]
    assert timings["predicted_n"] == n and timings["prompt_n"] + timings["cache_n"] == len(prompt_ids)

    chunks = list(oai.chat.completions.create(model=MODEL, messages=messages, **GREEDY, stream=True,
                                              stream_options={"include_usage": True},
                                              extra_body={"cache_prompt": False}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n
    assert chunks[-1].usage.prompt_tokens == len(prompt_ids)


def test_openai_completion_stream_stop_and_logprobs(oai):
    resp = oai.completions.create(model=MODEL, prompt="One, two, three,", logprobs=2, **GREEDY)
    choice = resp.choices[0]
    assert choice.text and len(choice.logprobs.tokens) == resp.usage.completion_tokens
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
    streamed = "".join(c.choices[0].text for c in oai.completions.create(
        model=MODEL, prompt="One, two, three,", stream=True, **GREEDY))
    assert streamed == choice.text
    stop = choice.text.strip()[:2]
    cut = oai.completions.create(model=MODEL, prompt="One, two, three,", stop=[stop], **GREEDY)
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].text
    lp = oai.chat.completions.create(model=MODEL, messages=chat("Hi"), logprobs=True, top_logprobs=2, **GREEDY)
    tokens = lp.choices[0].logprobs.content
    assert len(tokens) == lp.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in tokens)


def test_ollama_generate_and_chat(oll):
    opts = {"temperature": 0, "num_predict": 5, "seed": 1}
    gen = oll.generate(model=MODEL, prompt="Say hello.", options=opts)
    assert gen.done and gen.response and gen.eval_count and gen.eval_count <= 5
    assert gen.prompt_eval_count > 5 and gen.total_duration >= gen.eval_duration > 0
    assert gen.done_reason in ("stop", "length") and len(gen.context) == gen.prompt_eval_count + gen.eval_count
    parts = list(oll.generate(model=MODEL, prompt="Say hello.", options=opts, stream=True))
    assert "".join(p.response for p in parts) == gen.response and parts[-1].done and not parts[0].done
    reply = oll.chat(model=MODEL, messages=chat("Say hello."), options=opts)
    assert reply.message.role == "assistant" and reply.message.content == gen.response
    streamed = list(oll.chat(model=MODEL, messages=chat("Say hello."), options=opts, stream=True))
    assert "".join(p.message.content for p in streamed) == reply.message.content
    assert streamed[-1].eval_count == reply.eval_count and streamed[-1].prompt_eval_duration > 0


def test_eight_concurrent_streams_complete_independently(server, oai):
    prompts = [f"Write a word that rhymes with {w}." for w in
               ("cat", "dog", "sun", "tree", "car", "moon", "fish", "rain")]
    kw = dict(model=MODEL, **GREEDY, extra_body={"cache_prompt": False})
    expected = [oai.chat.completions.create(messages=chat(p), **kw).choices[0].message.content for p in prompts]
    results, spans, errors = [None] * 8, [None] * 8, []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            start = time.perf_counter()
            first = None
            text = ""
            for c in oai.chat.completions.create(messages=chat(prompts[i]), stream=True, **kw):
                if c.choices and c.choices[0].delta.content:
                    first = first or time.perf_counter()
                    text += c.choices[0].delta.content
            results[i], spans[i] = text, (start, first, time.perf_counter())
        except Exception as e:  # reported below with the request index
            errors.append((i, e))
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    assert results == expected
    assert max(s[1] for s in spans) < min(s[2] for s in spans), "streams should overlap (all start before any ends)"
    m = server.metrics()
    assert m['compactkv_kv_bytes{pool="active"}'] == 0 and m["compactkv_active_requests"] == 0


def test_disconnect_stops_generation_and_frees_the_cache(server):
    body = {"model": MODEL, "messages": chat("Tell me a very long story."), "max_tokens": 400, "stream": True,
            "temperature": 0.7}
    cancelled = server.metrics()["compactkv_cancelled_total"]
    with httpx.Client(timeout=120) as client:
        with client.stream("POST", server.url + "/v1/chat/completions", json=body) as resp:
            lines = resp.iter_lines()
            seen = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in seen)
            during = server.metrics()
    assert during['compactkv_kv_bytes{pool="active"}'] > 0
    assert during['compactkv_kv_bytes{pool="active"}'] <= during['compactkv_kv_fp16_equivalent_bytes{pool="active"}']
    # A non-streamed request abandoned by its client: the greedy answer runs to hundreds of tokens (seconds of
    # decode on a CPU core), far past the 0.5 s client timeout.
    story = "Write a long story about a dragon who learns to count to a thousand."
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": story, "stream": False,
                                                       "options": {"num_predict": 400, "temperature": 0}},
                   timeout=0.5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = server.metrics()
        if m['compactkv_kv_bytes{pool="active"}'] == 0 and m["compactkv_active_requests"] == 0:
            break
        time.sleep(0.25)
    assert m['compactkv_kv_bytes{pool="active"}'] == 0 and m["compactkv_active_requests"] == 0
    assert m["compactkv_cancelled_total"] == cancelled + 2  # both stopped early, not run to their end


def test_second_turn_reuses_the_compressed_prefix(oai):
    system = "You are a careful assistant. " + " ".join(f"Rule {i}: answer briefly and politely." for i in range(30))
    turn1 = [{"role": "system", "content": system}, {"role": "user", "content": "What is the sky's colour?"}]

    def ask(messages):
        start, first = time.perf_counter(), None
        text, usage, timings = "", None, None
        for c in oai.chat.completions.create(model=MODEL, messages=messages, stream=True, **GREEDY,
                                             stream_options={"include_usage": True}):
            if c.choices and c.choices[0].delta.content:
                first = first or time.perf_counter()
                text += c.choices[0].delta.content
            usage = c.usage or usage
            timings = (c.model_extra or {}).get("timings") or timings
        return text, first - start, usage, timings
    text1, _, usage1, t1 = ask(turn1)
    assert t1["cache_n"] < 16
    turn2 = turn1 + [{"role": "assistant", "content": text1}, {"role": "user", "content": "And the grass?"}]
    _, _, usage2, t2 = ask(turn2)
    assert t2["cache_n"] >= usage1.prompt_tokens - 1
    assert usage2.prompt_tokens_details.cached_tokens == t2["cache_n"]
    assert t2["prompt_n"] + t2["cache_n"] == usage2.prompt_tokens
    # the reuse shows in the token counts above; prompt_ms / TTFT are timings, which belong in benchmarks


def test_metrics_report_requests_tokens_and_kv_bytes(server, oai):
    # a prompt longer than the cache's fp16 tokens (4 sinks + 128 recent), so the prefix pool holds compressed rows
    # whatever ran before this test
    long = "Summarize: " + " ".join(f"item {i} is blue." for i in range(60))
    oai.chat.completions.create(model=MODEL, messages=chat(long), **GREEDY)
    m = server.metrics()
    assert m['compactkv_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 1
    assert m["compactkv_prompt_tokens_total"] > 0 and m["compactkv_completion_tokens_total"] > 0
    assert m["compactkv_time_to_first_token_seconds_count"] >= 1
    assert 0 < m['compactkv_kv_bytes{pool="prefix"}'] < m['compactkv_kv_fp16_equivalent_bytes{pool="prefix"}']
    assert m["compactkv_queue_depth"] == 0 and m["compactkv_model_load_seconds"] > 0
    assert m["compactkv_warmup_seconds"] > 0  # the load-time sequence ran (and counted no request or token)


def test_stream_body_framing_is_sse_and_ndjson(server):
    body = {"model": MODEL, "messages": chat("Hi"), **GREEDY, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"][0]["finish_reason"]
    body = {"model": MODEL, "messages": chat("Hi"), "options": {"num_predict": 3, "temperature": 0}}
    with httpx.stream("POST", server.url + "/api/chat", content=json.dumps(body), timeout=120) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        objs = [json.loads(line) for line in r.iter_lines() if line]
    assert objs[-1]["done"] is True and all(o["done"] is False for o in objs[:-1])
