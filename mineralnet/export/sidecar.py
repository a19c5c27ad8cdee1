"""The JSON file beside each .tflite: everything a device needs to feed the model and trust the file.

Contract (read by the edge runner): format, labels, input/output {shape, dtype, scale, zero_point} (scale 0.0
means not quantised), preprocessing (decode: EXIF orientation and ICC profile to sRGB, resize: Pillow bilinear,
as mineralnet/data/images.py states), sha256 of the .tflite and of the source model.keras, the run, versions and
the creation time.
"""

import hashlib

from mineralnet._tf import import_tensorflow

import_tensorflow()  # first: its start-up lines stay hidden (importing mineralnet.export no longer starts it)
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import mineralnet  # noqa: E402
from mineralnet.data import DECODE_METHOD, RESIZE_METHOD  # noqa: E402

EXPORTER_VERSION = "1.0"


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def make_sidecar(fmt, labels, image_size, model_bytes, input_contract, output_contract, source_sha256, run_dir,
                 created):
    """The sidecar dict of one exported model; `*_contract` come from `verify.tensor_contract`."""
    return {
        "format": fmt,
        "labels": list(labels),
        "input": input_contract,
        "output": output_contract,
        "preprocessing": {
            "pixels": "raw RGB 0-255",
            "color": "RGB",
            "input_size": int(image_size),
            "resize_method": RESIZE_METHOD,
            "decode": DECODE_METHOD,
        },
        "sha256": sha256_bytes(model_bytes),
        "source_model_sha256": source_sha256,
        "run": run_dir,
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "mineralnet": mineralnet.__version__,
            "exporter": f"mineralnet.export {EXPORTER_VERSION}",
        },
        "created": created,
    }
