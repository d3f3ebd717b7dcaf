"""Task sets: an explicit limit is said aloud and recorded, names are checked."""

from __future__ import annotations

import pytest

from wmtp_core.tasks import load_tasks
from wmtp_core.tasks.humaneval import humaneval_tasks
from wmtp_core.tasks.taskset import TaskError


def test_limit_is_printed_and_recorded(capsys: pytest.CaptureFixture[str]) -> None:
    tasks = humaneval_tasks(limit=3)
    assert [t.task_id for t in tasks] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert tasks.limit == 3 and tasks.n_total == 164
    assert "LIMIT 3: evaluating 3 of 164" in capsys.readouterr().out
    with pytest.raises(TaskError, match="limit"):
        humaneval_tasks(limit=0)


def test_load_tasks_by_name() -> None:
    assert load_tasks("mbpp", split="validation", limit=2).split == "validation"
    assert len(load_tasks("humaneval")) == 164
    with pytest.raises(TaskError, match="HumanEval has only the 'test' split"):
        load_tasks("humaneval", split="train")
    with pytest.raises(TaskError, match="expected one of"):
        load_tasks("apps")


def test_mbpp_ids_are_normalized_humaneval_ids_are_not() -> None:
    assert load_tasks("mbpp", limit=1).normalize_id("MBPP/11") == "11"
    assert load_tasks("mbpp", limit=1).normalize_id(11) == "11"
    assert humaneval_tasks(limit=1).normalize_id("HumanEval/0") == "HumanEval/0"
