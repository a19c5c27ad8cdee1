"""The quantized formats' gate: loss against float32 told apart from noise, on the same test images.

On each test image float32 and a quantized format are each right or wrong. Only the discordant images carry
information about which is better: b, float32 right and the format wrong; c, the reverse. The format's accuracy
loss is (b - c) / n, exactly float32's accuracy minus the format's. If the format were as accurate as float32,
each discordant image would fall either way with probability 1/2, so McNemar's exact one-sided test gives
p = P(X >= b | X ~ Bin(b + c, 1/2)). A format is refused only when its loss is above the user's floor
(--max-accuracy-drop) AND credible: p < GATE_LEVEL. At 5 % no format is refused for fewer than 5 discordant
images against it (p = 1/16 at b = 4, c = 0), whatever the floor and however few the test images.

No TensorFlow here: the CLI, the report and the unit tests import it cheaply.
"""

import numpy as np
from scipy.stats import binomtest

GATE_LEVEL = 0.05  # one-sided significance level of the exact test
CONFIDENCE = 0.95  # of the agreement's Wilson interval


def mcnemar_exact_p(b, c):
    """P(X >= b) for X ~ Bin(b + c, 1/2): how likely a loss at least this large is between two equally accurate
    models (1.0 when there is no discordant pair)."""
    b, c = int(b), int(c)
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5, alternative="greater").pvalue)


def wilson_interval(k, n, confidence=CONFIDENCE):
    """The Wilson score interval (low, high) of a proportion k / n."""
    interval = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def compare_with_float32(y_true, float32_top1, format_top1, max_loss_points, level=GATE_LEVEL):
    """The gate's figures for one quantized format on the images float32 was measured on (all top-1 class
    indices), as recorded in report.json (gate.quantized.FORMAT) and printed."""
    y_true, reference, predicted = (np.asarray(a) for a in (y_true, float32_top1, format_top1))
    n = len(y_true)
    float32_right, format_right = reference == y_true, predicted == y_true
    b = int(np.sum(float32_right & ~format_right))
    c = int(np.sum(format_right & ~float32_right))
    agree = int(np.sum(reference == predicted))
    loss = 100.0 * (b - c) / n
    p_value = mcnemar_exact_p(b, c)
    above_floor = loss > float(max_loss_points) + 1e-9
    credible = p_value < level
    passed = not (above_floor and credible)
    if not above_floor:
        verdict = "passed: within the floor"
    elif not credible:
        verdict = "passed: above the floor but within noise"
    else:
        verdict = "FAILED: a credible loss above the floor"
    return {
        "images": n,
        "image_points": 100.0 / n,
        "float32_right_format_wrong": b,
        "format_right_float32_wrong": c,
        "loss_points": loss,
        "max_loss_points": float(max_loss_points),
        "p_value": p_value,
        "level": level,
        "agreement_with_float32": agree / n,
        "agreement_ci95": list(wilson_interval(agree, n)),
        "passed": passed,
        "verdict": verdict,
    }


def describe(fmt, gate):
    """One line for the CLI and report.md."""
    low, high = gate["agreement_ci95"]
    return (f"{fmt}: {gate['float32_right_format_wrong']} test image(s) float32 gets right and {fmt} wrong, "
            f"{gate['format_right_float32_wrong']} the reverse, of {gate['images']} (one image = "
            f"{gate['image_points']:.2f} points): loss {gate['loss_points']:.2f} points (floor "
            f"{gate['max_loss_points']:g}), exact one-sided p = {gate['p_value']:.3g} (level {gate['level']:g}); "
            f"agrees with float32 on {gate['agreement_with_float32']:.1%} (95 % CI {low:.1%}-{high:.1%}); "
            f"{gate['verdict']}")
