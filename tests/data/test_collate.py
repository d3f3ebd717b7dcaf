"""Collation with the real Llama-2 tokenizer, and rank sharding."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from wmtp_core.data.collate import IGNORE_INDEX, Collator, RankSharder
from wmtp_core.data.prompts import format_prompt
from wmtp_core.data.sampling import read_rows

ROWS = [
    {"row_id": 7, "instruction": "Add two numbers.", "input": "### Example 1\nInput:\n1 2\nOutput:\n3\n\n",
     "output": "a, b = map(int, input().split())\nprint(a + b)\n", "is_correct": True},
    {"row_id": 3, "instruction": "Print hello.", "input": "", "output": "print('hello')", "is_correct": False},
]  # fmt: skip


def test_masking_boundaries_eos_and_padding(llama2):
    batch = Collator(llama2)(ROWS)
    assert set(batch) == {"input_ids", "labels", "attention_mask", "reward", "row_ids"}
    assert batch["reward"].tolist() == [1.0, 0.0] and batch["row_ids"].tolist() == [7, 3]
    for b, row in enumerate(ROWS):
        prompt = [llama2.bos_id, *llama2.encode(format_prompt(row["instruction"], row["input"]))]
        response = [*llama2.encode(row["output"]), llama2.eos_id]
        n = len(prompt) + len(response)
        ids, labels, mask = batch["input_ids"][b], batch["labels"][b], batch["attention_mask"][b]
        assert ids[:n].tolist() == prompt + response
        assert (labels[: len(prompt)] == IGNORE_INDEX).all()  # the last prompt token is masked ...
        assert labels[len(prompt)].item() == response[0]  # ... the first response token is not
        assert labels[len(prompt) : n].tolist() == response and labels[n - 1].item() == llama2.eos_id
        assert (labels[n:] == IGNORE_INDEX).all() and (mask[n:] == 0).all() and (mask[:n] == 1).all()
        assert llama2.decode(response) == row["output"]
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())  # padded to the longest row
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()


def test_collated_length_equals_prepared_n_tokens(processed, llama2):
    out = processed[0]
    table = read_rows([out / "train.parquet"], [4, 0, 2])
    batch = Collator(llama2)(table)
    expected = pq.read_table(out / "train.parquet")["n_tokens"].take([4, 0, 2]).to_pylist()
    assert batch["attention_mask"].sum(1).tolist() == expected
    assert batch["row_ids"].tolist() == [4, 0, 2] and batch["reward"].tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match=r"row_id 4 has \d+ tokens, above max_tokens=10"):
        Collator(llama2, max_tokens=10)(table)


@pytest.mark.parametrize(("num_rows", "world"), [(10, 3), (12, 4), (5, 8), (1, 2)])
def test_sharding_covers_every_row_once(num_rows, world):
    shards = [list(RankSharder(num_rows, r, world, seed=9)) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(num_rows))  # no overlap, full coverage
    assert [len(s) for s in shards] == [len(RankSharder(num_rows, r, world)) for r in range(world)]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_sharding_reshuffles_per_epoch_deterministically():
    a, b = RankSharder(100, 1, 4, seed=2), RankSharder(100, 1, 4, seed=2)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert first != second and list(b) == first
    b.set_epoch(1)
    assert list(b) == second
    dropped = [list(RankSharder(10, r, 3, drop_last=True)) for r in range(3)]
    assert [len(s) for s in dropped] == [3, 3, 3] and len({i for s in dropped for i in s}) == 9
    assert list(RankSharder(7, 0, 2, shuffle=False)) == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        RankSharder(7, 2, 2)
    sampler = RankSharder(6, 0, 2, seed=1)
    loader = torch.utils.data.DataLoader(list(range(6)), sampler=sampler, batch_size=2)
    assert sorted(int(x) for batch in loader for x in batch) == sorted(sampler)
