"""The bundled CodeContests demo set: schema, splits, contents, and labels confirmed by execution."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wmtp_core.data.codecontests_schema import DIFFICULTIES, PYTHON_LANGUAGES, SCHEMA, SOURCES, SPLITS
from wmtp_core.data.demo import DemoDataError, demo_dir, demo_tables, problem_files, write_demo_parquet
from wmtp_core.data.labels import check_labels


@pytest.fixture(scope="module")
def tables() -> dict[str, pa.Table]:
    return demo_tables()


@pytest.fixture(scope="module")
def rows(tables) -> list[dict]:
    return [row for split in SPLITS for row in tables[split].to_pylist()]


def test_every_split_has_exactly_the_published_schema(tables) -> None:
    assert set(tables) == set(SPLITS)
    for split, table in tables.items():
        assert table.schema.equals(SCHEMA), f"{split}: {table.schema} != {SCHEMA}"


def test_splits_are_disjoint_and_sized_like_train_valid_test(tables) -> None:
    names = {split: set(tables[split]["name"].to_pylist()) for split in SPLITS}
    sizes = {split: tables[split].num_rows for split in SPLITS}
    assert sum(sizes.values()) >= 36
    assert sizes["train"] >= 28 and sizes["valid"] >= 4 and sizes["test"] >= 4, sizes
    assert sum(len(n) for n in names.values()) == sum(sizes.values()), "a problem name repeats within a split"
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not names[a] & names[b], f"{a} and {b} share {names[a] & names[b]}"
    descriptions = [d for split in SPLITS for d in tables[split]["description"].to_pylist()]
    assert len(set(descriptions)) == len(descriptions)


def test_every_problem_is_complete(rows) -> None:
    for row in rows:
        name = row["name"]
        for section in ("Input", "Output"):
            assert f"\n{section}\n" in row["description"], f"{name}: no {section} section"
        assert 1 <= len(row["public_tests"]["input"]) <= 2, name
        assert 3 <= len(row["private_tests"]["input"]) <= 5, name
        assert row["public_tests"]["input"][0].strip() in row["description"], (
            f"{name}: example is not public test 0"
        )
        python_correct = [lang for lang in row["solutions"]["language"] if lang in PYTHON_LANGUAGES]
        python_incorrect = [
            lang for lang in row["incorrect_solutions"]["language"] if lang in PYTHON_LANGUAGES
        ]
        assert len(python_correct) >= 2 and len(python_incorrect) >= 2, name
        assert row["source"] in SOURCES and row["source"] != 0, name
        assert row["difficulty"] in DIFFICULTIES and row["difficulty"] != 0, name
        assert 800 <= row["cf_rating"] <= 2000, name
        assert row["time_limit"]["seconds"] >= 1 and row["memory_limit_bytes"] > 0, name
        assert row["cf_tags"], name


def test_the_set_mixes_difficulties_sources_and_languages(rows) -> None:
    difficulties = {DIFFICULTIES[r["difficulty"]] for r in rows}
    assert {"A", "B", "C"} <= difficulties and {"EASY", "MEDIUM", "HARD"} <= difficulties
    assert {SOURCES[r["source"]] for r in rows} >= {"CODEFORCES", "CODECHEF"}
    languages = {
        lang for r in rows for f in ("solutions", "incorrect_solutions") for lang in r[f]["language"]
    }
    assert {1, 2, 3} <= languages, "the processing step's language filter needs non-Python rows to drop"


def test_every_label_holds_when_the_solutions_run(tables) -> None:
    disagreements = check_labels(pa.concat_tables(tables[s] for s in SPLITS), progress=False)
    assert disagreements == [], "\n".join(map(str, disagreements))


def test_parquet_files_are_named_as_on_the_hub_and_round_trip(tmp_path: Path, tables) -> None:
    written = write_demo_parquet(tmp_path)
    assert {split: path.name for split, path in written.items()} == {
        split: f"{split}-00000-of-00001.parquet" for split in SPLITS
    }
    for split, path in written.items():
        back = pq.read_table(path)
        assert back.schema.equals(SCHEMA)
        assert back.equals(tables[split])


def test_problem_files_ship_inside_the_package() -> None:
    files = problem_files()
    assert files and all(f.parent == demo_dir() for f in files)
    assert demo_dir().parts[-3:] == ("wmtp_core", "data", "demo")


def _copy_with(tmp_path: Path, edit) -> Path:
    """A copy of the demo directory whose first problem file has one text edit applied."""
    target = tmp_path / "demo"
    shutil.copytree(demo_dir(), target)
    first = problem_files(target)[0]
    first.write_text(edit(first.read_text(encoding="utf-8")), encoding="utf-8")
    return target


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("split: ", "split: training #", 1), r"split must be one of"),
        (lambda t: t + "rating: 5\n", r"unknown fields \['rating'\]"),
        (
            lambda t: t.replace("cf_rating:", "cf_ratings:", 1),
            r"unknown fields \['cf_ratings'\], missing fields \['cf_rating'\]",
        ),
        (lambda t: t.replace("  - language: 3", "  - language: 9", 1), r"solutions language 9 is not in"),
        (lambda t: t.replace("  - input:", "  - stdin:", 1), r"public_tests\[0\] must have exactly the keys"),
        (lambda t: t.replace("source: ", "source: 77 #", 1), r"source 77 is not in"),
        (lambda t: t.replace("cf_rating: ", "cf_rating: high #", 1), r"does not fit SCHEMA"),
    ],
)
def test_a_malformed_problem_file_is_named_in_the_error(tmp_path: Path, edit, message: str) -> None:
    directory = _copy_with(tmp_path, edit)
    with pytest.raises(DemoDataError, match=message) as raised:
        demo_tables(directory)
    assert str(problem_files(directory)[0]) in str(raised.value)


def test_a_problem_name_used_twice_is_rejected(tmp_path: Path) -> None:
    directory = _copy_with(tmp_path, lambda t: t)
    files = problem_files(directory)
    shutil.copyfile(files[0], directory / "zz_copy.yaml")
    with pytest.raises(DemoDataError, match="already used by"):
        demo_tables(directory)
