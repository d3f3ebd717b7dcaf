"""Greedy against self-speculative decoding, timed so that their ratio is a measurement and not an accident.

A speed-up is the ratio of two timings, so both decoders are timed by one function, `time_alternating`:

- `warmup` untimed rounds run first: a decoder's first call pays for allocator growth, lazy initialisation and
  cold caches, and timing one decoder cold against the other warm measures that instead of decoding;
- the order alternates: on item i of round r the baseline runs first when r + i is even, else the candidate, so
  neither always inherits the other's warm caches or pays for the other's garbage;
- each of `repeats` timed rounds (every item once by each decoder) gives its own ratio, and the summary is the
  median ratio with its range and the number of rounds, never one number.

`speedup_caveats` says when the figure cannot mean anything (too little timed work, a range on both sides of 1,
one token per forward pass); the evaluation records its reasons and the report prints them instead of the figure.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from wmtp_core.eval.generate import SamplingParams, generate_ids
from wmtp_core.eval.speculative import SpeculativeStats, speculative_generate

REPEATS = 5
WARMUP = 1
MIN_REPEATS = 3  # fewer ratios than this give no spread worth the name
MIN_TIMED_SECONDS = 1.0  # per decoder over all timed rounds; below it timer and scheduler noise dominate


@dataclass(frozen=True)
class PairTiming:
    """seconds_a[r][i]: decoder a on item i in timed round r (likewise b); the outputs are the last round's."""

    seconds_a: list[list[float]]
    seconds_b: list[list[float]]
    outputs_a: list[Any]
    outputs_b: list[Any]
    warmup: int

    @property
    def repeats(self) -> int:
        return len(self.seconds_a)

    def round_seconds(self) -> tuple[list[float], list[float]]:
        """Seconds of each timed round (every item once) for a and for b."""
        return [sum(r) for r in self.seconds_a], [sum(r) for r in self.seconds_b]

    def ratios(self) -> list[float]:
        """Per timed round, a's seconds over b's: how many times faster b ran (0.0 for a round b took no time)."""
        a, b = self.round_seconds()
        return [x / y if y > 0 else 0.0 for x, y in zip(a, b, strict=True)]

    def item_medians(self) -> tuple[list[float], list[float]]:
        """Median seconds of each item over the timed rounds, for a and for b."""
        columns = lambda s: [statistics.median(col) for col in zip(*s, strict=True)]  # noqa: E731
        return columns(self.seconds_a), columns(self.seconds_b)


def time_alternating(
    run_a: Callable[[Any], Any],
    run_b: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    repeats: int = REPEATS,
    warmup: int = WARMUP,
    clock: Callable[[], float] = time.perf_counter,
    after_item: Callable[[], None] | None = None,
) -> PairTiming:
    """Run `run_a(item)` and `run_b(item)` on every item, `warmup` untimed rounds and then `repeats` timed ones.

    Order within a pair alternates with round and item (see the module docstring). `after_item` is called after
    each pair, outside the timed region (a progress bar).
    """
    if repeats < 1:
        raise ValueError(f"repeats: expected >= 1 timed rounds, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup: expected >= 0 untimed rounds, got {warmup}")
    items = list(items)
    if not items:
        raise ValueError("items: nothing to time")
    runs = (run_a, run_b)
    seconds: tuple[list[list[float]], list[list[float]]] = ([], [])
    outputs: tuple[list[Any], list[Any]] = ([None] * len(items), [None] * len(items))
    for r in range(-warmup, repeats):  # negative rounds are the warm-up
        if r >= 0:
            seconds[0].append([0.0] * len(items))
            seconds[1].append([0.0] * len(items))
        for i, item in enumerate(items):
            for which in (0, 1) if (r + i) % 2 == 0 else (1, 0):
                if r < 0:
                    runs[which](item)
                    continue
                start = clock()
                out = runs[which](item)
                seconds[which][r][i] = clock() - start
                outputs[which][i] = out
            if after_item is not None:
                after_item()
    return PairTiming(seconds[0], seconds[1], outputs[0], outputs[1], warmup)


def speedup_caveats(summary: dict[str, Any]) -> list[str]:
    """Why the speed-up in a `compare_with_greedy` summary means nothing; empty when it is a result."""
    reasons = []
    if not summary["identical_to_greedy"]:
        reasons.append("speculative output differs from greedy, so the two timings decoded different text")
    tpf = summary["tokens_per_forward"]
    if tpf <= 1.0:
        reasons.append(
            f"{tpf:.2f} tokens per forward (every proposal rejected): at one token per pass "
            "self-speculative decoding cannot beat greedy"
        )
    timed = min(summary["greedy_timed_seconds"], summary["speculative_timed_seconds"])
    if timed < MIN_TIMED_SECONDS:
        reasons.append(
            f"only {timed * 1000:.0f} ms of timed decoding per decoder (under {MIN_TIMED_SECONDS:g} s): "
            "timer and scheduling noise"
        )
    n, lo, hi = summary["repeats"], summary["speedup_min"], summary["speedup_max"]
    if n < MIN_REPEATS:
        reasons.append(f"{n} timed repeat(s), fewer than {MIN_REPEATS}: no spread to judge the ratio by")
    elif lo <= 1.0 <= hi:
        reasons.append(
            f"per-repeat speed-ups range from {lo:.2f}x to {hi:.2f}x over {n} repeats, a range that includes 1x "
            "(no difference)"
        )
    return reasons


def compare_with_greedy(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stops: Sequence[Sequence[str]] | None = None,
    repeats: int = REPEATS,
    warmup: int = WARMUP,
    progress: bool = False,
    desc: str = "greedy vs speculative",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Decode every tokenized prompt greedily (KV cache, batch 1) and self-speculatively, timed by
    `time_alternating`; `stops[i]` are prompt i's stop sequences (none by default).

    Returns the summary (an evaluation's `speculative` block: token and acceptance counts of one round, medians
    and spread of the timings, `speedup` = the median ratio or None with `speedup_not_meaningful` saying why) and
    one row per prompt: tokens, forward_passes, greedy_seconds and speculative_seconds (medians over the timed
    rounds), identical, completion (the greedy text).
    """
    stops = [()] * len(prompts) if stops is None else stops
    if len(stops) != len(prompts):
        raise ValueError(f"stops: {len(stops)} stop lists for {len(prompts)} prompts; expected one each")
    params = [SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop=tuple(s)) for s in stops]

    def greedy(i: int):
        return generate_ids(model, tokenizer, [prompts[i]], params[i], batch_size=1, progress=False)[0][0]

    def speculative(i: int):
        return speculative_generate(
            model,
            prompts[i],
            max_new_tokens=max_new_tokens,
            eos_id=tokenizer.eos_id,
            tokenizer=tokenizer,
            stop=params[i].stop,
        )

    with tqdm(total=(warmup + repeats) * len(prompts), desc=desc, disable=not progress) as bar:
        timing = time_alternating(
            greedy, speculative, range(len(prompts)), repeats=repeats, warmup=warmup, after_item=bar.update
        )
    stats = SpeculativeStats(
        accepted_per_head=[0] * (model.n_future - 1), proposed_per_head=[0] * (model.n_future - 1)
    )
    for _, s in timing.outputs_b:
        stats.add(s)
    pairs = zip(timing.outputs_a, timing.outputs_b, strict=True)
    identical = [spec.tokens == plain.tokens for plain, (spec, _) in pairs]
    greedy_rounds, spec_rounds = timing.round_seconds()
    ratios = timing.ratios()
    greedy_s, spec_s = statistics.median(greedy_rounds), statistics.median(spec_rounds)
    summary: dict[str, Any] = {
        "prompts": len(prompts),
        "n_heads": model.n_future,
        "max_new_tokens": max_new_tokens,
        **stats.as_dict(),
        "identical_to_greedy": all(identical),
        "repeats": timing.repeats,
        "warmup": timing.warmup,
        "order": "alternating",
        "greedy_seconds": greedy_s,
        "speculative_seconds": spec_s,
        "greedy_seconds_per_repeat": greedy_rounds,
        "speculative_seconds_per_repeat": spec_rounds,
        "greedy_timed_seconds": sum(greedy_rounds),
        "speculative_timed_seconds": sum(spec_rounds),
        "greedy_tokens_per_s": stats.tokens / greedy_s if greedy_s else 0.0,
        "speculative_tokens_per_s": stats.tokens / spec_s if spec_s else 0.0,
        "speedup_per_repeat": ratios,
        "speedup_median": statistics.median(ratios),
        "speedup_min": min(ratios),
        "speedup_max": max(ratios),
    }
    caveats = speedup_caveats(summary)
    summary["speedup"] = None if caveats else summary["speedup_median"]
    summary["speedup_not_meaningful"] = "; ".join(caveats) or None
    greedy_items, spec_items = timing.item_medians()
    rows = [
        {
            "tokens": s.tokens,
            "forward_passes": s.forward_passes,
            "greedy_seconds": g,
            "speculative_seconds": sp,
            "identical": same,
            "completion": plain.text,
        }
        for plain, (_, s), g, sp, same in zip(
            timing.outputs_a, timing.outputs_b, greedy_items, spec_items, identical, strict=True
        )
    ]
    return summary, rows
