"""report.json (everything measured) and report.md (one row per format), written beside the models."""

import os

from mineralnet.export.delegation import describe
from mineralnet.export.gate import GATE_LEVEL, describe as describe_gate
from mineralnet.export.verify import LATENCY_RUNS

_COLUMNS = (
    "format", "size MB", "accuracy", "macro P", "macro R", "agree w/ Keras", "mean abs Δp", "max abs Δp",
    "1 thread p50/p90 ms", "2 threads p50/p90 ms", "input → output", "XNNPACK",
)


def build_report(run, out_dir, created, source_sha256, keras_metrics, results, calibration_images, min_agreement,
                 max_accuracy_drop=None, rewrites=None, gates=None, failed=None, weak=None):
    """`results` maps format -> the dict of `verify.verify` plus `file`, `operators` and `xnnpack` (delegate
    partitions and the ops left outside, mineralnet.export.delegation), for the formats written; `rewrites` the
    layers the export rewrote (mineralnet.export.rewrite), per variant; `gates` each quantized format's
    comparison with float32 (mineralnet.export.gate.compare_with_float32), written or not; `failed` the formats
    not written, each with the reason; `weak` the evaluation's warnings on the test rows
    (mineralnet.export.weak.weak_model_check)."""
    return {
        "run": run.path,
        "out_dir": os.path.abspath(out_dir),
        "created": created,
        "source_model_sha256": source_sha256,
        "test_images": len(run.rows("test")),
        "calibration_images": calibration_images,
        "latency_runs": LATENCY_RUNS,
        "gate": {
            "float32_min_agreement_with_keras": min_agreement,
            "float32_agreement_with_keras": results["float32"]["agreement_with_keras"],
            "passed": results["float32"]["agreement_with_keras"] >= min_agreement,
            "max_accuracy_drop_points": max_accuracy_drop,
            "accuracy_drop_points": {fmt: 100.0 * (results["float32"]["accuracy"] - result["accuracy"])
                                     for fmt, result in results.items() if fmt != "float32"},
            "level": GATE_LEVEL,
            "quantized": gates or {},
        },
        "failed": failed or {},
        "warnings": (weak or {}).get("warnings", []),
        "allowed_weak": (weak or {}).get("allowed_weak", False),
        "rewrites": rewrites or {},
        "keras": keras_metrics,
        "formats": results,
    }


def _latency(result, threads):
    timing = result["latency_ms"][str(threads)]
    return f"{timing['p50']:.1f} / {timing['p90']:.1f}"


def markdown_table(report):
    """The per-format table, with the Keras model as the first (reference) row."""
    keras_row = report["keras"]
    lines = [
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "|".join("---" for _ in _COLUMNS) + "|",
        f"| keras (reference) | {keras_row['size_bytes'] / 1e6:.1f} | {keras_row['accuracy']:.2%} | "
        f"{keras_row['macro_precision']:.2%} | {keras_row['macro_recall']:.2%} | – | – | – | – | – | "
        "float32 → float32 | – |",
    ]
    for fmt, result in report["formats"].items():
        lines.append(
            f"| {fmt} | {result['size_bytes'] / 1e6:.1f} | {result['accuracy']:.2%} | "
            f"{result['macro_precision']:.2%} | {result['macro_recall']:.2%} | {result['agreement_with_keras']:.2%} | "
            f"{result['mean_abs_prob_diff']:.2e} | {result['max_abs_prob_diff']:.2e} | {_latency(result, 1)} | "
            f"{_latency(result, 2)} | {result['input']['dtype']} → {result['output']['dtype']} | "
            f"{describe(result['xnnpack']) if 'xnnpack' in result else '–'} |"
        )
    return "\n".join(lines)


def _child_sections(report):
    """Markdown for what the tf_keras process did (int8_qat, --prune-sparsity); empty when it did not run."""
    twin = report.get("tf_keras_twin")
    if not twin:
        return ""
    formats = report["formats"]
    lines = [f"- tf_keras twin (tf_keras {twin['versions']['tf_keras']}, tensorflow-model-optimization "
             f"{twin['versions']['tensorflow_model_optimization']}): max abs probability difference "
             f"{twin['max_abs_prob_diff']:.1e} from model.keras on {twin['images']} test images "
             f"(limit {twin['limit']:.0e})"]
    qat = report.get("qat")
    if qat:
        lines.append(f"- int8_qat: {qat['epochs']} epoch(s) of quantization-aware fine-tuning at learning rate "
                     f"{qat['lr']:g} on {qat['train_images']} training images ({qat['fine_tune_seconds']:.0f} s; "
                     f"last epoch loss {qat['history']['loss'][-1]:.4f}) of the model as int8 ships it; its weights "
                     "converted like int8, activation ranges calibrated on the same images")
    pruning = report.get("pruning")
    if pruning:
        gzipped = pruning["gzip_size_bytes"]
        lines.append(
            f"- float32_pruned: target sparsity {pruning['target_sparsity']:.0%} over {pruning['epochs']} epoch(s) "
            f"at learning rate {pruning['lr']:g}; {pruning['zero_fraction']:.1%} of the weights of the "
            f"{pruning['pruned_layers']} pruned layers are zero (per layer "
            f"{pruning['layer_zero_fraction']['min']:.1%}-{pruning['layer_zero_fraction']['max']:.1%}); gzip "
            f"size {gzipped['float32_pruned'] / 1e6:.1f} MB vs float32 {gzipped['float32'] / 1e6:.1f} MB; latency "
            f"p50 (1 thread) {formats['float32_pruned']['latency_ms']['1']['p50']:.1f} vs "
            f"{formats['float32']['latency_ms']['1']['p50']:.1f} ms")
        lines.append(f"- pruning speed: {pruning['speed']}")
    return "\n" + "\n".join(lines) + "\n"


def _rewrites(rewrites):
    parts = [f"{variant}: " + (", ".join(f"{count} {kind}" for kind, count in counts.items()) or "none")
             for variant, counts in rewrites.items()]
    return "; ".join(parts) or "none"


def _gate_lines(report):
    """One line per quantized format's gate, then the formats not written with the reason."""
    lines = [f"  - {describe_gate(fmt, gate)}\n" for fmt, gate in report["gate"].get("quantized", {}).items()]
    lines += [f"- **not written: {fmt}**: {reason}\n" for fmt, reason in report.get("failed", {}).items()]
    return "".join(lines)


def _warning_lines(report):
    """The evaluation's warnings on the test rows, as a section at the top (nothing when there are none)."""
    warnings = report.get("warnings") or []
    if not warnings:
        return ""
    head = ("**Exported with --allow-weak: this model does not beat always answering the most frequent training "
            "class.**\n\n" if report.get("allowed_weak") else "")
    return "## Warnings\n\n" + head + "".join(f"- {warning}\n" for warning in warnings) + "\n"


def markdown_report(report):
    gate = report["gate"]
    return (
        f"# Export report\n\n"
        f"{_warning_lines(report)}"
        f"- run: `{report['run']}` (model.keras sha256 `{report['source_model_sha256'][:12]}…`)\n"
        f"- created: {report['created']}\n"
        f"- measured on the {report['test_images']} test images of split.csv; int8 calibrated on "
        f"{report['calibration_images']} training images\n"
        f"- gate: float32 agrees with Keras on {gate['float32_agreement_with_keras']:.2%} of test images "
        f"(needs ≥ {gate['float32_min_agreement_with_keras']:.1%}): {'passed' if gate['passed'] else 'FAILED'}; "
        f"a quantized format is refused when its loss of test accuracy against float32 on the same images is above "
        f"{gate.get('max_accuracy_drop_points', 0):g} points and credible (McNemar's exact one-sided test on the "
        f"images only one of the two gets right, p < {gate.get('level', GATE_LEVEL):g})\n"
        f"{_gate_lines(report)}"
        f"- rewrites for XNNPACK (on a clone of model.keras): {_rewrites(report.get('rewrites', {}))}\n"
        f"- latency: one image, batch 1, LiteRT interpreter (XNNPACK) on this machine; p50 / p90 over "
        f"{report['latency_runs']} invocations\n\n"
        f"{markdown_table(report)}\n{_child_sections(report)}"
    )
