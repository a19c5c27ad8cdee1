"""Deterministic, stratified, duplicate-aware train/val/calib/test split, stored as split.csv
(path,label,sha256,subset: the subset last, so a line ending in ",test" is a test row, as before).

The four subsets have one job each: `train` fits the weights, `val` picks the best epoch (and any other model
selection), `calib` is held out for the conformal reject threshold, `test` measures the final model. A threshold
calibrated on the rows that also chose the epoch is biased towards that model, so its coverage can fall below
1 - alpha; `calib` rows are never read by training. A three-part ratio (train:val:test) leaves `calib` empty and
old three-subset split.csv files still load.

Each row records its file's content hash (`sha256`, the digest scan.py already takes for duplicate detection, so
recording it costs nothing; checking it later reads MINET-7's 942 photos, 45 MB, in 0.11 s: hashlib's sha256 runs
on the CPU's SHA instructions and was faster than blake2b, md5 and sha1 here). A label is a folder name, so two
swapped class folders or an edited photo would otherwise be evaluated, calibrated and exported under the wrong
label without a word: read_split refuses such files with one line naming the class. A split.csv from before the
column existed still loads, and says once that its labels cannot be checked.
"""

import csv
import io
import math
import os
import random
import sys
from collections import defaultdict

import numpy as np

from mineralnet.data.scan import DataError
from mineralnet.utils import atomic_write_text, sha256_file

SUBSETS = ("train", "val", "calib", "test")
HASH = "sha256"  # split.csv's column of each file's content hash (see above)
DEFAULT_RATIOS = "6:1:1:2"  # the paper's 60 % training and 20 % test; its 20 % validation shared with calib

# Near-duplicate rule: difference hashes within NEAR_DUPLICATE_BITS bits AND mean absolute difference of the 8x8 RGB
# thumbnails (0-255 scale) at most NEAR_DUPLICATE_MAD, and within one class only. Measured on MINET-7 (941 photos):
# the two known near-duplicate pairs score dhash 1 / MAD 0.4 (quartz 0101~0115) and dhash 4 / MAD 1.5 (bornite
# 0009~0016). The old rule (dhash <= 4 alone, across classes, transitive) also joined 7 other pairs, at MAD 11.1 to
# 34.1 (e.g. chrysocolla/0018~quartz/0072 34.1, chrysocolla/0072~malachite/0229 21.1, chrysocolla/0081~
# malachite/0121 11.1); among all 96 pairs within 8 bits the lowest MAD apart from the known two is 10.0
# (malachite/0060~0095). Thumbnails alone are not enough: the lowest MAD of any other pair, whatever its hash, is
# 4.5 (pyrite/0053~0079, 13 bits; quartz/0081~0103, a crystal and a glass pipe both on white, 10 bits), since a
# uniform background makes thumbnails alike; the hash must agree too. 8 bits and 3.0 leave a factor 2 of margin
# above the known pairs and 1.5 (MAD) / 1.25 (bits) below the closest different pictures.
NEAR_DUPLICATE_BITS = 8
NEAR_DUPLICATE_MAD = 3.0


def parse_ratios(text):
    """'6:1:1:2' (train:val:calib:test), '6:2:2' (train:val:test, no calib), '0.6,0.2,0.2' or a sequence ->
    normalised (train, val, calib, test) fractions. A zero share leaves that subset out on purpose."""
    parts = text.replace(":", ",").split(",") if isinstance(text, str) else list(text)
    usage = f"--split-ratios must be train:val:calib:test or train:val:test like {DEFAULT_RATIOS} or 6:2:2"
    try:
        values = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise DataError(f"{usage}, got {text!r}: use non-negative numbers.") from None
    if len(values) not in (3, 4):
        raise DataError(f"{usage}, got {text!r} ({len(values)} part(s)).")
    if not all(math.isfinite(v) and v >= 0 for v in values) or values[0] <= 0:
        raise DataError(f"{usage}, got {text!r}: every share must be a number >= 0 and the train share > 0.")
    if len(values) == 3:
        values.insert(2, 0.0)
    total = sum(values)
    return tuple(v / total for v in values)


def _is_near_duplicate(a, b):
    """The second, independent check after the hash: mean absolute difference of the colour thumbnails."""
    first, second = (np.frombuffer(s.thumbnail, np.uint8).astype(np.int16) for s in (a, b))
    return float(np.abs(first - second).mean()) <= NEAR_DUPLICATE_MAD


def near_duplicates(sample, others, hashes=None):
    """Indices into `others` of the near-identical pictures of `sample`, any class (identical files included):
    the rule above. `hashes`: the others' dhashes as a uint64 array, if already made. mineralnet.review uses it to
    keep a reviewed image that looks like a held-out one out of train."""
    if hashes is None:
        hashes = np.array([s.dhash for s in others], dtype=np.uint64)
    close = np.flatnonzero(np.bitwise_count(hashes ^ np.uint64(sample.dhash)) <= NEAR_DUPLICATE_BITS)
    return [int(j) for j in close if _is_near_duplicate(sample, others[int(j)])]


def _near_duplicate_pairs(samples):
    """(i, j) index pairs, i < j, of near-identical pictures of any classes (identical files included)."""
    hashes = np.array([s.dhash for s in samples], dtype=np.uint64)
    pairs = []
    for i in range(len(samples) - 1):
        pairs += [(i, i + 1 + j) for j in near_duplicates(samples[i], samples[i + 1 :], hashes[i + 1 :])]
    return pairs


def duplicate_groups(samples):
    """Group indices of samples that must share a subset: identical content (sha256), and near-identical pictures
    (see NEAR_DUPLICATE_BITS) of the same class. Near-duplicates never join two classes: only identical files
    can, and such a group is a label conflict (see `label_conflicts`)."""
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
    for i, j in _near_duplicate_pairs(samples):
        if samples[i].label == samples[j].label:
            union(i, j)
    groups = defaultdict(list)
    for i in range(len(samples)):
        groups[find(i)].append(i)
    return sorted(groups.values())


def duplicate_report(samples):
    """What data_report.json lists about duplicates across classes.

    label_conflicts: the paths of each identical file found in more than one class folder (one label is wrong).
    cross_class_near_duplicates: [path, path] pairs of near-identical pictures in different classes; they are not
    grouped (the rule could be wrong about two different specimens), but a person should look at them.
    """
    by_digest = defaultdict(list)
    for sample in samples:
        by_digest[sample.sha256].append(sample)
    conflicts = [sorted(s.path for s in same) for same in by_digest.values() if len({s.label for s in same}) > 1]
    near = [sorted((samples[i].path, samples[j].path)) for i, j in _near_duplicate_pairs(samples)
            if samples[i].label != samples[j].label and samples[i].sha256 != samples[j].sha256]
    return {"label_conflicts": sorted(conflicts), "cross_class_near_duplicates": sorted(near)}


def make_split(samples, ratios=DEFAULT_RATIOS, seed=0):
    """Assign every sample a subset; returns rows [{path, label, subset}] sorted by path.

    Stratified per class, whole duplicate groups at a time, shuffled by `seed` only: the same files and seed always
    give the same split. A label conflict (identical files in several classes) goes to `train` whole: it is never
    split between subsets, and never evaluated or calibrated on, since no answer to it can be right.
    Raises DataError, before anything is written, when a class cannot fill every subset of non-zero ratio.
    """
    ratios = parse_ratios(ratios)
    needed = [subset for subset, ratio in zip(SUBSETS, ratios) if ratio > 0]
    by_class = {label: [] for label in sorted({s.label for s in samples})}
    assignment = {}
    for group in duplicate_groups(samples):
        labels = {samples[i].label for i in group}
        if len(labels) > 1:
            assignment.update({i: "train" for i in group})
        else:
            by_class[labels.pop()].append(group)
    for label, groups in by_class.items():
        total = sum(len(g) for g in groups)
        for subset, ratio in zip(SUBSETS, ratios):
            if 0 < ratio and total * ratio < 0.5:
                raise DataError(
                    f"class '{label}' has {total} image(s) to split, so its {subset} share ({ratio:.0%}, "
                    f"{total * ratio:.1f} images) rounds to none: add images to that class, raise the {subset} share "
                    f"of --split-ratios, or set it to 0 to leave {subset} out."
                )
        if len(groups) < len(needed):
            raise DataError(
                f"class '{label}' has {len(groups)} distinct image(s) (near-duplicates count once, label conflicts "
                f"not at all), too few to put one in each of {', '.join(needed)}: add images to that class folder, "
                "set shares of --split-ratios to 0, or remove the class."
            )
        groups = sorted(groups, key=lambda g: samples[g[0]].path)
        random.Random(f"{seed}/{label}").shuffle(groups)
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
    rows = [{"path": s.path, "label": s.label, "subset": assignment[i], "sha256": s.sha256}
            for i, s in enumerate(samples)]
    return sorted(rows, key=lambda r: r["path"])


def split_rows(rows):
    """The (path, label, subset) of each row, sorted: what two runs must share to be compared or combined (extra keys
    such as `file`, the absolute path, and the row order do not count)."""
    return sorted((row["path"], row["label"], row["subset"]) for row in rows)


def write_split(rows, path):
    """split.csv of `rows`: their path, label, subset and content hash (other keys, such as read_split's `file`, are
    left out; a row without a hash gets an empty one, which read_split does not check)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["path", "label", HASH, "subset"], lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_split(path, data_dir=None, check_files=True):
    """Rows of a split.csv (four subsets, or the three of older runs); with `data_dir`, each row gains `file`, the
    absolute path, which must exist and (check_files) still hold the content recorded (check_content)."""
    if not os.path.isfile(path):
        raise DataError(f"split file '{path}' does not exist: pass the split.csv of an earlier run.")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"path", "label", "subset"} <= set(reader.fieldnames):
            raise DataError(f"split file '{path}' must have the columns path,label,subset.")
        rows = list(reader)
    bad = [r["subset"] for r in rows if r["subset"] not in SUBSETS + ("calib",)]  # calib: conformal calibration
    if bad:
        raise DataError(f"split file '{path}' has unknown subset '{bad[0]}': use {', '.join(SUBSETS)}.")
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
        if check_files:
            check_content(rows, path)
    return rows


_UNCHECKED_NOTED = set()  # split files already said to have no hashes (said once per process)


def check_content(rows, split_path):
    """DataError, one line naming the class(es), when files of `rows` (with `file`) no longer hold the content
    split.csv recorded: class folders swapped or renamed into each other, photos edited or replaced. Every label
    comes from a folder name, so nothing else would notice. Rows without a recorded hash (a split.csv older than
    the column, or rows added without one) are not checked; a split with none says so once."""
    recorded = [row for row in rows if row.get(HASH)]
    if not recorded:
        if rows and split_path not in _UNCHECKED_NOTED:
            _UNCHECKED_NOTED.add(split_path)
            print(f"note: split '{split_path}' records no content hashes (made before they were recorded): its "
                  "labels cannot be checked against the files; a new train.py run records them.", file=sys.stderr)
        return
    changed = defaultdict(list)
    for row in recorded:
        if sha256_file(row["file"]) != row[HASH]:
            changed[row["label"]].append(row["path"])
    if changed:
        classes = ", ".join(f"'{label}' ({len(paths)} of {sum(r['label'] == label for r in recorded)} files, e.g. "
                            f"{paths[0]})" for label, paths in sorted(changed.items()))
        raise DataError(
            f"files of class{'es' if len(changed) > 1 else ''} {classes} no longer hold the content split "
            f"'{split_path}' recorded: class folders were swapped or files edited since training, so their labels "
            "would be wrong. Restore the folders as they were, or train a new run on the data as it is now."
        )
