"""Three routes to lm-evaluation-harness scores agree: the server as a ``local-completions`` backend with the remote
tokenizer, ``LabLM`` in process, and the harness's own ``hf`` backend on the ``export-hf`` directory.

The real harness is the client everywhere (its request builders, its windowing, its metrics); the tasks are small
local YAML + JSONL files (``harness_tasks.py``), one per output type.
"""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from harness_hf import hf_backend  # noqa: E402
from harness_tasks import GEN_DOCS, MC_DOCS, TEXT_DOCS, write_tasks  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.openai_completions import LocalCompletionsAPI  # noqa: E402
from package_helpers import GPT2_LIKE, LLAMA_LIKE, bpe_tokenizer, make_package  # noqa: E402
from serve_helpers import serve_in_thread  # noqa: E402

from llm_lab.core.harness import LabLM, evaluate_tasks  # noqa: E402
from llm_lab.core.package.hf_io import export_hf  # noqa: E402
from llm_lab.serve import create_app  # noqa: E402

CONTEXT = 32  # make_package's context length


def instances(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


MC_REQUESTS = [(doc["ctx"], choice) for doc in MC_DOCS for choice in doc["choices"]]
ROLLING_REQUESTS = [(doc["text"],) for doc in TEXT_DOCS]
GEN_REQUESTS = [(doc["q"], {"until": [".", "\n"], "max_gen_toks": 6}) for doc in GEN_DOCS]


@pytest.fixture(scope="module", params=[GPT2_LIKE, LLAMA_LIKE], ids=["gpt2-like", "llama-like"])
def routes(request, tmp_path_factory):
    """The three harness models over one random BPE package, and a folder with the local tasks."""
    root = tmp_path_factory.mktemp("harness")
    package, _ = make_package(root / "pkg", bpe_tokenizer(), **request.param)
    hf_dir = export_hf(package, root / "hf")
    tasks = write_tasks(root / "tasks")
    ours = LabLM.from_package(package, batch_size=4)
    hf = hf_backend(hf_dir, batch_size=4)
    with serve_in_thread(create_app(package, model_name="pkg")) as server:
        api = LocalCompletionsAPI(
            base_url=f"{server.base_url}/v1/completions",
            model="pkg",
            tokenizer_backend="remote",
            tokenized_requests=True,
            max_length=CONTEXT + 1,  # the harness keeps one position for the generated token
            batch_size=4,
        )
        yield {"ours": ours, "hf": hf, "server": api}, tasks


def test_per_request_loglikelihoods_agree(routes):
    models, _ = routes
    got = {name: lm.loglikelihood(instances("loglikelihood", MC_REQUESTS)) for name, lm in models.items()}
    for name in ("ours", "server"):
        for (logprob, greedy), (expected, expected_greedy) in zip(got[name], got["hf"], strict=True):
            assert logprob == pytest.approx(expected, abs=1e-4), name
            assert greedy == expected_greedy, name


def test_rolling_loglikelihoods_agree(routes):
    models, _ = routes
    got = {
        name: lm.loglikelihood_rolling(instances("loglikelihood_rolling", ROLLING_REQUESTS))
        for name, lm in models.items()
    }
    assert got["ours"] == pytest.approx(got["hf"], abs=1e-4)
    assert got["server"] == pytest.approx(got["hf"], abs=1e-4)


def test_generated_texts_agree(routes):
    models, _ = routes
    got = {name: lm.generate_until(instances("generate_until", GEN_REQUESTS)) for name, lm in models.items()}
    assert got["ours"] == got["hf"] == got["server"]
    assert all(isinstance(text, str) and "." not in text for text in got["ours"])


@pytest.mark.slow  # three full harness runs per package, about 8 s each here
def test_task_metrics_agree(routes):
    models, tasks = routes
    results = {
        name: evaluate_tasks(lm, ["tiny_mc", "tiny_ppl", "tiny_gen"], include_path=tasks)["results"]
        for name, lm in models.items()
    }
    reference = results["hf"]
    for name in ("ours", "server"):
        assert results[name]["tiny_mc"]["acc,none"] == reference["tiny_mc"]["acc,none"], name
        assert results[name]["tiny_gen"]["exact_match,none"] == reference["tiny_gen"]["exact_match,none"], name
        bpb = results[name]["tiny_ppl"]["bits_per_byte,none"]
        assert bpb == pytest.approx(reference["tiny_ppl"]["bits_per_byte,none"], rel=1e-4), name
