"""Player actions: per-frame multi-hot keys plus continuous mouse deltas.

One `Action` drives one frame. The same type travels over the wire, into the recorder and into
the model's action embedding (`Action.to_vector`), so the names and order of `KEYS` are part of
the dataset format and of every checkpoint: append new keys at the end, never reorder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Order is part of the on-disk format and of the model input layout.
KEYS: tuple[str, ...] = (
    "forward",
    "back",
    "left",  # strafe
    "right",  # strafe
    "turn_left",
    "turn_right",
    "look_up",
    "look_down",
    "rise",
    "sink",
)
KEY_INDEX = {name: i for i, name in enumerate(KEYS)}

# Mouse deltas are normalised per frame: 1.0 is the largest turn (yaw) or look (pitch) step a
# frame may take. Values outside [-MOUSE_LIMIT, MOUSE_LIMIT] are rejected, not clipped, so a
# client bug shows up as an error instead of a silently different world.
MOUSE_LIMIT = 1.0
ACTION_DIM = len(KEYS) + 2  # multi-hot keys, then mouse dx (yaw), mouse dy (pitch)


class ActionError(ValueError):
    """An action that cannot be applied (unknown key, bad mouse value, wrong type)."""


@dataclass(frozen=True)
class Action:
    """What the player did during one frame.

    keys: names from `KEYS` held during the frame (order irrelevant, stored sorted by KEYS order).
    mouse_dx: yaw delta in [-1, 1], positive turns right.
    mouse_dy: pitch delta in [-1, 1], positive looks up.
    """

    keys: tuple[str, ...] = ()
    mouse_dx: float = 0.0
    mouse_dy: float = 0.0

    def __post_init__(self) -> None:
        keys = tuple(self.keys)
        for k in keys:
            if not isinstance(k, str) or k not in KEY_INDEX:
                raise ActionError(f"unknown key {k!r}; known keys: {', '.join(KEYS)}")
        canonical = tuple(sorted(set(keys), key=KEY_INDEX.__getitem__))
        object.__setattr__(self, "keys", canonical)
        for name in ("mouse_dx", "mouse_dy"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ActionError(f"{name} must be a number, got {type(value).__name__}")
            try:
                value = float(value)
            except OverflowError:  # an integer literal of hundreds of digits
                raise ActionError(f"{name} is outside [-{MOUSE_LIMIT}, {MOUSE_LIMIT}]") from None
            if not math.isfinite(value) or abs(value) > MOUSE_LIMIT:
                raise ActionError(f"{name}={value!r} is outside [-{MOUSE_LIMIT}, {MOUSE_LIMIT}]")
            object.__setattr__(self, name, value)

    def held(self, key: str) -> bool:
        return key in self.keys

    def to_vector(self) -> np.ndarray:
        """[ACTION_DIM] float32: multi-hot keys in KEYS order, then mouse dx, dy."""
        v = np.zeros(ACTION_DIM, dtype=np.float32)
        for k in self.keys:
            v[KEY_INDEX[k]] = 1.0
        v[len(KEYS)] = self.mouse_dx
        v[len(KEYS) + 1] = self.mouse_dy
        return v

    @classmethod
    def from_vector(cls, v: Sequence[float] | np.ndarray) -> Action:
        v = np.asarray(v, dtype=np.float32)
        if v.shape != (ACTION_DIM,):
            raise ActionError(f"action vector must have shape ({ACTION_DIM},), got {v.shape}")
        keys = tuple(k for k, bit in zip(KEYS, v[: len(KEYS)]) if bit > 0.5)
        return cls(keys, float(v[len(KEYS)]), float(v[len(KEYS) + 1]))

    def to_json(self) -> dict:
        """Wire/dataset form: {"keys": [...], "mouse": [dx, dy]}."""
        return {"keys": list(self.keys), "mouse": [self.mouse_dx, self.mouse_dy]}

    @classmethod
    def from_json(cls, obj: object) -> Action:
        """Parse the wire/dataset form, raising ActionError with the reason on anything else."""
        if not isinstance(obj, Mapping):
            raise ActionError(f"action must be an object, got {type(obj).__name__}")
        unknown = set(obj) - {"keys", "mouse"}
        if unknown:
            raise ActionError(f"unknown action fields: {sorted(unknown)}")
        keys = obj.get("keys", [])
        if not isinstance(keys, list) or len(keys) > len(KEYS):
            raise ActionError(f"action keys must be a list of at most {len(KEYS)} key names")
        mouse = obj.get("mouse", [0.0, 0.0])
        if not isinstance(mouse, list) or len(mouse) != 2:
            raise ActionError("action mouse must be a list [dx, dy]")
        return cls(tuple(keys), mouse[0], mouse[1])


IDLE = Action()


def actions_to_array(actions: Iterable[Action]) -> np.ndarray:
    """[F, ACTION_DIM] float32 for a sequence of per-frame actions."""
    rows = [a.to_vector() for a in actions]
    return np.stack(rows) if rows else np.zeros((0, ACTION_DIM), dtype=np.float32)
