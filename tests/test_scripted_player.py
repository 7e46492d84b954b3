"""The scripted player: deterministic, human-like, covers every control, switches prompts."""

from __future__ import annotations

import numpy as np
import pytest

from world.actions import KEYS, actions_to_array
from world.procedural.scripted_player import ScriptedPlayer
from world.procedural.themes import parse_prompt

FRAMES = 5000


def play(player: ScriptedPlayer, frames: int = FRAMES) -> np.ndarray:
    return actions_to_array(player.next_action() for _ in range(frames))


def test_deterministic_given_seed():
    np.testing.assert_array_equal(play(ScriptedPlayer(3)), play(ScriptedPlayer(3)))
    assert not np.array_equal(play(ScriptedPlayer(3)), play(ScriptedPlayer(4)))
    a, b = ScriptedPlayer(3), ScriptedPlayer(3)
    assert [a.next_prompt() for _ in range(3)] == [b.next_prompt() for _ in range(3)]


def test_asking_for_prompts_does_not_change_actions():
    quiet, chatty = ScriptedPlayer(5), ScriptedPlayer(5)
    rows = []
    for _ in range(1000):
        chatty.next_prompt()
        rows.append(chatty.next_action().to_vector())
    np.testing.assert_array_equal(play(quiet, 1000), np.stack(rows))


def test_exercises_every_control_like_a_person():
    actions = play(ScriptedPlayer(11))
    keys, dx, dy = actions[:, : len(KEYS)], actions[:, len(KEYS)], actions[:, len(KEYS) + 1]
    held = keys.sum(axis=0)
    assert all(held > 0), f"never pressed: {[k for k, n in zip(KEYS, held) if n == 0]}"
    assert held[KEYS.index("forward")] == held.max()  # walking forward dominates
    assert np.abs(actions[:, len(KEYS) :]).max() <= 1.0
    assert dx.min() < -0.3 and dx.max() > 0.3 and dy.min() < -0.3 and dy.max() > 0.3
    idle = (keys.sum(axis=1) == 0) & (dx == 0) & (dy == 0)
    assert 0.02 < idle.mean() < 0.5
    assert (keys[:, KEYS.index("forward")] * (keys[:, KEYS.index("turn_left")]
            + keys[:, KEYS.index("turn_right")])).sum() > 0  # fmt: skip


def test_keys_are_held_in_bouts_and_mouse_moves_smoothly():
    actions = play(ScriptedPlayer(12))
    keys = actions[:, : len(KEYS)]
    changes = np.any(keys[1:] != keys[:-1], axis=1).sum()
    assert FRAMES / (changes + 1) > 10  # a person holds keys for many frames, not one
    mouse = actions[:, len(KEYS) :]
    assert np.abs(np.diff(mouse, axis=0)).max() < 0.6  # sweeps are curves, not jumps
    assert np.median(np.abs(np.diff(mouse, axis=0))[np.abs(mouse[1:]).sum(axis=1) > 0]) < 0.1


def test_looks_up_or_down_and_comes_back_to_level():
    actions = play(ScriptedPlayer(13))
    pitch_steps = (actions[:, KEYS.index("look_up")] - actions[:, KEYS.index("look_down")]
                   + actions[:, len(KEYS) + 1])  # fmt: skip
    pitch = np.cumsum(pitch_steps)
    assert np.abs(pitch).max() > 3  # it does look around
    assert np.abs(pitch).max() <= 25  # ... but never drifts: one glance at most, then back
    assert np.mean(np.abs(pitch) < 0.5) > 0.5  # level most of the time


def test_prompt_switch_timing_and_choice():
    prompts = ["green hills at noon", "desert dunes at dusk", "alien planet at night"]
    player = ScriptedPlayer(1, prompts=prompts, switch_every_s=(8, 20), fps=30)
    switches = []
    for frame in range(30 * 120):
        prompt = player.next_prompt()
        if prompt is not None:
            switches.append((frame, prompt))
        player.next_action()
    assert switches[0][0] == 0 and len(switches) >= 6
    gaps = np.diff([f for f, _ in switches])
    assert gaps.min() >= 8 * 30 and gaps.max() <= 20 * 30
    assert all(p in prompts for _, p in switches)
    assert all(a != b for (_, a), (_, b) in zip(switches, switches[1:]))  # a switch changes the world


def test_no_switching_returns_only_the_first_prompt():
    player = ScriptedPlayer(2, switch_every_s=None)
    first = player.next_prompt()
    later = []
    for _ in range(2000):
        player.next_action()
        later.append(player.next_prompt())
    assert isinstance(first, str) and later == [None] * 2000 and player.prompt == first


def test_composed_prompts_are_varied_and_understood():
    player = ScriptedPlayer(8, switch_every_s=(0.1, 0.1), fps=10)
    prompts = []
    while len(prompts) < 40:
        prompt = player.next_prompt()
        if prompt is not None:
            prompts.append(prompt)
        player.next_action()
    themes = {parse_prompt(p) for p in prompts}  # raises if the engine would not understand one
    assert len(set(prompts)) > 30 and len({t.biome for t in themes}) >= 5


def test_bout_scale_changes_keys_more_often_for_world_model_data():
    def key_changes(player: ScriptedPlayer) -> int:
        keys = play(player)[:, : len(KEYS)]
        return int(np.any(keys[1:] != keys[:-1], axis=1).sum())

    assert key_changes(ScriptedPlayer(12, bout_scale=0.2)) > 3 * key_changes(ScriptedPlayer(12))
    for bad in (0.0, -1.0, 11.0):
        with pytest.raises(ValueError, match="bout_scale"):
            ScriptedPlayer(1, bout_scale=bad)


def test_random_share_holds_random_actions_and_zero_keeps_the_person_like_stream():
    person = play(ScriptedPlayer(5))
    assert np.array_equal(play(ScriptedPlayer(5, random_share=0.0)), person)  # old datasets stay reproducible
    mixed = play(ScriptedPlayer(5, random_share=0.5))
    keys = mixed[:, : len(KEYS)]
    combos = {tuple(row) for row in keys.astype(int)}
    assert len(combos) > 3 * len({tuple(row) for row in person[:, : len(KEYS)].astype(int)})
    # every key is held somewhere (rare ones like sink and look_down included) and the mouse moves both ways
    assert keys.sum(0).min() > 100
    assert mixed[:, len(KEYS)].min() < -0.5 and mixed[:, len(KEYS) + 1].max() > 0.5
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="random_share"):
            ScriptedPlayer(1, random_share=bad)


def test_random_bouts_of_one_key_hold_a_single_key_or_none_and_no_mouse():
    vectors = play(ScriptedPlayer(6, random_share=1.0, random_keys="one"))
    keys = vectors[:, : len(KEYS)]
    assert keys.sum(1).max() == 1 and (keys.sum(1) == 0).any()  # one key at most; idle happens too
    assert keys.sum(0).min() > 0  # every key is held somewhere
    assert not vectors[:, len(KEYS):].any()  # no mouse
    with pytest.raises(ValueError, match="random_keys"):
        ScriptedPlayer(1, random_share=1.0, random_keys="some")
