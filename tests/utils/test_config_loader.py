import dataclasses
import json

import pytest

from llm_lab.core.model.gpt import MiniGPTConfig
from llm_lab.utils.config_loader import apply_overrides, config_from_dict, config_to_dict, load_json_config


def test_round_trip_is_verbatim(tmp_path):
    cfg = MiniGPTConfig(vocab_size=100, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, pos_encoding="rope")
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config_to_dict(cfg)))
    assert load_json_config(path, MiniGPTConfig) == cfg


def test_unknown_key_is_named_with_valid_keys():
    with pytest.raises(ValueError, match=r"unknown key 'n_layers'; valid keys are: vocab_size, context_length"):
        config_from_dict(MiniGPTConfig, {"n_layers": 3})


def test_wrong_types_are_rejected():
    with pytest.raises(ValueError, match=r"n_layer: expected an integer, got '3'"):
        config_from_dict(MiniGPTConfig, {"n_layer": "3"})
    with pytest.raises(ValueError, match=r"bias: expected true or false"):
        config_from_dict(MiniGPTConfig, {"bias": 1})
    with pytest.raises(ValueError, match=r"norm: 'batchnorm' is not one of 'layernorm', 'rmsnorm'"):
        config_from_dict(MiniGPTConfig, {"norm": "batchnorm"})


def test_sectioned_file_reads_its_section(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": {"n_layer": 3, "n_head": 2, "n_embd": 32}, "train": {"lr": 1.0}}))
    cfg = load_json_config(path, MiniGPTConfig)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (3, 2, 32)


def test_bad_json_names_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{oops")
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON"):
        load_json_config(path, MiniGPTConfig)
    with pytest.raises(FileNotFoundError, match=r"config file .*missing\.json does not exist; give a JSON file$"):
        load_json_config(tmp_path / "missing.json", MiniGPTConfig)
    # a directory was "not found": what it is is said
    with pytest.raises(ValueError, match=r"config file .* is a directory, not a file; give a JSON file$"):
        load_json_config(tmp_path, MiniGPTConfig)


def test_overrides_are_typed_and_checked():
    sections = {"model": MiniGPTConfig(n_layer=2, n_head=2, n_embd=32)}
    out = apply_overrides(sections, ["model.n_layer=4", "model.norm=rmsnorm", "model.dropout=0.1"])
    assert (out["model"].n_layer, out["model"].norm, out["model"].dropout) == (4, "rmsnorm", 0.1)
    assert sections["model"].n_layer == 2
    with pytest.raises(ValueError, match=r"unknown key 'layers'; valid keys for model: vocab_size"):
        apply_overrides(sections, ["model.layers=4"])
    with pytest.raises(ValueError, match=r"unknown section 'optim'; valid sections: model"):
        apply_overrides(sections, ["optim.lr=1"])
    with pytest.raises(ValueError, match=r"expected section.key=value"):
        apply_overrides(sections, ["n_layer=4"])
    with pytest.raises(ValueError, match=r"n_layer: expected an integer"):
        apply_overrides(sections, ["model.n_layer=four"])


def test_overriding_n_head_keeps_the_attention_type():
    mha = {"model": MiniGPTConfig(n_head=4, n_embd=32)}
    out = apply_overrides(mha, ["model.n_head=2"])["model"]
    assert (out.n_head, out.n_kv_head, out.attention_type) == (2, 2, "mha")
    mqa = {"model": MiniGPTConfig(n_head=4, n_embd=32, attention_type="mqa")}
    out = apply_overrides(mqa, ["model.n_head=8"])["model"]
    assert (out.n_head, out.n_kv_head, out.attention_type) == (8, 1, "mqa")
    gqa = {"model": MiniGPTConfig(n_head=8, n_kv_head=4, n_embd=48)}
    assert apply_overrides(gqa, ["model.n_head=4"])["model"].attention_type == "mha"  # 4 kv heads == 4 heads
    with pytest.raises(ValueError, match=r"n_head \(6\) must be divisible by n_kv_head \(4\)"):
        apply_overrides(gqa, ["model.n_head=6"])
    both = apply_overrides(mha, ["model.n_head=8", "model.n_kv_head=2"])["model"]
    assert (both.n_kv_head, both.attention_type) == (2, "gqa")


def test_replace_config_derives_again_where_dataclasses_replace_would_freeze():
    from llm_lab.utils.config_loader import replace_config

    mha = MiniGPTConfig(n_head=4, n_embd=32)
    wider = replace_config(mha, n_head=8, n_embd=64)
    assert (wider.n_kv_head, wider.attention_type, config_to_dict(wider)["n_kv_head"]) == (8, "mha", None)
    assert config_to_dict(replace_config(mha, vocab_size=99)) == {**config_to_dict(mha), "vocab_size": 99}
    # dataclasses.replace reads n_kv_head back resolved (4), so the same change is refused there.
    with pytest.raises(ValueError, match=r"attention_type='mha' disagrees with n_kv_head=4 and n_head=8"):
        dataclasses.replace(mha, n_head=8, n_embd=64)
    with pytest.raises(ValueError, match=r"n_head \(3\) must be divisible by n_kv_head \(2\)"):
        replace_config(MiniGPTConfig(n_head=4, n_kv_head=2, n_embd=24), n_head=3)
