"""``llm-lab serve --dtype``: the server generates through a decode copy in that dtype (scoring keeps the model)."""

from __future__ import annotations

import httpx
import pytest
from serve_helpers import make_package, serve_in_thread

from llm_lab.core.decode import generate, prepare_for_decode
from llm_lab.core.decode.fast_linear import DecodeLinear
from llm_lab.core.package.io import load_model_package
from llm_lab.serve import create_app


def test_int8_server_completes_exactly_as_generate_through_an_int8_copy(tmp_path):
    path = make_package(tmp_path / "pkg")
    app = create_app(path, decode_dtype="int8")
    engine = app.state.engine
    assert {m.dtype for m in engine.decode_model.modules() if isinstance(m, DecodeLinear)} == {"int8"}
    assert not any(isinstance(m, DecodeLinear) for m in engine.model.modules())  # scoring: the model as loaded
    _, tokenizer, model = load_model_package(path)
    prompt = "to be"
    want = generate(prepare_for_decode(model, "int8"), [tokenizer.encode(prompt)], 12, temperature=0,
                    eos_token_id=tokenizer.eot_token_id)  # fmt: skip
    with serve_in_thread(app) as server:
        body = {"prompt": prompt, "max_tokens": 12, "temperature": 0}
        answer = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=30).json()
    assert answer["choices"][0]["text"] == tokenizer.decode(want.sequences[0, len(tokenizer.encode(prompt)) :].tolist())


def test_a_bad_dtype_is_refused_before_serving(tmp_path):
    path = make_package(tmp_path / "pkg")
    with pytest.raises(ValueError, match=r"^unknown decode dtype 'fp8'; choose one of: auto, fp32, bf16, int8$"):
        create_app(path, decode_dtype="fp8")
