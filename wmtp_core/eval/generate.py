"""Batched sampling and greedy decoding with the model's positional KV cache.

The cache has one write position for the whole batch, so prompts of different lengths are padded on the left
to the longest of their batch, and the padding is masked out of attention (`KVCache.pad`): with RoPE's relative
positions a padded row attends exactly as it would alone, and only the float rounding of a larger matmul can
differ. Rows are sorted by prompt length before they are batched, so little padding is computed; the n samples
of one prompt share its prefill, and finished rows leave the batch instead of being decoded on.

Only the last position is unembedded during prefill: a 32k vocabulary over a 600-token prompt for 200 rows
would otherwise need gigabytes of logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

FINISH_EOS = "eos"
FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 decodes greedily (top_p and seed are then unused)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if any(not s for s in self.stop):
            raise ValueError(f"stop: empty stop sequence in {self.stop!r} would end every completion at once")


@dataclass(frozen=True)
class Completion:
    """One decoded continuation. `tokens` ends with EOS when finish_reason is "eos"; `text` never holds EOS
    and is cut before the first stop sequence."""

    tokens: list[int]
    text: str
    finish_reason: str


NUCLEUS_CANDIDATES = 1024


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most probable tokens whose mass reaches `top_p`, renormalize.

    probs [..., V] sum to 1 along the last dim. The token that crosses `top_p` is kept, so at least one survives.
    """
    if top_p >= 1.0:
        return probs
    # A language model's nucleus is mostly a few dozen tokens: the NUCLEUS_CANDIDATES most probable, taken with
    # topk, settle every row whose mass reaches top_p among them (the same tokens and values as a full sort);
    # sorting a 49k vocabulary per row per step was 11 % of sampled decoding of SmolLM2 on 2 cores.
    k = min(NUCLEUS_CANDIDATES, probs.shape[-1])
    sorted_probs, order = torch.topk(probs, k, dim=-1)
    if k < probs.shape[-1] and not bool((sorted_probs.sum(dim=-1) >= top_p).all()):
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """logits [B, V] -> next token ids [B]; temperature 0 is argmax."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    probs = top_p_filter(probs, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Detokenizer:
    """Text of a continuation as it reads after its prompt.

    SentencePiece drops the leading space of the first piece it decodes, so decoding the continuation alone
    would lose the indentation a HumanEval completion starts with. Decoding it behind the prompt's last token
    and cutting that token's text off keeps it, without decoding the whole prompt at every step.
    """

    def __init__(self, tokenizer, prompt_ids: Sequence[int]):
        self.tokenizer = tokenizer
        self.anchor = list(prompt_ids[-1:])
        self.anchor_text = tokenizer.decode(self.anchor) if self.anchor else ""

    def text(self, ids: Sequence[int]) -> str:
        if not self.anchor:
            return self.tokenizer.decode(list(ids))
        full = self.tokenizer.decode(self.anchor + list(ids))
        if full.startswith(self.anchor_text):
            return full[len(self.anchor_text) :]
        return self.tokenizer.decode(list(ids))


class StopCriteria:
    """EOS, stop sequences on the decoded text, and the token budget, checked the same way for every decoder so
    greedy and speculative decoding stop at the same token."""

    def __init__(
        self, detokenizer: Detokenizer | None, eos_id: int | None, stop: Sequence[str], max_new_tokens: int
    ):
        if stop and detokenizer is None:
            raise ValueError("stop: stop sequences are checked on decoded text, so a tokenizer is required")
        self.detok = detokenizer
        self.eos_id = eos_id
        self.stop = tuple(stop)
        self.max_new_tokens = max_new_tokens

    def stop_at(self, text: str) -> int | None:
        """Character index of the earliest stop sequence in `text`, or None."""
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def finish_reason(self, ids: Sequence[int]) -> str | None:
        """Why decoding must end after `ids`, or None to go on."""
        if ids and self.eos_id is not None and ids[-1] == self.eos_id:
            return FINISH_EOS
        if self.stop and self.stop_at(self.detok.text(ids)) is not None:
            return FINISH_STOP
        if len(ids) >= self.max_new_tokens:
            return FINISH_LENGTH
        return None

    def completion(self, ids: Sequence[int], reason: str) -> Completion:
        if self.detok is None:
            return Completion(tokens=list(ids), text="", finish_reason=reason)
        body = ids[:-1] if reason == FINISH_EOS else ids
        text = self.detok.text(body)
        cut = self.stop_at(text)
        if cut is not None:
            text = text[:cut]
        return Completion(tokens=list(ids), text=text, finish_reason=reason)


def check_fits(model, prompt_len: int, max_new_tokens: int, what: str = "prompt") -> None:
    limit = model.args.max_seq_len
    if prompt_len + max_new_tokens > limit:
        raise ValueError(
            f"{what}: {prompt_len} prompt tokens + max_new_tokens {max_new_tokens} exceed the model's "
            f"max_seq_len {limit}; lower max_new_tokens or use a model with a longer context"
        )


def _select_rows(cache, rows: torch.Tensor, upto: int) -> None:
    """Make cache rows 0..len(rows)-1 hold rows `rows` (positions < upto). The model attends to the first B rows
    of the cache for a batch of B, so finished rows can be dropped and one prompt's prefill shared by its samples."""
    for t in (*cache.keys, *cache.values):
        t[: len(rows), :, :upto] = t[rows, :, :upto]
    if cache.pad is not None:
        cache.pad[: len(rows)] = cache.pad[rows]


@torch.inference_mode()
def _decode_rows(
    model,
    prompts: torch.Tensor,
    owner: list[int],
    criteria: list[StopCriteria],
    params: SamplingParams,
    generator: torch.Generator | None,
    pad: torch.Tensor | None = None,
) -> list[Completion]:
    """Decode len(owner) rows; row r continues prompts[owner[r]] and stops on criteria[r]. prompts [U, T] are
    left-padded to one length T where `pad` [U, T] is True. Each distinct prompt is prefilled once; finished rows
    leave the batch."""
    n_rows, (n_prompts, prompt_len) = len(owner), prompts.shape
    device = prompts.device
    cache = model.new_cache(n_rows, prompt_len + params.max_new_tokens, device=device)
    if pad is not None and bool(pad.any()):
        cache.pad = torch.zeros(cache.batch_size, cache.max_seq_len, dtype=torch.bool, device=device)
        cache.pad[:n_prompts, :prompt_len] = pad
    h = model.head(model.trunk(prompts, start_pos=0, cache=cache), 1, start_pos=0, cache=cache)
    logits = model.unembed(h[:, -1])
    if owner != list(range(prompts.shape[0])):
        owner_t = torch.tensor(owner, device=device)
        _select_rows(cache, owner_t, prompt_len)
        logits = logits[owner_t]
    ids: list[list[int]] = [[] for _ in range(n_rows)]
    reasons: list[str | None] = [None] * n_rows
    active = list(range(n_rows))  # the row each cache slot decodes
    pos = prompt_len
    while True:
        token = sample_next(logits, params.temperature, params.top_p, generator)
        going = []
        for slot, (row, t) in enumerate(zip(active, token.tolist(), strict=True)):
            ids[row].append(t)
            reasons[row] = criteria[row].finish_reason(ids[row])
            if reasons[row] is None:
                going.append(slot)
        if not going:
            break
        if len(going) < len(active):
            keep = torch.tensor(going, device=device)
            _select_rows(cache, keep, pos)
            token, active = token[keep], [active[s] for s in going]
        h = model.head(model.trunk(token[:, None], start_pos=pos, cache=cache), 1, start_pos=pos, cache=cache)
        logits = model.unembed(h)[:, 0]
        pos += 1
    return [c.completion(i, r) for c, i, r in zip(criteria, ids, reasons, strict=True)]


def generate_ids(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    n: int = 1,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "generate",
) -> list[list[Completion]]:
    """`n` completions of each tokenized prompt. Returns one list of n Completions per prompt, in input order.

    Sampling is reproducible for the same prompts, n, batch_size and seed: every batch draws from its own
    generator seeded by `params.seed` and the batch's first row. Rows are sorted by prompt length, then prompt,
    then sample, and cut into batches of `batch_size` rows; prompts of different lengths in a batch are
    left-padded (see the module docstring).
    """
    if n < 1:
        raise ValueError(f"n: expected >= 1 samples per prompt, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    device = next(model.parameters()).device
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}]: empty prompt (encode with bos=True)")
        check_fits(model, len(p), params.max_new_tokens, what=f"prompts[{i}]")
    rows = sorted(((len(p), i, s) for i, p in enumerate(prompts) for s in range(n)))
    batches: list[list[tuple[int, int, int]]] = []
    for row in rows:
        if batches and len(batches[-1]) < batch_size:
            batches[-1].append(row)
        else:
            batches.append([row])
    out: list[list[Completion | None]] = [[None] * n for _ in prompts]
    with tqdm(total=len(rows), desc=desc, unit="seq", disable=not progress) as bar:
        for batch in batches:
            generator = None
            if params.temperature > 0:
                _, first_prompt, first_sample = batch[0]
                generator = torch.Generator(device=device)
                # A tuple of ints hashes the same in every process (only str hashing is salted).
                generator.manual_seed(hash((params.seed, first_prompt, first_sample)) & 0x7FFF_FFFF_FFFF_FFFF)
            distinct = list(dict.fromkeys(i for _, i, _ in batch))
            width = max(len(prompts[i]) for i in distinct)
            unique = torch.tensor(
                [[0] * (width - len(prompts[i])) + list(prompts[i]) for i in distinct],
                dtype=torch.long,
                device=device,
            )
            pad = torch.tensor(
                [[True] * (width - len(prompts[i])) + [False] * len(prompts[i]) for i in distinct],
                device=device,
            )
            owner = [distinct.index(i) for _, i, _ in batch]
            criteria = [
                StopCriteria(
                    Detokenizer(tokenizer, prompts[i]), tokenizer.eos_id, params.stop, params.max_new_tokens
                )
                for _, i, _ in batch
            ]
            completions = _decode_rows(model, unique, owner, criteria, params, generator, pad)
            for (_, i, s), completion in zip(batch, completions, strict=True):
                out[i][s] = completion
            bar.update(len(batch))
    return out  # type: ignore[return-value]


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    params: SamplingParams,
    *,
    n: int = 1,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "generate",
) -> list[list[Completion]]:
    """Text prompts -> n Completions each. Prompts are encoded with BOS, as the models were trained."""
    ids = [tokenizer.encode(p, bos=True) for p in prompts]
    return generate_ids(
        model, tokenizer, ids, params, n=n, batch_size=batch_size, progress=progress, desc=desc
    )
