"""The quantized formats' gate (mineralnet.export.gate) against values worked out by hand: McNemar's exact
one-sided test on the discordant pairs, the Wilson interval, and the decision (fast: no TensorFlow)."""

from math import comb

import numpy as np
import pytest

from mineralnet.export.gate import GATE_LEVEL, compare_with_float32, mcnemar_exact_p, wilson_interval


@pytest.mark.parametrize("b,c,expected", [
    (0, 0, 1.0),  # no discordant pair: nothing to test
    (1, 0, 0.5), (2, 0, 0.25), (4, 0, 1 / 16), (5, 0, 1 / 32),
    (10, 5, sum(comb(15, k) for k in range(10, 16)) / 2 ** 15),  # 0.15087890625
    (5, 10, sum(comb(15, k) for k in range(5, 16)) / 2 ** 15),  # the format gained: p near 1
])
def test_mcnemar_exact_p_is_the_binomial_tail_of_the_discordant_pairs(b, c, expected):
    assert mcnemar_exact_p(b, c) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact_p(10, 5) == pytest.approx(0.15087890625, rel=1e-12)


@pytest.mark.parametrize("k,n,low,high", [
    (9, 10, 0.5958499732, 0.9821237869),  # z = 1.959964: (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    (0, 10, 0.0, 0.2775327999),
    (10, 10, 0.7224672001, 1.0),
    (174, 187, 0.8847061165, 0.9589260848),
])
def test_wilson_interval_known_values(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-9)


def _predictions(n, b, c, both_wrong=0):
    """Labels and top-1 of float32 and a format on n images: b float32 right and the format wrong, c the
    reverse, both_wrong images wrong for both (with different classes), the rest right for both."""
    y = np.zeros(n, int)
    ref, fmt = y.copy(), y.copy()
    fmt[:b] = 1
    ref[b:b + c] = 1
    ref[b + c:b + c + both_wrong], fmt[b + c:b + c + both_wrong] = 2, 3
    return y, ref, fmt


def test_compare_counts_discordant_pairs_and_agreement():
    y, ref, fmt = _predictions(187, 10, 5, both_wrong=3)
    gate = compare_with_float32(y, ref, fmt, max_loss_points=1.0)
    assert (gate["images"], gate["float32_right_format_wrong"], gate["format_right_float32_wrong"]) == (187, 10, 5)
    assert gate["loss_points"] == pytest.approx(100 * 5 / 187)
    assert gate["image_points"] == pytest.approx(100 / 187)
    assert gate["agreement_with_float32"] == pytest.approx(169 / 187)  # 18 top-1 differ (the both-wrong ones too)
    assert gate["agreement_ci95"] == pytest.approx(wilson_interval(169, 187))
    assert gate["p_value"] == pytest.approx(0.15087890625)
    assert gate["level"] == GATE_LEVEL == 0.05
    assert gate["passed"] and "noise" in gate["verdict"]  # 2.7 points lost, but not credibly: passes


@pytest.mark.parametrize("b", [1, 2, 3, 4])
def test_a_few_flipped_images_never_refuse_a_format_whatever_the_floor(b):
    """28 test images: one image is 3.6 points, over any floor; up to 4 flips the exact test cannot reach 5 %."""
    y, ref, fmt = _predictions(28, b, 0)
    gate = compare_with_float32(y, ref, fmt, max_loss_points=0.0)
    assert gate["loss_points"] > 0 and gate["passed"]


def test_a_credible_loss_above_the_floor_is_refused():
    y, ref, fmt = _predictions(28, 5, 0)  # 5 of 5 discordant pairs against the format: p = 1/32
    gate = compare_with_float32(y, ref, fmt, max_loss_points=1.0)
    assert not gate["passed"] and gate["p_value"] == pytest.approx(1 / 32)
    assert compare_with_float32(y, ref, fmt, max_loss_points=20.0)["passed"]  # 17.9 points: under this floor


def test_a_credible_loss_under_the_floor_passes():
    y, ref, fmt = _predictions(1000, 8, 0)  # p = 1/256 but 0.8 points: the user's floor allows it
    gate = compare_with_float32(y, ref, fmt, max_loss_points=1.0)
    assert gate["p_value"] < GATE_LEVEL and gate["passed"]
