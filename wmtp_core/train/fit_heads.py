"""Fit the extra heads of a pretrained model for self-speculative decoding, the trunk and head 1 untouched.

A model imported with extra heads (`wmtp import-gguf --n-future 4`) starts with heads 2..n as copies of head 1,
which propose token t+1 where token t+k is wanted: nothing is accepted. Speculative decoding accepts head k's
proposal at position t when it equals what greedy decoding emits at t+k after greedy tokens t+1..t+k-1, so the
heads are fitted on exactly that text (self-distillation, as Medusa does):

1. `greedy_corpus`: the model greedily completes prompts, many in a batch (`padded_prompts` gives them shared
   lengths, so the batched KV-cache decoding computes no padding);
2. `fit_extra_heads`: heads 2..n learn to predict those continuations (cross-entropy on token t+k at every
   position t whose targets were generated). The trunk runs once per sequence under no_grad and its output is kept,
   so each later epoch costs only the head blocks and the shared unembedding. A held-out share of the
   continuations measures what speculative decoding would accept after each epoch, and the best epoch is kept.

Head 1, the trunk, the final norm and the unembedding stay frozen: greedy output, and so pass@k of greedy decoding,
is exactly the imported model's, while speculative decoding gets faster.
"""

from __future__ import annotations

import copy
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
    held_out: list[dict] = field(default_factory=list)  # [epoch] `held_out_acceptance` on the held-out rows
    best_epoch: int | None = None  # 1-based epoch whose heads were kept (None: no held-out rows, the last)

    def as_dict(self) -> dict:
        return {
            "steps": self.steps,
            "tokens": self.tokens,
            "loss_per_head": self.loss_per_head,
            "accuracy_per_head": self.accuracy_per_head,
            "held_out": self.held_out,
            "best_epoch": self.best_epoch,
        }


def padded_prompts(
    texts: Sequence[str], tokenizer, *, multiple: int = 16, pad_text: str = "\n", limit: int | None = None, seed: int = 0
) -> list[list[int]]:
    """Prompts (right-stripped, as the evaluation encodes them) padded on the left with `pad_text` tokens to a
    multiple of `multiple` tokens, so that many share a length and `greedy_corpus` decodes them in one batch (a
    code file may well start with blank lines). Shuffled; the first `limit`."""
    pad_ids = tokenizer.encode(pad_text)
    if len(pad_ids) != 1:
        raise ValueError(f"pad_text: {pad_text!r} encodes to {len(pad_ids)} tokens {pad_ids}; expected one token")
    (pad,) = pad_ids
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


def _by_length(items: Sequence[Continuation], batch_size: int) -> list[list[int]]:
    """Indices grouped by sequence length into batches (no padding: rows of a batch are equally long)."""
    by_length: dict[int, list[int]] = {}
    for i, c in enumerate(items):
        by_length.setdefault(len(c.ids), []).append(i)
    return [group[j : j + batch_size] for group in by_length.values() for j in range(0, len(group), batch_size)]


@torch.no_grad()
def _trunk_states(model, items: Sequence[Continuation], batch_size: int, progress: bool) -> list[torch.Tensor]:
    """The frozen trunk's output for every sequence, computed once, a batch of equal lengths at a time."""
    device = next(model.parameters()).device
    out: list[torch.Tensor | None] = [None] * len(items)
    batches = _by_length(items, batch_size)
    for batch in tqdm(batches, desc="trunk states", unit="batch", disable=not progress):
        h = model.trunk(torch.tensor([items[i].ids for i in batch], device=device))
        for row, i in enumerate(batch):
            out[i] = h[row]
    return out  # type: ignore[return-value]


@torch.no_grad()
def held_out_acceptance(model, items: Sequence[Continuation], states: Sequence[torch.Tensor]) -> dict:
    """What speculative decoding would accept on `items`, from their trunk states: at every position t from which
    a generated token is drafted, head k proposes the argmax over the whole vocabulary for token t+k, and the
    proposal counts only while heads 2..k-1 were right as well (a rejected draft ends the pass).

    Decoding is then replayed on each continuation (which is greedy output, so it is exactly what decoding sees):
    a pass at position t emits the greedy token and the drafts the next pass accepts, and the pass after them
    starts at the first rejected draft.
    Returns `tokens_per_forward` (generated tokens over those passes: the figure speculative decoding reaches on
    this text), `forward_passes`, `positions` (generated tokens) and `accuracy_per_head` (head k alone, top-1
    against token t+k at every position). The mean chain over every position overstates it: a pass that accepts
    k drafts skips the k positions after it, so well-predicted stretches are visited less than their length.
    """
    n_extra = model.n_future - 1
    passes, positions = 0, 0
    right, count = [0] * n_extra, [0] * n_extra
    for c, h in zip(items, states, strict=True):
        ids = torch.tensor(c.ids, device=h.device)
        first, length = max(0, c.start - 1), len(c.ids)
        if length - 1 <= first:
            continue
        alive = torch.ones(length - 1 - first, dtype=torch.bool, device=h.device)
        chain = torch.zeros_like(alive, dtype=torch.long)
        for k in range(2, model.n_future + 1):
            guess = model.unembed(model.head(h[None], k)[0, first : length - 1]).argmax(-1)  # drafting positions only
            target = torch.full_like(guess, -1)
            target[: max(0, length - first - k)] = ids[first + k :]
            ok = guess == target
            valid = target >= 0
            right[k - 2] += int((ok & valid).sum())
            count[k - 2] += int(valid.sum())
            alive &= ok
            chain += alive.long()
        accepted, t, last = chain.tolist(), 0, 0
        while t < len(accepted):
            passes += 1
            last = accepted[t]
            t += 1 + last
        passes += int(last > 0)  # drafts are accepted by the pass after the one that proposed them
        positions += len(accepted)
    return {
        "positions": positions,
        "forward_passes": passes,
        "tokens_per_forward": positions / max(1, passes),
        "accuracy_per_head": [r / max(1, n) for r, n in zip(right, count, strict=True)],
    }


def fit_extra_heads(
    model,
    corpus: Sequence[Continuation],
    *,
    epochs: int = 2,
    lr: float = 3e-4,
    batch_size: int = 8,
    weight_decay: float = 0.0,
    corpus_vocab: bool = True,
    held_out: float = 0.0,
    seed: int = 0,
    progress: bool = True,
) -> FitReport:
    """Train heads 2..n of `model` in place on `corpus` (see the module docstring); returns losses per epoch.

    AdamW with a linear warm-up over the first 5% of steps and a cosine decay to 10% of `lr`. With
    `corpus_vocab`, the softmax of the loss runs over the tokens the corpus holds (a few thousand of a 49152-piece
    vocabulary): the unembedding is most of a head's cost, and the rest of the vocabulary never appears as a
    target, so fitting runs several times faster. Decoding still takes the argmax over the whole vocabulary.

    With `held_out` > 0 that fraction of the continuations (drawn with `seed`) is not trained on: after every
    epoch `held_out_acceptance` measures them, and the heads of the epoch with the most tokens per forward are
    the ones kept, since a small corpus is over-fitted within a few epochs.
    """
    if not 0.0 <= held_out < 1.0:
        raise ValueError(f"held_out: expected a fraction in [0, 1), got {held_out}")
    if epochs < 1:
        raise ValueError(f"epochs: expected >= 1, got {epochs}")
    items = [c for c in corpus if len(c.ids) - c.start >= 1]
    if not items:
        raise ValueError("corpus: no continuation holds a generated token to fit")
    params = _extra_head_parameters(model)
    model.eval()  # no dropout anywhere; eval() only documents that the frozen parts are inference-only
    rng = random.Random(seed)
    device = next(model.parameters()).device
    states = _trunk_states(model, items, batch_size, progress)
    order = list(range(len(items)))
    rng.shuffle(order)
    n_held = int(len(items) * held_out)
    if held_out > 0 and (n_held < 1 or n_held == len(items)):
        raise ValueError(f"held_out: {held_out} of {len(items)} continuations leaves no held-out or no training row")
    held, train = sorted(order[:n_held]), sorted(order[n_held:])
    held_items, held_states = [items[i] for i in held], [states[i] for i in held]
    items, trunk_out = [items[i] for i in train], [states[i] for i in train]
    plan = []
    for _ in range(epochs):
        batches = _by_length(items, batch_size)
        rng.shuffle(batches)
        plan.append(batches)
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
    best: tuple[float, dict] | None = None
    with tqdm(total=total, desc="fitting heads", unit="step", disable=not progress) as bar:
        for epoch, epoch_batches in enumerate(plan, start=1):
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
            if held_items:
                measured = held_out_acceptance(model, held_items, held_states)
                report.held_out.append(measured)
                bar.write(
                    f"epoch {epoch}: held-out tokens per forward {measured['tokens_per_forward']:.3f}, "
                    f"head accuracy {', '.join(f'{a:.1%}' for a in measured['accuracy_per_head'])}"
                )
                if best is None or measured["tokens_per_forward"] > best[0]:
                    best = (measured["tokens_per_forward"], copy.deepcopy(model.extra_heads.state_dict()))
                    report.best_epoch = epoch
    if best is not None:
        model.extra_heads.load_state_dict(best[1])
    model.requires_grad_(False)
    return report
