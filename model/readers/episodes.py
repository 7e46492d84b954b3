"""Engine episodes for training the IDM and the classifier: read a dataset or render on the spot.

Either way an episode is frames [N, H, W, 3] uint8 with one action row and one prompt per frame
(frame j produced by action j). Held-out episodes are split off by index so the ceiling is
measured on worlds (seeds) the network never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.common.rollout import rollout
from model.common.runlog import progress
from world.actions import Action
from world.backends.registry import create_backend
from world.data.dataset import open_dataset
from world.procedural.scripted_player import ScriptedPlayer


@dataclass
class Episode:
    frames: np.ndarray  # [N, H, W, 3] uint8 (may be a read-only memmap)
    actions: np.ndarray  # [N, ACTION_DIM] float32
    prompts: list[str]  # [N]

    def __len__(self) -> int:
        return len(self.frames)


def load_dataset(root: str | Path) -> list[Episode]:
    readers = open_dataset(root)
    episodes = [Episode(r.frames, r.actions(), r.prompts()) for r in readers if len(r) > 0]
    if not episodes:
        raise ValueError(f"{root}: no readable episodes (make some with `run_world.py datagen --out {root}`)")
    return episodes


def scripted_actions(player: ScriptedPlayer, n: int) -> tuple[list[Action], dict[int, str]]:
    """n actions from the player, and the prompt switches it asks for ({action index: prompt})."""
    actions, switches = [], {}
    for j in range(n):
        if j > 0 and j % 3 == 0 and (p := player.next_prompt()) is not None:
            switches[j] = p
        actions.append(player.next_action())
    return actions, switches


def render_engine_episodes(
    n_episodes: int, frames_per_episode: int, height: int, width: int, seed: int = 0, show: bool = True
) -> list[Episode]:
    """Render scripted-player episodes on the engine (the same statistics datagen produces)."""
    backend = create_backend("engine", height=height, width=width, chunk_frames=3)
    episodes = []
    bar = progress(n_episodes, desc="render engine episodes", unit="ep") if show else None
    for i in range(n_episodes):
        player = ScriptedPlayer(seed + i)
        first_prompt = player.next_prompt()
        actions, switches = scripted_actions(player, frames_per_episode - frames_per_episode % 3)
        r = rollout(backend, seed + i, first_prompt, actions, switches)
        episodes.append(Episode(r.frames, r.actions, r.prompts))
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    backend.close()
    return episodes


def split_episodes(episodes: list[Episode], heldout_fraction: float) -> tuple[list[Episode], list[Episode]]:
    """(train, heldout): the last episodes by index; with one episode, its last frames."""
    if len(episodes) == 1:
        ep = episodes[0]
        cut = int(len(ep) * (1 - heldout_fraction))
        return [Episode(ep.frames[:cut], ep.actions[:cut], ep.prompts[:cut])], [
            Episode(ep.frames[cut:], ep.actions[cut:], ep.prompts[cut:])
        ]
    n_held = min(len(episodes) - 1, max(1, round(len(episodes) * heldout_fraction)))
    return episodes[:-n_held], episodes[-n_held:]
