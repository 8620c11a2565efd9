"""Small lm-evaluation-harness tasks written as YAML + JSONL into a test's folder, one per output type.

The harness's built-in tasks download their data from the Hugging Face hub; these read local JSONL files, so the
real harness runs them offline. The texts use only characters of ``package_helpers.TEXT``, so char packages can
encode them too.
"""

from __future__ import annotations

import json
from pathlib import Path

MC_DOCS = [
    {"ctx": "the quick brown", "choices": [" fox", " dog", " question"], "label": 0},
    {"ctx": "to be, or not to", "choices": [" be", " fox"], "label": 0},
    {"ctx": "the lazy", "choices": [" dog.", " fox.", " be."], "label": 0},
    {"ctx": "that is the", "choices": [" question.", " quick brown fox", " lazy"], "label": 0},
]
TEXT_DOCS = [
    {"text": "the quick brown fox jumps over the lazy dog."},
    {"text": "to be, or not to be: that is the question."},
    {"text": "the lazy dog."},
]
GEN_DOCS = [{"q": "the quick", "a": " brown"}, {"q": "to be, or not", "a": " to"}, {"q": "the lazy", "a": " dog"}]

TASKS = {
    "tiny_mc": (
        "mc.jsonl",
        MC_DOCS,
        'output_type: multiple_choice\ndoc_to_text: "{{ctx}}"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n',
    ),
    "tiny_ppl": (
        "text.jsonl",
        TEXT_DOCS,
        'output_type: loglikelihood_rolling\ndoc_to_text: ""\n'
        'doc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n'
        "  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
    ),
    "tiny_gen": (
        "gen.jsonl",
        GEN_DOCS,
        'output_type: generate_until\ndoc_to_text: "{{q}}"\n'
        'doc_to_target: "{{a}}"\ngeneration_kwargs:\n  until: [".", "\\n"]\n  max_gen_toks: 6\n'
        "metric_list:\n  - metric: exact_match\n",
    ),
}


def write_tasks(folder: Path) -> Path:
    """Write the three tasks (``tiny_mc``, ``tiny_ppl``, ``tiny_gen``) and their data into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data_name, docs, body) in TASKS.items():
        data = folder / data_name
        data.write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
        header = (
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
            "test_split: test\n"
        )
        (folder / f"{name}.yaml").write_text(header + body, encoding="utf-8")
    return folder
