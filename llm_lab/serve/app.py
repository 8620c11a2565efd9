"""The HTTP server: an OpenAI-style completions API and a playground page, over one loaded model package.

Routes:

- ``POST /v1/completions``: the OpenAI completions shape (``prompt``, ``max_tokens``, ``temperature``, ``top_p``,
  ``stop``, ``n``, ``seed``, ``stream``, ...), plus every other registered sampling setting (``top_k``,
  ``repetition_penalty``, ...; see ``GET /v1/sampling``). With ``stream: true`` the answer is server-sent events,
  ``data: {...}`` chunks ending with ``data: [DONE]``.
  ``logprobs: N`` (0 to 5) adds OpenAI's ``logprobs`` object to each choice (and to each streamed chunk); with
  ``echo: true`` the prompt's tokens are scored too (see ``logprobs.py``).
- ``POST /v1/inspect`` (extension): token probabilities, attention maps and the logit lens of one text
  (see ``inspect.py``).
- ``GET /v1/models`` (and ``/v1/models/{id}``): the one served model, with its context window.
- ``GET /v1/sampling`` (extension): every sampling setting with its type, range, default and help (the
  playground builds its controls from it; see ``llm_lab.core.decode.sampling.describe_sampling``).
- ``GET /health``: liveness plus the queue depth.
- ``GET /tokenizer_info``, ``POST /tokenize``, ``POST /detokenize``: the tokenizer, as lm-evaluation-harness's
  remote tokenizer reads it (see ``tokenizer_api.py``); with them, token-id prompts and ``echo`` + ``logprobs`` +
  ``max_tokens: 0 or 1`` (see ``scoring.py``) make this server a ``local-completions`` backend of the harness.
- ``GET /``: the playground (plain HTML and one script under ``/static``, no build step); ``POST
  /playground/room`` tells it how many tokens a prompt takes and how many new ones fit, ``POST
  /playground/chat_room`` the same for its Chat view's conversation (see ``playground.py``).

Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: 400 for a body that is not JSON
(duplicate keys and nesting deeper than 64 levels included), does not fit the model's context or asks for more work
than one request may (:class:`RequestLimits`), 422 for a value out of range or of the wrong type (``param`` names
the field; numbers must be JSON numbers, never strings), 404 for an unknown model, 413 for a body over the size
limit, 415 for a body not sent as ``application/json``, 429 with ``Retry-After`` when the batch's queue is full (503
when the queue of other model calls is). A ``Host`` that does not name this server is 400 and a foreign ``Origin``
403 (see ``security.py``). A model whose scores are NaN is a 500 that says so.

A client that disconnects stops its generation after the current token, streamed or not, and frees its slot.

Completions are decoded together by one :class:`~llm_lab.serve.scheduler.BatchScheduler` (continuous batching:
requests join and leave the running batch at a token boundary, and each gets exactly what it would get alone on
this server); past ``max_queue`` waiting requests a new one gets 429 with ``Retry-After``. Every other model call
(inspection, scoring echoed prompts) goes through one :class:`~llm_lab.serve.runner.ModelRunner` worker.

This module builds the app and its routes; a completions request's job and limits are in ``completions.py``, the
reading of a request's body in ``request_body.py``, the error shape in ``errors.py``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_lab.core.decode.processors import NonFiniteScoresError
from llm_lab.core.decode.sampling import describe_sampling
from llm_lab.serve.chat_api import chat_response, chat_to_completion

# RequestLimits also stays importable from here, where it was first defined; the completion job's private pieces
# (_plan, _sse, _chat_sse, _CompletionJob) are shared by this module and completions.py only.
from llm_lab.serve.completions import (
    RequestLimits,
    _chat_sse,
    _CompletionJob,
    _plan,
    _sse,
    check_request_limits,
    run_unless_disconnected,
)
from llm_lab.serve.engine import CompletionEngine
from llm_lab.serve.errors import APIError, generation_failure
from llm_lab.serve.inspect import InspectRequestError, plan_inspection
from llm_lab.serve.playground import ChatRoomRequest, RoomRequest, chat_room, playground_html, prompt_room
from llm_lab.serve.request_body import (
    DEFAULT_MAX_BODY_BYTES,
    BodySizeLimitMiddleware,
    check_json_content_type,
    read_request,
)
from llm_lab.serve.runner import ModelRunner, RunnerBusyError
from llm_lab.serve.scheduler import BatchLimits, BatchScheduler, QueueFullError
from llm_lab.serve.schemas import (
    CompletionRequestBase,
    DetokenizeRequest,
    InspectRequest,
    TokenizeRequest,
    completion_request_model,
    describe_validation_error,
)
from llm_lab.serve.scoring import score_prompts, wants_prompt_scoring
from llm_lab.serve.security import AccessMiddleware, AccessPolicy
from llm_lab.serve.tokenizer_api import RequestRefusedError, detokenize, tokenize, tokenizer_info
from llm_lab.utils.json_input import loads_strict

STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app(
    package: str | os.PathLike[str] | tuple[Any, Any, Any] | CompletionEngine,
    *,
    model_name: str | None = None,
    max_tokens_cap: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_pending: int = 64,
    device: str | None = None,
    decode_dtype: str = "fp32",
    limits: RequestLimits | None = None,
    batch: BatchLimits | None = None,
    bind_host: str | None = None,
    allow_hosts: Iterable[str] = (),
    allow_origins: Iterable[str] = (),
) -> FastAPI:
    """Build the FastAPI app that serves one model.

    Args:
        package: a model package directory (loaded with ``load_model_package``), an already loaded
            ``(config, tokenizer, model)`` triple, or a ready :class:`CompletionEngine`.
        model_name: the id clients see in ``/v1/models`` and send as ``model``; default: the package's folder name
            (``"llm-lab"`` for an in-memory model).
        max_tokens_cap: the most tokens one choice may generate; default and upper bound: the model's context.
        max_body_bytes: request bodies above this get 413.
        max_pending: inspection and echo-scoring calls queued or running at once before new ones get 503.
        device: where to run the model (``"cpu"``, ``"cuda"``); default: where the model already is.
        decode_dtype: the weights generation decodes with (``fp32``, ``bf16``, ``int8`` or ``auto``; see
            :func:`~llm_lab.core.decode.fast_linear.prepare_for_decode`); scoring uses the model as loaded.
        limits: the most work and memory one request may ask for (default :class:`RequestLimits`).
        batch: the continuous batch's size, queue and prefill chunk (default
            :class:`~llm_lab.serve.scheduler.BatchLimits`).
        bind_host: the address the server listens on; its ``Host`` is accepted besides the loopback names.
        allow_hosts: more ``Host`` names to accept (e.g. this machine's name on a trusted network).
        allow_origins: web origins whose pages may call the API (they also get CORS headers); others get 403.

    Returns:
        The app; run it with ``uvicorn.run(app, host="127.0.0.1", port=8000)`` or ``llm-lab serve PACKAGE``.
    """
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
    limits = limits if limits is not None else RequestLimits()
    access = AccessPolicy(bind_host, allowed_hosts=allow_hosts, allowed_origins=allow_origins)
    if isinstance(package, CompletionEngine):
        engine = package
    elif isinstance(package, tuple):
        config, tokenizer, model = package
        engine = CompletionEngine(
            config,
            tokenizer,
            model,
            model_name=model_name or "llm-lab",
            max_tokens_cap=max_tokens_cap,
            device=device,
            decode_dtype=decode_dtype,
        )
    else:
        engine = CompletionEngine.from_package(
            package, model_name=model_name, max_tokens_cap=max_tokens_cap, device=device, decode_dtype=decode_dtype
        )
    runner = ModelRunner(max_pending=max_pending)
    scheduler = BatchScheduler(engine, batch if batch is not None else BatchLimits())
    completion_schema = completion_request_model()  # every sampling setting registered by now

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        scheduler.close()
        runner.shutdown()

    app = FastAPI(
        title="llm-lab serve",
        summary="OpenAI-style completions and a playground for one llm-lab model package.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.runner = runner
    app.state.scheduler = scheduler
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)
    if access.allowed_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=access.allowed_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    app.add_middleware(AccessMiddleware, policy=access)  # outermost: a foreign Host or Origin gets nothing else
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, error: APIError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return APIError(error.status_code, str(error.detail), code=f"http_{error.status_code}").response()

    @app.exception_handler(Exception)
    async def _server_error(_request: Request, error: Exception) -> JSONResponse:
        # Still logged with its traceback by the server; the client gets the OpenAI shape, not a bare text page.
        return generation_failure(error).response()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(playground_html())

    @app.post("/playground/room", include_in_schema=False)
    async def playground_room(request: Request) -> dict[str, int]:
        room_request = await read_request(request, RoomRequest)
        try:
            return await asyncio.to_thread(prompt_room, engine, room_request.prompt)
        except ValueError as error:
            raise APIError(400, f"prompt: {error}", param="prompt", code="invalid_prompt") from None

    @app.post("/playground/chat_room", include_in_schema=False)
    async def playground_chat_room(request: Request) -> dict[str, Any]:
        return await asyncio.to_thread(chat_room, engine, (await read_request(request, ChatRoomRequest)).messages)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": engine.model_name,
            "pending": runner.pending,
            "batch": {"slots": scheduler.slots, "busy": scheduler.busy_slots, "waiting": scheduler.waiting},
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [engine.describe()]}

    @app.get("/v1/sampling")
    async def sampling() -> dict[str, Any]:
        return describe_sampling()

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        _check_model(engine, model_id)
        return engine.describe()

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        return await _complete(request, await read_request(request, completion_schema))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        check_json_content_type(request)
        try:
            payload = loads_strict(await request.body(), what="request body")
        except ValueError as error:
            raise APIError(400, str(error), code="invalid_json") from None
        body = await asyncio.to_thread(chat_to_completion, payload, engine.tokenizer, engine.context_window)
        try:
            completion = completion_schema.model_validate(body)
        except ValidationError as error:
            message, param = describe_validation_error(error)
            raise APIError(422, message, param=param, code="invalid_value") from None
        return await _complete(request, completion, chat=True)

    async def _complete(request: Request, completion: CompletionRequestBase, chat: bool = False) -> Response:
        """A completion (or, with ``chat``, a chat completion: the same job, answered in the chat form)."""
        if completion.model is not None:
            _check_model(engine, completion.model)
        # Encoding a long prompt with BPE takes a while: do it off the event loop so streams keep flowing.
        job = await asyncio.to_thread(_plan, engine, completion)
        check_request_limits(limits, job)
        if wants_prompt_scoring(completion):  # lm-eval's log-likelihoods: one forward, no decode loop
            return await _score(job, completion)
        rows = len(job.prompt_ids) * job.n
        if scheduler.max_choices is not None and rows > scheduler.max_choices:
            raise APIError(
                400,
                f"n: {len(job.prompt_ids)} prompt(s) x n={job.n} = {rows} choices, more than the {scheduler.slots} "
                "sequences this server decodes at once (--max-batch); ask for fewer prompts or choices",
                param="n",
                code="request_limit_exceeded",
            )
        try:
            # Queued here, so a full queue is a plain 429 and not an error inside a started stream.
            events = await job.start(runner, scheduler)
            if completion.stream:
                return StreamingResponse(
                    _chat_sse(_sse(job, events)) if chat else _sse(job, events),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                )
            choices = await run_unless_disconnected(request, job, events)
        except QueueFullError as error:
            too_many = APIError(429, str(error), error_type="server_error", code="server_busy").response()
            too_many.headers["Retry-After"] = str(error.retry_after)
            return too_many
        except RunnerBusyError as error:
            raise APIError(503, str(error), error_type="server_error", code="server_busy") from None
        except NonFiniteScoresError as error:
            raise generation_failure(error) from None
        if choices is None:  # the client has gone; this answer reaches nobody
            return Response(status_code=499)
        return JSONResponse(chat_response(job.response(choices)) if chat else job.response(choices))

    async def _score(job: _CompletionJob, completion: CompletionRequestBase) -> Response:
        if completion.stream:
            raise APIError(422, "stream: max_tokens 0 cannot be streamed; leave stream out", param="stream")
        try:
            choices, job.completion_tokens = await runner.run(
                score_prompts, engine, job.prompt_ids, completion, limits.max_memory_bytes
            )
        except RequestRefusedError as error:
            raise APIError(error.status, error.message, param=error.param, code=error.code) from None
        except RunnerBusyError as error:
            raise APIError(503, str(error), error_type="server_error", code="server_busy") from None
        return JSONResponse(job.response(choices))

    @app.get("/tokenizer_info")
    async def get_tokenizer_info() -> dict[str, Any]:
        return tokenizer_info(engine)

    @app.post("/tokenize")
    async def post_tokenize(request: Request) -> dict[str, Any]:
        body = await read_request(request, TokenizeRequest)
        if body.model is not None:
            _check_model(engine, body.model)
        try:
            return await asyncio.to_thread(tokenize, engine, body)
        except RequestRefusedError as error:
            raise APIError(error.status, error.message, param=error.param, code=error.code) from None

    @app.post("/detokenize")
    async def post_detokenize(request: Request) -> dict[str, Any]:
        body = await read_request(request, DetokenizeRequest)
        if body.model is not None:
            _check_model(engine, body.model)
        try:
            return detokenize(engine, body)
        except RequestRefusedError as error:
            raise APIError(error.status, error.message, param=error.param, code=error.code) from None

    @app.post("/v1/inspect", response_model=None)
    async def inspect(request: Request) -> Response:
        inspect_request = await read_request(request, InspectRequest)
        if inspect_request.model is not None:
            _check_model(engine, inspect_request.model)
        try:
            plan = await asyncio.to_thread(plan_inspection, engine, inspect_request)
        except InspectRequestError as error:
            raise APIError(error.status, error.message, param=error.param, code=error.code) from None
        try:
            return JSONResponse(await runner.run(plan.run))
        except RunnerBusyError as error:
            raise APIError(503, str(error), error_type="server_error", code="server_busy") from None

    return app


def _check_model(engine: CompletionEngine, model_id: str) -> None:
    if model_id != engine.model_name:
        raise APIError(
            404,
            f"model {model_id!r} is not served here; this server serves {engine.model_name!r} (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )
