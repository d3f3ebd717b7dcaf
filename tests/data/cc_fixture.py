"""A small CodeContests-schema dataset, written as the hub publishes it, with one case for every processing rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from wmtp_core.data.codecontests_schema import SCHEMA

LONG_SOLUTION = "\n".join(f"x{i} = {i} * {i} + {i}" for i in range(400))  # about 5,000 Llama-2 tokens


def problem(name: str, description: str, *, correct: list[tuple[int, str]] = (), incorrect: list[tuple[int, str]] = (),
            public: list[tuple[str, str]] = (("1 2\n", "3\n"),), difficulty: int = 7, source: int = 2,
            cf_rating: int = 800) -> dict[str, Any]:  # fmt: skip
    tests = {"input": [i for i, _ in public], "output": [o for _, o in public]}
    return {
        "name": name,
        "description": description,
        "public_tests": tests,
        "private_tests": {"input": ["5 5\n"], "output": ["10\n"]},
        "generated_tests": {"input": [], "output": []},
        "source": source,
        "difficulty": difficulty,
        "solutions": {"language": [lang for lang, _ in correct], "solution": [s for _, s in correct]},
        "incorrect_solutions": {"language": [lang for lang, _ in incorrect], "solution": [s for _, s in incorrect]},
        "cf_contest_id": 1,
        "cf_index": "A",
        "cf_points": 500.0,
        "cf_rating": cf_rating,
        "cf_tags": ["math"],
        "is_description_translated": False,
        "untranslated_description": "",
        "time_limit": {"seconds": 2, "nanos": 0},
        "memory_limit_bytes": 256 << 20,
        "input_file": "",
        "output_file": "",
    }


ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
SUB = "a, b = map(int, input().split())\nprint(a - b)\n"


def fixture_problems() -> dict[str, list[dict[str, Any]]]:
    train = [
        problem(
            "1000_A. Sum",
            "Print the sum of two integers a and b.",
            correct=[(3, ADD), (2, "int main() { return 0; }"), (1, "print sum(map(int, raw_input().split()))"),
                     (3, ADD), (3, "   \n\t"), (3, "")],
            incorrect=[(3, SUB), (4, "class Main {}"), (3, ADD)],
            public=[("1 2\n", "3\n"), ("5 7\n", "12\n"), ("0 0\n", "0\n")],
            difficulty=7,
        ),
        problem("1001_B. Long", "Print many numbers.", correct=[(3, "print(1)\n"), (3, LONG_SOLUTION)],
                incorrect=[(3, "print(2)\n")], public=[], difficulty=8, cf_rating=1200),
        problem("1002_C. Leak", "Also in test by name.", correct=[(3, "print(0)\n")]),
        problem("1003_D. Renamed", "  Print   the PRODUCT\r\nof two integers.  ", correct=[(3, "print(6)\n")]),
        problem("1004_E. Only C++", "No Python here.", correct=[(2, "int main(){}")], difficulty=9),
    ]
    valid = [problem("2000_A. Valid", "Print the difference.", correct=[(3, SUB)], incorrect=[(1, ADD)], difficulty=1)]
    test = [
        problem("1002_C. Leak", "Also in test by name (the test copy).", correct=[(3, "print(0)\n")], difficulty=2),
        problem("3000_A. Product", "print the product of two integers.", correct=[(3, "print(6)\n")], difficulty=2),
    ]
    return {"train": train, "valid": valid, "test": test}


def write_hub_files(root: Path, problems: dict[str, list[dict[str, Any]]] | None = None,
                    schema: pa.Schema = SCHEMA) -> Path:  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in (problems or fixture_problems()).items():
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / f"{split}-00000-of-00001.parquet")
    return root
