import torch

from llm_lab.core.model.gpt import MiniGPT, MiniGPTConfig
from llm_lab.core.train.optim import build_optimizer, param_groups


def _model(**kw):
    return MiniGPT(MiniGPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, n_embd=8, **kw))


def test_matrices_decay_vectors_do_not_and_tied_weights_appear_once():
    model = _model(tie_embeddings=True)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert id(model.tok_emb.weight) in {id(p) for p in decay["params"]}


def test_fused_adamw_on_cpu_and_foreach_when_asked():
    model = _model()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8, device=torch.device("cpu"))
    assert opt.defaults["fused"] is True
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    opt = build_optimizer(
        model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8, device=torch.device("cpu"), fused=False
    )
    assert not opt.defaults["fused"]
