"""Prompt text -> `Theme(biome, time_of_day, weather)`.

The engine understands three independent axes. A prompt is free text; we look for known words
and phrases (synonyms) for each axis, case-insensitively, on word boundaries, in any order.
Longer phrases win over the shorter ones they contain ("falling snow" is weather, "snow" alone
is a biome), and generic words ("mountains", "forest") only count when nothing more specific
names a biome.

The synonym tables are plain data (`THEME_SYNONYMS`) split into a "train" and a "heldout" half:
prompt generators for training data use only the train half, so evaluation can check that a
model follows phrasings it has never seen (`synonyms(kind, value, "heldout")`), while
`parse_prompt` understands both.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from world.errors import MAX_PROMPT_CHARS, PromptError

BIOMES: tuple[str, ...] = (
    "grassland",
    "desert",
    "snow",
    "volcanic",
    "autumn_forest",
    "alien",
    "canyon",
    "tropical",
)
TIMES: tuple[str, ...] = ("dawn", "noon", "dusk", "night")
WEATHERS: tuple[str, ...] = ("clear", "fog", "precipitation")  # rain, snow or ash by biome
KINDS: tuple[str, ...] = ("biome", "time_of_day", "weather")

DEFAULT_BIOME = "grassland"  # only used when a prompt names a time or weather but no place
DEFAULT_TIME = "noon"
DEFAULT_WEATHER = "clear"

# kind -> value -> split -> phrases. "train" phrases may appear in training prompts; "heldout"
# phrases are reserved for evaluating generalisation. Both are understood by parse_prompt.
THEME_SYNONYMS: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "biome": {
        "grassland": {
            "train": ("grassland", "grasslands", "green hills", "meadow", "meadows", "prairie",
                      "grassy", "grass", "fields", "pasture", "green plains"),
            "heldout": ("rolling hills", "countryside", "lush valley", "green pastures", "farmland"),
        },
        "desert": {
            "train": ("desert", "desert dunes", "dunes", "dune", "sand", "sandy", "sahara",
                      "sand dunes", "arid"),
            "heldout": ("erg", "gobi", "dry wasteland", "empty quarter", "kalahari"),
        },
        "snow": {
            "train": ("snow", "snowy", "snowy mountains", "glacier", "glaciers", "arctic", "frozen",
                      "ice", "icy", "winter"),
            "heldout": ("polar", "antarctic", "frosty peaks", "permafrost", "tundra"),
        },
        "volcanic": {
            "train": ("volcanic", "volcano", "volcanoes", "lava", "ash", "magma", "molten",
                      "lava fields"),
            "heldout": ("inferno", "hellscape", "obsidian", "brimstone", "scorched earth"),
        },
        "autumn_forest": {
            "train": ("autumn forest", "autumn", "autumnal", "fall foliage", "fall colors",
                      "fall forest", "maple forest", "orange leaves"),
            "heldout": ("fall colours", "red leaves", "october woods", "golden leaves", "foliage"),
        },
        "alien": {
            "train": ("alien", "alien planet", "extraterrestrial", "purple planet", "otherworldly",
                      "alien world"),
            "heldout": ("exoplanet", "strange planet", "xenoworld", "another planet", "sci fi world"),
        },
        "canyon": {
            "train": ("canyon", "canyons", "red rock", "mesa", "mesas", "badlands", "grand canyon",
                      "gorge"),
            "heldout": ("red cliffs", "ravine", "buttes", "sandstone cliffs", "monument valley"),
        },
        "tropical": {
            "train": ("tropical", "tropical island", "tropical islands", "island", "islands",
                      "beach", "lagoon", "jungle", "palm trees", "tropics"),
            "heldout": ("atoll", "coral reef", "caribbean", "south seas", "archipelago"),
        },
    },
    "time_of_day": {
        "dawn": {
            "train": ("dawn", "sunrise", "morning", "early morning"),
            "heldout": ("daybreak", "first light", "cockcrow", "sunup"),
        },
        "noon": {
            "train": ("noon", "midday", "afternoon", "sunny", "daytime", "high noon", "day"),
            "heldout": ("broad daylight", "lunchtime", "noontime", "daylight"),
        },
        "dusk": {
            "train": ("dusk", "sunset", "evening", "twilight", "golden hour"),
            "heldout": ("sundown", "nightfall", "gloaming", "eventide"),
        },
        "night": {
            "train": ("night", "midnight", "starry", "nighttime", "at night", "moonlit", "dark"),
            "heldout": ("starlit", "moonlight", "under the stars", "small hours", "witching hour"),
        },
    },
    "weather": {
        "clear": {
            "train": ("clear", "clear sky", "clear skies", "cloudless", "fair weather"),
            "heldout": ("blue sky", "bright", "calm weather"),
        },
        "fog": {
            "train": ("fog", "foggy", "mist", "misty", "haze", "hazy", "in fog"),
            "heldout": ("murky", "smog", "low clouds", "fogbank", "pea soup"),
        },
        "precipitation": {
            "train": ("rain", "rainy", "raining", "storm", "stormy", "drizzle", "snowfall",
                      "snowing", "blizzard", "falling snow", "ashfall", "falling ash"),
            "heldout": ("downpour", "showers", "thunderstorm", "sleet", "flurries", "rainstorm"),
        },
    },
}

# Words too vague to pick a biome on their own; used only when no synonym above names one.
GENERIC_BIOME_WORDS: dict[str, str] = {
    "hills": "grassland",
    "valley": "grassland",
    "plains": "grassland",
    "mountains": "snow",
    "mountain": "snow",
    "peaks": "snow",
    "forest": "autumn_forest",
    "woods": "autumn_forest",
    "trees": "autumn_forest",
    "planet": "alien",
    "cliffs": "canyon",
    "coast": "tropical",
    "ocean": "tropical",
    "sea": "tropical",
}

# Canonical phrases used by describe(); each must parse back to its value.
_BIOME_PHRASE = {
    "grassland": "green grassland",
    "desert": "desert dunes",
    "snow": "snowy mountains",
    "volcanic": "volcanic lava fields",
    "autumn_forest": "autumn forest",
    "alien": "alien planet",
    "canyon": "red rock canyon",
    "tropical": "tropical islands",
}
_TIME_PHRASE = {"dawn": "at dawn", "noon": "at noon", "dusk": "at dusk", "night": "at night"}

EXAMPLE_PROMPTS: tuple[str, ...] = (
    "green hills at noon",
    "desert dunes at dusk",
    "snowy mountains at dawn in fog",
    "volcanic lava fields at night",
    "autumn forest in the rain",
    "alien planet at twilight",
    "red rock canyon at sunset",
    "tropical islands at midday",
)


@dataclass(frozen=True)
class Theme:
    """What the world looks like; the terrain itself does not depend on it."""

    biome: str = DEFAULT_BIOME
    time_of_day: str = DEFAULT_TIME
    weather: str = DEFAULT_WEATHER

    def __post_init__(self) -> None:
        for name, allowed in (("biome", BIOMES), ("time_of_day", TIMES), ("weather", WEATHERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; one of {', '.join(allowed)}")

    def to_json(self) -> dict:
        return {"biome": self.biome, "time_of_day": self.time_of_day, "weather": self.weather}


def all_themes() -> Iterator[Theme]:
    """Every biome x time x weather combination, in BIOMES/TIMES/WEATHERS order."""
    for b, t, w in itertools.product(BIOMES, TIMES, WEATHERS):
        yield Theme(b, t, w)


def precipitation_kind(biome: str) -> str:
    """What falls from the sky in this biome when it precipitates: "rain", "snow" or "ash"."""
    return {"snow": "snow", "volcanic": "ash"}.get(biome, "rain")


def synonyms(kind: str, value: str, split: str = "all") -> tuple[str, ...]:
    """Phrases naming `value` of `kind` ("biome", "time_of_day", "weather") in `split`."""
    if kind not in THEME_SYNONYMS or value not in THEME_SYNONYMS[kind]:
        raise KeyError(f"unknown theme value {kind}={value!r}")
    table = THEME_SYNONYMS[kind][value]
    if split == "all":
        return table["train"] + table["heldout"]
    if split not in table:
        raise KeyError(f"unknown split {split!r}; use 'train', 'heldout' or 'all'")
    return table[split]


def _normalise(text: str) -> str:
    # Punctuation and hyphens become spaces so "sci-fi," matches "sci fi".
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _build_matchers() -> list[tuple[re.Pattern[str], str, str, bool]]:
    """(pattern, kind, value, generic) sorted longest phrase first, so longer phrases win."""
    entries: list[tuple[str, str, str, bool]] = []
    for kind, values in THEME_SYNONYMS.items():
        for value, splits in values.items():
            for phrase in splits["train"] + splits["heldout"]:
                entries.append((_normalise(phrase), kind, value, False))
    entries += [(w, "biome", v, True) for w, v in GENERIC_BIOME_WORDS.items()]
    entries.sort(key=lambda e: (-len(e[0]), e[0]))
    return [(re.compile(rf"\b{re.escape(p)}\b"), k, v, g) for p, k, v, g in entries]


_MATCHERS = _build_matchers()


def _find_mentions(text: str) -> dict[str, list[tuple[int, str, bool]]]:
    """kind -> [(position, value, generic)] for every phrase found, longest phrases first."""
    found: dict[str, list[tuple[int, str, bool]]] = {k: [] for k in KINDS}
    for pattern, kind, value, generic in _MATCHERS:
        for m in pattern.finditer(text):
            found[kind].append((m.start(), value, generic))
            # Blank the match out so shorter phrases inside it ("snow" in "falling snow") don't count.
            text = text[: m.start()] + "#" * (m.end() - m.start()) + text[m.end() :]
    return found


def _pick(mentions: list[tuple[int, str, bool]]) -> str | None:
    # Specific phrases beat generic words; among equals, the earliest mention wins.
    if not mentions:
        return None
    return min(mentions, key=lambda m: (m[2], m[0]))[1]


def parse_prompt(text: str) -> Theme:
    """Free text -> Theme. Raises PromptError for empty, too long or unrecognisable prompts."""
    if not isinstance(text, str):
        raise PromptError(f"prompt must be text, got {type(text).__name__}")
    if not text.strip():
        raise PromptError(f"prompt is empty; try e.g. {_examples()}")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(f"prompt is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}")
    found = _find_mentions(_normalise(text))
    biome, time, weather = (_pick(found[k]) for k in KINDS)
    if biome is None and time is None and weather is None:
        raise PromptError(
            f"prompt {text[:80]!r} names no known place, time of day or weather; try e.g. {_examples()}"
        )
    return Theme(biome or DEFAULT_BIOME, time or DEFAULT_TIME, weather or DEFAULT_WEATHER)


def _examples() -> str:
    return "; ".join(repr(p) for p in EXAMPLE_PROMPTS[:5])


def describe(theme: Theme) -> str:
    """Canonical English phrase, e.g. "desert dunes at dusk in fog"; parses back to `theme`."""
    words = [_BIOME_PHRASE[theme.biome], _TIME_PHRASE[theme.time_of_day]]
    if theme.weather == "fog":
        words.append("in fog")
    elif theme.weather == "precipitation":
        words.append({"rain": "in the rain", "snow": "in falling snow", "ash": "in falling ash"}[
            precipitation_kind(theme.biome)])
    return " ".join(words)


_TEMPLATES = (
    "{biome} {time} {weather}",
    "{biome}, {weather}, {time}",
    "{time} {weather} over the {biome}",
    "a walk through the {biome} {time} {weather}",
    "{weather} {time} in the {biome}",
)


def compose_prompt(theme: Theme, rng: random.Random, split: str = "train") -> str:
    """A varied natural-ish prompt for `theme` built only from `split` synonyms (for datagen/eval).

    Time and weather are sometimes left out when they equal the defaults, as people do.
    """
    for _ in range(50):
        parts = {
            "biome": rng.choice(synonyms("biome", theme.biome, split)),
            "time": _optional(rng, "time_of_day", theme.time_of_day, DEFAULT_TIME, split),
            "weather": _optional(rng, "weather", theme.weather, DEFAULT_WEATHER, split),
        }
        prompt = rng.choice(_TEMPLATES).format(**parts)
        prompt = re.sub(r"\s*,(\s*,)*", ",", " ".join(prompt.split())).replace(",", ", ")
        prompt = " ".join(prompt.split()).strip(" ,")
        if parse_prompt(prompt) == theme:  # phrase combinations can rarely collide; redraw then
            return prompt
    return describe(theme)


def _optional(rng: random.Random, kind: str, value: str, default: str, split: str) -> str:
    if value == default and rng.random() < 0.5:
        return ""
    phrase = rng.choice(synonyms(kind, value, split))
    if kind == "time_of_day" and rng.random() < 0.5 and not phrase.startswith("at "):
        return f"at {phrase}"
    if kind == "weather" and rng.random() < 0.5:
        return f"in {phrase}" if not phrase.startswith("in ") else phrase
    return phrase
