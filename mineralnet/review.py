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
gets one line in DATASET/review_manifest.jsonl: where it came from (queue, device, stem), the model that was unsure
(sha256, prediction, top-3), the label, who labelled it when, the new file and its sha256.

Crash safety: the copy appears at once under its final name (hard link of a synced temporary file) and its manifest
line is appended and synced right after it, so a crash leaves at most one image whose line is missing or cut short.
The next import drops a cut-short last line and records every review_STEM[_N].jpg of a queue item whose bytes match
and that the manifest does not list, without copying it again ("recovered"): every image once in the dataset, once
in the manifest.

With --run, a new split file is written (default RUN/../<run>_plus_review_split.csv): the run's split.csv rows,
every one in its old subset and written exactly as before, then, all in `train`, every image of the manifest that
the run's split does not list: this import's, and those of an earlier import that crashed before writing its split
or ran without --run (the run has seen none of them). Test, calib and val rows are unchanged, so the retrained
model's test figures and its conformal calibration rest on the same rows and `compare` measures the review images'
effect, not a new draw of the test set. A new image that is a near duplicate of one of the run's val, calib or test
images (split.py's rule: dhash within 8 bits and 8x8 thumbnails within 3/255, any class) would let the retrained
model score on a picture it has trained on; it is not copied and not added to the split (one already in the manifest
stays in the dataset, out of the split), and its name and the image it resembles are printed. It stays in the queue:
the next import reports it again (discard it on the review page to silence that). split.py would put such a pair in
one subset, but that would move the new image to test and change the rows both models are compared on. Without --run
there are no held-out rows to compare with, and a later fresh split groups same-class near duplicates itself.

`compare` evaluates both runs' model.keras on their test rows, refusing runs whose test rows differ, and prints
both accuracies, the items each model gets right where the other does not, and McNemar's exact test on those.
"""

import argparse
import datetime
import json
import math
import os
import re
import sys

import numpy as np

from mineralnet import rundir
from mineralnet.data import write_split
from mineralnet.data.images import IMAGE_EXTENSIONS
from mineralnet.data.scan import Sample, check_image, list_classes
from mineralnet.data.split import HASH, near_duplicates
from mineralnet.errors import MineralnetError, cli
from mineralnet.utils import atomic_write_text, fsync_dir, sha256_file

LABEL_SUFFIX = ".label.json"
SKIP_LABELS = ("discard", "unknown")  # dropped / another or no class of this dataset: never imported
MANIFEST = "review_manifest.jsonl"


class ReviewError(MineralnetError):
    """A queue, dataset or run that cannot be imported or compared; one line naming the file and the fix."""


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
                digests.setdefault(sha256_file(os.path.join(folder, name)), f"{label}/{name}")
    return digests


def read_manifest(data):
    """The records of DATA/review_manifest.jsonl ([] without one). A last line without its newline is what a crash
    mid-append leaves: it is removed from the file (kept if it parses), so its image is recovered like one whose
    line was never written. Any other line that is not JSON stops the import."""
    path = os.path.join(data, MANIFEST)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        lines = handle.read().split("\n")
    torn = lines.pop()  # "" when the file ends with a newline, as every complete append does
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise ReviewError(f"manifest '{path}' line {number} is not JSON: mend or delete that line (an image it "
                              "recorded is recorded again by the next import).") from None
    if torn:
        try:
            records.append(json.loads(torn))
            lines.append(torn)
        except ValueError:
            pass
        atomic_write_text(path, "".join(line + "\n" for line in lines))
    return records


def _append_manifest(data, record):
    """One line, synced before the next image is copied: the copy and its line are lost together or kept together
    (but for the moment between them, which the next import's recovery covers)."""
    with open(os.path.join(data, MANIFEST), "a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _unrecorded_copy(data, label, stem, digest, recorded):
    """DATA/label/review_STEM[_N].jpg with these bytes that the manifest does not list: a copy made by an import
    that crashed before writing its line. None if there is none."""
    pattern = re.compile(rf"review_{re.escape(stem)}(_\d+)?\.jpg")
    for name in sorted(os.listdir(os.path.join(data, label))):
        path = f"{label}/{name}"
        if pattern.fullmatch(name) and path not in recorded and sha256_file(os.path.join(data, label, name)) == digest:
            return path
    return None


def _held_out_samples(rows):
    """Samples (hashes, thumbnails) of the run's val, calib and test rows: the pictures a new train image must not
    resemble. A row that cannot be decoded is left out: training drops it too."""
    samples = []
    for row in rows:
        if row["subset"] != "train":
            try:
                samples.append(Sample(row["path"], row["label"], *check_image(row["file"])))
            except Exception:  # any decoder failure: not a picture any model sees
                continue
    return samples


def _copy_new(source, folder, stem):
    """Copy `source` to folder/review_STEM.jpg, or review_STEM_1.jpg ... if taken; never replaces a file (the
    final name is made by a hard link, which fails if it exists). Returns the name."""
    with open(source, "rb") as handle:
        data = handle.read()
    tmp = os.path.join(folder, f".{stem}.importing")
    if os.path.exists(tmp):  # left by a crash, maybe still linked to a copy: unlink it, never write through it
        os.remove(tmp)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        for number in range(10_000):
            name = f"review_{stem}.jpg" if number == 0 else f"review_{stem}_{number}.jpg"
            try:
                os.link(tmp, os.path.join(folder, name))
                fsync_dir(folder)
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
        out = out or default_split_path(run)
        if os.path.exists(out):
            raise ReviewError(f"split file '{out}' already exists: pass another --out (it is never overwritten).")
        source = rundir.Run(run, required=(rundir.LABELS, rundir.SPLIT))
        if source.labels != classes:
            raise ReviewError(f"run '{run}' was trained on the classes {source.labels} but '{data}' has {classes}: "
                              "pass the --data that run was trained on.")
        old_rows = source.rows(data_dir=data)
    digests = dataset_digests(data)
    manifest = read_manifest(data)
    recorded = {m.get("file") for m in manifest}
    held_out = hashes = None

    def resembles(sample):
        """The run's val/calib/test image `sample` is a near duplicate of, or None (held-out rows hashed once)."""
        nonlocal held_out, hashes
        if held_out is None:
            held_out = _held_out_samples(old_rows)
            hashes = np.array([s.dhash for s in held_out], dtype=np.uint64)
        close = near_duplicates(sample, held_out, hashes)
        return held_out[close[0]] if close else None

    imported, recovered, duplicates, unreadable, near, likeness = [], [], [], [], [], {}
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    for item in items:
        source = os.path.join(queue, item["stem"] + ".jpg")
        digest = sha256_file(source)
        copied = _unrecorded_copy(data, item["label"], item["stem"], digest, recorded)
        if digest in digests and copied is None:
            duplicates.append((item["stem"], digests[digest]))
            continue
        try:
            sample = Sample(item["stem"], item["label"], *check_image(source))
        except Exception as error:  # any decoder failure: the file is unusable for training
            unreadable.append((item["stem"], f"{type(error).__name__}: {error}"))
            continue
        like = resembles(sample) if old_rows is not None else None
        if like is not None and copied is None:  # not copied: see the module docstring
            near.append({"stem": item["stem"], "label": item["label"], "like": like, "file": None})
            continue
        if copied is None:
            path = f"{item['label']}/{_copy_new(source, os.path.join(data, item['label']), item['stem'])}"
        else:
            path = copied
            recovered.append(path)
        likeness[path] = like
        record, labelled = item["record"], item["labelled"]
        line = {
            "file": path, "sha256": digest, "label": item["label"], "imported_at": now,
            "queue": os.path.abspath(queue), "device": device or os.path.basename(os.path.abspath(queue)),
            "stem": item["stem"], "labelled_at": labelled.get("labelled_at"), "label_source": labelled.get("source"),
            "model_sha256": labelled.get("model_sha256") or record.get("model_sha256"),
            "predicted": record.get("class"), "top3": record.get("top3"),
            "prediction_set": record.get("prediction_set"), **({"recovered": True} if copied else {}),
        }
        _append_manifest(data, line)
        manifest.append(line)
        recorded.add(path)
        digests[digest] = path
        imported.append({"path": path, "label": item["label"]})
    train = []
    if old_rows is not None:
        # Every reviewed image the run has not seen joins train: this import's, and those of an earlier import that
        # crashed before writing its split or ran without --run; unless it looks like a held-out image.
        in_split = {r["path"] for r in old_rows}
        for m in manifest:
            path = m.get("file")
            if path in in_split or not os.path.isfile(os.path.join(data, path)):
                continue
            in_split.add(path)
            label = path.split("/")[0]
            if path not in likeness:
                try:
                    likeness[path] = resembles(Sample(path, label, *check_image(os.path.join(data, path))))
                except Exception as error:  # it decoded when imported: the file was changed since
                    raise ReviewError(f"'{os.path.join(data, path)}' (in {MANIFEST}) no longer decodes "
                                      f"({type(error).__name__}: {error}): restore it from the review queue or delete "
                                      "it.") from None
            if likeness[path] is None:
                train.append({"path": path, "label": label, "subset": "train",  # bound to its content, as
                              HASH: sha256_file(os.path.join(data, path))})  # every row (mineralnet.data.split)
            else:
                near.append({"stem": m.get("stem", path), "label": label, "like": likeness[path], "file": path})
        write_split(old_rows + train, out)
    subset_of = {r["path"]: r["subset"] for r in old_rows or []}
    near = [{**n, "like": n["like"].path, "like_label": n["like"].label, "subset": subset_of[n["like"].path]}
            for n in near]
    return {"imported": imported, "recovered": recovered, "duplicates": duplicates, "unreadable": unreadable,
            "near_duplicates": near, "left": left, "split": out if old_rows is not None else None, "train": train,
            "old_rows": len(old_rows or [])}


def report_import(result, data):
    per_class = {}
    for row in result["imported"]:
        per_class[row["label"]] = per_class.get(row["label"], 0) + 1
    counts = ", ".join(f"{label} {n}" for label, n in sorted(per_class.items())) or "none"
    print(f"review: imported {len(result['imported'])} image(s) into '{data}' ({counts}); manifest "
          f"{os.path.join(data, MANIFEST)}")
    if result["recovered"]:
        print(f"review: {len(result['recovered'])} of them copied by an interrupted import and now recorded, not "
              f"copied again: {', '.join(result['recovered'])}")
    print("review: left alone: " + ", ".join(f"{n} {reason}" for reason, n in result["left"].items()))
    if result["near_duplicates"]:
        print(f"review: {len(result['near_duplicates'])} near duplicate(s) of the run's val/calib/test images kept "
              f"out of train (so the compared test rows stay unseen): "
              f"{', '.join(n['stem'] + '.jpg' for n in result['near_duplicates'])}")
    for n in result["near_duplicates"]:
        where = f"already in the dataset as {n['file']}, left out of the split" if n["file"] else "not imported"
        print(f"review: near duplicate: {n['stem']}.jpg (labelled {n['label']}) looks like {n['subset']} image "
              f"{n['like']} (labelled {n['like_label']}); {where}", file=sys.stderr)
    for stem, existing in result["duplicates"]:
        print(f"review: duplicate: {stem}.jpg has the same bytes as {existing}; not imported", file=sys.stderr)
    for stem, reason in result["unreadable"]:
        print(f"review: unreadable: {stem}.jpg ({reason}); not imported", file=sys.stderr)
    if result["split"]:
        earlier = {r["path"] for r in result["train"]} - {r["path"] for r in result["imported"]}
        print(f"review: wrote split '{result['split']}': the run's {result['old_rows']} rows unchanged + "
              f"{len(result['train'])} new train rows"
              + (f" ({len(earlier)} imported before, unseen by the run)" if earlier else "")
              + f". Retrain: python train.py --data {data} --split {result['split']} --init-from RUN/model.keras "
              "--out NEWRUN, then python -m mineralnet.review compare --old RUN --new NEWRUN")


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
