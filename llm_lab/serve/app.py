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
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_lab.core.decode.processors import NonFiniteScoresError
from llm_lab.core.decode.sampling import describe_sampling
from llm_lab.serve.chat_api import chat_chunk, chat_response, chat_to_completion
from llm_lab.serve.engine import CompletionEngine, SamplingSettings
from llm_lab.serve.errors import APIError
from llm_lab.serve.inspect import InspectRequestError, plan_inspection
from llm_lab.serve.logprobs import LogprobsBuilder
from llm_lab.serve.playground import ChatRoomRequest, RoomRequest, chat_room, playground_html, prompt_room
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
from llm_lab.serve.tokenizer_api import RequestRefusedError, check_token_ids, detokenize, tokenize, tokenizer_info
from llm_lab.utils.json_input import loads_strict

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_BODY_BYTES = 1_000_000
RequestModel = TypeVar("RequestModel", bound=BaseModel)


class BodySizeLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, before they are read into memory.

    A declared ``Content-Length`` over the limit is refused before any of the body is read; a chunked body is
    counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> JSONResponse:
        return APIError(
            413,
            f"request body is larger than the server's limit of {self.max_bytes} bytes; send a shorter prompt",
            code="request_too_large",
        ).response()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLargeError:
            if not response_started:
                await self._too_large()(scope, receive, send)


class _BodyTooLargeError(Exception):
    pass


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on the work and memory of one completions request (``prompts x n`` rows generated as one batch).

    Attributes:
        max_tokens: the most new tokens one request may ask for in all (``prompts x n x max_tokens``). The default,
            32768, is 16 choices of 2048 tokens: generous for a lab model, and a bound on the time one request
            holds the only worker.
        max_memory_bytes: the most memory the batch may need for its KV cache and its per-step scores (default
            512 MiB): ``rows x positions x 2 x n_layer x n_kv_head x head_dim`` elements for the cache, plus
            ``rows x vocab_size`` fp32 scores a few times over for sampling.
    """

    max_tokens: int = 32_768
    max_memory_bytes: int = 512 * 2**20

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_request_tokens must be positive, got {self.max_tokens}")
        if self.max_memory_bytes < 1:
            raise ValueError(f"max_request_memory must be positive, got {self.max_memory_bytes}")


# Sampling holds about this many (rows, vocab) fp32 tensors at once (logits, scores, probabilities, a filter mask).
_SCORE_COPIES = 4


def estimate_request_memory(engine: CompletionEngine, rows: int, prompt_width: int, max_tokens: int) -> int:
    """Bytes the KV cache and the sampling scores of one batch need (``rows`` left-padded to ``prompt_width``)."""
    config = engine.config
    positions = min(prompt_width + max_tokens - 1, engine.context_window)
    element = next(engine.model.parameters()).element_size()
    kv_per_position = 2 * config.n_layer * config.n_kv_head * config.head_dim * element
    return rows * positions * kv_per_position + rows * int(config.vocab_size) * 4 * _SCORE_COPIES


def check_request_limits(limits: RequestLimits, job: _CompletionJob) -> None:
    """Refuse (400, ``code: "request_limit_exceeded"``) a request whose batch is too much work or memory."""
    prompt_ids, n, max_tokens = job.prompt_ids, job.n, job.settings.max_new_tokens
    rows = len(prompt_ids) * n
    shape = f"{len(prompt_ids)} prompt(s) x n={n} x max_tokens={max_tokens}"
    total = rows * max_tokens
    if total > limits.max_tokens:
        raise APIError(
            400,
            f"max_tokens: {shape} = {total} new tokens, more than this server allows in one request "
            f"({limits.max_tokens}, --max-request-tokens); ask for fewer prompts, choices or tokens",
            param="max_tokens",
            code="request_limit_exceeded",
        )
    needed = estimate_request_memory(job.engine, rows, max(len(ids) for ids in prompt_ids), max_tokens)
    if needed > limits.max_memory_bytes:
        raise APIError(
            400,
            f"max_tokens: {shape} needs about {_size(needed)} for the KV cache and scores, more than this server "
            f"allows in one request ({_size(limits.max_memory_bytes)}, --max-request-memory-mb); "
            "ask for fewer prompts, choices or tokens",
            param="max_tokens",
            code="request_limit_exceeded",
        )


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.0f} MiB" if n_bytes >= 2**20 else f"{n_bytes} bytes"


JSON_CONTENT_TYPES = ("application/json",)


def check_json_content_type(request: Request) -> None:
    """Refuse (415) a body not declared as JSON: a web page can send ``text/plain`` cross-site without a preflight."""
    declared = request.headers.get("content-type", "")
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type not in JSON_CONTENT_TYPES:
        shown = repr(declared) if declared else "none"
        raise APIError(
            415,
            f"Content-Type must be application/json (got {shown}); send the body as JSON",
            param="content-type",
            code="unsupported_media_type",
        )


async def read_request(request: Request, schema: type[RequestModel]) -> RequestModel:
    """The body of a JSON endpoint, checked in one place for every route: ``application/json`` (415), strict JSON
    (400: duplicate keys, NaN, deep nesting), then the schema (422 naming the field)."""
    check_json_content_type(request)
    try:
        payload = loads_strict(await request.body(), what="request body")
    except ValueError as error:
        raise APIError(400, str(error), code="invalid_json") from None
    try:
        return schema.model_validate(payload)
    except ValidationError as error:
        message, param = describe_validation_error(error)
        raise APIError(422, message, param=param, code="invalid_value") from None


async def _wait_for_disconnect(request: Request) -> None:
    """Return once the client has closed the connection (the body must have been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_unless_disconnected(request: Request, job: _CompletionJob, events: AsyncIterator[Any]) -> list | None:
    """Collect a non-streaming job's choices; if the client disconnects first, cancel it and return None."""
    work = asyncio.ensure_future(job.collect(events))
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if work.done():
        return work.result()
    work.cancel()  # closes the events, which cancels the request: its slots are freed after the current step
    return None


def generation_failure(error: BaseException) -> APIError:
    """The 500 for a model call that failed; a model whose scores are NaN says so, without a Python type name."""
    if isinstance(error, NonFiniteScoresError):
        return APIError(500, str(error), error_type="server_error", code="non_finite_scores")
    return APIError(
        500, f"generation failed: {type(error).__name__}: {error}", error_type="server_error", code="internal_error"
    )


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


class _CompletionJob:
    """One validated request, turned into token ids and sampling settings, ready to run on the worker."""

    def __init__(
        self,
        engine: CompletionEngine,
        request: CompletionRequestBase,
        prompts: list[str],
        prompt_ids: list[list[int]],
        settings: SamplingSettings,
        seed: int,
    ) -> None:
        self.engine = engine
        self.request = request
        self.prompts = prompts
        self.prompt_ids = prompt_ids
        self.settings = settings
        self.seed = seed
        self.n = request.n or 1
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.completion_tokens = 0
        self.texts: list[str] = []  # per choice, the text so far (echo included), filled by the events
        self.reasons: list[str] = []
        self.builders: list[LogprobsBuilder] | None = None

    async def start(self, runner: ModelRunner, scheduler: BatchScheduler) -> AsyncIterator[tuple]:
        """Score echoed prompts (on the runner), queue the rows on the scheduler, and return the job's events:
        ``("text", index, text)``, ``("tokens", index, text, logprobs)`` and ``("finish", index, reason)``.

        Row ``i`` is choice ``i`` (prompt ``i // n``). One generator per request, so the same request with the same
        seed gives the same choices, streamed or not, alone or batched.

        Raises:
            QueueFullError: the scheduler's queue is full (nothing has run).
        """
        rows = [ids for ids in self.prompt_ids for _ in range(self.n)]
        prefixes = [prompt if self.request.echo else "" for prompt in self.prompts for _ in range(self.n)]
        builders = None if self.request.logprobs is None else [LogprobsBuilder(self.engine.tokenizer) for _ in rows]
        echoed: list[Any] = [None] * len(rows)
        if builders is not None and self.request.echo:
            echoed = await runner.run(self._echo_logprobs, builders)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple] = asyncio.Queue()

        def on_event(event: tuple) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        generator = self.engine.new_generator(self.seed)
        submission = scheduler.submit(rows, self.settings, generator, on_event)
        self.texts = list(prefixes)
        self.reasons = ["length"] * len(rows)
        self.builders = builders

        async def events() -> AsyncIterator[tuple]:
            ended = 0
            try:
                for index, prefix in enumerate(prefixes):
                    if prefix and echoed[index] is None:
                        yield ("text", index, prefix)
                    elif prefix:
                        yield ("tokens", index, prefix, echoed[index])
                while ended < len(rows):
                    event = await queue.get()
                    kind = event[0]
                    if kind == "error":
                        raise event[1]
                    if kind == "finish":
                        _, index, reason, count = event
                        self.reasons[index] = reason
                        self.completion_tokens += count
                        ended += 1
                        yield ("finish", index, reason)
                    elif kind == "tokens":
                        _, index, text, scored = event
                        self.texts[index] += text
                        yield ("tokens", index, text, builders[index].add(scored.token_id, scored))
                    else:
                        _, index, text = event
                        self.texts[index] += text
                        yield event
            finally:
                if ended < len(rows):
                    submission.cancel()  # the client went away (or the request failed): free its slots

        return events()

    async def collect(self, events: AsyncIterator[tuple]) -> list[dict[str, Any]]:
        """Run a job's events to the end and return its choices (for a non-streaming answer)."""
        async for _ in events:
            pass
        return [
            {
                "text": text,
                "index": index,
                "logprobs": None if self.builders is None else self.builders[index].body,
                "finish_reason": reason,
            }
            for index, (text, reason) in enumerate(zip(self.texts, self.reasons, strict=True))
        ]

    def _echo_logprobs(self, builders: list[LogprobsBuilder]) -> list[dict[str, Any] | None]:
        """Score each prompt once (its first token has no log-probability) into its choices' builders."""
        pieces: list[dict[str, Any] | None] = []
        for prompt, ids in zip(self.prompts, self.prompt_ids, strict=True):
            # An empty prompt starts from the end-of-text token, which is not part of the echoed text.
            scored = self.engine.score(ids, self.request.logprobs) if prompt else None
            for _ in range(self.n):
                builder = builders[len(pieces)]
                pieces.append(None if scored is None else builder.add_all(ids, scored))
        return pieces

    def usage(self) -> dict[str, int]:
        prompt_tokens = sum(len(ids) for ids in self.prompt_ids)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt_tokens + self.completion_tokens,
        }

    def response(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.engine.model_name,
            "choices": choices,
            "usage": self.usage(),
        }

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.engine.model_name,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"


def _plan(engine: CompletionEngine, request: CompletionRequestBase) -> _CompletionJob:
    """Check the request against the model's limits and encode its prompts (on the event loop: no model call)."""
    max_tokens = request.max_tokens if request.max_tokens is not None else 16
    if max_tokens > engine.max_tokens_cap:
        raise APIError(
            422,
            f"max_tokens: {max_tokens} is more than this server allows ({engine.max_tokens_cap}); ask for fewer",
            param="max_tokens",
            code="invalid_value",
        )
    token_prompts = request.token_prompts
    prompts = request.prompts if token_prompts is None else [""] * len(token_prompts)  # decoded once checked
    prompt_ids = []
    for index, prompt in enumerate(prompts):
        single = isinstance(request.prompt, str) or (token_prompts is not None and isinstance(request.prompt[0], int))
        param = "prompt" if single else f"prompt.{index}"
        try:
            if token_prompts is None:
                ids = engine.encode(prompt)
            else:
                ids = check_token_ids(engine, token_prompts[index], param)
                prompts[index] = engine.tokenizer.decode(ids)
        except RequestRefusedError as error:
            raise APIError(error.status, error.message, param=error.param, code=error.code) from None
        except ValueError as error:
            raise APIError(400, f"{param}: {error}", param=param, code="invalid_prompt") from None
        fits = engine.max_new_tokens_after(len(ids))
        if max_tokens > fits:
            window = engine.context_window
            if fits < 1:
                message = (
                    f"{param} is {len(ids)} tokens long, more than this model's context of {window} tokens; "
                    "shorten the prompt"
                )
                raise APIError(400, message, param=param, code="context_length_exceeded")
            message = (
                f"max_tokens: this model's context is {window} tokens and {param} takes {len(ids)}, so at most "
                f"{fits} new tokens fit (asked for {max_tokens}); lower max_tokens or shorten the prompt"
            )
            raise APIError(400, message, param="max_tokens", code="context_length_exceeded")
        prompt_ids.append(ids)
    settings = SamplingSettings(
        max_new_tokens=max_tokens,
        sampling=request.sampling_config(),
        stop=request.stop_strings,
        logprobs=request.logprobs,
    )
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    return _CompletionJob(engine, request, prompts, prompt_ids, settings, seed)


async def _chat_sse(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """A completion stream's events in the chat form (:func:`~llm_lab.serve.chat_api.chat_chunk`)."""
    started: set[int] = set()
    async for line in lines:
        yield chat_chunk(line, started)


async def _sse(job: _CompletionJob, events: AsyncIterator[Any]) -> AsyncIterator[str]:
    """Turn the worker's ``("text" | "finish", index, value)`` items into OpenAI completion chunks."""
    try:
        async for item in events:
            if item[0] == "text":
                _, index, text = item
                yield job.chunk([{"text": text, "index": index, "logprobs": None, "finish_reason": None}])
            elif item[0] == "tokens":  # text with the logprobs of the tokens it came from
                _, index, text, logprobs = item
                yield job.chunk([{"text": text, "index": index, "logprobs": logprobs, "finish_reason": None}])
            elif item[0] == "finish":
                _, index, reason = item
                yield job.chunk([{"text": "", "index": index, "logprobs": None, "finish_reason": reason}])
        options = job.request.stream_options
        if options is not None and options.include_usage:
            yield job.chunk([], usage=job.usage())
    except Exception as error:  # the stream has started: report in-band, then close it properly
        yield f"data: {json.dumps(generation_failure(error).body())}\n\n"
    yield "data: [DONE]\n\n"
