"""Any llm-lab model as an EleutherAI lm-evaluation-harness model: :class:`LabLM`.

The harness (``pip install "foundry-llm[eval]"``) asks a model three kinds of question, and :class:`LabLM` answers
each with this project's own code:

1. ``loglikelihood(context, continuation)`` (multiple-choice tasks such as HellaSwag and ARC): the summed
   log-probability of the continuation's tokens and whether greedy decoding would produce it. Requests that share
   a context (the choices of one question) run that context once, keep its key/value cache, and run only the
   continuations on top of it, ``batch_size`` of similar length at a time (those of several questions mixed, so
   little of a batch is padding). The other requests run in batches of similar length, longest first,
   left-padded. Either way the output head runs only at the positions that are scored: for a small model with a
   large vocabulary, the head is most of the work of a forward pass.
2. ``loglikelihood_rolling(text)`` (perplexity tasks such as wikitext): the whole text's log-likelihood, cut into
   windows of the model's context with the harness's own ``get_rolling_token_windows``, the first token predicted
   from the end-of-text token. A tokenizer without one (a char tokenizer built from a text) cannot predict the
   first token of a document; such a package gets one clear ``ValueError`` instead of a number that would not
   compare with any other model's.
3. ``generate_until(context, until=[...])`` (generation tasks): greedy decoding through
   :func:`~llm_lab.core.decode.generate.generate`, cut before the first stop string.

A prompt longer than the model's context is cut from the left, as the harness's own backends do, and a warning
says how many were.

Use it from Python like any harness model::

    import lm_eval
    from llm_lab.core.harness import LabLM

    results = lm_eval.simple_evaluate(model=LabLM.from_package("out/pkg"), tasks=["hellaswag"])
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import nn
from tqdm import tqdm

from llm_lab.core.decode.generate import generate
from llm_lab.utils.devices import resolve_device
from llm_lab.utils.modules import eval_mode
from llm_lab.utils.paths import path_kind

__all__ = ["LabLM"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256  # the harness's own default for generation tasks that do not set max_gen_toks


class LabLM(TemplateLM):
    """An llm-lab model and tokenizer as an lm-evaluation-harness ``LM``.

    Args:
        model: a ``MiniGPT`` (anything with ``.config`` and its forward contract).
        tokenizer: the package's tokenizer (``encode``, ``decode``, ``decode_bytes``, ``eot_token_id``).
        batch_size: most sequences per forward pass.
        device: where to run (default: where the model is).

    Raises:
        ValueError: a non-positive ``batch_size``.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, *, batch_size: int = 16, device: str | torch.device | None = None
    ) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        device = resolve_device(device)
        self.model = model.to(device) if device is not None else model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._device = next(self.model.parameters()).device
        self.max_length = int(model.config.context_length)
        self.truncated = 0  # requests cut from the left so far (see the module docs)

    @classmethod
    def from_package(
        cls,
        path: str | Path,
        *,
        checkpoint: str | None = None,
        device: str | None = None,
        batch_size: int = 16,
        dtype: str = "fp32",
    ) -> LabLM:
        """Load a package or run directory (see :func:`~llm_lab.core.package.io.load_package_or_run`); a ``dtype``
        other than fp32 (bf16, int8, auto) runs its decode copy (:func:`~llm_lab.core.decode.prepare_for_decode`),
        whose weights are rounded to that dtype: scores move by about as much as its bits per byte do."""
        from llm_lab.core.decode import model_in_dtype
        from llm_lab.core.decode.fast_linear import resolve_decode_dtype
        from llm_lab.core.package.io import load_package_or_run

        resolve_decode_dtype(dtype)  # an unknown name is refused before the model loads
        _, tokenizer, model = load_package_or_run(path, checkpoint=checkpoint, device=device)
        return cls(model_in_dtype(model, dtype), tokenizer, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return self._device

    # ------------------------------------------------------------------------------------------ tokenizer

    @property
    def eot_token_id(self) -> int | None:
        return self.tokenizer.eot_token_id

    @property
    def prefix_token_id(self) -> int:
        eot = self.tokenizer.eot_token_id
        if eot is None:
            raise ValueError(
                "this package's tokenizer has no end-of-text token, so nothing can predict the first token of a "
                "document: tasks that score a text from its start (loglikelihood_rolling, such as wikitext, or an "
                "empty context) need a tokenizer with one (a BPE tokenizer, or a char tokenizer trained with an "
                "end-of-text token)"
            )
        return eot

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return list(self.tokenizer.encode(string))

    def tok_decode(self, tokens: Sequence[int], **kwargs: Any) -> str:
        return self.tokenizer.decode(list(tokens))

    # ------------------------------------------------------------------------------------------ scoring

    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Cut ``context`` from the left so that ``context + continuation[:-1]`` fits the model's context."""
        if not continuation:
            raise ValueError("a loglikelihood request has an empty continuation; there is nothing to score")
        if len(continuation) > self.max_length:
            raise ValueError(
                f"a continuation of {len(continuation)} tokens is longer than the model's context "
                f"({self.max_length}); it cannot be scored"
            )
        room = self.max_length + 1 - len(continuation)
        if len(context) > room:
            self.truncated += 1
            context = context[len(context) - room :]
        if not context:
            raise ValueError("a loglikelihood request has an empty context; the harness should have given it one")
        return context, continuation

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[Any, list[int], list[int]]],
        disable_tqdm: bool = False,
        *,
        greedy: bool = True,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        """``(sum of the continuation's log-probabilities, is it the greedy continuation)`` per request; with
        ``greedy=False`` (rolling windows, which need only the sum) the second is always False and costs nothing."""
        fitted = [self._fit(list(ctx), list(cont)) for _, ctx, cont in requests]
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, (ctx, _) in enumerate(fitted):
            groups[tuple(ctx)].append(index)
        shared = [members for members in groups.values() if len(members) > 1]
        single = sorted(
            (members[0] for members in groups.values() if len(members) == 1),
            key=lambda i: -(len(fitted[i][0]) + len(fitted[i][1])),
        )
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), desc="loglikelihood", disable=disable_tqdm)
        with eval_mode(self.model), torch.inference_mode():
            # Up to batch_size questions of similar context length together (their continuations then run
            # batch_size at a time, see _score_shared), as long as the longest context and the longest
            # continuation of the batch fit the model's context together (each question fits on its own).
            shared.sort(key=lambda members: -len(fitted[members[0]][0]))
            batch: list[list[int]] = []
            longest = 0  # the longest continuation in the batch
            for members in shared + [[]]:
                member_longest = max((len(fitted[i][1]) for i in members), default=0)
                fits = batch and len(fitted[batch[0][0]][0]) + max(longest, member_longest) - 1 <= self.max_length
                if batch and (not members or len(batch) == self.batch_size or not fits):
                    contexts = [fitted[m[0]][0] for m in batch]
                    scores = self._score_shared(contexts, [[fitted[i][1] for i in m] for m in batch], greedy)
                    for m, group_scores in zip(batch, scores, strict=True):
                        for i, score in zip(m, group_scores, strict=True):
                            results[i] = score
                    progress.update(sum(map(len, batch)))
                    batch, longest = [], 0
                if members:
                    batch.append(members)
                    longest = max(longest, member_longest)
            for start in range(0, len(single), self.batch_size):
                chunk = single[start : start + self.batch_size]
                for i, score in zip(chunk, self._score_batch([fitted[i] for i in chunk], greedy), strict=True):
                    results[i] = score
                progress.update(len(chunk))
        progress.close()
        if self.truncated:
            logger.warning(
                "%d request(s) were longer than the model's context (%d tokens) and were cut from the left, as the "
                "harness does",
                self.truncated,
                self.max_length,
            )
            self.truncated = 0
        return results  # type: ignore[return-value]

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]], greedy: bool) -> list[tuple[float, bool]]:
        """Score unrelated requests in one left-padded forward, the output head only over the continuations."""
        inputs = [(ctx + cont)[:-1] for ctx, cont in pairs]
        width = max(len(x) for x in inputs)
        keep = max(len(cont) for _, cont in pairs)
        ids = torch.zeros(len(inputs), width, dtype=torch.long)
        mask = torch.zeros(len(inputs), width, dtype=torch.long)
        for row, x in enumerate(inputs):
            ids[row, width - len(x) :] = torch.tensor(x)
            mask[row, width - len(x) :] = 1
        padded = bool((mask == 0).any())
        logits, _ = self.model(
            ids.to(self.device), attention_mask=mask.to(self.device) if padded else None, logits_to_keep=keep
        )  # (B, keep, V): the last `keep` positions of every row
        logp = torch.log_softmax(logits.float(), dim=-1)
        return [_score(logp[row, keep - len(cont) :], cont, greedy) for row, (_, cont) in enumerate(pairs)]

    def _score_shared(
        self, contexts: list[list[int]], continuations: list[list[list[int]]], greedy: bool
    ) -> list[list[tuple[float, bool]]]:
        """Score several continuations of each of several contexts: the contexts once, as one left-padded batch
        whose keys and values are cached, then every continuation on a copy of its context's cache, ``batch_size``
        continuations of similar length at a time."""
        width = max(len(ctx) for ctx in contexts)
        longest = max(len(cont) for conts in continuations for cont in conts)
        ids = torch.zeros(len(contexts), width, dtype=torch.long)
        mask = torch.zeros(len(contexts), width, dtype=torch.long)
        for row, ctx in enumerate(contexts):
            ids[row, width - len(ctx) :] = torch.tensor(ctx)
            mask[row, width - len(ctx) :] = 1
        padded = bool((mask == 0).any())
        cache = _new_cache(self.model, len(contexts), width + longest - 1)
        first, _ = self.model(
            ids.to(self.device),
            attention_mask=mask.to(self.device) if padded else None,
            past_key_values=cache,
            logits_to_keep=1,
        )  # (G, 1, V): left padding puts every context's last token in the last column
        first_logp = torch.log_softmax(first[:, 0].float(), dim=-1)  # (G, V): predicts each first continuation token
        owners = [g for g, conts in enumerate(continuations) for _ in conts]
        flat = [cont for conts in continuations for cont in conts]
        flat_scores: list[tuple[float, bool] | None] = [None] * len(flat)
        # The continuations run batch_size at a time, shortest first, so that little of a batch is padding.
        order = sorted(range(len(flat)), key=lambda r: len(flat[r]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            chunk_longest = max(len(flat[r]) for r in rows)
            rest_logp = None
            if chunk_longest > 1:
                # Right padding of the continuations: a real token never attends to the padding after it.
                rest = torch.zeros(len(rows), chunk_longest - 1, dtype=torch.long)
                for k, r in enumerate(rows):
                    rest[k, : len(flat[r]) - 1] = torch.tensor(flat[r][:-1])
                index = torch.tensor([owners[r] for r in rows])
                rest_mask = torch.cat([mask[index], torch.ones(len(rows), chunk_longest - 1, dtype=torch.long)], dim=1)
                logits, _ = self.model(
                    rest.to(self.device),
                    attention_mask=rest_mask.to(self.device) if padded else None,
                    past_key_values=cache.select_rows(index),
                )
                rest_logp = torch.log_softmax(logits.float(), dim=-1)  # (rows, chunk_longest - 1, V)
            for k, r in enumerate(rows):
                cont, g = flat[r], owners[r]
                total, is_greedy = _score(first_logp[g : g + 1], cont[:1], greedy)
                if rest_logp is not None and len(cont) > 1:  # the rest of the continuation, where it lies (no copy)
                    rest_total, rest_greedy = _score(rest_logp[k, : len(cont) - 1], cont[1:], greedy)
                    total, is_greedy = total + rest_total, is_greedy and rest_greedy
                flat_scores[r] = (total, is_greedy)
        scores: list[list[tuple[float, bool]]] = [[] for _ in contexts]
        for owner, score in zip(owners, flat_scores, strict=True):
            scores[owner].append(score)  # type: ignore[arg-type]
        return scores

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text, over windows of the model's context (see the module docs)."""
        windows: list[tuple[None, list[int], list[int]]] = []
        owner: list[int] = []
        for index, (text,) in enumerate(req.args for req in requests):
            pieces = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for ctx, cont in map(make_disjoint_window, pieces):
                windows.append((None, ctx, cont))
                owner.append(index)
        totals = [0.0] * len(requests)
        scores = self._loglikelihood_tokens(windows, disable_tqdm, greedy=False)
        for index, (logprob, _) in zip(owner, scores, strict=True):
            totals[index] += logprob
        return totals

    # ------------------------------------------------------------------------------------------ generation

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy text for each ``(context, {"until": [...], "max_gen_toks": N})`` request, cut before a stop."""
        out: list[str | None] = [None] * len(requests)
        by_settings: dict[str, list[int]] = defaultdict(list)
        for index, req in enumerate(requests):
            by_settings[repr(sorted(req.args[1].items()))].append(index)
        progress = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm)
        for members in by_settings.values():
            settings = dict(requests[members[0]].args[1])
            until = settings.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(settings.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            keep = max(1, self.max_length - max_new)
            members = sorted(members, key=lambda i: -len(requests[i].args[0]))
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                prompts = []
                for i in chunk:
                    ids = self.tok_encode(requests[i].args[0])
                    if not ids:
                        ids = [self.prefix_token_id]
                    if len(ids) > keep:
                        self.truncated += 1
                        ids = ids[-keep:]
                    prompts.append(ids)
                result = generate(
                    self.model,
                    prompts,
                    max_new,
                    temperature=0.0,
                    stop=until or None,
                    tokenizer=self.tokenizer,
                    eos_token_id=self.eot_token_id,
                    on_overflow="stop",
                )
                for i, text in zip(chunk, result.texts or [], strict=True):
                    out[i] = text
                progress.update(len(chunk))
        progress.close()
        if self.truncated:
            logger.warning("%d prompt(s) were cut from the left to leave room for generation", self.truncated)
            self.truncated = 0
        return out  # type: ignore[return-value]


def _score(logp: torch.Tensor, continuation: list[int], greedy: bool) -> tuple[float, bool]:
    """``(sum of log p(token), greedy?)`` from ``(len(continuation), V)`` log-probabilities; ``greedy=False``
    skips the arg-max (and answers False)."""
    target = torch.tensor(continuation, device=logp.device)
    total = float(logp.gather(-1, target[:, None]).sum())
    return total, greedy and bool((logp.argmax(dim=-1) == target).all())


def _new_cache(model: nn.Module, batch_size: int, max_len: int) -> Any:
    from llm_lab.core.model.kv_cache import KVCache

    return KVCache(model.config, batch_size, max_len=max_len)


def evaluate_tasks(
    lm: LabLM | Any,
    tasks: Sequence[str],
    *,
    include_path: str | Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
) -> dict[str, Any]:
    """Run harness tasks on ``lm`` (a :class:`LabLM`, or any harness ``LM``) and return the harness's results dict.

    Args:
        lm: the model.
        tasks: task (or group) names, the harness's own or ones defined under ``include_path``.
        include_path: a folder of task YAML files to add to the harness's list.
        limit: at most this many documents per task.
        num_fewshot: examples in each prompt (default: each task's own).

    Returns:
        The dict ``lm_eval.simple_evaluate`` returns (``results``, ``configs``, ``versions``, ...), without the
        per-sample log.

    Raises:
        ValueError: an unknown task name, a task file that does not parse, or a task this model cannot run.
    """
    import lm_eval

    names = list(tasks)
    manager = task_manager(names, include_path)
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=names, task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=False
        )
    except Exception as error:  # the harness and datasets raise assorted errors for broken task files: name them
        if isinstance(error, ValueError) or _raised_here(error):
            raise  # ours already say what to change; anything else of ours is a bug, and keeps its traceback
        raise ValueError(f"the harness could not run {', '.join(names)}: {type(error).__name__}: {error}") from error
    return results


def _raised_here(error: BaseException) -> bool:
    """Whether ``error`` was raised inside llm_lab (its innermost frame is one of ours)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and Path(tb.tb_frame.f_code.co_filename).is_relative_to(Path(__file__).parents[1])


def task_manager(tasks: Sequence[str], include_path: str | Path | None = None) -> Any:
    """The harness's ``TaskManager`` that knows ``tasks``, with the files under ``include_path`` added.

    Raises:
        FileNotFoundError: ``include_path`` is not a folder.
        ValueError: a task file there does not parse, or a task name is neither the harness's nor there.
    """
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        kind = path_kind(include_path)  # a file or a FIFO is not "no such folder"
        if kind is None:
            raise FileNotFoundError(f"--include-path: no such folder: {include_path}")
        raise ValueError(f"--include-path {include_path} is {kind}, not a folder; give a folder of task YAML files")
    if include_path is not None:
        _check_task_files(Path(include_path))
        # Indexing the harness's own thousands of task files takes half a minute: skip it when the folder has them all.
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(name in manager.all_tasks for name in tasks):
            return manager
    manager = TaskManager(include_path=str(include_path) if include_path is not None else None)
    unknown = [name for name in tasks if name not in manager.all_tasks]
    if unknown:
        where = f" or in {include_path}" if include_path is not None else ""
        raise ValueError(
            f"unknown task {unknown[0]!r}: not one of the harness's tasks{where} (`lm_eval ls tasks` lists them; "
            "a task of your own needs --include-path FOLDER with its YAML file)"
        )
    return manager


def _check_task_files(folder: Path) -> None:
    """Raise ``ValueError`` naming the first task YAML under ``folder`` that does not parse (the harness skips it
    with a log line, and the task then looks unknown)."""
    import yaml

    class _AnyTag(yaml.SafeLoader):  # the harness's own tags (!function) are its business, not a parse error
        pass

    _AnyTag.add_multi_constructor("!", lambda loader, suffix, node: None)
    for path in sorted(folder.rglob("*.yaml")):
        try:
            yaml.load(path.read_text(encoding="utf-8"), Loader=_AnyTag)  # noqa: S506 - a SafeLoader subclass
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            problem = " ".join(str(error).split())
            raise ValueError(f"{path}: not a valid task file: {problem}") from None
