"""Counterfactual accuracy: does the world's future depend on the action the way the engine's does?

From one context (the engine's first `context_chunks` chunks of scripted play at a seed and
prompt, handed to the world through `reset_with_context`), the world generates the next
`counterfactual_chunks` chunks under each of 5 held actions (COUNTERFACTUAL_ACTIONS). The engine,
deterministic, re-simulates the same context and produces its outcome under each action from the
same state. Distances are MSE over all frames of an outcome (pixels in [0, 1]).

- counterfactual_accuracy: for each context and action a, is the world's outcome under a nearest
  to the engine's outcome under a, among the engine's outcomes under all 5 actions? Ties: if the
  nearest engine outcomes are a set T (equal distances), the world earns 1/|T| when a is in T,
  else 0. A world whose outcomes do not depend on the action (all identical, e.g. `still`) is
  nearest to the same engine outcome(s) for every a, so it earns exactly 1 credit per context:
  accuracy = 1/5 = counterfactual_chance, deterministically. Mean over contexts x actions.
- Contexts where two actions give the engine *identical* outcomes (e.g. looking up while already
  at the pitch limit = idle) are skipped and replaced by the next seed (counted in
  counterfactual_skipped): "which action was it" has no answer there. So the engine as world
  scores exactly 1.0 (its own outcome is at distance 0, every other one farther).
- counterfactual_spread_ratio: mean pairwise MSE between the world's outcomes (10 pairs per
  context, all contexts) / the same for the engine's. 0: the world ignores the action; 1: it
  separates the futures as much as the engine does (more is possible: a world that overreacts).
- counterfactual_effect_{world,engine}_per_action: per action, the mean MSE between the outcome
  under it and the outcome under idle: how far the action moves the future, the world's against the
  engine's (a world that under-moves one action shows it here, where the spread averages it away).
- counterfactual_resolvable_per_action: per action, the share of contexts where the engine's
  outcome under it lies farther from its idle outcome than the world's idle outcome does (the
  world's own error while standing still). Where it does not, even a world that moved exactly right,
  with that error, would be about as near the engine's idle future: a small motion there is below
  what the nearest-future test can resolve for this world.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from model.common.rollout import Start, engine_context, rollout
from model.evaluation.eval_config import EvalConfig
from model.evaluation.measure_prompts import walk_actions
from model.evaluation.worlds import Worlds
from world.actions import IDLE, Action
from world.procedural.themes import EXAMPLE_PROMPTS

COUNTERFACTUAL_ACTIONS: dict[str, Action] = {
    "idle": IDLE,
    "forward": Action(("forward",)),
    "turn_left": Action(("turn_left",)),
    "turn_right": Action(("turn_right",)),
    "look_up": Action(("look_up",)),
}


def context_start(worlds: Worlds, cfg: EvalConfig, seed: int, prompt: str) -> Start:
    """The engine's first `context_chunks` chunks of scripted play at (seed, prompt)."""
    n = cfg.context_chunks * worlds.engine.info.chunk_frames
    return engine_context(worlds.engine, seed, prompt, walk_actions(seed, n - 1))


def outcomes(worlds: Worlds, seed: int, prompt: str, ctx: Start, actions: dict[str, Action], frames: int,
             engine: bool) -> np.ndarray:
    """[A, frames, H, W, 3] uint8: the engine's (engine=True) or the world's frames after the context
    under each action held for `frames` frames."""
    backend = worlds.engine if engine else worlds.world
    return np.stack([rollout(backend, seed, prompt, [a] * frames, start=ctx).frames[1:] for a in actions.values()])


def mse_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[A, B] mean squared difference (pixels in [0, 1]) of outcomes a [A, ...] and b [B, ...]."""
    x = a.reshape(len(a), -1).astype(np.float64) / 255.0
    y = b.reshape(len(b), -1).astype(np.float64) / 255.0
    return np.array([[float(np.mean((u - v) ** 2)) for v in y] for u in x])


def credit(distances: np.ndarray) -> np.ndarray:
    """[A, A] credit: row a (world outcome under a) earns 1/|T| in each column of T, the set of
    engine outcomes at the row's minimal distance; counterfactual accuracy is the diagonal's mean."""
    nearest = distances == distances.min(1, keepdims=True)
    return nearest / nearest.sum(1, keepdims=True)


def per_action(values: np.ndarray) -> dict[str, float]:
    """{action: value} for the actions after idle (idle's own effect is 0 by definition)."""
    return {a: float(v) for a, v in zip(list(COUNTERFACTUAL_ACTIONS)[1:], values[1:])}


def mean_pairwise(x: np.ndarray) -> float:
    d = mse_matrix(x, x)
    return float(np.mean([d[i, j] for i, j in combinations(range(len(x)), 2)]))


def effects(x: np.ndarray) -> np.ndarray:
    """[A] MSE between each outcome of x [A, ...] and the first (idle's)."""
    return mse_matrix(x, x[:1])[:, 0]


def measure_counterfactual(worlds: Worlds, cfg: EvalConfig) -> dict:
    names = list(COUNTERFACTUAL_ACTIONS)
    assert names[0] == "idle"  # effects and resolvability are measured from idle's outcome
    frames = cfg.counterfactual_chunks * worlds.world.info.chunk_frames
    confusion = np.zeros((len(names), len(names)))
    spread_world, spread_engine, used, skipped = [], [], 0, 0
    effect_world, effect_engine, resolvable = [], [], []
    tries = 0
    while used < cfg.counterfactual_contexts:
        if tries >= 4 * cfg.counterfactual_contexts + 8:
            raise RuntimeError(f"counterfactual: only {used} of {cfg.counterfactual_contexts} contexts give the "
                               f"engine distinct outcomes under {', '.join(names)}")
        seed, prompt = cfg.seed + 1300 + tries, EXAMPLE_PROMPTS[tries % len(EXAMPLE_PROMPTS)]
        tries += 1
        ctx = context_start(worlds, cfg, seed, prompt)
        ref = outcomes(worlds, seed, prompt, ctx, COUNTERFACTUAL_ACTIONS, frames, engine=True)
        if any(np.array_equal(ref[i], ref[j]) for i, j in combinations(range(len(ref)), 2)):
            skipped += 1  # two actions the engine cannot tell apart here: no right answer
            continue
        gen = ref if worlds.same else outcomes(worlds, seed, prompt, ctx, COUNTERFACTUAL_ACTIONS, frames, False)
        confusion += credit(mse_matrix(gen, ref))
        spread_world.append(mean_pairwise(gen))
        spread_engine.append(spread_world[-1] if worlds.same else mean_pairwise(ref))
        effect_world.append(effects(gen))
        effect_engine.append(effects(ref))
        resolvable.append(effect_engine[-1] > mse_matrix(gen[:1], ref[:1])[0, 0])
        used += 1
    confusion /= used
    diag = np.diag(confusion)
    sw, se = float(np.mean(spread_world)), float(np.mean(spread_engine))
    return {
        "counterfactual_accuracy": float(diag.mean()),
        "counterfactual_chance": 1.0 / len(names),
        "counterfactual_spread_ratio": sw / se if se > 0 else float("nan"),
        "counterfactual_spread_world": sw,
        "counterfactual_spread_engine": se,
        "counterfactual_accuracy_per_action": {a: float(x) for a, x in zip(names, diag)},
        "counterfactual_effect_world_per_action": per_action(np.mean(effect_world, 0)),
        "counterfactual_effect_engine_per_action": per_action(np.mean(effect_engine, 0)),
        "counterfactual_resolvable_per_action": per_action(np.mean(resolvable, 0)),
        # row: the world's outcome under this action; column: credit to the engine's outcome under that one
        "counterfactual_confusion": {a: {b: float(x) for b, x in zip(names, row)} for a, row in zip(names, confusion)},
        "counterfactual_actions": names,
        "counterfactual_contexts": used,
        "counterfactual_skipped": skipped,
        "counterfactual_chunks": cfg.counterfactual_chunks,
    }
