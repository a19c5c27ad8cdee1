"""export_run: check the run, take the Keras reference, convert, verify every model, and only then publish.

Two stages, `prepare_export` (inputs checked, Keras predictions taken) and `complete_export` (convert, verify,
publish), so a caller holding a plan converts exactly the model the reference came from, and a test can prove
the gate fails when the two differ.
"""

import gzip
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from mineralnet.export.representative import CALIBRATION_SAMPLES, load_images, representative_rows
from mineralnet.export.convert import FORMATS, FULL_INTEGER, QAT_FORMAT, convert, parse_batch, parse_formats
from mineralnet.export.delegation import delegation
from mineralnet.export.errors import AccuracyGateError, ExportError, OptionError
from mineralnet.export.operators import list_operators
from mineralnet.export.options import MAX_ACCURACY_DROP
from mineralnet.export.qat.process import (
    CONVERTED_AS, PRUNED_FORMAT, QatOptions, check_options, require_convnext, run_child,
)
from mineralnet.export.report import build_report, markdown_report
from mineralnet.export.rewrite import INTEGER_GELU, rewrite_for_export
from mineralnet.export.preflight import load_model, load_run
from mineralnet.export.sidecar import make_sidecar
from mineralnet.export.verify import check_batch, classification_metrics, verify
from mineralnet.models.registry import registered_info
from mineralnet.rundir import EXPORT_LABELS, REPORT, REPORT_MARKDOWN, Run, sidecar_name, tflite_name
from mineralnet.utils import sha256_file, write_json

MIN_FLOAT32_AGREEMENT = 0.995
QUANTIZED = ("float16", "dynamic", "int8", QAT_FORMAT)
STAGING_PREFIX = ".export-staging-"  # + the output's name: a directory so named beside it is an export's staging

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


def prepare_export(run, formats=FORMATS, calibration_samples=CALIBRATION_SAMPLES, out_dir=None, qat=None,
                   max_accuracy_drop=MAX_ACCURACY_DROP, batch=1):
    """Check every input (fast failures first) and take the Keras reference predictions on the test subset of
    `run` (a mineralnet.rundir.Run or its path)."""
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
                      calibration, qat, float(max_accuracy_drop), batch)


def _write_bytes(path, data):
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _check_accuracy_drop(plan, fmt, results):
    """AccuracyGateError if `fmt` (a QUANTIZED format) lost more than plan.max_accuracy_drop points of test
    accuracy against float32. One image is 100/N points: the floor must be above that to tolerate any change."""
    drop = 100.0 * (results["float32"]["accuracy"] - results[fmt]["accuracy"])
    if fmt in QUANTIZED and drop > plan.max_accuracy_drop + 1e-9:
        raise AccuracyGateError(
            f"the {fmt} model's test accuracy {results[fmt]['accuracy']:.2%} is {drop:.1f} points below float32's "
            f"{results['float32']['accuracy']:.2%} on the {len(plan.test_images)} test images of "
            f"'{plan.run.path}' (--max-accuracy-drop {plan.max_accuracy_drop:g}); nothing was written: leave {fmt} "
            f"out of --formats, or pass a larger --max-accuracy-drop to accept the loss."
        )


class _ExportModels:
    """The clones converted instead of plan.model (mineralnet.export.rewrite): the exact rewrite for float32 and
    float16, without the depthwise split for dynamic, with GELU approximated for int8; each made once."""

    def __init__(self, model, free_batch=False):
        self.model, self.clones, self.rewrites, self.free_batch = model, {}, {}, free_batch

    @staticmethod
    def variant(fmt):
        """(name, rewrite_for_export options) of the clone format `fmt` is converted from."""
        if fmt in FULL_INTEGER:
            return f"int8 (GELU: {INTEGER_GELU} form)", {"gelu": INTEGER_GELU}
        if fmt == "dynamic":
            return "dynamic (7x7 depthwise kept)", {"split_depthwise": False}
        return "exact", {}

    def get(self, fmt):
        variant, options = self.variant(fmt)
        if variant not in self.clones:
            self.clones[variant], self.rewrites[variant] = rewrite_for_export(self.model, free_batch=self.free_batch,
                                                                              **options)
        return self.clones[variant]

    def fine_tuned(self, child, fmt, test_images):
        """The model of one of the tf_keras process's formats: its weights in a clone of the model, rewritten like
        the format it is converted as (ChildOutput.model)."""
        if fmt not in self.clones:
            variant, options = self.variant(CONVERTED_AS[fmt])
            self.clones[fmt], self.rewrites[f"{fmt} (fine-tuned weights; {variant})"] = child.model(
                fmt, self.model, test_images, free_batch=self.free_batch, **options)
        return self.clones[fmt]


def _int8_float_layers(model):
    """The layers int8 keeps in float: the model's stem (its registry entry's; none for a model from elsewhere),
    measured to cut int8's probability error by a sixth on MINET-7 for ~0.3 % of ConvNeXt-T's MACs (convert.py)."""
    info = registered_info(model)
    return (info.stem,) if info is not None else ()


def _staging_dir(out_dir):
    """A new hidden staging directory beside `out_dir` (same filesystem: os.replace into it is atomic), after
    removing the staging directories an earlier export to the same `out_dir` left when it was killed (SIGKILL, power
    loss: its `finally` never ran). Those of exports to other outputs are left alone; two exports into one output
    at once are not supported (their files would mix anyway)."""
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    prefix = f"{STAGING_PREFIX}{os.path.basename(out_dir)}-"
    for name in os.listdir(parent):
        if name.startswith(prefix) and os.path.isdir(os.path.join(parent, name)):
            log.info("removing %s, left by an interrupted export", os.path.join(parent, name))
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def complete_export(plan):
    """Convert and verify every format in a staging directory beside the output; move the files into the output
    directory only once all of them passed. Returns the report dict."""
    staging = _staging_dir(plan.out_dir)
    try:
        created = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        results, published, child, gzip_sizes = {}, [], None, {}
        models = _ExportModels(plan.model, free_batch=plan.batch is None)
        child_formats = plan.qat.child_formats(plan.formats)
        # float32 first: a failed gate stops before the slow quantised conversions and the tf_keras process,
        # whose formats come last (int8_qat is last in plan.formats already, the pruned model follows it).
        for fmt in plan.formats + tuple(f for f in child_formats if f not in plan.formats):
            if fmt in child_formats:
                child = child or run_child(plan, os.path.join(staging, "qat"))
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
            if plan.batch is None:
                result["batch"] = check_batch(model_bytes, plan.test_images, fmt)
            if fmt == "float32" and result["agreement_with_keras"] < MIN_FLOAT32_AGREEMENT:
                raise ExportError(
                    f"the float32 model agrees with Keras on only {result['agreement_with_keras']:.1%} of the "
                    f"{len(plan.test_images)} test images (gate: {MIN_FLOAT32_AGREEMENT:.1%}), so the conversion "
                    f"does not compute what '{plan.run.model_file}' computes; nothing was written to "
                    f"'{plan.out_dir}'. Check the model's custom layers and the TensorFlow/LiteRT versions."
                )
            name, sidecar_file = tflite_name(fmt), sidecar_name(fmt)
            results[fmt] = {"file": name, **result, "operators": dict(list_operators(model_bytes)),
                            "xnnpack": delegation(model_bytes)}
            _check_accuracy_drop(plan, fmt, results)
            sidecar = make_sidecar(fmt, plan.run.labels, plan.run.image_size, model_bytes, result["input"],
                                   result["output"], plan.source_sha256, plan.run.path, created)
            _write_bytes(os.path.join(staging, name), model_bytes)
            write_json(os.path.join(staging, sidecar_file), sidecar)
            published += [name, sidecar_file]

        report = build_report(plan.run, plan.out_dir, created, plan.source_sha256, plan.keras_metrics, results,
                              0 if plan.calibration_images is None else len(plan.calibration_images),
                              MIN_FLOAT32_AGREEMENT, plan.max_accuracy_drop, models.rewrites)
        if child:  # the twin check, the QAT fine-tune and pruning, as the tf_keras process reported them
            report.update(child.result)
            if PRUNED_FORMAT in gzip_sizes:
                report["pruning"]["gzip_size_bytes"] = gzip_sizes
        _write_bytes(os.path.join(staging, EXPORT_LABELS), "".join(f"{label}\n" for label in plan.run.labels).encode())
        write_json(os.path.join(staging, REPORT), report)
        _write_bytes(os.path.join(staging, REPORT_MARKDOWN), markdown_report(report).encode())
        published += [EXPORT_LABELS, REPORT, REPORT_MARKDOWN]

        os.makedirs(plan.out_dir, exist_ok=True)
        for name in published:  # each model before its sidecar, the report last
            os.replace(os.path.join(staging, name), os.path.join(plan.out_dir, name))
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_run(run, formats=FORMATS, calibration_samples=CALIBRATION_SAMPLES, out_dir=None, qat=None,
               max_accuracy_drop=MAX_ACCURACY_DROP, batch=1):
    """Export `run` (a mineralnet.rundir.Run or its path) to verified TFLite models in `out_dir` (default
    RUN/export); returns the report.
    `qat` (QatOptions) sets the fine-tuning of int8_qat and whether a pruned float32 model is made too.

    Raises ExportError (nothing written) on bad input, a conversion needing Flex ops, or a float32 model that
    agrees with Keras on fewer than 99.5 % of the test images; AccuracyGateError (an ExportError, exit status 2)
    when a quantized format's test accuracy is more than `max_accuracy_drop` points below float32's.
    `batch` "dynamic" (or None) writes files whose batch dimension is free, each checked to give a batch of test
    images the probabilities single calls give.
    """
    return complete_export(prepare_export(run, formats, calibration_samples, out_dir, qat, max_accuracy_drop,
                                          batch))
