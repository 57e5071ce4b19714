"""OpenAI-compatible routes: /v1/chat/completions, /v1/completions (SSE streams ending in [DONE]), /v1/models."""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Request, Response
from sse_starlette.sse import EventSourceResponse

from .. import __version__
from .errors import ApiError, stream_error_line
from .schemas import ChatCompletionRequest, CompletionRequest
from .service import Outcome, Service, TokenStream

CLIENT_GONE = 499  # nginx's "client closed request": logged only, the client is not there to read it


def _reject_unsupported(body) -> None:
    if body.n != 1:
        raise ApiError(400, f"only n=1 is supported, got {body.n}", "n", "unsupported_value")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise ApiError(400, f"{name} is not supported (only 0)", name, "unsupported_value")
    if body.logit_bias:
        raise ApiError(400, "logit_bias is not supported", "logit_bias", "unsupported_value")


def _usage(out: Outcome) -> dict:
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
            "total_tokens": out.prompt_tokens + out.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": out.cached_tokens}}


def _timings(out: Outcome) -> dict | None:
    return out.timings.as_dict() if out.timings is not None else None


def _finish(out: Outcome) -> str:
    return "stop" if out.finish_reason in ("stop", "cancelled") else "length"


def router(service: Service) -> APIRouter:
    r = APIRouter()

    def fingerprint() -> str:
        c = service.config
        return f"compactkv-{__version__}-{c.k}-{c.v}"

    def model_card() -> dict:
        return {"id": service.model_name, "object": "model", "created": int(service.loaded_at or 0),
                "owned_by": "compactkv"}

    @r.get("/v1/models")
    async def list_models():
        service.require_ready()
        return {"object": "list", "data": [model_card()]}

    @r.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        service.check_model(model_id)
        return model_card()

    def chat_logprobs(out_tokens) -> dict:
        content = []
        for ev in out_tokens:
            tok = service.token_text(ev.token)
            content.append({"token": tok, "logprob": ev.logprob, "bytes": list(tok.encode()),
                            "top_logprobs": [{"token": service.token_text(i), "logprob": lp,
                                              "bytes": list(service.token_text(i).encode())}
                                             for i, lp in ev.top_logprobs]})
        return {"content": content}

    def text_logprobs(out_tokens, offset: int) -> dict:
        tokens, lps, tops, offsets = [], [], [], []
        for ev in out_tokens:
            tok = service.token_text(ev.token)
            tokens.append(tok)
            lps.append(ev.logprob)
            tops.append({service.token_text(i): lp for i, lp in ev.top_logprobs})
            offsets.append(offset)
            offset += len(ev.text)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

    @r.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request):
        service.check_model(body.model)
        _reject_unsupported(body)
        if body.tools:
            raise ApiError(400, "tools are not supported by this server", "tools", "unsupported_value")
        fmt = body.response_format.type if body.response_format else "text"
        if fmt not in ("text", "json_object"):
            raise ApiError(400, f"response_format {fmt!r} is not supported; accepted: text, json_object",
                           "response_format", "unsupported_value")
        messages = []
        for m in body.messages:
            content = m.content
            if isinstance(content, list):
                if any(p.type != "text" for p in content):
                    raise ApiError(400, "only text content parts are supported", "messages", "unsupported_value")
                content = "".join(p.text or "" for p in content)
            messages.append({"role": "system" if m.role == "developer" else m.role, "content": content or ""})
        ids = service.chat_ids(messages, json_mode=fmt == "json_object")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        top = body.top_logprobs or 0
        sampling = service.sampling(len(ids), max_tokens, body.temperature, body.top_p, body.top_k, body.seed,
                                    body.stop, logprobs=top if body.logprobs else None)
        stream = service.submit(ids, sampling, body.cache_prompt)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": service.model_name,
                "system_fingerprint": fingerprint()}
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventSourceResponse(_sse(stream, head, "chat.completion.chunk", usage, body.logprobs,
                                            chat_logprobs), sep="\n", ping=15)
        out = await service.run_to_end(stream, request.is_disconnected)
        if out is None:
            return Response(status_code=CLIENT_GONE)
        choice = {"index": 0, "message": {"role": "assistant", "content": out.text},
                  "logprobs": chat_logprobs(out.tokens) if body.logprobs else None, "finish_reason": _finish(out)}
        return {**head, "object": "chat.completion", "choices": [choice], "usage": _usage(out),
                "timings": _timings(out)}

    @r.post("/v1/completions")
    async def complete(body: CompletionRequest, request: Request):
        service.check_model(body.model)
        _reject_unsupported(body)
        if body.suffix:
            raise ApiError(400, "suffix is not supported", "suffix", "unsupported_value")
        if body.best_of not in (None, 1):
            raise ApiError(400, "only best_of=1 is supported", "best_of", "unsupported_value")
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ApiError(400, "only one prompt per request is supported", "prompt", "unsupported_value")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids, text = service.text_ids(prompt), prompt
        else:
            ids, text = list(prompt), service.lm.tokenizer.decode(prompt)
        if not ids:
            raise ApiError(400, "the prompt is empty", "prompt")
        sampling = service.sampling(len(ids), body.max_tokens, body.temperature, body.top_p, body.top_k, body.seed,
                                    body.stop, logprobs=body.logprobs)
        stream = service.submit(ids, sampling, body.cache_prompt)
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": service.model_name,
                "system_fingerprint": fingerprint()}
        echo = text if body.echo else ""
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return EventSourceResponse(_sse(stream, head, "text_completion", usage, body.logprobs is not None,
                                            lambda toks: text_logprobs(toks, 0), echo), sep="\n", ping=15)
        out = await service.run_to_end(stream, request.is_disconnected)
        if out is None:
            return Response(status_code=CLIENT_GONE)
        choice = {"index": 0, "text": echo + out.text, "finish_reason": _finish(out),
                  "logprobs": text_logprobs(out.tokens, len(echo)) if body.logprobs is not None else None}
        return {**head, "object": "text_completion", "choices": [choice], "usage": _usage(out),
                "timings": _timings(out)}

    return r


async def _sse(stream: TokenStream, head: dict, kind: str, include_usage: bool, want_logprobs: bool,
               logprobs_of, echo: str = ""):
    """SSE events of one stream: a chunk per text delta, a final chunk with finish_reason, usage, then [DONE]."""
    chat = kind == "chat.completion.chunk"
    extra = {"usage": None} if include_usage else {}

    def chunk(text: str | None, finish: str | None, tokens=(), role: bool = False) -> dict:
        if chat:
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text or ""}
        choice["logprobs"] = logprobs_of(tokens) if want_logprobs and tokens else None
        choice["finish_reason"] = finish
        return {"data": json.dumps({**head, "object": kind, "choices": [choice], **extra})}

    try:
        if chat:
            yield chunk("", None, role=True)
        elif echo:
            yield chunk(echo, None)
        async for event_kind, payload in stream.events():
            if event_kind == "token":
                if payload.text or want_logprobs:
                    yield chunk(payload.text, None, (payload,))
                continue
            out: Outcome = payload
            final = json.loads(chunk(None if chat else "", _finish(out))["data"])
            final["timings"] = _timings(out)
            yield {"data": json.dumps(final)}
            if include_usage:
                yield {"data": json.dumps({**head, "object": kind, "choices": [], "usage": _usage(out)})}
            yield {"data": "[DONE]"}
    except RuntimeError as e:
        yield {"data": stream_error_line("/v1", str(e))}
    finally:
        stream.cancel()
