"""The learning loop: review-queue items labelled on the device become training images; the retrained model is
compared with the old one on the very same test rows.

    python -m mineralnet.review import --queue QUEUE --data DATASET [--run RUN] [--out NEW_SPLIT] [--device NAME]
    python train.py --data DATASET --split NEW_SPLIT --init-from RUN/model.keras --out NEWRUN [...]
    python -m mineralnet.review compare --old RUN --new NEWRUN

`import` reads the runner's review queue (edge/review.py: STEM.jpg + STEM.json, and STEM.label.json written by
the review page: {"label", "labelled_at", "model_sha256", "source"}). Items labelled with a class folder of
DATASET are copied into DATASET/<class>/ as review_STEM.jpg (never over an existing file: a free name is taken);
"discard", "unknown" and unlabelled items are counted and left alone. A label that is no class folder stops the
import before anything is copied (exit 2). Every image already in DATASET is hashed (sha256) and an identical
queue image is refused as a duplicate (it would count twice, or sit in train and test at once). Each copied image
gets one line in DATASET/review_manifest.jsonl (rewritten atomically with the new lines appended): where it came
from (queue, device, stem), the model that was unsure (sha256, prediction, top-3), the label, who labelled it when,
the new file and its sha256.

With --run, a new split file is written (default RUN/../<run>_plus_review_split.csv): the run's split.csv rows,
every one in its old subset and written exactly as before, then the new images, all in `train`. Test, calib and
val rows are unchanged, so the retrained model's test figures and its conformal calibration rest on the same rows
and `compare` measures the review images' effect, not a new draw of the test set.

`compare` evaluates both runs' model.keras on their test rows, refusing runs whose test rows differ, and prints
both accuracies, the items each model gets right where the other does not, and McNemar's exact test on those.
"""

import argparse
import datetime
import hashlib
import json
import math
import os
import sys

import numpy as np

from mineralnet import rundir
from mineralnet.data import read_split, write_split
from mineralnet.data.images import IMAGE_EXTENSIONS, open_rgb
from mineralnet.data.scan import list_classes
from mineralnet.errors import MineralnetError, cli
from mineralnet.utils import atomic_write_text

LABEL_SUFFIX = ".label.json"
SKIP_LABELS = ("discard", "unknown")  # dropped / another or no class of this dataset: never imported
MANIFEST = "review_manifest.jsonl"


class ReviewError(MineralnetError):
    """A queue, dataset or run that cannot be imported or compared; one line naming the file and the fix."""


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path, what):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise ReviewError(f"{what} '{path}' is not readable JSON ({error}): label the item again or delete the "
                          "file.") from None


def read_queue(queue):
    """(labelled items, {reason: count} of those left alone). An item: stem, label, label record, queue record."""
    if not os.path.isdir(queue):
        raise ReviewError(f"review queue '{queue}' does not exist: pass --queue with the runner's review.dir (copied "
                          "from the device).")
    names = set(os.listdir(queue))
    stems = sorted(n[: -len(".jpg")] for n in names if n.endswith(".jpg") and not n.startswith("."))
    labelled = sorted(n[: -len(LABEL_SUFFIX)] for n in names if n.endswith(LABEL_SUFFIX))
    items, left = [], {"unlabelled": len(set(stems) - set(labelled)), "no image": 0, **dict.fromkeys(SKIP_LABELS, 0)}
    for stem in labelled:
        path = os.path.join(queue, stem + LABEL_SUFFIX)
        label = _read_json(path, "label file")
        if not isinstance(label, dict) or not isinstance(label.get("label"), str) or not label["label"]:
            raise ReviewError(f"label file '{path}' has no \"label\": label the item again or delete the file.")
        if stem not in stems:  # the queue's size limit removed the picture after it was labelled
            left["no image"] += 1
            continue
        if label["label"] in SKIP_LABELS:
            left[label["label"]] += 1
            continue
        meta = os.path.join(queue, stem + ".json")
        items.append({"stem": stem, "label": label["label"], "labelled": label,
                      "record": _read_json(meta, "queue record") if os.path.exists(meta) else {}})
    return items, left


def dataset_digests(data):
    """{sha256: relative path} of every image in the class folders of `data` (the files a training run scans)."""
    digests = {}
    for label in list_classes(data):
        folder = os.path.join(data, label)
        for name in sorted(os.listdir(folder)):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                digests.setdefault(_sha256(os.path.join(folder, name)), f"{label}/{name}")
    return digests


def _copy_new(source, folder, stem):
    """Copy `source` to folder/review_STEM.jpg, or review_STEM_1.jpg ... if taken; never replaces a file (the
    final name is made by a hard link, which fails if it exists). Returns the name."""
    with open(source, "rb") as handle:
        data = handle.read()
    tmp = os.path.join(folder, f".{stem}.importing")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        for number in range(10_000):
            name = f"review_{stem}.jpg" if number == 0 else f"review_{stem}_{number}.jpg"
            try:
                os.link(tmp, os.path.join(folder, name))
                return name
            except FileExistsError:
                continue
        raise ReviewError(f"no free file name for review_{stem}.jpg in '{folder}': tidy that folder.")
    finally:
        os.remove(tmp)


def default_split_path(run):
    run = os.path.abspath(run)
    return os.path.join(os.path.dirname(run), f"{os.path.basename(run)}_plus_review_split.csv")


def import_queue(queue, data, run=None, out=None, device=None):
    """Copy the labelled queue items into `data`; with `run`, write the new split. Returns what was done."""
    classes = list_classes(data)
    items, left = read_queue(queue)
    wrong = [i for i in items if i["label"] not in classes]
    if wrong:
        raise ReviewError(
            f"label '{wrong[0]['label']}' of '{os.path.join(queue, wrong[0]['stem'] + LABEL_SUFFIX)}' is not a class "
            f"folder of '{data}' ({', '.join(classes)}): relabel it (or mark it \"unknown\"); nothing was imported."
        )
    old_rows = None
    if run:
        split = os.path.join(run, rundir.SPLIT)
        out = out or default_split_path(run)
        if os.path.exists(out):
            raise ReviewError(f"split file '{out}' already exists: pass another --out (it is never overwritten).")
        labels = rundir.Run(run, required=(rundir.LABELS, rundir.SPLIT)).labels
        if labels != classes:
            raise ReviewError(f"run '{run}' was trained on the classes {labels} but '{data}' has {classes}: pass the "
                              "--data that run was trained on.")
        old_rows = [{k: r[k] for k in ("path", "label", "subset")} for r in read_split(split, data)]
    digests = dataset_digests(data)
    imported, duplicates, unreadable, manifest = [], [], [], []
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for item in items:
        source = os.path.join(queue, item["stem"] + ".jpg")
        digest = _sha256(source)
        if digest in digests:
            duplicates.append((item["stem"], digests[digest]))
            continue
        try:
            open_rgb(source)
        except Exception as error:  # any decoder failure: the file is unusable for training
            unreadable.append((item["stem"], f"{type(error).__name__}: {error}"))
            continue
        name = _copy_new(source, os.path.join(data, item["label"]), item["stem"])
        path = f"{item['label']}/{name}"
        digests[digest] = path
        record, labelled = item["record"], item["labelled"]
        manifest.append({
            "file": path, "sha256": digest, "label": item["label"], "imported_at": now,
            "queue": os.path.abspath(queue), "device": device or os.path.basename(os.path.abspath(queue)),
            "stem": item["stem"], "labelled_at": labelled.get("labelled_at"), "label_source": labelled.get("source"),
            "model_sha256": labelled.get("model_sha256") or record.get("model_sha256"),
            "predicted": record.get("class"), "top3": record.get("top3"),
            "prediction_set": record.get("prediction_set"),
        })
        imported.append({"path": path, "label": item["label"], "subset": "train"})
    if manifest:
        manifest_path = os.path.join(data, MANIFEST)
        before = open(manifest_path).read() if os.path.exists(manifest_path) else ""
        atomic_write_text(manifest_path, before + "".join(json.dumps(m) + "\n" for m in manifest))
    if old_rows is not None:
        write_split(old_rows + imported, out)
    return {"imported": imported, "duplicates": duplicates, "unreadable": unreadable, "left": left,
            "split": out if old_rows is not None else None, "old_rows": len(old_rows or [])}


def report_import(result, data):
    per_class = {}
    for row in result["imported"]:
        per_class[row["label"]] = per_class.get(row["label"], 0) + 1
    counts = ", ".join(f"{label} {n}" for label, n in sorted(per_class.items())) or "none"
    print(f"review: imported {len(result['imported'])} image(s) into '{data}' ({counts}); manifest "
          f"{os.path.join(data, MANIFEST)}")
    print("review: left alone: " + ", ".join(f"{n} {reason}" for reason, n in result["left"].items()))
    for stem, existing in result["duplicates"]:
        print(f"review: duplicate: {stem}.jpg has the same bytes as {existing}; not imported", file=sys.stderr)
    for stem, reason in result["unreadable"]:
        print(f"review: unreadable: {stem}.jpg ({reason}); not imported", file=sys.stderr)
    if result["split"]:
        print(f"review: wrote split '{result['split']}': the run's {result['old_rows']} rows unchanged + "
              f"{len(result['imported'])} new train rows. Retrain: python train.py --data {data} --split "
              f"{result['split']} --init-from RUN/model.keras --out NEWRUN, then python -m mineralnet.review "
              "compare --old RUN --new NEWRUN")


def mcnemar_p(only_old, only_new):
    """Two-sided exact McNemar p-value: the discordant items split as a fair coin would (no difference)."""
    n = only_old + only_new
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_old, only_new) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare_runs(old, new):
    """Both runs' model.keras on the same test rows: {"n", "old", "new", "only_old", "only_new", "p"}."""
    from mineralnet.evaluate import predict_rows

    runs = [rundir.Run(path) for path in (old, new)]
    if runs[0].labels != runs[1].labels:
        raise ReviewError(f"runs '{old}' and '{new}' have different classes ({runs[0].labels} vs {runs[1].labels}): "
                          "compare a run with one retrained on the same class folders.")
    rows = [sorted(run.rows("test"), key=lambda r: r["path"]) for run in runs]
    keys = [[(r["path"], r["label"]) for r in subset] for subset in rows]
    if keys[0] != keys[1]:
        only = sorted(set(keys[0]) ^ set(keys[1]))
        raise ReviewError(
            f"runs '{old}' and '{new}' have different test rows ({len(only)} differ, e.g. {only[0][0]}): "
            "retrain with the split written by `python -m mineralnet.review import --run OLD` so both are measured "
            "on the same rows." if only else f"runs '{old}' and '{new}' list their test rows differently.")
    if not keys[0]:
        raise ReviewError(f"run '{old}' has no test rows to compare on.")
    truth = np.array([runs[0].labels.index(label) for _, label in keys[0]])
    right = [predict_rows(run.load_model(), subset, run.labels, run.image_size).argmax(axis=1) == truth
             for run, subset in zip(runs, rows)]
    only_old, only_new = int(np.sum(right[0] & ~right[1])), int(np.sum(right[1] & ~right[0]))
    return {"n": len(truth), "old": float(right[0].mean()), "new": float(right[1].mean()), "only_old": only_old,
            "only_new": only_new, "p": mcnemar_p(only_old, only_new)}


def report_compare(result, old, new):
    print(f"compare: the same {result['n']} test rows in both runs")
    print(f"compare: old {old}: accuracy {result['old']:.4f}")
    print(f"compare: new {new}: accuracy {result['new']:.4f} ({100 * (result['new'] - result['old']):+.1f} points)")
    print(f"compare: right only with the new model {result['only_new']}, only with the old {result['only_old']}; "
          f"McNemar exact p = {result['p']:.3g}"
          + (" (no evidence of a difference at 0.05)" if result["p"] >= 0.05 else ""))


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mineralnet.review", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("import", help="copy labelled review-queue images into the dataset").add_argument
    add("--queue", required=True, help="the runner's review folder (STEM.jpg, STEM.json, STEM.label.json)")
    add("--data", required=True, help="dataset folder (one sub-folder per class) the images join")
    add("--run", help="run whose split.csv is extended: its rows unchanged, the new images in train")
    add("--out", help="new split file (default RUN/../<run>_plus_review_split.csv; never overwritten)")
    add("--device", help="name of the device the queue came from, for the manifest (default: the queue's folder)")
    add = commands.add_parser("compare", help="old vs retrained model on the same test rows").add_argument
    add("--old", required=True, help="the earlier run")
    add("--new", required=True, help="the run retrained with the reviewed images")
    args = parser.parse_args(argv)
    if args.command == "import":
        if args.out and not args.run:
            parser.error("--out needs --run (the run whose split is extended).")
        report_import(import_queue(args.queue, args.data, args.run, args.out, args.device), args.data)
    else:
        report_compare(compare_runs(args.old, args.new), args.old, args.new)


if __name__ == "__main__":
    sys.exit(main())
