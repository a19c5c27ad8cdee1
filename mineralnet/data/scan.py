"""Find the images of a one-folder-per-class dataset, check every file once, and report what was skipped."""

import hashlib
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from mineralnet.errors import MineralnetError
from PIL import Image

from mineralnet.data.images import IMAGE_EXTENSIONS, open_rgb


class DataError(MineralnetError):
    """A dataset problem that stops a run before anything is written; the message names the file and the fix."""


THUMBNAIL_SIZE = 8  # 192 bytes a sample; small enough that re-encoding noise averages out


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the data directory, POSIX separators
    label: str
    sha256: str
    dhash: int  # 64-bit difference hash, for near-duplicate grouping
    thumbnail: bytes = field(repr=False)  # THUMBNAIL_SIZE^2 RGB uint8 pixels: second near-duplicate check (split.py)


def _difference_hash(image):
    gray = np.asarray(image.convert("L").resize((9, 8)), dtype=np.int16)
    bits = (gray[:, 1:] > gray[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def check_image(path):
    """(sha256, dhash, thumbnail) of a decodable image file, or raise with the reason it is unusable."""
    if os.path.getsize(path) == 0:
        raise OSError("zero-byte file")
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    image = open_rgb(path)
    if min(image.size) < 1:
        raise OSError("image has no pixels")
    thumbnail = image.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.BOX).tobytes()
    return digest, _difference_hash(image), thumbnail


def list_classes(data_dir):
    """Sorted class folder names; the order is the label order of every model trained on them."""
    if not os.path.isdir(data_dir):
        raise DataError(
            f"data directory '{data_dir}' does not exist: pass --data with a folder holding one sub-folder per class "
            "(or run with --demo to make a synthetic one)."
        )
    classes = sorted(e.name for e in os.scandir(data_dir) if e.is_dir() and not e.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"data directory '{data_dir}' has {len(classes)} class folder(s): it needs at least two sub-folders, "
            "one per class, each holding that class's images."
        )
    return classes


def scan_dataset(data_dir, limit_per_class=None, seed=0, workers=8):
    """Check every image under `data_dir`; return (classes, samples, report).

    Unreadable, zero-byte, truncated and non-image files are skipped and listed in the report (train.py prints
    one line for each); an empty class folder raises DataError. `limit_per_class` keeps a seeded random subset per class
    (for quick runs) before checking.
    """
    classes = list_classes(data_dir)
    candidates, ignored = [], []
    for label in classes:
        folder = os.path.join(data_dir, label)
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
        images = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        ignored += [f"{label}/{n}" for n in names if n not in images]
        if limit_per_class:
            images = sorted(random.Random(f"{seed}/{label}").sample(images, min(limit_per_class, len(images))))
        candidates += [(f"{label}/{n}", label) for n in images]

    def check(candidate):
        try:
            return candidate, check_image(os.path.join(data_dir, candidate[0])), None
        except Exception as error:  # any decoder failure means the same thing: this file is unusable
            return candidate, None, f"{type(error).__name__}: {error}"

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(check, candidates))

    samples, skipped = [], []
    for (path, label), hashes, reason in results:
        if hashes is None:
            skipped.append({"path": path, "reason": reason})
        else:
            samples.append(Sample(path, label, *hashes))
    counts = {label: sum(s.label == label for s in samples) for label in classes}
    empty = [label for label, count in counts.items() if count == 0]
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(os.path.join(data_dir, e) for e in empty)} hold no readable image "
            f"({', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder."
        )
    report = {
        "data_dir": os.path.abspath(data_dir),
        "classes": classes,
        "num_images": len(samples),
        "per_class": counts,
        "num_skipped": len(skipped),
        "skipped": skipped,
        "ignored_non_image_files": ignored,
        "limit_per_class": limit_per_class,
    }
    return classes, samples, report
