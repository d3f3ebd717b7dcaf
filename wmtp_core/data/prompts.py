"""The training prompt: one template shared by preparation (n_tokens) and collation (masking).

Prompt and response are tokenized separately so the label mask falls exactly on the response boundary, and
`n_tokens` written by preparation equals the length the collator builds: BOS + prompt + response + EOS (no BOS
for a tokenizer whose model was trained without one; `Tokenizer.encode` decides, for both).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

PROMPT_TEMPLATE = "### Problem\n{instruction}\n\n{examples}### Solution (Python 3)\n"
EXAMPLE_TEMPLATE = "### Example {number}\nInput:\n{input}\nOutput:\n{output}\n\n"


def format_examples(inputs: Sequence[str], outputs: Sequence[str], max_examples: int = 2) -> str:
    """Up to `max_examples` public tests as prompt text (the `input` column of the processed rows)."""
    parts = []
    for number, (test_in, test_out) in enumerate(zip(inputs, outputs, strict=False), start=1):
        if number > max_examples:
            break
        parts.append(
            EXAMPLE_TEMPLATE.format(number=number, input=test_in.rstrip("\n"), output=test_out.rstrip("\n"))
        )
    return "".join(parts)


def format_prompt(instruction: str, examples: str) -> str:
    return PROMPT_TEMPLATE.format(instruction=instruction.strip(), examples=examples)


def encode_example(tokenizer, instruction: str, examples: str, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids with BOS, response ids with EOS): the exact training sequence is their concatenation."""
    return tokenizer.encode(format_prompt(instruction, examples), bos=True), tokenizer.encode(response, eos=True)


def encode_prompts(tokenizer, instructions: Sequence[str], examples: Sequence[str]) -> list[list[int]]:
    texts = [format_prompt(i, e) for i, e in zip(instructions, examples, strict=True)]
    return tokenizer.encode_batch(texts, bos=True)


def encode_responses(tokenizer, responses: Sequence[str]) -> list[list[int]]:
    return tokenizer.encode_batch(list(responses), eos=True)


_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Case- and whitespace-insensitive form, so CRLF vs LF or re-wrapped prompts still collide."""
    return _SPACE.sub(" ", text).strip().lower()


def normalized_text_hash(text: str) -> str:
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()
