"""Prompt variants in teacher training (model/training/prompt_variants.py, --prompt-paraphrases and
--word-dropout): paraphrases from the training synonyms only, word dropout, the per-clip pick in
ClipBatches and a training step with them on."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
from safetensors.torch import save_file

from model.nets.text_encoder import create_text_encoder
from model.training.encode_latents import PROMPTS_FILE, TEXT_FILE, text_table
from model.training.prompt_variants import (
    build_variants,
    check_options,
    drop_words,
    heldout_phrases,
    variant_texts,
)
from model.training.teacher import ClipBatches, Trainer, prompt_table
from tests.helpers import SyntheticClips, make_trainer, teacher_options, tiny_config
from world.procedural.themes import (
    BIOMES,
    THEME_SYNONYMS,
    TIMES,
    WEATHERS,
    all_themes,
    compose_prompt,
    parse_prompt,
    synonyms,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

CPU = torch.device("cpu")
VALUES = {"biome": BIOMES, "time_of_day": TIMES, "weather": WEATHERS}
PROMPTS = ("desert dunes at dusk", "a walk through the fall foliage at sunset in fog", "snowy mountains, midnight",
           "rain at day in the fall colors")


def training_prompts(count: int = 96, seed: int = 0) -> list[str]:
    """Prompts as datagen writes them: every theme composed from the training synonyms."""
    rng = random.Random(seed)
    return [compose_prompt(theme, rng, "train") for theme in list(all_themes())[:count]]


def shows_heldout(text: str) -> list[str]:
    """Held-out synonyms written in `text` (word boundaries, case and punctuation ignored), apart from
    those inside a training phrase ("foliage" in "fall foliage", a training phrase of the tables)."""
    text = " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())
    heldout = [p for kind, values in VALUES.items() for v in values for p in synonyms(kind, v, "heldout")]
    train = [p for kind, values in VALUES.items() for v in values for p in synonyms(kind, v, "train")]
    for phrase in train:
        if any(re.search(rf"\b{re.escape(h)}\b", phrase) for h in heldout):
            text = re.sub(rf"\b{re.escape(phrase)}\b", "#", text)
    return [h for h in heldout if re.search(rf"\b{re.escape(h)}\b", text)]


def write_cache(directory, prompts) -> None:
    """A latent cache's text files: prompts.json and its prompts encoded by the hash text encoder."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PROMPTS_FILE).write_text(json.dumps(list(prompts)))
    tokens, mask = create_text_encoder("hash", "cpu", 8).encode(list(prompts))
    save_file({"tokens": tokens.half(), "mask": mask}, str(directory / TEXT_FILE))


def readable_table(prompts: int = 3, count: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A text table whose row r holds r in every number, and the variant rows [P, K + 1] of its layout."""
    rows = prompts * (count + 1)
    tokens = torch.arange(rows, dtype=torch.float32)[:, None, None].expand(rows, 2, 384).clone()
    variants = prompts + torch.arange(prompts * count).view(prompts, count)
    variants = torch.cat([torch.arange(prompts)[:, None], variants], 1)
    return tokens, torch.ones(rows, 2, dtype=torch.bool), variants


def picked_rows(batches: ClipBatches, step: int) -> list[int]:
    return batches(step, CPU).text[:, 0, 0].long().tolist()


# ----------------------------------------------------------------------------- the texts


def test_paraphrases_keep_the_theme_and_differ_from_the_prompt():
    prompts = [*PROMPTS, *training_prompts()]
    for prompt, variants in zip(prompts, variant_texts(prompts, 8, 0.0, seed=0)):
        assert len(variants) == 8 and len(set(variants)) == 8 and prompt not in variants
        assert all(parse_prompt(v) == parse_prompt(prompt) for v in variants), (prompt, variants)


def test_variants_hold_no_heldout_phrase():
    prompts = [*PROMPTS, *training_prompts()]
    for dropout in (0.0, 0.3, 0.6):
        for variants in variant_texts(prompts, 8, dropout, seed=1):
            assert not any(shows_heldout(v) for v in variants), variants
    # Dropping "fall" from the training phrase "fall foliage" would leave the held-out "foliage".
    assert heldout_phrases("fall foliage at dusk") == [] and heldout_phrases("foliage at dusk") == ["foliage"]
    rng = random.Random(0)
    assert not any(shows_heldout(drop_words("fall foliage at sunset", 0.5, rng)) for _ in range(300))


def test_word_dropout_rate_and_never_an_empty_prompt():
    rng = random.Random(0)
    words = " ".join(f"w{i}" for i in range(20))
    kept = [len(drop_words(words, 0.3, rng).split()) for _ in range(2000)]
    assert abs(1 - sum(kept) / (20 * 2000) - 0.3) < 0.01
    assert all(drop_words("snow", 0.95, rng) == "snow" for _ in range(50))
    assert drop_words(words, 0.0, rng) == words
    # Through the variants: each is its paraphrase with words left out, at about the rate asked.
    prompts = training_prompts()
    whole, dropped = variant_texts(prompts, 8, 0.0, seed=2), variant_texts(prompts, 8, 0.25, seed=2)
    total = left = 0
    for full_row, dropped_row in zip(whole, dropped):
        for full, part in zip(full_row, dropped_row):
            assert part.split() and is_subsequence(part.split(), full.split()), (full, part)
            total, left = total + len(full.split()), left + len(part.split())
    assert abs(1 - left / total - 0.25) < 0.04
    assert all(v.split() for row in variant_texts(prompts, 4, 0.95, seed=2) for v in row)


def is_subsequence(part: list[str], whole: list[str]) -> bool:
    rest = iter(whole)
    return all(word in rest for word in part)


def test_variants_are_a_function_of_the_seed():
    assert variant_texts(PROMPTS, 4, 0.2, seed=3) == variant_texts(PROMPTS, 4, 0.2, seed=3)
    assert variant_texts(PROMPTS, 4, 0.2, seed=3) != variant_texts(PROMPTS, 4, 0.2, seed=4)
    # A prompt's variants do not depend on the rest of the cache.
    assert variant_texts(PROMPTS[1:2], 4, 0.2, seed=3) == variant_texts(PROMPTS, 4, 0.2, seed=3)[1:2]


def test_table_holds_the_cache_rows_then_the_encoded_variants(tmp_path):
    write_cache(tmp_path, PROMPTS)
    tokens, mask = text_table(tmp_path)
    table = build_variants(PROMPTS, tokens, mask, 3, 0.1, 0, "hash")
    P = len(PROMPTS)
    assert table.rows.shape == (P, 4) and table.rows[:, 0].tolist() == list(range(P))
    assert table.tokens.shape == (P * 4, 8, 384) and table.mask.shape == (P * 4, 8)
    assert torch.equal(table.tokens[:P], tokens) and torch.equal(table.mask[:P], mask)
    variants = variant_texts(PROMPTS, 3, 0.1, 0)
    encoded, encoded_mask = create_text_encoder("hash", "cpu", 8).encode([v for row in variants for v in row])
    assert [table.texts[r] for r in table.rows[:, 1:].flatten()] == [v for row in variants for v in row]
    assert torch.equal(table.tokens[P:], encoded.half().float()) and torch.equal(table.mask[P:], encoded_mask)
    with pytest.raises(ValueError, match="disagree"):
        build_variants(PROMPTS[:2], tokens, mask, 3, 0.1, 0, "hash")


# ----------------------------------------------------------------------------- the batches


def test_off_is_todays_table_and_batches(tmp_path):
    write_cache(tmp_path, PROMPTS[:3])
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    tokens, mask, variants = prompt_table(tiny_config(), tmp_path)
    assert variants is None and torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    plain = ClipBatches(SyntheticClips(), *text_table(tmp_path), 4, 0, 1, seed=5)  # as every run built it before
    now = ClipBatches(SyntheticClips(), tokens, mask, 4, 0, 1, seed=5, variants=variants)
    for step in range(4):
        a, b = plain(step, CPU), now(step, CPU)
        for name in ("latents", "actions", "text", "text_mask", "context_chunks"):
            assert torch.equal(getattr(a, name), getattr(b, name))


def test_pick_is_a_function_of_seed_step_and_rank():
    tokens, mask, variants = readable_table()
    data = SyntheticClips()

    def batches(rank: int = 0, world: int = 1, seed: int = 0, table: torch.Tensor | None = variants) -> ClipBatches:
        return ClipBatches(data, tokens, mask, 4, rank, world, seed, variants=table)

    run = [picked_rows(batches(), s) for s in range(12)]
    resumed = batches()  # a resumed run asks for a later step first
    assert picked_rows(resumed, 7) == run[7] and picked_rows(resumed, 2) == run[2]
    for step, rows in enumerate(run):  # each clip reads one of its own prompt's phrasings
        prompts = picked_rows(batches(table=None), step)  # without variants: row = the clip's prompt id
        assert all(r in variants[p].tolist() for r, p in zip(rows, prompts))
    columns = [[(variants == r).nonzero()[0, 1].item() for r in rows] for rows in run]
    assert len({c for cols in columns for c in cols}) == 5  # every phrasing is read
    assert len({tuple(c) for c in columns}) > 6  # and the pick changes from step to step
    assert [picked_rows(batches(seed=1), s) for s in range(4)] != run[:4]
    ranks = [picked_rows(batches(rank, 2), 0) for rank in (0, 1)]
    assert ranks == [picked_rows(batches(rank, 2), 0) for rank in (0, 1)]


def test_each_clip_reads_a_phrasing_of_its_last_frames_prompt():
    tokens, mask, variants = readable_table()
    data = SyntheticClips()
    data.prompt_ids = data.prompt_ids.clone()
    data.prompt_ids[::2, 3:] = (data.prompt_ids[::2, 3:] + 1) % 3  # even clips switch prompt at chunk 1
    for share in (0.0, 1.0):
        plain = ClipBatches(data, tokens, mask, 4, 0, 1, 0, switch_share=share)
        varied = ClipBatches(data, tokens, mask, 4, 0, 1, 0, switch_share=share, variants=variants)
        for step in range(6):
            a, b = plain(step, CPU), varied(step, CPU)
            # The same clips (the switch draws come first), each reading a row of its last frame's prompt.
            assert torch.equal(a.latents, b.latents) and torch.equal(a.context_chunks, b.context_chunks)
            last = a.text[:, 0, 0].long()  # without variants: the row of the last frame's prompt id
            assert all(r in variants[p].tolist() for r, p in zip(b.text[:, 0, 0].long().tolist(), last.tolist()))


# ----------------------------------------------------------------------------- options and a step


def test_command_line():
    cfg = teacher_options("--recipe", "unet-teacher-guided", "--prompt-paraphrases", "4", "--word-dropout", "0.1")
    assert (cfg.prompt_paraphrases, cfg.word_dropout) == (4, 0.1) and cfg.action_guidance > 0
    off = teacher_options("--recipe", "unet-teacher-guided")
    assert (off.prompt_paraphrases, off.word_dropout) == (0, 0.0)
    with pytest.raises(SystemExit):
        teacher_options("--prompt-paraphrases", "two")


@pytest.mark.parametrize(("count", "dropout", "match"), [
    (-1, 0.0, "--prompt-paraphrases"), (2.5, 0.0, "--prompt-paraphrases"), (4, 1.0, "--word-dropout"),
    (4, -0.1, "--word-dropout"), (4, float("nan"), "--word-dropout"), (0, 0.1, "needs prompt_paraphrases"),
])
def test_bad_values_are_refused(count, dropout, match):
    with pytest.raises(ValueError, match=match):
        check_options(count, dropout)


def test_trainer_refuses_bad_values_before_building(tmp_path):
    with pytest.raises(ValueError, match="--word-dropout"):
        Trainer.create(tiny_config(prompt_paraphrases=2, word_dropout=1.5), None, tmp_path / "bad", CPU)


def test_a_training_step_runs_with_variants(tmp_path):
    write_cache(tmp_path / "cache", PROMPTS[:3])
    cfg = tiny_config(steps=2, prompt_paraphrases=3, word_dropout=0.2)
    trainer, _ = make_trainer(cfg, tmp_path / "run")
    tokens, mask, variants = prompt_table(cfg, tmp_path / "cache")
    assert tokens.shape == (12, 8, 384) and variants.shape == (3, 4)
    batches = ClipBatches(SyntheticClips(), tokens, mask, cfg.batch, 0, 1, cfg.seed, variants=variants)
    metrics = trainer.train(batches)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and trainer.step == 2


def test_theme_tables_are_what_the_checks_read():
    # The checks above walk BIOMES/TIMES/WEATHERS; the tables must hold no other value.
    assert {k: set(v) for k, v in THEME_SYNONYMS.items()} == {k: set(v) for k, v in VALUES.items()}
