"""`run_world.py datagen`: render engine episodes driven by the scripted player into a dataset.

    python run_world.py datagen --out data/engine --episodes 100 --frames-per-episode 900 --workers 2

Each episode mirrors what the worker does for a live session: `reset(seed, prompt)`, then
`step_chunk` per chunk with a prompt switch allowed only between chunks, so `replay` can
re-simulate any episode bit for bit. Episode k's world and player seeds are derived from --seed
and k alone, so a run is reproducible and resumable: episodes already complete in --out are
skipped, an incomplete one (a killed run) is deleted and rendered again.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from world.backend import BackendError
from world.backends.registry import create_backend
from world.data.dataset import (
    FRAMES_FILE,
    META_FILE,
    RECORDS_FILE,
    DatasetError,
    EpisodeReader,
    EpisodeWriter,
    new_episode_path,
)
from world.procedural.scripted_player import MASK64, RANDOM_KEYS, ScriptedPlayer

BACKEND = "engine"


@dataclass(frozen=True)
class DatagenConfig:
    """Everything that decides the content of the episodes (recorded in each meta.json)."""

    seed: int
    frames_per_episode: int
    size: int = 64
    chunk_frames: int = 3
    prompt_switch: bool = True
    switch_every_s: tuple[float, float] = (8.0, 20.0)  # (min, max) seconds between prompt switches
    bout_scale: float = 1.0  # ScriptedPlayer's: < 1 changes keys more often (world-model training data)
    random_share: float = 0.0  # ScriptedPlayer's: share of bouts holding a random action for 1-8 frames
    random_keys: str = "any"  # ScriptedPlayer's: what a random bout holds ("any" keys and mouse, or "one" key)

    def to_json(self) -> dict:
        d = json.loads(json.dumps(asdict(self)))  # tuples become lists, as in meta.json
        if d["bout_scale"] == 1.0:
            del d["bout_scale"]  # datasets made before the option existed keep resuming
        if d["random_share"] == 0.0:
            del d["random_share"]
        if d["random_keys"] == "any":
            del d["random_keys"]  # datasets made before the option existed keep resuming
        return d


@dataclass(frozen=True)
class EpisodePlan:
    index: int
    world_seed: int
    player_seed: int


def plan_episode(seed: int, index: int) -> EpisodePlan:
    """Seeds of episode `index` depend only on (--seed, index): stable across runs and workers."""
    world_seed, player_seed = np.random.SeedSequence([seed & MASK64, index]).generate_state(2)
    return EpisodePlan(index, int(world_seed), int(player_seed))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="dataset directory (created if missing)")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes")
    parser.add_argument("--frames-per-episode", type=int, required=True, help="frames in each episode")
    parser.add_argument("--size", type=int, default=64, help="frame height and width in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; episode seeds derive from it")
    parser.add_argument("--workers", type=int, default=1, help="processes, one episode per task")
    parser.add_argument("--chunk-frames", type=int, default=3, help="frames per step_chunk (default 3)")
    parser.add_argument("--no-prompt-switch", action="store_true", help="keep one prompt per episode")
    parser.add_argument(
        "--switch-every",
        type=float,
        nargs=2,
        default=(8.0, 20.0),
        metavar=("MIN", "MAX"),
        help="seconds between prompt switches, drawn uniformly (default 8 20)",
    )
    parser.add_argument("--bout-scale", type=float, default=1.0,
                        help="scale the scripted player's bout durations; < 1 changes keys more often, "
                             "so a world model cannot predict the keys from the context (default 1)")
    parser.add_argument("--random-share", type=float, default=0.0,
                        help="share of bouts that hold a random action (any keys, a mouse step) for 1-8 "
                             "frames, beside the person-like bouts (default 0)")
    parser.add_argument("--random-keys", choices=RANDOM_KEYS, default="any",
                        help="what a random bout holds: any (a subset of the keys and a mouse step) or one "
                             "(a single key or none, no mouse) (default any)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    for name in ("episodes", "frames_per_episode", "size", "workers", "chunk_frames"):
        if getattr(args, name) < 1:
            print(f"datagen: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    config = DatagenConfig(seed=args.seed, frames_per_episode=args.frames_per_episode, size=args.size,
                           chunk_frames=args.chunk_frames, prompt_switch=not args.no_prompt_switch,
                           switch_every_s=tuple(args.switch_every), bout_scale=args.bout_scale,
                           random_share=args.random_share, random_keys=args.random_keys)  # fmt: skip
    if not 0 < config.bout_scale <= 10:
        print("datagen: --bout-scale must be in (0, 10]", file=sys.stderr)
        return 2
    if not 0 <= config.random_share <= 1:
        print("datagen: --random-share must be in [0, 1]", file=sys.stderr)
        return 2
    if not 0 < config.switch_every_s[0] <= config.switch_every_s[1]:
        print("datagen: --switch-every needs 0 < MIN <= MAX", file=sys.stderr)
        return 2
    try:
        summary = generate(args.out, args.episodes, config, workers=args.workers, progress=not args.no_progress)
    except (BackendError, DatasetError) as e:  # bad --size and the like: say so, no traceback
        print(f"datagen: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("datagen: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 0


def generate(out: str | Path, episodes: int, config: DatagenConfig, *, workers: int = 1,
             progress: bool = True) -> dict:  # fmt: skip
    """Render the missing episodes of `out`; returns the JSON summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plans = [plan_episode(config.seed, k) for k in range(episodes)]
    done = prepare_output(out, config, plans)
    todo = [p for p in plans if p.index not in done]
    start = time.perf_counter()
    total = len(todo) * config.frames_per_episode
    with tqdm(total=total, unit="frame", desc="datagen", disable=not progress, file=sys.stderr) as bar:
        if workers == 1 or len(todo) <= 1:
            frames = sum(render_episode(out, config, plan, bar.update) for plan in todo)
        else:
            frames = _render_parallel(out, config, todo, workers, bar.update)
    seconds = time.perf_counter() - start
    return {"episodes": len(todo), "skipped": len(done), "frames": frames, "seconds": round(seconds, 3),
            "fps": round(frames / seconds, 1) if seconds > 0 else None, "out": str(out)}  # fmt: skip


# ---- resuming -----------------------------------------------------------------------------------
def prepare_output(out: Path, config: DatagenConfig, plans: list[EpisodePlan]) -> set[int]:
    """Indices of planned episodes already complete in `out`; deletes incomplete ones."""
    wanted = {p.index: p for p in plans}
    done: set[int] = set()
    for path in sorted(p for p in out.iterdir() if p.is_dir()):
        if _is_orphan(path):
            shutil.rmtree(path)
            continue
        index = _planned_index(path, config, wanted)
        if index is None:
            continue  # not one of ours (another run, a recording): leave it alone
        if index not in done and _is_complete(path, config.frames_per_episode):
            done.add(index)
        else:
            shutil.rmtree(path)  # incomplete or a duplicate: render it again
    return done


def _is_orphan(path: Path) -> bool:
    """A writer killed before meta.json was renamed in: only empty data files, nothing to keep."""
    names = {p.name for p in path.iterdir()}
    if META_FILE in names or not names <= {FRAMES_FILE, RECORDS_FILE, META_FILE + ".tmp"}:
        return False
    return all((path / n).stat().st_size == 0 for n in names & {FRAMES_FILE, RECORDS_FILE})


def _planned_index(path: Path, config: DatagenConfig, wanted: dict[int, EpisodePlan]) -> int | None:
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        info = meta["datagen"]
        index = info["episode"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    plan = wanted.get(index)
    if plan is None or meta.get("seed") != plan.world_seed or info.get("config") != config.to_json():
        return None
    return index


def _is_complete(path: Path, frames: int) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a torn episode is expected here; we redo it
            return len(EpisodeReader(path)) == frames
    except DatasetError:
        return False


# ---- rendering ----------------------------------------------------------------------------------
def render_episode(out: Path, config: DatagenConfig, plan: EpisodePlan,
                   on_frames: Callable[[int], object] = lambda n: None) -> int:  # fmt: skip
    """Render one episode into a new directory under `out`; returns the frames written."""
    backend = create_backend(BACKEND, height=config.size, width=config.size, chunk_frames=config.chunk_frames)
    try:
        info = backend.info
        switch_every_s = config.switch_every_s if config.prompt_switch else None
        player = ScriptedPlayer(plan.player_seed, switch_every_s=switch_every_s, fps=info.fps,
                                bout_scale=config.bout_scale, random_share=config.random_share,
                                random_keys=config.random_keys)
        prompt = player.next_prompt()
        backend.reset(plan.world_seed, prompt)
        extra = {"prompt": prompt, "engine_version": backend.engine_version,  # replay checks it
                 "datagen": {"episode": plan.index, "player_seed": plan.player_seed, "player": "scripted",
                             "config": config.to_json()}}  # fmt: skip
        with EpisodeWriter(new_episode_path(out, plan.world_seed), backend=BACKEND, seed=plan.world_seed,
                           height=info.height, width=info.width, chunk_frames=info.chunk_frames, fps=info.fps,
                           source="datagen", extra=extra) as writer:  # fmt: skip
            _render_chunks(backend, player, writer, config.frames_per_episode, on_frames)
        return writer.frames_written
    finally:
        backend.close()


def _render_chunks(backend, player: ScriptedPlayer, writer: EpisodeWriter, frames: int,
                   on_frames: Callable[[int], object]) -> None:  # fmt: skip
    fps, chunk_frames = writer.meta["fps"], writer.meta["chunk_frames"]
    prompt = player.prompt
    for chunk, start in enumerate(range(0, frames, chunk_frames)):
        switch = player.next_prompt()  # only between chunks, as the worker does
        if switch is not None:
            backend.set_prompt(switch)
            prompt = switch
        actions = [player.next_action() for _ in range(min(chunk_frames, frames - start))]
        result = backend.step_chunk(actions)
        records = [
            {"chunk": chunk, "action": a.to_json(), "prompt": prompt, "steps": result.steps, "nfe": result.nfe,
             "t": round((start + k) / fps, 6)}
            for k, a in enumerate(actions)
        ]  # fmt: skip
        # Chunk facts (engine: theme, camera pose) hold after the chunk's last frame: record them there.
        # The engine version is the same for every chunk and already in meta.json.
        facts = {k: v for k, v in result.extra.items() if k not in records[-1] and k != "engine_version"}
        records[-1].update(facts)
        writer.append_chunk(result.frames, records)
        on_frames(len(actions))


# ---- parallel -----------------------------------------------------------------------------------
_progress: mp.Queue | None = None  # set in each pool process by _init_pool


def _init_pool(progress: mp.Queue) -> None:
    global _progress
    _progress = progress


def _render_task(task: tuple[Path, DatagenConfig, EpisodePlan]) -> int:
    return render_episode(*task, on_frames=_progress.put)


def _render_parallel(out: Path, config: DatagenConfig, plans: list[EpisodePlan], workers: int,
                     on_frames: Callable[[int], object]) -> int:  # fmt: skip
    # spawn, not fork: the parent may hold threads (tqdm's monitor) that fork would copy mid-lock.
    ctx = mp.get_context("spawn")
    progress = ctx.Queue()
    with ctx.Pool(min(workers, len(plans)), initializer=_init_pool, initargs=(progress,)) as pool:
        result = pool.map_async(_render_task, [(out, config, p) for p in plans], chunksize=1)
        while not result.ready():
            _drain(progress, on_frames, timeout=0.2)
        _drain(progress, on_frames, timeout=0.0)
        return sum(result.get())


def _drain(progress: mp.Queue, on_frames: Callable[[int], object], timeout: float) -> None:
    try:
        on_frames(progress.get(timeout=timeout) if timeout else progress.get_nowait())
        while True:
            on_frames(progress.get_nowait())
    except queue.Empty:
        pass
