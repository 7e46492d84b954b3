"""Scores that compare a network's reading with what was asked: per-action F1, theme accuracy.

Used identically by the readers' held-out evaluation during training (the ceiling) and by `eval` on
world rollouts (model/evaluation/), so the two numbers in a ratio are always computed the same way.
Chance levels are estimated by permutation: the same predictions shuffled across frames keep their
marginals but lose any link to the frames, which is exactly what a world that ignores its inputs
achieves.
"""

from __future__ import annotations

import numpy as np

from model.readers.idm import IDMConfig, mouse_to_bins
from model.readers.reading import ActionReading
from world.actions import KEYS

ACTION_NAMES: tuple[str, ...] = (*KEYS, "mouse_dx", "mouse_dy")  # one F1 per name
PERMUTATIONS = 20


def f1_binary(truth: np.ndarray, pred: np.ndarray) -> float:
    """F1 of boolean arrays; nan when the label is absent from both truth and prediction."""
    truth, pred = np.asarray(truth, bool), np.asarray(pred, bool)
    tp = float(np.sum(truth & pred))
    denom = float(truth.sum() + pred.sum())
    return float("nan") if denom == 0 else 2.0 * tp / denom


def f1_macro_classes(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Macro F1 over the classes of integer labels that occur in truth or prediction."""
    scores = [f1_binary(truth == c, pred == c) for c in range(n_classes)]
    defined = [s for s in scores if not np.isnan(s)]
    return float(np.mean(defined)) if defined else float("nan")


def nanmean(values) -> float:
    """Mean of the finite values, nan when there are none (no RuntimeWarning)."""
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def action_f1(
    keys_true: np.ndarray, bins_true: np.ndarray, keys_pred: np.ndarray, bins_pred: np.ndarray, n_bins: int
) -> dict[str, float]:
    """Per-action F1 (keys: binary; mouse axes: macro over bins) and their mean "macro_f1".

    keys_*: [N, N_KEYS] bool; bins_*: [N, 2] int. Actions absent from both truth and prediction
    have no F1 (nan) and are left out of the macro mean.
    """
    out = {k: f1_binary(keys_true[:, i], keys_pred[:, i]) for i, k in enumerate(KEYS)}
    out["mouse_dx"] = f1_macro_classes(bins_true[:, 0], bins_pred[:, 0], n_bins)
    out["mouse_dy"] = f1_macro_classes(bins_true[:, 1], bins_pred[:, 1], n_bins)
    out["macro_f1"] = nanmean(out[a] for a in ACTION_NAMES)
    return out


def score_actions(reading: ActionReading, actions: np.ndarray, mask: np.ndarray, config: IDMConfig) -> dict:
    """F1 of the IDM's reading against commanded `actions` [N, ACTION_DIM] on frames `mask` [N].

    Returns {"per_action": {name: f1}, "macro_f1", "chance_macro_f1", "frames"}.
    """
    use = mask & reading.valid
    keys_true = actions[use, : len(KEYS)] > 0.5
    bins_true = mouse_to_bins(actions[use, len(KEYS) :], config)
    keys_pred, bins_pred = reading.keys[use], reading.mouse_bins[use]
    f1 = action_f1(keys_true, bins_true, keys_pred, bins_pred, config.mouse_bins)
    chance = _chance_f1(keys_true, bins_true, keys_pred, bins_pred, config.mouse_bins)
    per_action = {a: f1[a] for a in ACTION_NAMES}
    return {"per_action": per_action, "macro_f1": f1["macro_f1"], "chance_macro_f1": chance, "frames": int(use.sum())}


def _chance_f1(keys_true, bins_true, keys_pred, bins_pred, n_bins: int) -> float:
    rng = np.random.default_rng(0)
    scores = []
    for _ in range(PERMUTATIONS):
        p = rng.permutation(len(keys_pred))
        scores.append(action_f1(keys_true, bins_true, keys_pred[p], bins_pred[p], n_bins)["macro_f1"])
    return nanmean(scores)


def theme_accuracy(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """true/pred [N, 3] class indices (biome, time, weather) -> per-factor and joint accuracy."""
    if len(true) == 0:
        return {"joint": float("nan"), "biome": float("nan"), "time_of_day": float("nan"), "weather": float("nan")}
    hit = true == pred
    return {
        "joint": float(hit.all(-1).mean()),  # all three factors right: the headline number
        "biome": float(hit[:, 0].mean()),
        "time_of_day": float(hit[:, 1].mean()),
        "weather": float(hit[:, 2].mean()),
    }


def theme_chance(true: np.ndarray, pred: np.ndarray) -> float:
    """Joint accuracy with predictions shuffled across frames (chance for these marginals)."""
    rng = np.random.default_rng(0)
    return nanmean(theme_accuracy(true, pred[rng.permutation(len(pred))])["joint"] for _ in range(PERMUTATIONS))
