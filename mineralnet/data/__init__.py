"""Datasets of one folder per class: checking, splitting, the synthetic demo set and the tf.data pipeline."""

from mineralnet.data.demo import make_demo_dataset
from mineralnet.data.images import (DECODE_METHOD, IMAGE_EXTENSIONS, RESIZE_METHOD, load_image, open_rgb, resize_rgb,
                                    to_rgb)
from mineralnet.data.scan import DataError, Sample, list_classes, scan_dataset
from mineralnet.data.split import (
    DEFAULT_RATIOS, SUBSETS, duplicate_report, make_split, parse_ratios, read_split, write_split,
)

__all__ = [
    "DECODE_METHOD", "DEFAULT_RATIOS", "DataError", "IMAGE_EXTENSIONS", "RESIZE_METHOD", "SUBSETS", "Sample",
    "duplicate_report", "list_classes", "load_image", "make_demo_dataset", "make_split", "open_rgb", "parse_ratios",
    "read_split", "resize_rgb", "scan_dataset", "to_rgb", "write_split",
]
