"""Quality gate: every checklist rule passes and fails; a failing decision becomes a `wait` that
keeps its housekeeping."""
from __future__ import annotations

import pytest

from loop.agents.schema import Decision
from loop.gate.quality import downgrade, quality_gate

GOOD_RATIONALE = "Validation loss plateaued for three epochs, so halve the learning rate."
GOOD_COMMAND = "cd /repo && python -m loop.trainer --config config/trainer/digits.yaml"


def decision(**fields) -> Decision:
    base = {"action": "run_command", "rationale": GOOD_RATIONALE, "run_label": "lr_halving_digits",
            "command": GOOD_COMMAND}
    return Decision(**{**base, **fields})


# ------------------------------------------------------------ quality gate ----

def test_good_run_command_passes():
    result = quality_gate(decision())
    assert result.ok and result.reasons == []


@pytest.mark.parametrize("rationale", ["", "continue", "Try again.", "n/a", "lr down", "short but ok",
                                       "continue continue continue continue"])
def test_trivial_rationale_fails(rationale):
    result = quality_gate(decision(rationale=rationale))
    assert not result.ok and any("rationale" in r for r in result.reasons)


@pytest.mark.parametrize("action", ["wait", "research", "finish", "train"])
def test_other_actions_need_only_a_rationale(action):
    assert quality_gate(Decision(action=action, rationale=GOOD_RATIONALE)).ok
    assert not quality_gate(Decision(action=action, rationale="ok")).ok


@pytest.mark.parametrize("label", ["", "run", "test", "experiment", "job", "tmp", "train", "untitled",
                                   "wait", "command", "ab", "Run_2", "  TEST  "])
def test_generic_run_label_fails(label):
    result = quality_gate(decision(run_label=label))
    assert not result.ok and any("run_label" in r for r in result.reasons)


def test_empty_command_fails():
    result = quality_gate(decision(command="  "))
    assert not result.ok and any("empty command" in r for r in result.reasons)


@pytest.mark.parametrize("command", ["python -m loop.trainer", "ls && cd /repo", "cd && ls", "cd /repo",
                                     "echo cd /repo && ls"])
def test_command_without_repo_context_fails(command):
    result = quality_gate(decision(command=command))
    assert not result.ok and any("repo context" in r for r in result.reasons)


@pytest.mark.parametrize("command", ["cd /repo && ls", "cd /repo; ls", 'cd "/my repo" && ls',
                                     "Set-Location C:\\repo; python x.py", "set-location 'C:\\r' ; dir"])
def test_command_with_repo_context_passes(command):
    assert quality_gate(decision(command=command)).ok


def test_housekeeping_is_tracked_never_blocking():
    empty = quality_gate(decision())
    assert empty.ok and empty.housekeeping["empty"] is True
    full = quality_gate(decision(todo_new=["a", "b"], notes_update="lr 0.05 is best",
                                 resolve_shared_todo_ids=["3"]))
    assert full.housekeeping == {"todo_new": 2, "notes_update": True, "data_exploration_update": False,
                                 "resolve_shared_todo_ids": 1, "empty": False}


def test_several_failures_are_all_reported():
    result = quality_gate(decision(rationale="go", run_label="run", command="ls"))
    assert len(result.reasons) == 3


def test_downgrade_is_a_wait_that_keeps_housekeeping():
    bad = decision(run_label="run", todo_new=["check lr"], notes_update="n", data_exploration_update="d",
                   resolve_shared_todo_ids=["7"])
    result = quality_gate(bad)
    wait = downgrade(bad, result)
    assert (wait.action, wait.run_label, wait.command) == ("wait", "wait", "")
    assert "run_label is generic" in wait.rationale and "run_command" in wait.rationale
    assert (wait.todo_new, wait.notes_update, wait.data_exploration_update, wait.resolve_shared_todo_ids) == \
        (["check lr"], "n", "d", ["7"])



def test_a_rationale_that_copies_the_contract_text_is_refused():
    # What Gemma 3 270M (base) answered under a schema grammar: the contract's own placeholder.
    from loop.agents.prompts import DECISION_CONTRACT

    copied = Decision(action="train", rationale=DECISION_CONTRACT["rationale"], run_label="x-y")
    result = quality_gate(copied)
    assert not result.ok and "copies the prompt's contract text" in result.reasons[0]
    assert quality_gate(Decision(action="train", rationale="Why not: the last two runs citing evidence of overfit.",
                                 run_label="x-y")).ok
