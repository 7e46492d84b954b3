"""Evaluation metrics on inputs whose answers are known."""

import math

import numpy as np
import pytest

from model.evaluation import metrics
from model.readers.scores import action_f1, f1_binary, f1_macro_classes, theme_accuracy, theme_chance


def _frame(seed=0, h=32, w=32):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_psnr_identical_is_capped_and_shift_is_lower():
    a = _frame()
    assert metrics.psnr(a, a) == metrics.PSNR_CAP_DB
    shifted = np.roll(a, 3, axis=1)
    assert metrics.psnr(a, shifted) < 20.0
    off_by_one = (a.astype(int) + 1).clip(0, 255).astype(np.uint8)
    assert 45.0 < metrics.psnr(a, off_by_one) < metrics.PSNR_CAP_DB


def test_psnr_known_value():
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 10, np.uint8)  # mse 100 -> 10 log10(255^2 / 100)
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))


def test_ssim_identical_is_one_and_shift_lower():
    a = _frame(1)
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert metrics.ssim(a, np.roll(a, 4, axis=0)) < 0.5
    per = metrics.ssim_per_frame(np.stack([a, a]), np.stack([a, np.roll(a, 4, axis=0)]))
    assert per[0] == pytest.approx(1.0) and per[1] < 0.5


def test_saturation_of_saturated_and_grey_frames():
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    grey = np.full((4, 4, 3), 128, np.uint8)
    black = np.zeros((4, 4, 3), np.uint8)
    assert metrics.hsv_saturation(red) == pytest.approx(1.0)
    assert metrics.hsv_saturation(grey) == pytest.approx(0.0)
    assert metrics.hsv_saturation(black) == pytest.approx(0.0)
    assert metrics.hsv_saturation(np.stack([red, grey])).tolist() == pytest.approx([1.0, 0.0])


def test_rms_contrast():
    assert metrics.rms_contrast(np.full((8, 8, 3), 77, np.uint8)) == pytest.approx(0.0)
    half = np.zeros((8, 8, 3), np.uint8)
    half[:4] = 255  # luma 0 or 1 in equal parts: std 0.5
    assert metrics.rms_contrast(half) == pytest.approx(0.5)


def test_frechet_distance_identical_and_shifted():
    feats = np.random.default_rng(0).normal(size=(500, 6))
    assert metrics.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    assert metrics.frechet_distance(feats, feats + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_frechet_distance_few_samples_is_finite():
    rng = np.random.default_rng(1)
    value = metrics.frechet_distance(rng.normal(size=(5, 16)), rng.normal(size=(5, 16)))
    assert math.isfinite(value) and value >= 0


def test_f1_binary_and_macro():
    t = np.array([1, 1, 0, 0], bool)
    assert f1_binary(t, t) == 1.0
    assert f1_binary(t, ~t) == 0.0
    assert f1_binary(t, np.array([1, 0, 0, 0], bool)) == pytest.approx(2 / 3)
    assert math.isnan(f1_binary(np.zeros(3, bool), np.zeros(3, bool)))
    assert f1_macro_classes(np.array([0, 1, 2]), np.array([0, 1, 2]), 5) == 1.0


def test_action_f1_perfect_and_theme_accuracy():
    rng = np.random.default_rng(0)
    keys = rng.random((50, 10)) < 0.3
    bins = rng.integers(0, 5, (50, 2))
    assert action_f1(keys, bins, keys, bins, 5)["macro_f1"] == 1.0
    labels = rng.integers(0, 4, (200, 3))
    assert theme_accuracy(labels, labels)["joint"] == 1.0
    constant = np.zeros_like(labels)  # a reader that ignores the frames scores about chance
    assert abs(theme_accuracy(labels, constant)["joint"] - theme_chance(labels, constant)) < 0.05
