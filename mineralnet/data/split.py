"""Deterministic, stratified, duplicate-aware train/val/test split, stored as split.csv (path,label,subset)."""

import csv
import io
import os
import random
from collections import defaultdict

import numpy as np

from mineralnet.data.scan import DataError
from mineralnet.utils import atomic_write_text

SUBSETS = ("train", "val", "test")
NEAR_DUPLICATE_BITS = 4  # difference hashes this close are the same photo, re-encoded or slightly edited


def parse_ratios(text):
    """'6:2:2', '0.6,0.2,0.2' or a sequence -> normalised (train, val, test) fractions."""
    parts = text.replace(":", ",").split(",") if isinstance(text, str) else list(text)
    values = [float(p) for p in parts]
    if len(values) != 3 or min(values) < 0 or values[0] <= 0 or sum(values) <= 0:
        raise ValueError(f"split ratios must be three non-negative numbers like 6:2:2, got {text!r}.")
    total = sum(values)
    return tuple(v / total for v in values)


def duplicate_groups(samples):
    """Group indices of samples with identical content (sha256) or near-identical pictures (difference hash)."""
    parent = list(range(len(samples)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i, j):
        parent[find(i)] = find(j)

    first_by_digest = {}
    for i, sample in enumerate(samples):
        union(i, first_by_digest.setdefault(sample.sha256, i))
    hashes = np.array([s.dhash for s in samples], dtype=np.uint64)
    for i in range(len(samples) - 1):
        close = np.bitwise_count(hashes[i + 1 :] ^ hashes[i]) <= NEAR_DUPLICATE_BITS
        for j in np.flatnonzero(close):
            union(i, i + 1 + int(j))
    groups = defaultdict(list)
    for i in range(len(samples)):
        groups[find(i)].append(i)
    return sorted(groups.values())


def make_split(samples, ratios=(0.6, 0.2, 0.2), seed=0):
    """Assign every sample a subset; returns rows [{path, label, subset}] sorted by path.

    Stratified per class (each group counted under its first member's class), whole duplicate groups at a
    time, shuffled by `seed` only: the same files and seed always give the same split.
    """
    ratios = parse_ratios(ratios)
    by_class = defaultdict(list)
    for group in duplicate_groups(samples):
        by_class[samples[group[0]].label].append(group)
    assignment = {}
    for label in sorted(by_class):
        groups = sorted(by_class[label], key=lambda g: samples[g[0]].path)
        random.Random(f"{seed}/{label}").shuffle(groups)
        needed = [subset for subset, ratio in zip(SUBSETS, ratios) if ratio > 0]
        if len(groups) < len(needed):
            raise DataError(
                f"class '{label}' has {len(groups)} distinct image(s), too few to put one in each of "
                f"{', '.join(needed)}: add images to that class folder or remove it."
            )
        total = sum(len(g) for g in groups)
        targets = {s: max(1, round(total * r)) if r > 0 else 0 for s, r in zip(SUBSETS, ratios)}
        counts = dict.fromkeys(SUBSETS, 0)
        # Seed one group into every non-empty subset, then give each next group to the most under-filled subset.
        for subset, group in zip(needed[::-1], groups):
            counts[subset] += len(group)
            assignment.update({i: subset for i in group})
        for group in groups[len(needed):]:
            subset = min(needed, key=lambda s: (counts[s] / targets[s], SUBSETS.index(s)))
            counts[subset] += len(group)
            assignment.update({i: subset for i in group})
    rows = [{"path": s.path, "label": s.label, "subset": assignment[i]} for i, s in enumerate(samples)]
    return sorted(rows, key=lambda r: r["path"])


def write_split(rows, path):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", "label", "subset"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_split(path, data_dir=None, check_files=True):
    """Rows of a split.csv; with `data_dir`, each row gains `file`, the absolute path, which must exist."""
    if not os.path.isfile(path):
        raise DataError(f"split file '{path}' does not exist: pass the split.csv of an earlier run.")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"path", "label", "subset"} <= set(reader.fieldnames):
            raise DataError(f"split file '{path}' must have the columns path,label,subset.")
        rows = list(reader)
    bad = [r["subset"] for r in rows if r["subset"] not in SUBSETS + ("calib",)]  # calib: conformal calibration
    if bad:
        raise DataError(f"split file '{path}' has unknown subset '{bad[0]}': use train, val, calib or test.")
    if data_dir is not None:
        missing = []
        for row in rows:
            row["file"] = os.path.join(data_dir, *row["path"].split("/"))
            if check_files and not os.path.isfile(row["file"]):
                missing.append(row["file"])
        if missing:
            raise DataError(
                f"{len(missing)} file(s) of split '{path}' do not exist, e.g. '{missing[0]}': pass --data with the "
                "directory that split was made from."
            )
    return rows
