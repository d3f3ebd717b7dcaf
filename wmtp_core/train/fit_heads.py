"""Fit the extra heads of a pretrained model for self-speculative decoding, the trunk and head 1 untouched.

A model imported with extra heads (`wmtp import-gguf --n-future 4`) starts with heads 2..n as copies of head 1,
which propose token t+1 where token t+k is wanted: nothing is accepted. Speculative decoding accepts head k's
proposal at position t when it equals what greedy decoding emits at t+k after greedy tokens t+1..t+k-1, so the
heads are fitted on exactly that text (self-distillation, as Medusa does):

1. `greedy_corpus`: the model greedily continues code prefixes of one token length, many in a batch (rows of one
   length share their KV-cache batch, so generation runs at hundreds of tokens per second on a CPU);
2. `fit_extra_heads`: heads 2..n learn to predict those continuations (cross-entropy on token t+k at every
   position t whose targets were generated). The trunk runs once per sequence under no_grad and its output is kept,
   so each later epoch costs only the head blocks and the shared unembedding.

Head 1, the trunk, the final norm and the unembedding stay frozen: greedy output, and so pass@k of greedy decoding,
is exactly the imported model's, while speculative decoding gets faster.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from wmtp_core.eval.generate import SamplingParams, generate_ids


@dataclass(frozen=True)
class Continuation:
    """Token ids of a prefix and its greedy continuation; targets are the ids from `start` on."""

    ids: list[int]
    start: int


@dataclass
class FitReport:
    steps: int = 0
    tokens: int = 0
    loss_per_head: list[list[float]] = field(default_factory=list)  # [epoch][head k - 2]
    accuracy_per_head: list[list[float]] = field(default_factory=list)  # top-1 agreement with the target

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "tokens": self.tokens,
            "loss_per_head": self.loss_per_head,
            "accuracy_per_head": self.accuracy_per_head,
        }


def padded_prompts(
    texts: Sequence[str], tokenizer, *, multiple: int = 16, pad_text: str = "\n", limit: int | None = None, seed: int = 0
) -> list[list[int]]:
    """Prompts (right-stripped, as the evaluation encodes them) padded on the left with `pad_text` tokens to a
    multiple of `multiple` tokens, so that many share a length and `greedy_corpus` decodes them in one batch (a
    code file may well start with blank lines). Shuffled; the first `limit`."""
    (pad,) = tokenizer.encode(pad_text)
    prompts = []
    for text in texts:
        ids = tokenizer.encode(text.rstrip(), bos=True)
        prompts.append([pad] * (-len(ids) % multiple) + ids)
    random.Random(seed).shuffle(prompts)
    return prompts[:limit] if limit is not None else prompts


def greedy_corpus(
    model,
    tokenizer,
    prefixes: Sequence[Sequence[int]],
    new_tokens: int,
    *,
    stop: Sequence[str] = (),
    batch_size: int = 32,
    progress: bool = True,
) -> list[Continuation]:
    """Greedy continuations of `new_tokens` tokens (fewer where EOS or a `stop` string ends one) of every prefix."""
    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens, stop=tuple(stop))
    completions = generate_ids(
        model, tokenizer, prefixes, params, batch_size=batch_size, progress=progress, desc="greedy corpus"
    )
    return [
        Continuation(ids=[*p, *c[0].tokens], start=len(p))
        for p, c in zip(prefixes, completions, strict=True)
        if c[0].tokens
    ]


def _extra_head_parameters(model) -> list[torch.nn.Parameter]:
    if model.n_future < 2:
        raise ValueError("the model has one head: import it with --n-future >= 2 to fit extra heads")
    model.requires_grad_(False)
    model.extra_heads.requires_grad_(True)
    return list(model.extra_heads.parameters())


def _batches(items: list[Continuation], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped by sequence length (no padding: rows of a batch are equally long), batches shuffled."""
    by_length: dict[int, list[int]] = {}
    for i, c in enumerate(items):
        by_length.setdefault(len(c.ids), []).append(i)
    batches = [group[j : j + batch_size] for group in by_length.values() for j in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def fit_extra_heads(
    model,
    corpus: Sequence[Continuation],
    *,
    epochs: int = 2,
    lr: float = 3e-4,
    batch_size: int = 8,
    weight_decay: float = 0.0,
    corpus_vocab: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> FitReport:
    """Train heads 2..n of `model` in place on `corpus` (see the module docstring); returns losses per epoch.

    AdamW with a linear warm-up over the first 5% of steps and a cosine decay to 10% of `lr`. With
    `corpus_vocab`, the softmax of the loss runs over the tokens the corpus holds (a few thousand of a 49152-piece
    vocabulary): the unembedding is most of a head's cost, and the rest of the vocabulary never appears as a
    target, so fitting runs several times faster. Decoding still takes the argmax over the whole vocabulary.
    """
    items = [c for c in corpus if len(c.ids) - c.start >= 1]
    if not items:
        raise ValueError("corpus: no continuation holds a generated token to fit")
    params = _extra_head_parameters(model)
    model.eval()  # no dropout anywhere; eval() only documents that the frozen parts are inference-only
    rng = random.Random(seed)
    device = next(model.parameters()).device
    with torch.no_grad():
        trunk_out = [
            model.trunk(torch.tensor([c.ids], device=device))[0]
            for c in tqdm(items, desc="trunk states", disable=not progress)
        ]
    plan = [_batches(items, batch_size, rng) for _ in range(epochs)]
    total = sum(len(p) for p in plan)
    warmup = max(1, total // 20)
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup
        if s < warmup
        else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup))),
    )
    report = FitReport()
    n_extra = model.n_future - 1
    weight = model.output.weight
    remap = None
    if corpus_vocab:
        used = torch.tensor(sorted({t for c in items for t in c.ids}), device=device)
        weight = model.output.weight[used]
        remap = torch.full((model.args.vocab_size,), -1, dtype=torch.long, device=device)
        remap[used] = torch.arange(len(used), device=device)
    with tqdm(total=total, desc="fitting heads", unit="step", disable=not progress) as bar:
        for epoch_batches in plan:
            loss_sum, right, count = [0.0] * n_extra, [0] * n_extra, [0] * n_extra
            for batch in epoch_batches:
                h = torch.stack([trunk_out[i] for i in batch])
                ids = torch.tensor([items[i].ids for i in batch], device=device)
                start = min(items[i].start for i in batch)
                total_loss = h.new_zeros(())
                for k in range(2, model.n_future + 1):
                    # Head k at position t predicts token t+k; only generated tokens are targets.
                    first = max(0, start - k)
                    if ids.shape[1] - k <= first:
                        continue
                    latent = model.head(h[:, first : ids.shape[1] - k], k)
                    logits = F.linear(model.norm(latent), weight).float()
                    target = ids[:, first + k :] if remap is None else remap[ids[:, first + k :]]
                    keep = torch.arange(first + k, ids.shape[1], device=device)[None, :] >= torch.tensor(
                        [items[i].start for i in batch], device=device
                    )[:, None]
                    ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
                    n = int(keep.sum())
                    total_loss = total_loss + (ce * keep).sum() / max(1, n)
                    loss_sum[k - 2] += float((ce.detach() * keep).sum())
                    right[k - 2] += int(((logits.argmax(-1) == target) & keep).sum())
                    count[k - 2] += n
                optimizer.zero_grad(set_to_none=True)
                total_loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                report.steps += 1
                report.tokens += int(ids.numel())
                bar.update(1)
                bar.set_postfix(loss=f"{float(total_loss.detach()) / n_extra:.3f}")
            report.loss_per_head.append([s / max(1, c) for s, c in zip(loss_sum, count, strict=True)])
            report.accuracy_per_head.append([r / max(1, c) for r, c in zip(right, count, strict=True)])
    model.requires_grad_(False)
    return report
