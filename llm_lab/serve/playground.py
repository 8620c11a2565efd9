"""The playground page: ``playground.html`` with its sampling controls rendered from the registry.

The page has no hand-written control per sampling setting: each registered setting that declares a ``control``
(see :class:`llm_lab.core.decode.sampling.SamplingParam`) becomes a labelled slider here, from the same description
``GET /v1/sampling`` returns. ``playground.js`` sends every ``[data-param]`` input under its setting's name, so a new
sampler appears on the page and in its requests without an edit to the page or the script.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from llm_lab.core.decode.sampling import describe_sampling

STATIC_DIR = Path(__file__).resolve().parent / "static"
CONTROLS_MARKER = "<!-- sampling-controls -->"


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
