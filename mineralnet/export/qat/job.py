"""The QAT/pruning step itself, run inside the tf_keras child process (see process.py for the exchange):
load model.keras (Keras 3), build and check its tf_keras twin, then fine-tune the int8_qat weights (quantize the
twin as the int8 export ships it, seed the ranges, fine-tune) and/or the pruned weights (prune, fine-tune,
strip), and hand each set back with the probabilities it gives: the exporter converts them itself."""

import argparse
import logging
import os
import sys
import time

import numpy as np
import tensorflow_model_optimization
import tf_keras

from mineralnet.export.convert import QAT_FORMAT
from mineralnet.export.errors import ExportError
from mineralnet.export.qat import prune, quantize
from mineralnet.export.qat.process import (
    ERROR_PREFIX, INPUTS, LOG_PREFIX, MAX_TWIN_PROB_DIFF, PRUNED_FORMAT, RESULT, require_convnext, save_weights,
    weights_file,
)
from mineralnet.export.qat.train import fine_tune, steps_per_epoch
from mineralnet.export.qat.twin import build_twin, check_agreement, copy_weights, source_layout
from mineralnet.export.rewrite import INTEGER_GELU
from mineralnet.export.preflight import load_model, load_run
from mineralnet.models import registered_info
from mineralnet.utils import sha256_file, write_json

AGREEMENT_IMAGES = 64  # test images the twin is checked on
log = logging.getLogger("mineralnet.export")


def _hand_back(args, fmt, source, model, weights, test_images):
    """Write the fine-tuned `weights` ({layer name: arrays} of the tf_keras `model`) in `source`'s layout, with the
    probabilities `model` gives on `test_images`, for the exporter to convert (process.ChildOutput.model)."""
    probabilities = model.predict(test_images.astype(np.float32), batch_size=32, verbose=0)
    save_weights(os.path.join(args.work, weights_file(fmt)), source_layout(source, weights), probabilities)


def quantization_aware(source, run, calibration, test_images, args):
    """Fine-tune `source` quantization-aware as the int8 export ships it (GELU in the INTEGER_GELU form, the
    stem's convolution float, LayerNorm statistics float: only outputs fake-quantised there) and write its float
    weights, with the float probabilities they give on `test_images`, for the exporter's int8 conversion."""
    twin = build_twin(source, gelu=INTEGER_GELU)
    copy_weights(source, twin)
    stem = registered_info(source).stem_parts([layer.name for layer in twin.layers])
    quantized = quantize.quantize_twin(twin, float_layers=stem[:-1])  # the stem's last layer quantises its output
    quantize.check_weights_carried(quantized, twin)
    quantize.calibrate_ranges(quantized, twin, calibration)
    started = time.perf_counter()
    history = fine_tune(quantized, run, args.epochs, args.lr, "QAT")
    seconds = time.perf_counter() - started
    weights = quantize.trained_weights(quantized, twin)
    for name, values in weights.items():
        twin.get_layer(name).set_weights(values)
    _hand_back(args, QAT_FORMAT, source, twin, weights, test_images)
    return {"epochs": args.epochs, "lr": args.lr, "train_images": len(run.rows("train")),
            "fine_tune_seconds": round(seconds, 1), "history": history}


def pruned(source, twin, run, test_images, args):
    classifier = registered_info(source).classifier  # the twin keeps the source's layer names
    model = prune.prune_model(twin, args.prune_sparsity, steps_per_epoch(run) * args.epochs, classifier)
    history = fine_tune(model, run, args.epochs, args.lr, "pruning", callbacks=prune.callbacks())
    stripped = prune.strip(model)
    zeros = prune.zero_fractions(stripped, classifier)
    weights = {layer.name: layer.get_weights() for layer in stripped.layers if layer.weights}
    _hand_back(args, PRUNED_FORMAT, source, stripped, weights, test_images)
    sizes = {layer.name: int(np.prod(layer.get_weights()[0].shape)) for layer in stripped.layers
             if layer.name in zeros}
    return {"target_sparsity": args.prune_sparsity, "epochs": args.epochs, "lr": args.lr, "history": history,
            "pruned_layers": len(zeros),
            "zero_fraction": sum(zeros[n] * sizes[n] for n in zeros) / sum(sizes.values()),
            "layer_zero_fraction": {"min": min(zeros.values()), "max": max(zeros.values())},
            "speed": prune.SPEED_NOTE}


def run_job(args):
    run = load_run(args.run)
    if sha256_file(run.model_file) != args.sha256:
        raise ExportError(f"model file '{run.model_file}' changed during the export: run the export again.")
    source = load_model(run)
    require_convnext(source, run.model_file)
    arrays = np.load(os.path.join(args.work, INPUTS))
    twin = build_twin(source)
    copy_weights(source, twin)
    checked = arrays["test"][:AGREEMENT_IMAGES]
    difference = check_agreement(source, twin, checked)
    log.info("the tf_keras twin agrees with model.keras: max abs probability difference %.1e on %d test images",
             difference, len(checked))
    result = {"tf_keras_twin": {"max_abs_prob_diff": difference, "images": len(checked), "limit": MAX_TWIN_PROB_DIFF,
                       "versions": {"tf_keras": tf_keras.__version__,
                                    "tensorflow_model_optimization": tensorflow_model_optimization.__version__}}}
    if args.qat:
        result["qat"] = quantization_aware(source, run, arrays["calibration"], checked, args)
    if args.prune_sparsity:
        result["pruning"] = pruned(source, twin, run, checked, args)
    write_json(os.path.join(args.work, RESULT), result)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m mineralnet.export.qat",
                                     description="The exporter's tf_keras step (started by export.py).")
    parser.add_argument("--run", required=True)
    parser.add_argument("--work", required=True, help="folder holding inputs.npz; the outputs go there too")
    parser.add_argument("--sha256", required=True, help="of the model.keras the exporter took its reference from")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--qat", action="store_true", help="make the int8_qat model")
    parser.add_argument("--prune-sparsity", type=float, default=None, help="make the pruned float32 model")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_PREFIX + "%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        run_job(args)
    except ExportError as error:
        print(f"{ERROR_PREFIX}{error}", file=sys.stderr)
        return 1
    return 0
