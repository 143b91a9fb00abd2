"""The 11-state lifecycle: every valid and every invalid transition, validators, the compact store,
and checkpoints (versioned, checksummed, migrated, self-healing)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from loop.archive.checkpoints import CheckpointManager, encode_v1, store_from_bytes, store_to_bytes
from loop.archive.lifecycle import (
    HISTORY,
    TERMINAL,
    VALID_TRANSITIONS,
    Lifecycle,
    LifecycleStore,
    TransitionContext,
    TransitionRefused,
    validate_transition,
)

S = Lifecycle
GOOD = TransitionContext(trained_ok=True, evaluation_passed=True)
BAD_EVAL = TransitionContext(evaluation_passed=False)


def ctx_for(src, dst):
    return BAD_EVAL if (src, dst) == (S.EVALUATING, S.CULLED) else GOOD


# The intended lifecycle, written out here on its own (README "Lifecycle", the docstring of
# loop/archive/lifecycle.py) and NOT read from the table the code uses: a wrong edit of
# VALID_TRANSITIONS (an edge added, dropped or redirected) must fail these tests.
#   main path: DORMANT -> GERMINATED -> TRAINING -> GRAFTING -> STABILIZATION -> EVALUATING
#              -> FINE_TUNING -> FOSSILIZED
#   exits:     CANCELLED (proposal rejected / window cancelled) before training is decided;
#              CULLED (gates, burn-in, not selected) from TRAINING, EVALUATING, FINE_TUNING;
#              ROLLED_BACK (graft, burn-in or a person reverted it) once grafting has begun.
STATES = ["DORMANT", "GERMINATED", "TRAINING", "GRAFTING", "STABILIZATION", "EVALUATING", "FINE_TUNING",
          "FOSSILIZED", "CULLED", "CANCELLED", "ROLLED_BACK"]
ALLOWED = {
    ("DORMANT", "GERMINATED"),
    ("GERMINATED", "TRAINING"), ("GERMINATED", "CANCELLED"),
    ("TRAINING", "GRAFTING"), ("TRAINING", "CULLED"), ("TRAINING", "CANCELLED"),
    ("GRAFTING", "STABILIZATION"), ("GRAFTING", "ROLLED_BACK"),
    ("STABILIZATION", "EVALUATING"), ("STABILIZATION", "ROLLED_BACK"),
    ("EVALUATING", "FINE_TUNING"), ("EVALUATING", "CULLED"), ("EVALUATING", "ROLLED_BACK"),
    ("FINE_TUNING", "FOSSILIZED"), ("FINE_TUNING", "CULLED"), ("FINE_TUNING", "ROLLED_BACK"),
}
TERMINAL_NAMES = {"FOSSILIZED", "CULLED", "CANCELLED", "ROLLED_BACK"}
ALL_PAIRS = list(itertools.product(STATES, STATES))


def test_eleven_states_in_their_stored_order_and_terminals():
    # the values are what checkpoints store: renumbering them would misread every saved store
    assert [(s.name, s.value) for s in Lifecycle] == [(name, i) for i, name in enumerate(STATES)]
    assert {s.name for s in TERMINAL} == TERMINAL_NAMES
    assert TERMINAL_NAMES == {src for src in STATES if not any((src, dst) in ALLOWED for dst in STATES)}


def test_every_pair_is_allowed_or_refused_as_intended():
    wrong = []
    for src, dst in ALL_PAIRS:
        ok, reason = validate_transition(S[src], S[dst], ctx_for(S[src], S[dst]))
        if ok != ((src, dst) in ALLOWED):
            wrong.append(f"{src} -> {dst}: {'allowed' if ok else 'refused'}")
        elif not ok and reason != f"Invalid transition: {src} -> {dst}":
            wrong.append(f"{src} -> {dst}: refused with {reason!r}")
    assert wrong == [], f"{len(wrong)} of {len(ALL_PAIRS)} transitions differ from the intended lifecycle"


def test_the_published_table_and_the_batch_path_agree_with_the_intended_lifecycle():
    assert {(src.name, dst.name) for src, dsts in VALID_TRANSITIONS.items() for dst in dsts} == ALLOWED
    # transition_many checks the dense matrix only (no context validators): one row per pair
    store = LifecycleStore()
    rows = store.add_many([f"{src}>{dst}" for src, dst in ALL_PAIRS])
    store.state[rows] = [S[src] for src, _ in ALL_PAIRS]
    moved = store.transition_many(rows, np.array([S[dst] for _, dst in ALL_PAIRS], np.int8))
    assert {pair for pair, ok in zip(ALL_PAIRS, moved, strict=True) if ok} == ALLOWED


def test_context_validators():
    assert validate_transition(S.TRAINING, S.GRAFTING, TransitionContext())[0] is False
    assert "passed its gates" in validate_transition(S.TRAINING, S.GRAFTING, TransitionContext(trained_ok=False))[1]
    assert validate_transition(S.EVALUATING, S.FINE_TUNING, BAD_EVAL)[0] is False
    assert validate_transition(S.EVALUATING, S.CULLED, GOOD)[0] is False
    assert validate_transition(S.EVALUATING, S.CULLED, BAD_EVAL)[0] is True


def walk(store, name, path):
    for dst in path:
        store.transition(name, dst, ctx_for(store.get(name), dst))


def test_store_full_path_and_history():
    store = LifecycleStore()
    store.add("c1", strategy="momentum")
    path = [S.GERMINATED, S.TRAINING, S.GRAFTING, S.STABILIZATION, S.EVALUATING, S.FINE_TUNING, S.FOSSILIZED]
    walk(store, "c1", path)
    info = store.info("c1")
    assert info["state"] == "FOSSILIZED" and info["parent_state"] == "FINE_TUNING"
    assert info["strategy"] == "momentum" and info["history"][0] == ("DORMANT", "GERMINATED")
    assert len(info["history"]) == 7


def test_invalid_move_refused_with_reason_and_counted():
    store = LifecycleStore()
    store.add("c1")
    with pytest.raises(TransitionRefused, match="c1: Invalid transition: DORMANT -> TRAINING"):
        store.transition("c1", S.TRAINING)
    assert store.get("c1") == S.DORMANT and store.info("c1")["error_count"] == 1


def test_history_keeps_last_ten_in_order():
    store = LifecycleStore()
    rows = store.add_many(["x"])
    # ring buffer: write 12 matrix-valid moves by resetting state directly between two states
    for _ in range(12):
        store.state[rows[0]] = S.DORMANT
        store.transition_many(rows, S.GERMINATED)
    hist = store.info("x")["history"]
    assert len(hist) == HISTORY and all(h == ("DORMANT", "GERMINATED") for h in hist)


def test_batch_transitions_and_tick():
    store = LifecycleStore()
    rows = store.add_many([f"c{i}" for i in range(1000)])
    moved = store.transition_many(rows, S.GERMINATED)
    assert moved.all()
    moved = store.transition_many(rows[:10], S.FOSSILIZED)          # DORMANT->... no: GERMINATED->FOSSILIZED
    assert not moved.any() and store.info("c0")["error_count"] == 1
    store.tick()
    assert store.info("c5")["epochs_in_state"] == 1
    assert len(store.in_state(S.GERMINATED)) == 1000


def test_store_is_compact():
    store = LifecycleStore()
    store.add_many([f"c{i}" for i in range(10_000)])
    assert store.nbytes_per_candidate() < 150


def test_checkpoint_roundtrip(tmp_path):
    store = LifecycleStore()
    store.add_many(["a", "b"])
    walk(store, "a", [S.GERMINATED, S.TRAINING])
    store.score[store.row("a")] = 0.75
    copy = store_from_bytes(store_to_bytes(store))
    assert copy.names == ["a", "b"] and copy.get("a") == S.TRAINING and copy.info("a") == store.info("a")


def test_v1_checkpoint_is_migrated(tmp_path):
    blob = encode_v1([{"name": "old1", "state": "TRAINING", "score": 0.5},
                      {"name": "old2", "state": "CULLED", "score": 0.1, "strategy": "adaptive"}])
    store = store_from_bytes(blob)
    assert store.get("old1") == S.TRAINING and store.info("old2")["strategy"] == "adaptive"
    assert store.info("old1")["score"] == 0.5 and store.info("old1")["history"] == []
    (tmp_path / "lifecycle.00000001.ckpt").write_bytes(blob)
    restored = CheckpointManager(tmp_path).restore()
    assert restored.store.get("old2") == S.CULLED and restored.checkpoint_id == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_checkpoint_falls_back_to_last_good(tmp_path, damage):
    manager = CheckpointManager(tmp_path)
    store = LifecycleStore()
    store.add("a")
    first = manager.save(store)
    store.transition("a", S.GERMINATED)
    second = manager.save(store)
    path = tmp_path / f"lifecycle.{second:08d}.ckpt"
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        path.write_bytes(blob[:-5] + bytes([blob[-5] ^ 0xFF]) + blob[-4:])
    else:
        path.write_bytes(b"not a checkpoint at all")
    result = manager.restore()
    assert result.checkpoint_id == first and result.store.get("a") == S.DORMANT
    assert result.skipped and result.skipped[0]["file"] == path.name


def test_checkpoint_rotation_keeps_three(tmp_path):
    manager = CheckpointManager(tmp_path)
    store = LifecycleStore()
    for _ in range(5):
        manager.save(store)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"lifecycle.{i:08d}.ckpt" for i in (3, 4, 5)]
    assert np.array_equal(manager.restore().store.state[:0], store.state[:0])
