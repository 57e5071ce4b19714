"""Ollama-compatible routes: /api/generate and /api/chat (NDJSON streams by default), /api/tags, /api/show,
/api/ps, /api/version. Durations are in nanoseconds, as Ollama reports them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from .. import __version__
from .errors import ApiError, stream_error_line
from .schemas import OllamaChatRequest, OllamaGenerateRequest, OllamaShowRequest
from .service import JSON_HINT, Outcome, Service, TokenStream

NDJSON = "application/x-ndjson"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _stats(out: Outcome) -> dict:
    t = out.timings
    ns = lambda s: int(s * 1e9)  # noqa: E731
    total = (out.ended or out.started) - out.started
    return {"done_reason": "stop" if out.finish_reason in ("stop", "cancelled") else "length",
            "total_duration": ns(total), "load_duration": ns(t.queue_seconds) if t else 0,
            "prompt_eval_count": out.prompt_tokens, "prompt_eval_duration": ns(t.prompt_seconds) if t else 0,
            "eval_count": out.completion_tokens, "eval_duration": ns(t.decode_seconds) if t else 0}


def router(service: Service) -> APIRouter:
    r = APIRouter()

    def details() -> dict:
        d = service.lm.details
        quant = service.lm.source.rsplit(".", 2)[-2] if d["format"] == "gguf" else d["dtype"]
        size = d["parameter_count"]
        return {"parent_model": "", "format": d["format"], "family": d["family"], "families": [d["family"]],
                "parameter_size": f"{size / 1e9:.1f}B" if size >= 1e9 else f"{size / 1e6:.0f}M",
                "quantization_level": quant}

    def entry() -> dict:
        name = f"{service.model_name}:latest"
        return {"name": name, "model": name, "modified_at": _now(), "size": service.lm.details["parameter_count"],
                "digest": f"compactkv-{service.config.k}-{service.config.v}", "details": details()}

    def options(body) -> dict:
        if body.format not in (None, "", "json"):
            raise ApiError(400, "format: JSON schemas are not supported; use \"json\"")
        o = body.options
        if o is not None and o.num_predict is not None and (o.num_predict == 0 or o.num_predict < -2):
            raise ApiError(400, f"num_predict must be positive, -1 (no limit) or -2 (fill the context), "
                                f"got {o.num_predict}")
        if o is None:
            return {}
        limit = o.num_predict if o.num_predict and o.num_predict > 0 else None
        if o.num_predict in (-1, -2):
            limit = 1 << 30  # up to the context
        return {"max_tokens": limit, "temperature": o.temperature, "top_p": o.top_p, "top_k": o.top_k,
                "seed": o.seed, "stop": o.stop, "num_ctx": o.num_ctx}

    def start(body, ids: list[int]) -> TokenStream:
        opts = options(body)
        return service.submit(ids, service.sampling(len(ids), **{k: opts.get(k) for k in (
            "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "num_ctx")}))

    async def respond(stream: TokenStream, body, request: Request, shape):
        if body.stream:
            return StreamingResponse(_ndjson(stream, shape), media_type=NDJSON)
        out = await service.run_to_end(stream, request.is_disconnected)
        if out is None:
            return Response(status_code=499)
        return shape(out.text, out)

    @r.post("/api/generate")
    async def generate(body: OllamaGenerateRequest, request: Request):
        service.check_model(body.model)
        if body.images:
            raise ApiError(400, "images are not supported by this model")
        if body.template or body.suffix:
            raise ApiError(400, "custom templates and suffix are not supported")
        if not body.prompt and not body.context:
            return {"model": body.model, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
        if body.raw:
            ids = service.text_ids(body.prompt)
        else:
            messages = ([{"role": "system", "content": body.system}] if body.system else [])
            ids = service.chat_ids(messages + [{"role": "user", "content": body.prompt}], body.format == "json")
        ids = list(body.context or []) + ids
        stream = start(body, ids)

        def shape(text: str, out: Outcome | None) -> dict:
            obj = {"model": body.model, "created_at": _now(), "response": text, "done": out is not None}
            if out is not None:
                obj |= _stats(out) | {"context": ids + out.output_ids}
            return obj
        return await respond(stream, body, request, shape)

    @r.post("/api/chat")
    async def chat(body: OllamaChatRequest, request: Request):
        service.check_model(body.model)
        if body.tools:
            raise ApiError(400, "tools are not supported by this server")
        if any(m.images for m in body.messages):
            raise ApiError(400, "images are not supported by this model")
        if not body.messages:
            return {"model": body.model, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                    "done": True, "done_reason": "load"}
        ids = service.chat_ids([{"role": m.role, "content": m.content} for m in body.messages],
                               body.format == "json")
        stream = start(body, ids)

        def shape(text: str, out: Outcome | None) -> dict:
            obj = {"model": body.model, "created_at": _now(), "message": {"role": "assistant", "content": text},
                   "done": out is not None}
            return obj | _stats(out) if out is not None else obj
        return await respond(stream, body, request, shape)

    @r.get("/api/tags")
    async def tags():
        service.require_ready()
        return {"models": [entry()]}

    @r.post("/api/show")
    async def show(body: OllamaShowRequest):
        service.check_model(body.model or body.name or "")
        cfg = service.lm.model.config
        info = {"general.architecture": cfg.model_type, "general.parameter_count": service.lm.details["parameter_count"],
                f"{cfg.model_type}.context_length": service.context_length,
                "compactkv.k": service.config.k, "compactkv.v": service.config.v,
                "compactkv.policy": json.dumps(service.config.policy)}
        template = getattr(service.lm.tokenizer, "chat_template", None) or ""
        return {"modelfile": f"FROM {service.lm.source}\n", "parameters": f"num_ctx {service.context_length}",
                "template": template, "details": details(), "model_info": info, "capabilities": ["completion"],
                "modified_at": _now()}

    @r.get("/api/ps")
    async def ps():
        service.require_ready()
        expires = (datetime.now(timezone.utc) + timedelta(days=3650)).isoformat().replace("+00:00", "Z")
        return {"models": [entry() | {"expires_at": expires, "size_vram": 0,
                                      "context_length": service.context_length}]}

    @r.get("/api/version")
    async def version():
        return {"version": __version__}

    return r


async def _ndjson(stream: TokenStream, shape):
    """NDJSON lines of one stream: one object per text delta, then the final object with the statistics."""
    try:
        async for kind, payload in stream.events():
            if kind == "token":
                if payload.text:
                    yield json.dumps(shape(payload.text, None)) + "\n"
            else:
                yield json.dumps(shape("", payload)) + "\n"
    except RuntimeError as e:
        yield stream_error_line("/api/", str(e)) + "\n"
    finally:
        stream.cancel()
