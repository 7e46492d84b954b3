"""A scripted player that moves like a person: held keys in bouts, smooth mouse sweeps, pauses.

Used by datagen (training data), the headless client (random walks) and evaluation. Uniformly
random per-frame actions would jitter in place and never travel; people instead hold a key for a
while, turn in bouts, sweep the mouse in smooth arcs, glance up or down and come back to level,
and sometimes stop. Training data with those statistics is what the model will see at play time.

Deterministic given the seed: actions and prompt switches use separate generators, so the action
sequence does not depend on how often `next_prompt` is asked.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from world.actions import KEYS, Action


@dataclass(frozen=True)
class Bout:
    """`frames` frames holding `keys`, with mouse deltas following one smooth bump of peak (dx, dy).

    The bump is sin(pi * (j + 0.5) / frames), so a sweep starts and ends near zero like a hand.
    """

    keys: tuple[str, ...]
    frames: int
    dx: float = 0.0
    dy: float = 0.0

    def action(self, j: int) -> Action:
        bump = math.sin(math.pi * (j + 0.5) / self.frames)
        return Action(self.keys, _clip(self.dx * bump), _clip(self.dy * bump))


def _clip(v: float) -> float:
    return float(min(1.0, max(-1.0, v)))


# Relative frequency of each behaviour when a new bout starts; walking forward dominates.
BEHAVIOURS: dict[str, float] = {
    "walk": 0.30,
    "walk_turn": 0.12,
    "strafe": 0.08,
    "back": 0.05,
    "turn": 0.10,
    "sweep": 0.09,
    "look": 0.10,
    "vertical": 0.06,
    "idle": 0.10,
}
# How far (in frames of holding rise) the player drifts from its start height before it prefers
# to come back; keeps long episodes from climbing forever or grinding along the ground.
HEIGHT_SCALE_FRAMES = 60.0
RANDOM_KEYS = ("any", "one")  # what a random bout holds (ScriptedPlayer's random_keys)
MASK64 = (1 << 64) - 1  # SeedSequence takes non-negative ints only


class ScriptedPlayer:
    """next_action() once per frame; next_prompt() whenever the caller may switch prompts.

    prompts: the prompts to pick from; None composes prompts from world.procedural.themes.
    switch_every_s: (min, max) seconds between prompt switches, or None to never switch.
    bout_scale: multiplies every bout's duration. 1 is how people play; training data for a world
      model wants more (0.2-0.3): with bouts of 1-5 s, a 3-chunk training clip almost never sees
      the keys change, so the motion already visible in the context predicts the next chunk and
      the model learns to ignore the keys (docs/teacher-recipe.md, "why actions were ignored").
    random_share: the share of bouts that hold a random action instead of a person-like one: any
      subset of the keys (each held with probability 1/4) and a random mouse step, for 1-8 frames.
      A world model otherwise sees mostly the modal actions (walking forward) and learns only
      their effect (docs/world-model.md, "training data"). 0 keeps the person-like stream as it was.
    random_keys: what a random bout holds: "any" (above) or "one": a single key or none, no mouse
      (each of the 11 equally likely): the simplest control a world model can learn first.
    """

    def __init__(
        self,
        seed: int,
        prompts: Sequence[str] | None = None,
        switch_every_s: tuple[float, float] | None = (8, 20),
        fps: float = 30,
        bout_scale: float = 1.0,
        random_share: float = 0.0,
        random_keys: str = "any",
    ):
        if prompts is not None and not prompts:
            raise ValueError("prompts must be None or a non-empty sequence")
        if switch_every_s is not None and not 0 < switch_every_s[0] <= switch_every_s[1]:
            raise ValueError(f"switch_every_s must be (min, max) with 0 < min <= max, got {switch_every_s}")
        if not 0 < bout_scale <= 10:
            raise ValueError(f"bout_scale must be in (0, 10], got {bout_scale}")
        if not 0 <= random_share <= 1:
            raise ValueError(f"random_share must be in [0, 1], got {random_share}")
        if random_keys not in RANDOM_KEYS:
            raise ValueError(f"random_keys must be one of {RANDOM_KEYS}, got {random_keys!r}")
        action_seq, prompt_seq = np.random.SeedSequence(seed & MASK64).spawn(2)  # any int, negatives too
        self._rng = np.random.default_rng(action_seq)
        self._prompt_rng = np.random.default_rng(prompt_seq)
        self.prompts = tuple(prompts) if prompts is not None else None
        self.switch_every_s = switch_every_s
        self.fps = float(fps)
        self.bout_scale = float(bout_scale)
        self.random_share = float(random_share)
        self.random_keys = random_keys
        self.frame = 0  # actions issued so far
        self.prompt: str | None = None
        self._next_switch: float | None = None  # frame index of the next switch; inf: never
        self._queue: deque[Bout] = deque()
        self._bout: Bout | None = None
        self._j = 0
        self._height = 0.0  # frames of rise minus frames of sink, to steer back toward the start

    # ---- actions -------------------------------------------------------------------------
    def next_action(self) -> Action:
        if self._bout is None or self._j >= self._bout.frames:
            self._bout, self._j = self._next_bout(), 0
        action = self._bout.action(self._j)
        self._j += 1
        self.frame += 1
        self._height += action.held("rise") - action.held("sink")
        return action

    def _next_bout(self) -> Bout:
        # Drawn only when enabled, so random_share=0 leaves the person-like stream bit for bit.
        if not self._queue and self.random_share > 0 and self._rng.random() < self.random_share:
            return self._random_bout()
        if not self._queue:
            names = list(BEHAVIOURS)
            p = np.array([BEHAVIOURS[n] for n in names])
            name = names[self._rng.choice(len(names), p=p / p.sum())]
            self._queue.extend(getattr(self, f"_plan_{name}")())
        return self._queue.popleft()

    def _random_bout(self) -> Bout:
        if self.random_keys == "one":
            pick = int(self._rng.integers(0, len(KEYS) + 1))  # len(KEYS): no key
            return Bout(KEYS[pick : pick + 1], int(self._rng.integers(1, 9)))
        keys = tuple(k for k in KEYS if self._rng.random() < 0.25)
        dx, dy = (float(v) if self._rng.random() < 0.5 else 0.0 for v in self._rng.uniform(-1, 1, 2))
        return Bout(keys, int(self._rng.integers(1, 9)), dx=dx, dy=dy)

    def _frames(self, lo_s: float, hi_s: float) -> int:
        return max(1, round(self._rng.uniform(lo_s, hi_s) * self.fps * self.bout_scale))

    def _side(self) -> int:
        return 1 if self._rng.random() < 0.5 else -1

    def _maybe(self, p: float, key: str) -> tuple[str, ...]:
        return (key,) if self._rng.random() < p else ()

    def _plan_walk(self) -> list[Bout]:
        # Mostly straight, sometimes drifting with a gentle mouse arc.
        dx = self._side() * self._rng.uniform(0.1, 0.5) if self._rng.random() < 0.3 else 0.0
        return [Bout(("forward",), self._frames(1.0, 5.0), dx=dx)]

    def _plan_walk_turn(self) -> list[Bout]:
        turn = "turn_left" if self._side() < 0 else "turn_right"
        return [Bout(("forward", turn), self._frames(0.4, 2.0))]

    def _plan_strafe(self) -> list[Bout]:
        side = "left" if self._side() < 0 else "right"
        return [Bout((side, *self._maybe(0.5, "forward")), self._frames(0.5, 2.0))]

    def _plan_back(self) -> list[Bout]:
        turn = ("turn_left" if self._side() < 0 else "turn_right") if self._rng.random() < 0.3 else None
        return [Bout(("back", *([turn] if turn else [])), self._frames(0.4, 1.5))]

    def _plan_turn(self) -> list[Bout]:
        turn = "turn_left" if self._side() < 0 else "turn_right"
        return [Bout((turn,), self._frames(0.3, 1.5))]

    def _plan_sweep(self) -> list[Bout]:
        dx = self._side() * self._rng.uniform(0.3, 1.0)
        return [Bout(self._maybe(0.5, "forward"), self._frames(0.5, 2.0), dx=dx)]

    def _plan_look(self) -> list[Bout]:
        """Glance up or down (keys or mouse), pause, then the same motion back to level."""
        n, sign = self._frames(0.2, 0.8), self._side()
        pause = Bout(self._maybe(0.5, "forward"), self._frames(0.5, 3.0))
        if self._rng.random() < 0.6:
            up, down = ("look_up",), ("look_down",)
            return [Bout(up if sign > 0 else down, n), pause, Bout(down if sign > 0 else up, n)]
        dy = sign * self._rng.uniform(0.3, 1.0)
        return [Bout((), n, dy=dy), pause, Bout((), n, dy=-dy)]

    def _plan_vertical(self) -> list[Bout]:
        # Prefer the direction that brings the player back toward its start height.
        p_rise = 1.0 / (1.0 + math.exp(self._height / HEIGHT_SCALE_FRAMES))
        key = "rise" if self._rng.random() < p_rise else "sink"
        return [Bout((key, *self._maybe(0.5, "forward")), self._frames(0.5, 2.0))]

    def _plan_idle(self) -> list[Bout]:
        return [Bout((), self._frames(0.3, 3.0))]

    # ---- prompts -------------------------------------------------------------------------
    def next_prompt(self) -> str | None:
        """The prompt to switch to now, else None. The first call returns the starting prompt.

        Call it where a switch may happen (before each chunk); a switch that fell due mid-chunk
        is returned at the next call.
        """
        if self._next_switch is None:
            return self._switch()
        return self._switch() if self.frame >= self._next_switch else None

    def _switch(self) -> str:
        self.prompt = self._pick_prompt(self.prompt)
        if self.switch_every_s is None:
            self._next_switch = math.inf
        else:
            wait_s = self._prompt_rng.uniform(*self.switch_every_s)
            self._next_switch = self.frame + max(1, round(wait_s * self.fps))
        return self.prompt

    def _pick_prompt(self, current: str | None) -> str:
        for _ in range(20):  # a switch should change something; give up quietly on tiny lists
            prompt = self._draw_prompt()
            if prompt != current:
                return prompt
        return prompt

    def _draw_prompt(self) -> str:
        if self.prompts is not None:
            return self.prompts[self._prompt_rng.integers(len(self.prompts))]
        return compose_prompt(self._prompt_rng)


def compose_prompt(rng: np.random.Generator) -> str:
    """A random theme phrased with training-split synonyms only (held-out phrasings stay unseen)."""
    import random

    from world.procedural import themes  # lazy: the player's actions need nothing from the themes module

    theme = themes.Theme(
        biome=str(rng.choice(themes.BIOMES)),
        time_of_day=str(rng.choice(themes.TIMES)),
        weather=str(rng.choice(themes.WEATHERS)),
    )
    # themes phrases with a stdlib Random; seed it from our generator to stay deterministic.
    return themes.compose_prompt(theme, random.Random(int(rng.integers(2**63))), split="train")
