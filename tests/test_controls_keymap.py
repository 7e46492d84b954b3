"""Key bindings (assets/keymap.json + overrides) and pygame events -> Action."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import pygame  # noqa: E402

from controls import keymap as km  # noqa: E402
from controls.input import InputMapper, MouseSettings  # noqa: E402
from world.actions import KEYS  # noqa: E402


@pytest.fixture
def no_user_file(tmp_path, monkeypatch):
    """Point the user's keymap at an empty place so the developer's own file never leaks in."""
    monkeypatch.setattr(km, "USER_KEYMAP_PATH", tmp_path / "absent" / "keymap.json")
    return tmp_path


def write(path, obj) -> str:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


# ---- keymap files ------------------------------------------------------------------------------


def test_bundled_keymap_binds_every_action_and_command(no_user_file):
    keymap = km.load_keymap()
    assert set(keymap.bindings) == set(km.BINDING_NAMES)
    codes = keymap.key_codes()
    assert codes[pygame.K_w] == "forward"
    assert codes[pygame.K_LEFT] == "turn_left"
    assert codes[pygame.K_UP] == "look_up"
    assert codes[pygame.K_SPACE] == "rise"
    assert codes[pygame.K_LSHIFT] == codes[pygame.K_RSHIFT] == "sink"
    assert codes[pygame.K_F5] == "toggle_record"
    assert codes[pygame.K_t] == codes[pygame.K_RETURN] == "open_prompt"
    assert keymap.label("sink") == "Left Shift / Right Shift"


def test_override_replaces_only_the_entries_it_names(no_user_file):
    path = write(no_user_file / "mine.json", {"forward": ["i"], "back": "k", "_comment": "ignored"})
    keymap = km.load_keymap(path)
    assert keymap.bindings["forward"] == ("i",)
    assert keymap.bindings["back"] == ("k",)  # a single string is accepted
    assert keymap.bindings["left"] == ("a",)  # untouched entries keep the bundled binding


def test_user_config_file_applies_and_keymap_flag_wins(tmp_path, monkeypatch):
    user = tmp_path / "user.json"
    write(user, {"forward": ["i"], "rise": ["e"]})
    monkeypatch.setattr(km, "USER_KEYMAP_PATH", user)
    assert km.load_keymap().bindings["forward"] == ("i",)
    flag = write(tmp_path / "flag.json", {"forward": ["o"]})
    keymap = km.load_keymap(flag)
    assert keymap.bindings["forward"] == ("o",)
    assert keymap.bindings["rise"] == ("e",)


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", ["not valid JSON", "line 1"]),
        ([["w"]], ["JSON object"]),
        ({"jump": ["j"]}, ["'jump'", "not a binding"]),
        ({"forward": ["wasd-key"]}, ["'forward'", "unknown key name 'wasd-key'"]),
        ({"forward": [1]}, ["'forward'", "list of key names"]),
        ({"quit": ["escape"]}, ["'quit'", "reserved"]),
        ({"forward": ["s"]}, ["'s'", "'forward'", "'back'"]),  # conflict names both entries
    ],
)
def test_bad_keymap_file_is_a_clear_error_naming_the_entry(no_user_file, content, words):
    path = write(no_user_file / "bad.json", content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(km.KeymapError) as info:
        km.load_keymap(path)
    for word in words:
        assert word in str(info.value)


def test_missing_keymap_file_is_an_error(no_user_file):
    with pytest.raises(km.KeymapError, match="not found"):
        km.load_keymap(no_user_file / "nope.json")


# ---- events -> actions -------------------------------------------------------------------------


@pytest.fixture
def display():
    pygame.display.init()
    pygame.display.set_mode((64, 64))
    yield
    pygame.display.quit()


@pytest.fixture
def mapper(no_user_file, display):
    return InputMapper(km.load_keymap(), MouseSettings(sensitivity=1.0, pixels_per_step=40.0))


def key(kind: int, code: int) -> pygame.event.Event:
    return pygame.event.Event(kind, key=code, mod=0, unicode="", scancode=0)


def motion(dx: int, dy: int) -> pygame.event.Event:
    return pygame.event.Event(pygame.MOUSEMOTION, rel=(dx, dy), pos=(0, 0), buttons=(0, 0, 0))


def test_held_keys_become_the_action_until_released(mapper):
    for code in (pygame.K_w, pygame.K_d, pygame.K_LEFT, pygame.K_SPACE):
        assert mapper.handle(key(pygame.KEYDOWN, code)) is None
    action = mapper.take_action()
    assert action.keys == ("forward", "right", "turn_left", "rise")
    assert mapper.take_action().keys == action.keys  # held state persists across frames
    mapper.handle(key(pygame.KEYUP, pygame.K_w))
    assert mapper.take_action().keys == ("right", "turn_left", "rise")


def test_every_movement_key_maps_to_its_action(mapper):
    codes = {name: code for code, name in mapper._bindings.items()}
    for name in KEYS:
        mapper.release_all()
        mapper.handle(key(pygame.KEYDOWN, codes[name]))
        assert mapper.take_action().keys == (name,)


def test_two_keys_for_one_action_release_independently(mapper):
    mapper.handle(key(pygame.KEYDOWN, pygame.K_LSHIFT))
    mapper.handle(key(pygame.KEYDOWN, pygame.K_RSHIFT))
    mapper.handle(key(pygame.KEYUP, pygame.K_LSHIFT))
    assert mapper.take_action().keys == ("sink",)
    mapper.handle(key(pygame.KEYUP, pygame.K_RSHIFT))
    assert mapper.take_action().keys == ()


def test_command_keys_are_reported_not_held(mapper):
    assert mapper.handle(key(pygame.KEYDOWN, pygame.K_F5)) == "toggle_record"
    assert mapper.handle(key(pygame.KEYDOWN, pygame.K_F1)) == "help"
    assert mapper.handle(key(pygame.KEYDOWN, pygame.K_q)) == "quit"
    assert mapper.handle(key(pygame.KEYDOWN, pygame.K_z)) is None  # unbound
    assert mapper.take_action().keys == ()


def test_mouse_moves_only_while_captured_and_is_normalised_per_frame(mapper, monkeypatch):
    grabs: list[bool] = []  # the dummy video driver cannot grab, so record what was asked of SDL
    monkeypatch.setattr(pygame.event, "set_grab", grabs.append)
    mapper.handle(motion(30, 30))
    assert mapper.take_action().mouse_dx == 0.0  # not captured: the cursor is just a cursor
    mapper.set_captured(True)
    assert mapper.captured and grabs == [True] and not pygame.mouse.get_visible()
    mapper.handle(motion(12, 0))
    mapper.handle(motion(8, 10))  # motion within one frame adds up
    action = mapper.take_action()
    assert action.mouse_dx == pytest.approx(0.5)  # 20 px of 40 px per full step
    assert action.mouse_dy == pytest.approx(-0.25)  # screen y down = look down = negative dy
    assert mapper.take_action().mouse_dx == 0.0  # consumed: no motion, no turn
    mapper.handle(motion(-400, -400))
    clipped = mapper.take_action()
    assert (clipped.mouse_dx, clipped.mouse_dy) == (-1.0, 1.0)
    mapper.set_captured(False)
    assert grabs == [True, False] and pygame.mouse.get_visible()


def test_mouse_sensitivity_scales_motion(no_user_file, display):
    fast = InputMapper(km.load_keymap(), MouseSettings(sensitivity=2.0, pixels_per_step=40.0))
    fast.set_captured(True)
    fast.handle(motion(10, 0))
    assert fast.take_action().mouse_dx == pytest.approx(0.5)
    fast.set_captured(False)


def test_focus_loss_releases_held_keys(mapper):
    mapper.handle(key(pygame.KEYDOWN, pygame.K_w))
    mapper.handle(pygame.event.Event(pygame.WINDOWFOCUSLOST))
    assert mapper.take_action().keys == ()
