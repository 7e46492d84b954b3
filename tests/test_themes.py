"""Prompt parsing: synonyms, defaults, rejection, held-out phrasings."""

import random

import pytest

from world.backend import PromptError
from world.procedural.themes import (
    BIOMES,
    EXAMPLE_PROMPTS,
    MAX_PROMPT_CHARS,
    THEME_SYNONYMS,
    TIMES,
    WEATHERS,
    Theme,
    all_themes,
    compose_prompt,
    describe,
    parse_prompt,
    synonyms,
)


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("desert dunes at dusk", Theme("desert", "dusk", "clear")),
        ("Sahara, SUNSET, foggy!", Theme("desert", "dusk", "fog")),
        ("meadow in the morning mist", Theme("grassland", "dawn", "fog")),
        ("prairie at midnight", Theme("grassland", "night", "clear")),
        ("green hills", Theme("grassland", "noon", "clear")),
        ("snowy mountains at dusk in fog", Theme("snow", "dusk", "fog")),
        ("arctic glacier during a blizzard", Theme("snow", "noon", "precipitation")),
        ("lava and ashfall under a starry sky", Theme("volcanic", "night", "precipitation")),
        ("fall foliage, afternoon drizzle", Theme("autumn_forest", "noon", "precipitation")),
        ("extraterrestrial world at twilight", Theme("alien", "dusk", "clear")),
        ("purple planet, sunrise, haze", Theme("alien", "dawn", "fog")),
        ("sunny sand dunes", Theme("desert", "noon", "clear")),
        ("rain over a tropical lagoon in the evening", Theme("tropical", "dusk", "precipitation")),
    ],
)
def test_parse_prompt_synonyms(prompt, expected):
    assert parse_prompt(prompt) == expected


def test_word_order_and_punctuation_do_not_matter():
    a = parse_prompt("volcano at night in fog")
    assert parse_prompt("In fog -- at NIGHT; a Volcano.") == a
    assert parse_prompt("fog night volcano") == a


def test_longer_phrase_wins_over_the_words_inside_it():
    # "falling snow" is weather, so the biome comes from "desert", not from "snow".
    assert parse_prompt("desert in falling snow") == Theme("desert", "noon", "precipitation")
    assert parse_prompt("snowfall over the canyon").biome == "canyon"


def test_generic_words_only_count_without_a_specific_biome():
    assert parse_prompt("mountains at dawn").biome == "snow"
    assert parse_prompt("volcanic mountains").biome == "volcanic"


def test_word_boundaries():
    # "rainbow" is not "rain", "grasshopper" is not "grass"; this prompt names nothing known.
    with pytest.raises(PromptError):
        parse_prompt("a rainbow grasshopper")


def test_time_only_prompt_gets_default_biome():
    assert parse_prompt("at night") == Theme("grassland", "night", "clear")


def test_unknown_prompt_lists_examples():
    with pytest.raises(PromptError) as err:
        parse_prompt("a cat sitting on a chair")
    message = str(err.value)
    assert sum(example in message for example in EXAMPLE_PROMPTS) >= 3


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt(prompt):
    with pytest.raises(PromptError, match="prompt is empty"):
        parse_prompt(prompt)


def test_too_long_prompt():
    with pytest.raises(PromptError, match=str(MAX_PROMPT_CHARS)):
        parse_prompt("desert " * 100)
    parse_prompt(("desert " * 100)[:MAX_PROMPT_CHARS])  # at the limit is fine


def test_describe_round_trips_every_theme():
    themes = list(all_themes())
    assert len(themes) == len(BIOMES) * len(TIMES) * len(WEATHERS)
    assert len({describe(t) for t in themes}) == len(themes)
    for theme in themes:
        assert parse_prompt(describe(theme)) == theme
    assert describe(Theme("desert", "dusk", "fog")) == "desert dunes at dusk in fog"


def test_examples_parse():
    for example in EXAMPLE_PROMPTS:
        parse_prompt(example)


def test_every_synonym_parses_to_its_value_alone():
    for kind, values in THEME_SYNONYMS.items():
        for value in values:
            for phrase in synonyms(kind, value, "all"):
                assert getattr(parse_prompt(phrase), kind) == value, phrase


def test_heldout_synonyms_are_disjoint_from_train():
    for kind, values in THEME_SYNONYMS.items():
        for value in values:
            train, heldout = synonyms(kind, value, "train"), synonyms(kind, value, "heldout")
            assert train and heldout
            assert not set(train) & set(heldout)
            assert synonyms(kind, value) == train + heldout
    with pytest.raises(KeyError):
        synonyms("biome", "moon")


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_composed_prompts_parse_back(split):
    rng = random.Random(0)
    for theme in all_themes():
        for _ in range(3):
            assert parse_prompt(compose_prompt(theme, rng, split)) == theme


def test_theme_rejects_unknown_values():
    with pytest.raises(ValueError):
        Theme("moon", "noon", "clear")


def test_heldout_phrases_contain_no_training_phrase():
    # Otherwise a "held-out" prompt would still show the model a word it was trained on.
    train = [p for values in THEME_SYNONYMS.values() for v in values.values() for p in v["train"]]
    for values in THEME_SYNONYMS.values():
        for v in values.values():
            for phrase in v["heldout"]:
                words = f" {phrase} "
                assert not [t for t in train if f" {t} " in words], phrase
