"""Request validation for the completions API (the OpenAI completions shape, plus a few extensions).

Parsing is strict on purpose: unknown fields, wrong types and out-of-range values are refused with a message that
names the field, so a typo such as ``max_token`` fails loudly instead of being silently ignored. One type rule for
every field: numbers must be JSON numbers (``"0.5"`` or ``true`` is refused for ``temperature`` exactly as
``"5"`` is for ``max_tokens``; an integer is a valid float), booleans JSON booleans, and text valid Unicode (a
lone surrogate such as U+D800 is refused: it cannot be encoded, echoed or tokenized consistently). A few OpenAI
fields that this server does not implement (``best_of``, ``suffix``, penalties, ``logit_bias``) are
accepted only at their neutral value, so clients that always send them still work.

The sampling fields are not written here: :func:`completion_request_model` adds one field per registered sampling
setting (:func:`llm_lab.core.decode.sampling.sampling_params`), with its type, range and default, so a new sampler
is accepted by the server without an edit to this file. Extensions beyond the OpenAI shape: the sampling settings
OpenAI does not have (``top_k``, ``repetition_penalty``, ...), and the body of ``POST /v1/inspect``
(:class:`InspectRequest`).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    create_model,
    field_validator,
)

from llm_lab.core.decode.sampling import SamplingConfig, SamplingParam, sampling_params

# OpenAI allows at most four stop sequences; the limit also bounds the work of the stop-string scan.
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256
MAX_PROMPTS = 32
MAX_CHOICES = 16
MAX_LOGPROBS = 5  # OpenAI's cap on the completions API's logprobs
MAX_INSPECT_CHARS = 20_000  # /v1/inspect: text longer than this is refused before it is encoded
MAX_PROMPT_TOKENS = 32_768  # a token-id prompt longer than this is refused before the model's context is checked
MAX_TOKENIZE_CHARS = 1_000_000  # POST /tokenize: about what a request body may hold anyway

# A prompt given as token ids (what lm-evaluation-harness sends): ids are checked against the vocabulary later.
TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1, max_length=MAX_PROMPT_TOKENS)]


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(item) is int for item in value)


def _no_lone_surrogate(text: str) -> str:
    # JSON can spell a lone surrogate ("\ud800"), but it is not a character: UTF-8 cannot encode it, so echoing it
    # back failed (500) while the stream escaped it. Refused at validation, so every form of a request agrees.
    bad = next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
    if bad is not None:
        raise ValueError(
            f"contains a lone surrogate U+{ord(text[bad]):04X} (character {bad}), which is not valid Unicode; "
            "send UTF-8 text"
        )
    return text


# Text from a client: a string that is valid Unicode (what UTF-8 can encode).
Text = Annotated[str, AfterValidator(_no_lone_surrogate)]


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the token counts (and no choices)."""

    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False


class CompletionRequestBase(BaseModel):
    """The body of ``POST /v1/completions``, less its sampling fields (see :func:`completion_request_model`).

    Attributes:
        model: the served model id; optional, and when given it must match (see ``GET /v1/models``).
        prompt: one prompt or a list of prompts; each list entry gets ``n`` choices. A prompt may also be given as
            token ids (a list of ints, or a list of such lists), as lm-evaluation-harness sends it.
        max_tokens: the most new tokens per choice (OpenAI's default: 16); 0 scores the prompt only (with ``echo``
            and ``logprobs``).
        stop: up to four strings; generation ends before the first occurrence of any of them.
        n: choices per prompt.
        seed: makes sampling reproducible: the same request with the same seed gives the same text.
        stream: send server-sent events as tokens are generated.
        stream_options: ``{"include_usage": true}`` adds a usage chunk before ``[DONE]``.
        echo: prepend the prompt to each choice's text (with ``logprobs``, the prompt's tokens are scored too).
        logprobs: report each token's log-probability and the ``logprobs`` (0 to 5) most likely alternatives.
        user: accepted and ignored (OpenAI clients may send it).
    """

    model_config = ConfigDict(extra="forbid")

    model: Text | None = None
    prompt: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=MAX_PROMPTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    )
    max_tokens: Annotated[StrictInt, Field(ge=0)] | None = 16
    stop: Text | Annotated[list[Text], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_CHOICES)] | None = 1
    seed: Annotated[StrictInt, Field(ge=-(2**63), le=2**64 - 1)] | None = None  # what torch.manual_seed takes
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    echo: StrictBool | None = False
    user: Text | None = None
    logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    # OpenAI fields without an implementation here: only their neutral values are accepted.
    best_of: StrictInt | None = None
    suffix: Text | None = None
    presence_penalty: StrictFloat | None = None
    frequency_penalty: StrictFloat | None = None
    logit_bias: dict[str, StrictFloat] | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_is_text(cls, value: Any) -> Any:
        # Text, or token ids (one list of ints, or a list of such lists); never a mixture.
        if isinstance(value, list) and value and not all(isinstance(item, str) for item in value):
            if _is_token_ids(value) or all(_is_token_ids(item) for item in value):
                if any(token < 0 for item in value for token in (item if isinstance(item, list) else [item])):
                    raise ValueError("token ids must be 0 or more")
                return value
            raise ValueError(
                "must be a string or a list of strings, or token ids: a list of integers or a list of such lists "
                "(each non-empty)"
            )
        return value

    @field_validator("stop", mode="after")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        for stop in stops:
            if not stop:
                raise ValueError("stop strings must not be empty")
            if len(stop) > MAX_STOP_LENGTH:
                raise ValueError(f"stop strings must be at most {MAX_STOP_LENGTH} characters long")
        return value

    @field_validator("best_of", "suffix", "logit_bias", mode="after")
    @classmethod
    def _unsupported(cls, value: Any, info: Any) -> Any:
        neutral = {"best_of": (None, 1), "suffix": (None, ""), "logit_bias": (None,)}
        if value not in neutral[info.field_name] and value != {}:
            raise ValueError(f"is not supported by this server; leave {info.field_name} out")
        return value

    @field_validator("presence_penalty", "frequency_penalty", mode="after")
    @classmethod
    def _unsupported_penalty(cls, value: float | None, info: Any) -> float | None:
        if value not in (None, 0, 0.0):
            raise ValueError(f"is not supported by this server; use repetition_penalty instead of {info.field_name}")
        return value

    @property
    def prompts(self) -> list[str]:
        """The prompts as a list (a single string becomes a list of one)."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def token_prompts(self) -> list[list[int]] | None:
        """Token-id prompts as a list of lists (one list of ids becomes a list of one); ``None`` for text prompts."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], str):
            return None
        if isinstance(self.prompt[0], int):
            return [list(self.prompt)]
        return [list(ids) for ids in self.prompt]

    @property
    def stop_strings(self) -> list[str]:
        """The stop strings as a list (possibly empty)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling_config(self) -> SamplingConfig:
        """The request's sampling fields as one :class:`SamplingConfig` (``null`` and a setting's ``off`` value, such
        as ``top_k: 0``, mean its default)."""
        given = {}
        for param in sampling_params():
            value = getattr(self, param.name, None)
            if value is not None and not (param.api_off is not None and value == param.api_off):
                given[param.name] = value
        return SamplingConfig(**given)


def _sampling_field(param: SamplingParam) -> tuple[Any, Any]:
    """The pydantic field of one sampling setting: strict JSON number, the setting's range, nullable."""
    bounds: dict[str, Any] = {}
    if param.low is not None:
        if param.api_off is not None and param.api_off < param.low:
            bounds["ge"] = param.api_off  # the "off" value is accepted too
        else:
            bounds["gt" if param.low_open else "ge"] = param.low
    high = param.high if param.api_high is None else param.api_high
    if high is not None:
        bounds["lt" if param.high_open and param.api_high is None else "le"] = high
    if param.kind is int:
        number: Any = Annotated[StrictInt, Field(**bounds)]
    else:
        number = Annotated[StrictFloat, Field(**bounds, allow_inf_nan=False)]
    return (number | None, Field(default=param.default, description=param.help))


def completion_request_model() -> type[CompletionRequestBase]:
    """The full ``POST /v1/completions`` schema: :class:`CompletionRequestBase` plus one field per registered sampling
    setting. Built when an app is created, so a processor registered before that is part of its API."""
    fields = {param.name: _sampling_field(param) for param in sampling_params()}
    clash = sorted(set(fields) & set(CompletionRequestBase.model_fields))
    if clash:
        raise ValueError(f"sampling setting {clash[0]!r} has the name of a completions request field; rename it")
    return create_model(
        "CompletionRequest", __base__=CompletionRequestBase, __doc__=CompletionRequestBase.__doc__, **fields
    )


# The schema of the processors registered at import time (``create_app`` builds its own, see above).
CompletionRequest = completion_request_model()


class TokenizeRequest(BaseModel):
    """The body of ``POST /tokenize`` (what lm-evaluation-harness's remote tokenizer sends).

    Attributes:
        model: the served model id (optional; must match when given).
        prompt: the text to encode.
        add_special_tokens: accepted for the harness; this tokenizer adds none, so it changes nothing.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: Annotated[Text, Field(max_length=MAX_TOKENIZE_CHARS)]
    add_special_tokens: StrictBool | None = None


class DetokenizeRequest(BaseModel):
    """The body of ``POST /detokenize``: ``tokens``, a list of token ids (possibly empty)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    tokens: Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(max_length=MAX_PROMPT_TOKENS)]


class InspectRequest(BaseModel):
    """The body of ``POST /v1/inspect`` (an extension): look inside the model on one text.

    Attributes:
        model: the served model id (optional; must match when given).
        text: the text to inspect (at most ``MAX_INSPECT_CHARS`` characters and the model's context in tokens).
        layers: which layers' attention maps to return (0-based); default all. ``[]`` returns none.
        heads: which heads of those layers (0-based); default all.
        top_logprobs: alternatives reported per token (0 to 5).
        lens_top: predictions reported per logit-lens cell (1 to 5).
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    text: Annotated[str, Field(max_length=MAX_INSPECT_CHARS)]
    layers: list[Annotated[StrictInt, Field(ge=0)]] | None = None
    heads: list[Annotated[StrictInt, Field(ge=0)]] | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_LOGPROBS)] = 5
    lens_top: Annotated[StrictInt, Field(ge=1, le=MAX_LOGPROBS)] = 3

    @field_validator("text", mode="after")
    @classmethod
    def _some_text(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty: give the text to inspect")
        return value


def describe_validation_error(error: ValidationError) -> tuple[str, str | None]:
    """Turn a pydantic error into one readable message and the name of the offending field.

    Returns:
        ``(message, param)``, e.g. ``("temperature: Input should be less than or equal to 2 (got 5)",
        "temperature")``. ``param`` is ``None`` when the whole body is wrong (not a JSON object).
    """
    errors = error.errors(include_url=False)
    first = errors[0]
    # A value that fails a union (``str | list[str]``) gets one error per member; for a list the list member's
    # error says what is wrong ("at most 4 items"), not the string member's ("should be a valid string").
    if isinstance(first.get("input"), list):
        same_field = [e for e in errors if e["loc"][:1] == first["loc"][:1]]
        first = next((e for e in same_field if any(str(p).startswith("list[") for p in e["loc"])), first)
    loc = list(first["loc"])
    # The first step is the top-level field the client wrote; later string steps are either nested fields
    # (``stream_options.include_usage``) or the names pydantic gives union members ("str", "list[str]"), which
    # would only confuse a reader. List indices stay: ``prompt.2`` says which prompt is wrong.
    path: list[str | int] = loc[:1]
    nested = loc[0] == "stream_options" if loc else False
    keep_names = nested and (first["type"] == "extra_forbidden" or len(loc) == 2)
    path += [part for part in loc[1:] if isinstance(part, int) or (keep_names and isinstance(part, str))]
    loc = path
    param = ".".join(str(part) for part in loc) or None
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = f"unknown field {param!r}; see the OpenAI completions API for the accepted fields"
        return message, param
    if first["type"] == "missing":
        return f"{param} is required", param
    if param is None:
        return f"request body: {message}", None
    given = first.get("input")
    shown = repr(given) if given is not None and len(repr(given)) <= 80 else None
    return f"{param}: {message}" + (f" (got {shown})" if shown else ""), param
