"""The OpenAI-compatible HTTP API: models, chat completions, completions, health.

Routes only parse, check and format: generation happens on the engine's worker thread, and each
request waits for its events on an asyncio queue, so the event loop stays free for other clients.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..data.templates import generation_prompt_ids
from .dashboard import install_dashboard_and_api
from .engine import Engine, GenerationRequest
from .errors import (
    APIKeyMiddleware,
    BodyLimitMiddleware,
    OpenAIError,
    install_error_handlers,
    not_found_model,
)
from .registry import Registry, ServedModel
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    _Sampling,
    plain_messages,
    refuse_lone_surrogates,
    refuse_unsupported,
)

DEFAULT_CHAT_MAX_TOKENS = 2048  # when the client sets none: remaining context, but at most this
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
GREEDY_BELOW_TEMPERATURE = 1e-6  # logits / a smaller temperature can overflow to inf; the answer is greedy anyway


@dataclass
class Prepared:
    """A validated request, ready for the engine."""

    served: ServedModel
    prompt_ids: list[int]
    max_tokens: int
    body: _Sampling


def create_app(registry: Registry, engine: Engine, api_key: str | None = None, jobs=None, runs_dir: str | None = None) -> FastAPI:
    """The FastAPI app; `jobs` (a fine-tuning jobs service) adds the /v1/files and /v1/fine_tuning routes.

    The dashboard at `/` and the API it needs beyond OpenAI's (`/v1/runs` over `runs_dir` and the jobs'
    runs, `/v1/files/check`) come with it.
    """
    app = FastAPI(title="tunewright", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    if api_key:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.add_middleware(BodyLimitMiddleware)
    app.state.registry, app.state.engine = registry, engine

    @app.get("/health")
    async def health():
        alive = engine.is_alive()
        body = {"status": "ok" if alive else "engine stopped", "models": registry.ids(),
                "bases_in_memory": len(registry.groups), "queued": engine.queued, "running": engine.running,
                "steps": engine.steps}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [_model_card(registry.get(i)) for i in registry.ids()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        served = registry.get(model_id)
        if served is None:
            raise not_found_model(model_id)
        return _model_card(served)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        asked = body.max_completion_tokens or body.max_tokens
        return await _answer(registry, engine, body, request, _chat_prompt_ids, asked, DEFAULT_CHAT_MAX_TOKENS, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await _answer(registry, engine, body, request, _completion_prompt_ids, body.max_tokens,
                             DEFAULT_COMPLETION_MAX_TOKENS, chat=False)

    if jobs is not None:
        from .jobs_routes import add_routes

        add_routes(app, jobs)
    install_dashboard_and_api(app, registry, jobs, runs_dir, api_key_required=bool(api_key))
    return app


def _model_card(served: ServedModel) -> dict:
    return {"id": served.id, "object": "model", "created": served.created, "owned_by": "tunewright",
            "root": served.spec, "parent": served.base, "context_length": served.context_length}


async def _answer(registry: Registry, engine: Engine, body: _Sampling, request: Request, prompt_ids,
                  asked: int | None, default: int, chat: bool):
    """What both completion endpoints do: checks, the prompt's token ids (off the event loop), the answer."""
    refuse_lone_surrogates(body)
    served = _served_or_404(registry, body.model)
    refuse_unsupported(body)
    prompt = await run_in_threadpool(prompt_ids, served, body)
    return await _respond(engine, _prepare(served, prompt, body, asked, default), request, chat=chat)


def _served_or_404(registry: Registry, model_id: str) -> ServedModel:
    served = registry.get(model_id)
    if served is None:
        raise not_found_model(model_id)
    return served


def _chat_prompt_ids(served: ServedModel, body: ChatCompletionRequest) -> list[int]:
    from jinja2 import TemplateError

    try:
        with served.tokenizer_lock:
            return generation_prompt_ids(served.tokenizer, plain_messages(body))
    except TemplateError as exc:  # e.g. a template that insists on alternating roles
        raise OpenAIError(400, f"The model's chat template rejected these messages: {exc}", param="messages") from None


def _completion_prompt_ids(served: ServedModel, body: CompletionRequest) -> list[int]:
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise OpenAIError(400, "Only one prompt per request is supported.", param="prompt", code="unsupported_parameter")
        prompt = prompt[0]
    if isinstance(prompt, list):
        if any(not 0 <= t < served.group.vocab_size for t in prompt):
            raise OpenAIError(400, "The prompt holds token ids outside the vocabulary.", param="prompt", code="invalid_value")
        return list(prompt)
    with served.tokenizer_lock:
        return served.tokenizer(prompt)["input_ids"]


def _prepare(served: ServedModel, prompt: list[int], body: _Sampling, asked: int | None, default: int) -> Prepared:
    """Bound prompt and answer by the model's context, as OpenAI does: too long is a 400, not a truncation."""
    context = served.context_length
    if not prompt:
        raise OpenAIError(400, "The prompt is empty.", param="prompt", code="invalid_value")
    if len(prompt) >= context:
        raise OpenAIError(400, f"This model's maximum context length is {context} tokens. However, your prompt has "
                          f"{len(prompt)} tokens. Please reduce the length of the prompt.",
                          param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                          code="context_length_exceeded")
    room = context - len(prompt)
    if asked is not None and asked > room:
        raise OpenAIError(400, f"This model's maximum context length is {context} tokens. However, you requested "
                          f"{len(prompt) + asked} tokens ({len(prompt)} in the prompt, {asked} for the answer). "
                          "Please reduce the prompt or max_tokens.", param="max_tokens", code="context_length_exceeded")
    return Prepared(served, prompt, asked if asked is not None else min(room, default), body)


class _Events:
    """Engine events delivered from the worker thread into this request's asyncio queue."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def sink(self, event: dict) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop closed (server shutting down): nobody is listening
            pass


def _submit(engine: Engine, p: Prepared, events: _Events) -> GenerationRequest:
    body = p.body
    return engine.submit(GenerationRequest(
        served=p.served, prompt_ids=p.prompt_ids, max_tokens=p.max_tokens, sink=events.sink,
        temperature=_temperature(body.temperature),
        top_p=1.0 if body.top_p is None else body.top_p, stop=body.stop_list(), seed=body.seed,
    ))


async def _respond(engine: Engine, p: Prepared, http: Request, chat: bool):
    events = _Events()
    if p.body.stream:  # Starlette stops the stream, and so the generation, when the client leaves
        return StreamingResponse(_stream(engine, p, events, chat), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    request = _submit(engine, p, events)
    gone = asyncio.ensure_future(_client_disconnected(http))
    try:
        while True:
            event = await _next_event(events, gone)
            if event is None:  # nobody is waiting for the answer: stop generating it
                return Response(status_code=499)
            if event["type"] == "done":
                return _final_body(p, event, chat)
            if event["type"] == "error":
                raise OpenAIError(500, event["message"], type="server_error")
    finally:
        gone.cancel()
        request.cancelled = True  # no-op when finished; frees the batch slot when the client went away


async def _client_disconnected(http: Request) -> None:
    """Returns once the client closes the connection (the body is already read, so only that event is left)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _next_event(events: _Events, gone: asyncio.Future) -> dict | None:
    """The engine's next event for this request, or None if the client disconnected first."""
    getter = asyncio.ensure_future(events.queue.get())
    await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    return None


def _temperature(asked: float | None) -> float:
    if asked is None:
        return 1.0
    return 0.0 if asked < GREEDY_BELOW_TEMPERATURE else asked


def _usage(event: dict) -> dict:
    prompt, completion = event["prompt_tokens"], event["completion_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _final_body(p: Prepared, event: dict, chat: bool) -> dict:
    created = int(time.time())
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": event["text"]},
                  "finish_reason": event["finish_reason"], "logprobs": None}
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created,
                "model": p.served.id, "choices": [choice], "usage": _usage(event), "system_fingerprint": None}
    choice = {"index": 0, "text": event["text"], "finish_reason": event["finish_reason"], "logprobs": None}
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created,
            "model": p.served.id, "choices": [choice], "usage": _usage(event)}


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def _stream(engine: Engine, p: Prepared, events: _Events, chat: bool):
    """Server-sent events: a role chunk, text deltas, a finish chunk, optional usage, then [DONE]."""
    chunk_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    base = {"id": chunk_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": p.served.id}

    def chunk(text: str | None, finish: str | None, role: bool = False) -> dict:
        if chat:
            delta = ({"role": "assistant", "content": ""} if role else {}) | ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return base | {"choices": [choice]}

    request = _submit(engine, p, events)
    try:
        if chat:
            yield _sse(chunk(None, None, role=True))
        while True:
            event = await events.queue.get()
            if event["type"] == "delta":
                yield _sse(chunk(event["text"], None))
            elif event["type"] == "done":
                yield _sse(chunk(None, event["finish_reason"]))
                if p.body.stream_options and p.body.stream_options.include_usage:
                    yield _sse(base | {"choices": [], "usage": _usage(event)})
                break
            else:
                yield _sse({"error": {"message": event["message"], "type": "server_error", "param": None, "code": None}})
                break
        yield _sse("[DONE]")
    finally:
        request.cancelled = True  # the client disconnected mid-stream, or we are done
