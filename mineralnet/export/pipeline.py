"""export_run: check the run, take the Keras reference, convert, verify every model, and only then publish.

Two stages, `prepare_export` (inputs checked, Keras predictions taken) and `complete_export` (convert, verify,
publish), so a caller holding a plan converts exactly the model the reference came from, and a test can prove
the gate fails when the two differ.
"""

import gzip
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from mineralnet.export.representative import CALIBRATION_SAMPLES, load_images, representative_rows
from mineralnet.export.convert import FORMATS, FULL_INTEGER, QAT_FORMAT, convert, parse_batch, parse_formats
from mineralnet.export.delegation import delegation
from mineralnet.export.errors import AccuracyGateError, ExportError, OptionError
from mineralnet.export.gate import compare_with_float32, describe
from mineralnet.export.operators import list_operators
from mineralnet.export.options import MAX_ACCURACY_DROP
from mineralnet.export.qat.process import (
    CONVERTED_AS, PRUNED_FORMAT, QatOptions, check_options, require_convnext, run_child,
)
from mineralnet.export.report import build_report, markdown_report
from mineralnet.export.equalize import fold_layernorm_affine
from mineralnet.export.rewrite import INTEGER_GELU, rewrite_for_export
from mineralnet.export.preflight import load_model, load_run
from mineralnet.export.publish import STAGING_PREFIX, check_output, publish, staging_dir
from mineralnet.export.sidecar import make_sidecar
from mineralnet.export.verify import check_batch, classification_metrics, verify
from mineralnet.export.weak import weak_model_check
from mineralnet.models.registry import registered_info
from mineralnet.rundir import EXPORT_LABELS, REPORT, REPORT_MARKDOWN, Run, sidecar_name, tflite_name
from mineralnet.utils import sha256_file, write_json

MIN_FLOAT32_AGREEMENT = 0.995
QUANTIZED = ("float16", "dynamic", "int8", QAT_FORMAT)

log = logging.getLogger("mineralnet.export")


@dataclass
class ExportPlan:
    """A checked export waiting for conversion: the model and what it predicted on the test images."""

    run: Run  # checked by load_run
    formats: tuple
    out_dir: str
    model: object  # keras.Model
    source_sha256: str
    test_images: np.ndarray  # (N, S, S, 3) uint8
    y_true: np.ndarray  # label indices of the test images
    reference: np.ndarray  # Keras softmax on the test images
    keras_metrics: dict
    calibration_images: np.ndarray  # None unless int8 or int8_qat is exported
    qat: QatOptions = QatOptions()  # fine-tuning of int8_qat and of the pruned model
    max_accuracy_drop: float = MAX_ACCURACY_DROP  # percentage points, for the QUANTIZED formats
    batch: object = 1  # the input's batch dimension: 1, or None (free: the edge runner's crops in one call)
    all_or_nothing: bool = False  # a failed format fails the export (nothing written) instead of being left out
    weak: dict = None  # the evaluation's warnings on the test rows (mineralnet.export.weak.weak_model_check)


def prepare_export(run, formats=FORMATS, calibration_samples=CALIBRATION_SAMPLES, out_dir=None, qat=None,
                   max_accuracy_drop=MAX_ACCURACY_DROP, batch=1, all_or_nothing=False, allow_weak=False):
    """Check every input (fast failures first) and take the Keras reference predictions on the test subset of
    `run` (a mineralnet.rundir.Run or its path); a model that does not beat the majority baseline stops here
    unless `allow_weak` (mineralnet.export.weak)."""
    formats = parse_formats(formats)
    batch = parse_batch(batch)
    if not 0 <= float(max_accuracy_drop) <= 100:
        raise OptionError(f"--max-accuracy-drop must be between 0 and 100 percentage points, got {max_accuracy_drop}.")
    qat = qat or QatOptions()
    check_options(qat, formats)
    if int(calibration_samples) < 1:
        raise ExportError(f"--calibration-samples must be at least 1, got {calibration_samples}.")
    run = load_run(run)
    out_dir = os.path.abspath(out_dir or run.export_dir)
    check_output(out_dir)  # publishing replaces the folder as a whole: refuse one with foreign files now
    source_sha256 = sha256_file(run.model_file)  # hashed before loading: the hash of the file actually loaded
    model = load_model(run)
    if qat.child_formats(formats):
        require_convnext(model, run.model_file)
    test_rows = run.rows("test")
    log.info("Keras reference on %d test images", len(test_rows))
    test_images = load_images(test_rows, run.image_size)
    y_true = np.array([run.labels.index(row["label"]) for row in test_rows])
    reference = np.asarray(model.predict(test_images.astype(np.float32), batch_size=32, verbose=0), np.float64)
    keras_metrics = {
        "size_bytes": os.path.getsize(run.model_file),
        **classification_metrics(y_true, reference.argmax(1)),
    }
    weak = weak_model_check(run, y_true, reference.argmax(1), allow_weak)
    calibration = None
    if set(formats) & set(FULL_INTEGER):
        chosen = representative_rows(run.rows(), int(calibration_samples))
        if not chosen:
            raise ExportError(
                f"split '{run.split_file}' has no training rows to calibrate int8 with: "
                "leave int8 and int8_qat out of --formats or use a run whose split has a train subset."
            )
        calibration = load_images(chosen, run.image_size)
    return ExportPlan(run, formats, out_dir, model, source_sha256, test_images, y_true, reference, keras_metrics,
                      calibration, qat, float(max_accuracy_drop), batch, bool(all_or_nothing), weak)


def _write_bytes(path, data):
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _check_accuracy_drop(plan, fmt, results, gate):
    """AccuracyGateError if the gate (mineralnet.export.gate.compare_with_float32) refused `fmt`: its loss against
    float32 on the same test images is above plan.max_accuracy_drop points and credible by the exact test."""
    if gate["passed"]:
        return
    written = "nothing was written" if plan.all_or_nothing else f"{fmt} was not written"
    raise AccuracyGateError(
        f"the {fmt} model's test accuracy {results[fmt]['accuracy']:.2%} is {gate['loss_points']:.1f} points below "
        f"float32's {results['float32']['accuracy']:.2%} on the {gate['images']} test images of '{plan.run.path}' "
        f"(one image = {gate['image_points']:.2f} points; {gate['float32_right_format_wrong']} image(s) float32 gets "
        f"right and {fmt} wrong, {gate['format_right_float32_wrong']} the reverse: exact one-sided p = "
        f"{gate['p_value']:.2g} < {gate['level']:g}, a credible loss above --max-accuracy-drop "
        f"{plan.max_accuracy_drop:g}); {written}: leave {fmt} out of --formats, or pass a larger "
        f"--max-accuracy-drop to accept the loss."
    )


class _ExportModels:
    """The clones converted instead of plan.model (mineralnet.export.rewrite): the exact rewrite for float32,
    float16 and dynamic, GELU approximated for int8; each made once."""

    def __init__(self, model, free_batch=False):
        self.model, self.clones, self.rewrites, self.free_batch = model, {}, {}, free_batch

    @staticmethod
    def variant(fmt):
        """(name, rewrite_for_export options) of the clone format `fmt` is converted from."""
        if fmt in FULL_INTEGER:
            return f"int8 (GELU: {INTEGER_GELU} form)", {"gelu": INTEGER_GELU}
        return "exact", {}

    def get(self, fmt):
        variant, options = self.variant(fmt)
        if variant not in self.clones:
            self.clones[variant], self.rewrites[variant] = rewrite_for_export(self.model, free_batch=self.free_batch,
                                                                              **options)
            self._fold(fmt, self.clones[variant], self.rewrites[variant])
        return self.clones[variant]

    @staticmethod
    def _fold(fmt, clone, counts):
        """Integer formats: LayerNorm gamma and beta folded into the next layer (equalize.py: a near-zero beta's
        int8 ADD splits the XNNPACK delegate), counted with the rewrites."""
        if fmt in FULL_INTEGER:
            folded = fold_layernorm_affine(clone)
            if folded:
                counts["LayerNorm affine folded into the next layer"] = folded

    def fine_tuned(self, child, fmt, test_images):
        """The model of one of the tf_keras process's formats: its weights in a clone of the model, rewritten like
        the format it is converted as (ChildOutput.model)."""
        if fmt not in self.clones:
            variant, options = self.variant(CONVERTED_AS[fmt])
            name = f"{fmt} (fine-tuned weights; {variant})"
            self.clones[fmt], self.rewrites[name] = child.model(
                fmt, self.model, test_images, free_batch=self.free_batch, **options)
            self._fold(CONVERTED_AS[fmt], self.clones[fmt], self.rewrites[name])
        return self.clones[fmt]


def _int8_float_layers(model):
    """The layers int8 keeps in float: the model's stem (its registry entry's; none for a model from elsewhere),
    measured to cut int8's probability error by a sixth on MINET-7 for ~0.3 % of ConvNeXt-T's MACs (convert.py)."""
    info = registered_info(model)
    return (info.stem,) if info is not None else ()


def complete_export(plan):
    """Convert and verify every format in a staging folder beside the output, then publish the folder as a whole
    (mineralnet.export.publish). A quantized format that fails (its gate, its batch check, its conversion) is left
    out and named in report["failed"], unless plan.all_or_nothing: then its ExportError fails the export and
    nothing is written. A failed float32 always fails the export. Returns the report dict."""
    staging = staging_dir(plan.out_dir)
    try:
        created = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        results, published, child, gzip_sizes, gates, failed = {}, [], None, {}, {}, {}
        child_error, float32_top1 = None, None
        models = _ExportModels(plan.model, free_batch=plan.batch is None)
        child_formats = plan.qat.child_formats(plan.formats)
        # float32 first: a failed gate stops before the slow quantised conversions and the tf_keras process,
        # whose formats come last (int8_qat is last in plan.formats already, the pruned model follows it).
        for fmt in plan.formats + tuple(f for f in child_formats if f not in plan.formats):
            try:
                if fmt in child_formats:
                    if child_error:
                        raise ExportError(child_error)
                    try:
                        child = child or run_child(plan, os.path.join(staging, "qat"))
                    except ExportError as error:
                        child_error = str(error)
                        raise
                    model, converted_as = models.fine_tuned(child, fmt, plan.test_images), CONVERTED_AS[fmt]
                else:
                    model, converted_as = models.get(fmt), fmt
                log.info("converting to %s", fmt)
                model_bytes = convert(model, converted_as, plan.run.image_size, plan.calibration_images, plan.batch,
                                      float_layers=_int8_float_layers(plan.model))
                if plan.qat.prune_sparsity and fmt in ("float32", PRUNED_FORMAT):
                    gzip_sizes[fmt] = len(gzip.compress(model_bytes, compresslevel=6))  # what pruning buys
                log.info("verifying %s on %d test images", fmt, len(plan.test_images))
                result = verify(model_bytes, plan.test_images, plan.y_true, plan.reference)
                top1 = result.pop("top1")
                if plan.batch is None:
                    result["batch"] = check_batch(model_bytes, plan.test_images, fmt)
                if fmt == "float32":
                    float32_top1 = top1
                    if result["agreement_with_keras"] < MIN_FLOAT32_AGREEMENT:
                        raise ExportError(
                            f"the float32 model agrees with Keras on only {result['agreement_with_keras']:.1%} of "
                            f"the {len(plan.test_images)} test images (gate: {MIN_FLOAT32_AGREEMENT:.1%}), so the "
                            f"conversion does not compute what '{plan.run.model_file}' computes; nothing was "
                            f"written to '{plan.out_dir}'. Check the model's custom layers and the TensorFlow/LiteRT "
                            "versions."
                        )
                name, sidecar_file = tflite_name(fmt), sidecar_name(fmt)
                measured = {"file": name, **result, "operators": dict(list_operators(model_bytes)),
                            "xnnpack": delegation(model_bytes)}
                if fmt in QUANTIZED:
                    gates[fmt] = compare_with_float32(plan.y_true, float32_top1, top1, plan.max_accuracy_drop)
                    log.info("gate: %s", describe(fmt, gates[fmt]))
                    _check_accuracy_drop(plan, fmt, {"float32": results["float32"], fmt: measured}, gates[fmt])
            except ExportError as error:
                if fmt == "float32" or plan.all_or_nothing:
                    raise
                log.warning("%s failed and is not written: %s", fmt, error)
                failed[fmt] = str(error)
                continue
            results[fmt] = measured
            sidecar = make_sidecar(fmt, plan.run.labels, plan.run.image_size, model_bytes, result["input"],
                                   result["output"], plan.source_sha256, plan.run.path, created)
            _write_bytes(os.path.join(staging, name), model_bytes)
            write_json(os.path.join(staging, sidecar_file), sidecar)
            published += [name, sidecar_file]

        report = build_report(plan.run, plan.out_dir, created, plan.source_sha256, plan.keras_metrics, results,
                              0 if plan.calibration_images is None else len(plan.calibration_images),
                              MIN_FLOAT32_AGREEMENT, plan.max_accuracy_drop, models.rewrites, gates, failed,
                              plan.weak)
        if child:  # the twin check, the QAT fine-tune and pruning, as the tf_keras process reported them
            report.update(child.result)
            if PRUNED_FORMAT in gzip_sizes and PRUNED_FORMAT in results:
                report["pruning"]["gzip_size_bytes"] = gzip_sizes
        _write_bytes(os.path.join(staging, EXPORT_LABELS), "".join(f"{label}\n" for label in plan.run.labels).encode())
        write_json(os.path.join(staging, REPORT), report)
        _write_bytes(os.path.join(staging, REPORT_MARKDOWN), markdown_report(report).encode())
        published += [EXPORT_LABELS, REPORT, REPORT_MARKDOWN]
        for name in set(os.listdir(staging)) - set(published):  # work files (the tf_keras process's qat/)
            path = os.path.join(staging, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        publish(staging, plan.out_dir)  # the staging folder becomes the output folder, in one step
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_run(run, formats=FORMATS, calibration_samples=CALIBRATION_SAMPLES, out_dir=None, qat=None,
               max_accuracy_drop=MAX_ACCURACY_DROP, batch=1, all_or_nothing=False, allow_weak=False):
    """Export `run` (a mineralnet.rundir.Run or its path) to verified TFLite models in `out_dir` (default
    RUN/export), published as a whole (mineralnet.export.publish); returns the report.
    `qat` (QatOptions) sets the fine-tuning of int8_qat and whether a pruned float32 model is made too.

    Raises ExportError (nothing written) on bad input, a conversion needing Flex ops, or a float32 model that
    agrees with Keras on fewer than 99.5 % of the test images, or a model that does not beat the majority baseline
    on them unless `allow_weak` (the evaluation's warnings go into the report either way). A quantized format whose loss against float32 is
    above `max_accuracy_drop` points and credible by McNemar's exact test (mineralnet.export.gate), or that fails
    its conversion or batch check, is not written and is named in report["failed"] (format -> reason); with
    `all_or_nothing` it raises its ExportError (AccuracyGateError for the gate) instead and nothing is written.
    `batch` "dynamic" (or None) writes files whose batch dimension is free, each checked to give a batch of test
    images the probabilities single calls give.
    """
    return complete_export(prepare_export(run, formats, calibration_samples, out_dir, qat, max_accuracy_drop,
                                          batch, all_or_nothing, allow_weak))
