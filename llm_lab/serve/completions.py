"""A completions request as a job: its prompts encoded and checked against the model's context (``_plan``) and
against what one request may ask (:class:`RequestLimits`), then queued on the batch scheduler, and its events
answered as one JSON body (:func:`run_unless_disconnected`, stopped when the client goes) or as server-sent events
(``_sse``, ``_chat_sse`` for the chat form). The routes that use it are in :mod:`llm_lab.serve.app`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from llm_lab.serve.chat_api import chat_chunk
from llm_lab.serve.engine import CompletionEngine, SamplingSettings
from llm_lab.serve.errors import APIError, generation_failure
from llm_lab.serve.logprobs import LogprobsBuilder
from llm_lab.serve.runner import ModelRunner
from llm_lab.serve.scheduler import BatchScheduler
from llm_lab.serve.schemas import CompletionRequestBase
from llm_lab.serve.tokenizer_api import RequestRefusedError, check_token_ids


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
