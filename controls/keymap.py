"""Key bindings: which pygame keys drive which action or window command.

The bundled `assets/keymap.json` maps every binding name to a list of pygame key names (the
spelling of `pygame.key.name`, e.g. "w", "left shift", "f5"). A user file
(`~/.config/generated-world/keymap.json`) and then `--keymap FILE` override it entry by entry:
an entry that a file leaves out keeps the binding beneath it. Entries whose name starts with "_"
are comments. Any problem is a `KeymapError` naming the file and the entry.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from world.actions import KEYS

DEFAULT_KEYMAP_PATH = Path(__file__).resolve().parent.parent / "assets" / "keymap.json"
USER_KEYMAP_PATH = Path("~/.config/generated-world/keymap.json")

# Window commands besides the movement keys of `world.actions.KEYS`. Esc (release the mouse,
# close the prompt box or the help overlay) is fixed so that a bad keymap can never trap the user.
COMMANDS: tuple[str, ...] = (
    "open_prompt",
    "toggle_record",
    "reset",
    "help",
    "toggle_hud",
    "pause",
    "toggle_mute",
    "screenshot",
    "fullscreen",
    "quit",
    # playing a recording back (`play --replay DIR`); the digits 0-9 jump to tenths of it
    "go_live",
    "step_back",
    "step_forward",
    "slower",
    "faster",
)
REPLAY_COMMANDS: tuple[str, ...] = ("go_live", "step_back", "step_forward", "slower", "faster")
BINDING_NAMES: tuple[str, ...] = KEYS + COMMANDS
RESERVED_KEYS = ("escape",)

# What the help overlay and docs call each binding.
DESCRIPTIONS: dict[str, str] = {
    "forward": "move forward",
    "back": "move back",
    "left": "strafe left",
    "right": "strafe right",
    "turn_left": "turn left",
    "turn_right": "turn right",
    "look_up": "look up",
    "look_down": "look down",
    "rise": "rise",
    "sink": "sink",
    "open_prompt": "type a new prompt",
    "toggle_record": "start / stop recording",
    "reset": "new world (new seed)",
    "help": "show / hide this help",
    "toggle_hud": "show / hide the HUD",
    "pause": "pause / resume",
    "toggle_mute": "sound on / off",
    "screenshot": "screenshot (PNG, next to the recordings)",
    "fullscreen": "full screen on / off",
    "quit": "quit",
    "go_live": "replay: take over live from this frame",
    "step_back": "replay: one frame back",
    "step_forward": "replay: one frame on",
    "slower": "replay: slower",
    "faster": "replay: faster",
}


class KeymapError(ValueError):
    """A keymap file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Keymap:
    """binding name -> pygame key names, for every name in BINDING_NAMES."""

    bindings: dict[str, tuple[str, ...]]

    def key_codes(self) -> dict[int, str]:
        """pygame key code -> binding name (each key drives at most one binding)."""
        return {key_code(name): binding for binding, names in self.bindings.items() for name in names}

    def label(self, binding: str) -> str:
        """Human form of a binding's keys for the help overlay, e.g. "W" or "T / Return"."""
        return " / ".join(_pretty(name) for name in self.bindings.get(binding, ())) or "(unbound)"


def key_code(name: str) -> int:
    """pygame key code for a key name; ValueError if pygame does not know the name."""
    import pygame  # imported here so the headless client never loads pygame

    with warnings.catch_warnings():
        # key_code works before pygame.init(); the warning it raises then is noise here.
        warnings.simplefilter("ignore")
        return pygame.key.key_code(name)


def load_keymap(override: str | os.PathLike | None = None, *, user_file: bool = True) -> Keymap:
    """Bundled bindings, then the user's config file (if present), then `override` (if given)."""
    bindings = _read_file(DEFAULT_KEYMAP_PATH)
    missing = [name for name in BINDING_NAMES if name not in bindings]
    if missing:
        raise KeymapError(f"{DEFAULT_KEYMAP_PATH}: no binding for {', '.join(missing)}")
    user_path = USER_KEYMAP_PATH.expanduser()
    if user_file and user_path.is_file():
        bindings.update(_read_file(user_path))
    if override is not None:
        path = Path(override)
        if not path.is_file():
            raise KeymapError(f"{path}: keymap file not found")
        bindings.update(_read_file(path))
    _check_conflicts(bindings)
    return Keymap(bindings)


def _read_file(path: Path) -> dict[str, tuple[str, ...]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise KeymapError(f"{path}: cannot read keymap: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise KeymapError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from exc
    if not isinstance(data, dict):
        raise KeymapError(f"{path}: a keymap must be a JSON object of binding -> [key names]")
    return {entry: _parse_entry(path, entry, value) for entry, value in data.items() if not entry.startswith("_")}


def _parse_entry(path: Path, entry: str, value: object) -> tuple[str, ...]:
    if entry not in BINDING_NAMES:
        raise KeymapError(f"{path}: entry {entry!r} is not a binding; known: {', '.join(BINDING_NAMES)}")
    if isinstance(value, str):
        value = [value]  # a single key is a common shorthand
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise KeymapError(f"{path}: entry {entry!r} must be a list of key names, got {value!r}")
    names = tuple(v.strip().lower() for v in value)
    for name in names:
        if name in RESERVED_KEYS:
            raise KeymapError(f"{path}: entry {entry!r}: key {name!r} is reserved (it releases the mouse)")
        try:
            key_code(name)
        except ValueError:
            raise KeymapError(
                f"{path}: entry {entry!r}: unknown key name {name!r} "
                "(use pygame.key.name spellings such as 'w', 'left shift', 'f5', 'space')"
            ) from None
    return names


def _check_conflicts(bindings: dict[str, tuple[str, ...]]) -> None:
    owner: dict[int, str] = {}
    for binding, names in bindings.items():
        for name in names:
            code = key_code(name)
            if code in owner and owner[code] != binding:
                raise KeymapError(
                    f"key {name!r} is bound to both {owner[code]!r} and {binding!r}; "
                    "override both entries so that each key has one job"
                )
            owner[code] = binding


def _pretty(name: str) -> str:
    return name.title() if len(name) > 1 else name.upper()
