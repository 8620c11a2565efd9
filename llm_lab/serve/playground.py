"""The playground page: ``playground.html`` with its sampling controls rendered from the registry.

The page has no hand-written control per sampling setting: each registered setting that declares a ``control``
(see :class:`llm_lab.core.decode.sampling.SamplingParam`) becomes a labelled slider here, from the same description
``GET /v1/sampling`` returns. ``playground.js`` sends every ``[data-param]`` input under its setting's name, so a new
sampler appears on the page and in its requests without an edit to the page or the script.

The Max tokens slider follows the room the prompt leaves: as the prompt changes (and before each Generate) the
page asks ``POST /playground/room`` (:func:`prompt_room`) how many tokens the prompt takes and how many new ones
fit after it, and sets the slider's range to that. Its default is :data:`DEFAULT_MAX_TOKENS` or the room, if less;
a value the user picked is kept while it fits. So Generate with every default works for any prompt that fits.

The Chat view does the same for a conversation: ``POST /playground/chat_room`` (:func:`chat_room`) renders the
conversation so far plus the message being typed through the model's chat template (the server's rendering, the
one ``POST /v1/chat/completions`` and SFT use: the page never renders a template itself) and answers its length,
the room after it and the rendered text, which the page shows under "What the model sees". A model without a chat
template answers 400 with the code ``not_a_chat_model``, which the page shows instead of a chat.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llm_lab.core.decode.sampling import describe_sampling
from llm_lab.serve.chat_api import chat_to_completion
from llm_lab.serve.schemas import MAX_INSPECT_CHARS, Text

if TYPE_CHECKING:
    from llm_lab.serve.engine import CompletionEngine

STATIC_DIR = Path(__file__).resolve().parent / "static"
CONTROLS_MARKER = "<!-- sampling-controls -->"
#: The Max tokens slider's default where the prompt leaves room for it: a modest length, quick on a CPU.
DEFAULT_MAX_TOKENS = 64


def control_label(name: str) -> str:
    """``top_k`` -> ``Top-k``, ``repetition_penalty`` -> ``Repetition penalty``: how the page names a setting."""
    words = name.split("_")
    joiner = "-" if len(words[-1]) == 1 else " "
    return joiner.join(words).capitalize()


def render_control(param: dict[str, Any]) -> str:
    """One slider (label with a live value, input, hint) for a described setting that has a ``control``."""
    control = param["control"]
    element_id = param["name"].replace("_", "-")
    top = control["max"]
    attributes = {
        "id": element_id,
        "type": "range",
        "min": control["min"],
        "max": 1 if isinstance(top, str) else top,  # a named maximum ("vocab_size") is set by the script
        "step": control["step"],
        "value": control["value"],
        "data-param": param["name"],
    }
    if isinstance(top, str):
        attributes["data-max-from"] = top
    hint = param["help"]
    if param["off"] is not None:
        attributes["data-off"] = param["off"]
        hint += f"; {param['off']} = off"
    shown = " ".join(f'{key}="{escape(str(value))}"' for key, value in attributes.items())
    return (
        f'      <label for="{element_id}">{escape(control_label(param["name"]))} '
        f'<span class="value" id="{element_id}-value"></span></label>\n'
        f"      <input {shown}>\n"
        f'      <div class="hint">{escape(hint)}</div>\n'
    )


def playground_html() -> str:
    """The page with one control per registered sampling setting (in chain order) in place of the marker."""
    page = (STATIC_DIR / "playground.html").read_text(encoding="utf-8")
    controls = "".join(render_control(param) for param in describe_sampling()["params"] if "control" in param)
    return page.replace(CONTROLS_MARKER, controls.strip() + "\n")


class RoomRequest(BaseModel):
    """The body of ``POST /playground/room``: the prompt as typed (at most ``MAX_INSPECT_CHARS`` characters)."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[Text, Field(max_length=MAX_INSPECT_CHARS)]


def prompt_room(engine: CompletionEngine, prompt: str) -> dict[str, int]:
    """How many tokens ``prompt`` takes and how many new ones fit after it (at most the server's cap; 0 when the
    prompt fills the context), as the completions route counts them. An empty prompt (nothing typed yet) counts as
    0 tokens with the whole allowance: the start token it begins from, where the model has one, leaves all of it.

    Raises:
        ValueError: the tokenizer cannot encode the prompt (the message says why).
    """
    n = len(engine.encode(prompt)) if prompt else 0
    room = engine.max_tokens_cap if not prompt else _room_after(engine, n)
    return {"prompt_tokens": n, "max_tokens": room, "default_max_tokens": min(DEFAULT_MAX_TOKENS, room)}


def _room_after(engine: CompletionEngine, n_prompt: int) -> int:
    return max(0, min(engine.max_tokens_cap, engine.max_new_tokens_after(n_prompt)))


class ChatRoomRequest(BaseModel):
    """The body of ``POST /playground/chat_room``: the conversation to be sent (at most ``MAX_INSPECT_CHARS``
    characters of content in all; the roles and order are checked as ``/v1/chat/completions`` checks them)."""

    model_config = ConfigDict(extra="forbid")

    messages: list[dict[str, Any]]

    @field_validator("messages")
    @classmethod
    def _bounded(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        size = sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str))
        if size > MAX_INSPECT_CHARS:
            raise ValueError(f"the conversation has {size} characters, more than {MAX_INSPECT_CHARS}")
        return messages


def chat_room(engine: CompletionEngine, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """How many tokens the conversation's prompt takes (rendered by the chat template, the assistant's role token
    appended, exactly as ``/v1/chat/completions`` renders it), how many new ones fit after it, the Max tokens
    default, and the prompt as text (``rendered``, the special tokens shown as their text).

    Raises:
        APIError: 400 ``not_a_chat_model`` for a model without a chat template; 422 naming ``messages`` for a bad
            conversation (as ``/v1/chat/completions`` answers it).
    """
    ids = chat_to_completion({"messages": messages}, engine.tokenizer)["prompt"][0]  # no context check: the
    # room is 0 for a conversation that fills the context, and the page says so
    room = _room_after(engine, len(ids))
    return {
        "prompt_tokens": len(ids),
        "max_tokens": room,
        "default_max_tokens": min(DEFAULT_MAX_TOKENS, room),
        "rendered": engine.tokenizer.decode(ids),
    }

