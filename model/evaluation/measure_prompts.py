"""Prompt adherence: does the classifier read the requested theme off the world's frames?

Three prompt sets: training-style phrasings (synonyms from the themes module's train split),
held-out phrasings (only held-out synonyms, other word orders: text the model never trained on)
and, optionally, a user file (`--prompts FILE`). Plus prompt switches mid-stream: how many frames
until the classifier agrees with the new prompt.

Prompt adherence always starts from text (reset(seed, prompt)): an engine start would hand the
world the requested theme in its first frames. Switches start as the run says (`eval --start`):
from the engine's first chunk of the first theme by default.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np

from model.evaluation.eval_config import EvalConfig
from model.evaluation.worlds import Worlds
from model.readers.reading import ThemeReader
from model.readers.scores import theme_accuracy, theme_chance
from world.actions import Action
from world.backend import PromptError
from world.procedural.scripted_player import ScriptedPlayer
from world.procedural.themes import BIOMES, TIMES, WEATHERS, Theme, all_themes, compose_prompt, describe, parse_prompt

PromptItem = tuple[str, Theme]


def prompt_sets(cfg: EvalConfig) -> tuple[list[PromptItem], list[PromptItem]]:
    """(train-style, held-out) phrasings of the *same* themes (fixed seed), rolled out with the
    same seeds and actions: the engine scores both alike, so a gap is the phrasing's alone."""
    rng = random.Random(cfg.seed)
    pool = list(all_themes())
    rng.shuffle(pool)
    train = [(compose_prompt(t, rng, "train"), t) for t in pool[: cfg.train_prompts]]
    return train, [(compose_prompt(t, rng, "heldout"), t) for t in pool[: cfg.heldout_prompts]]


def read_prompt_file(path: str | Path) -> list[PromptItem]:
    """`prompt<TAB>biome,time_of_day,weather` per line; '#' starts a comment line; without a tab
    the expected theme is what parse_prompt reads from the prompt."""
    items = []
    for lineno, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        text, _, expected = line.partition("\t")
        try:
            theme = _expected_theme(expected) if expected.strip() else parse_prompt(text.strip())
        except (ValueError, PromptError) as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
        items.append((text.strip(), theme))
    if not items:
        raise ValueError(f"{path}: no prompts (one per line: prompt<TAB>biome,time_of_day,weather)")
    return items


def _expected_theme(text: str) -> Theme:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(
            f"expected theme {text!r} must be biome,time_of_day,weather "
            f"(biomes {', '.join(BIOMES)}; times {', '.join(TIMES)}; weathers {', '.join(WEATHERS)})"
        )
    return Theme(*parts)


def walk_actions(seed: int, n: int) -> list[Action]:
    """n frames of ordinary scripted play (no prompt switches: the measure controls prompts)."""
    player = ScriptedPlayer(seed, switch_every_s=None)
    return [player.next_action() for _ in range(n)]


def score_prompt_set(worlds: Worlds, cls: ThemeReader, items: list[PromptItem], cfg: EvalConfig, base: int) -> dict:
    """Accuracy of world and engine frames against each prompt's expected theme."""
    true, pred, pred_eng = [], [], []
    for k, (prompt, theme) in enumerate(items):
        # always from text: an engine start would show the world the requested theme
        gen, ref = worlds.both(cfg.seed + base + k, prompt, walk_actions(cfg.seed + base + k, cfg.prompt_frames),
                               start="text")
        labels = cls.read(gen.frames).labels
        pred.append(labels)
        pred_eng.append(labels if worlds.same else cls.read(ref.frames).labels)
        true.append(np.tile(cls.theme_labels(theme), (len(labels), 1)))
    true_all, pred_all = np.concatenate(true), np.concatenate(pred)
    world = theme_accuracy(true_all, pred_all)
    return {
        "accuracy": world["joint"],
        "per_prompt": [theme_accuracy(t, p)["joint"] for t, p in zip(true, pred)],
        "per_prompt_engine": [theme_accuracy(t, p)["joint"] for t, p in zip(true, pred_eng)],
        "factors": {f: world[f] for f in ("biome", "time_of_day", "weather")},
        "chance": theme_chance(true_all, pred_all),
        "engine": theme_accuracy(true_all, np.concatenate(pred_eng))["joint"],
        "prompts": [p for p, _ in items],
    }


def measure_prompts(worlds: Worlds, cls: ThemeReader, cfg: EvalConfig, prompt_file: str | None = None) -> dict:
    train, held = prompt_sets(cfg)
    tr = score_prompt_set(worlds, cls, train, cfg, base=200)
    he = score_prompt_set(worlds, cls, held, cfg, base=200)
    out = {
        "prompt_accuracy": tr["accuracy"],
        "prompt_accuracy_heldout": he["accuracy"],
        "prompt_ratio_to_engine": tr["accuracy"] / tr["engine"] if tr["engine"] > 0 else float("nan"),
        "prompt_ratio_to_engine_heldout": he["accuracy"] / he["engine"] if he["engine"] > 0 else float("nan"),
        "prompt_accuracy_chance": tr["chance"],
        "prompt_accuracy_engine": tr["engine"],
        "prompt_accuracy_heldout_engine": he["engine"],
        "prompt_factor_accuracy": tr["factors"],
        "prompt_factor_accuracy_heldout": he["factors"],
        "prompt_classifier_heldout": cls.meta.get("extra", {}).get("heldout", {}).get("joint", float("nan")),
        "prompt_start": "text",
        "prompts_train": tr["prompts"],
        "prompts_heldout": he["prompts"],
        "prompt_accuracy_each": tr["per_prompt"],
        "prompt_accuracy_each_heldout": he["per_prompt"],
        "prompt_accuracy_each_engine": tr["per_prompt_engine"],
    }
    if prompt_file:
        fi = score_prompt_set(worlds, cls, read_prompt_file(prompt_file), cfg, base=400)
        out.update(
            prompt_accuracy_file=fi["accuracy"],
            prompt_accuracy_file_engine=fi["engine"],
            prompt_factor_accuracy_file=fi["factors"],
            prompts_file=fi["prompts"],
        )
    return out


# ----------------------------------------------------------------------------- switches


def switch_pairs(cfg: EvalConfig) -> list[tuple[Theme, Theme]]:
    """(from, to) themes differing in every factor, so "agrees" cannot be luck on one axis."""
    rng = random.Random(cfg.seed + 7)
    pool = list(all_themes())
    pairs = []
    while len(pairs) < cfg.switches:
        a, b = rng.sample(pool, 2)
        if a.biome != b.biome and a.time_of_day != b.time_of_day and a.weather != b.weather:
            pairs.append((a, b))
    return pairs


def frames_to_agree(labels: np.ndarray, target: np.ndarray, stable: int) -> int | None:
    """1-based index of the first frame that starts `stable` agreeing frames; None if never."""
    agree = (labels == target).all(-1)
    for k in range(len(agree) - stable + 1):
        if agree[k : k + stable].all():
            return k + 1
    return None


def _latency_summary(latencies: list[int | None], chunk_frames: int) -> dict:
    done = [x for x in latencies if x is not None]
    frames = float(np.median(done)) if done else float("nan")
    return {
        "frames": frames,
        "chunks": math.ceil(frames / chunk_frames) if done else float("nan"),
        "success": len(done) / max(1, len(latencies)),
        "each": latencies,
    }


def measure_switches(worlds: Worlds, cls: ThemeReader, cfg: EvalConfig) -> dict:
    f = worlds.world.info.chunk_frames
    before = max(f, cfg.switch_before // f * f)  # switch on a chunk boundary
    gen_lat, ref_lat = [], []
    for k, (a, b) in enumerate(switch_pairs(cfg)):
        actions = walk_actions(cfg.seed + 500 + k, before + cfg.switch_after)
        gen, ref = worlds.both(cfg.seed + 500 + k, describe(a), actions, {before: describe(b)})
        target = cls.theme_labels(b)
        # frames[before + 1] is the first frame made after the switch (frames[0] is the reset view)
        gen_lat.append(frames_to_agree(cls.read(gen.frames).labels[before + 1 :], target, cfg.switch_stable))
        ref_lat.append(
            gen_lat[-1]
            if worlds.same
            else frames_to_agree(cls.read(ref.frames).labels[before + 1 :], target, cfg.switch_stable)
        )
    g, r = _latency_summary(gen_lat, f), _latency_summary(ref_lat, f)
    return {
        "switch_frames": g["frames"], "switch_chunks": g["chunks"], "switch_success": g["success"],
        "switch_frames_engine": r["frames"], "switch_chunks_engine": r["chunks"],
        "switch_success_engine": r["success"], "switch_frames_each": g["each"],
        "switch_pairs": [[describe(a), describe(b)] for a, b in switch_pairs(cfg)],
        "switch_start": worlds.start,
    }  # fmt: skip
