"""The review queue: uncertain items saved as JPEG + JSON so that someone can relabel them and grow the dataset.

It is bounded by item count and megabytes, removing the oldest first, so a drifting camera that makes every
item uncertain fills a fixed amount of disk and never the whole card.

An operator's answer (the operator page, edge/ui.py) is STEM.label.json beside the item: {"label", "labelled_at",
"model_sha256", "source"}; it belongs to the item (removed with it, never counted as an item of its own).
"""

import io
import json
import os
import re
import time
from collections import deque

from edge.records import atomic_write_bytes, iso_time

LABEL_SUFFIX = ".label.json"
_SUFFIXES = (".jpg", ".json", LABEL_SUFFIX)
UNKNOWN, DISCARD = "unknown", "discard"  # the operator's answers besides the model's labels
_STEM = re.compile(r"^[A-Za-z0-9_-]+$")  # what add() is given: a name, never a path


def _item_stem(name):
    """The item an item file (STEM.jpg, STEM.json) names, or None for anything else (answers, temporary files)."""
    if name.startswith(".") or name.endswith(LABEL_SUFFIX) or not name.endswith((".jpg", ".json")):
        return None
    return os.path.splitext(name)[0]


class ReviewQueue:
    def __init__(self, directory, max_items, max_mb, jpeg_quality=90):
        self.directory = directory
        self.max_items = max_items
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.quality = jpeg_quality
        os.makedirs(directory, exist_ok=True)
        # Names start with a zero-padded time, so sorting them sorts by age (also across restarts).
        names = os.listdir(directory)
        stems = sorted({_item_stem(n) for n in names} - {None})
        for name in set(names) - {stem + LABEL_SUFFIX for stem in stems}:  # an answer whose item was trimmed
            if name.endswith(LABEL_SUFFIX) and not name.startswith("."):
                os.remove(os.path.join(directory, name))
        self._entries = deque((stem, self._size(stem)) for stem in stems)
        self._bytes = sum(size for _, size in self._entries)
        self._trim()

    def _size(self, stem):
        return sum(
            os.path.getsize(path)
            for path in (os.path.join(self.directory, stem + s) for s in _SUFFIXES)
            if os.path.exists(path)
        )

    def add(self, stem, image, record):
        """Save `image` (Pillow RGB, what the model looked at before the resize) and `record` under `stem`."""
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=self.quality)
        jpeg = buffer.getvalue()
        meta = (json.dumps(record, indent=2) + "\n").encode()
        atomic_write_bytes(os.path.join(self.directory, stem + ".jpg"), jpeg, sync=False)
        atomic_write_bytes(os.path.join(self.directory, stem + ".json"), meta, sync=False)
        self._entries.append((stem, len(jpeg) + len(meta)))
        self._bytes += len(jpeg) + len(meta)
        self._trim()

    def _trim(self):
        while self._entries and (len(self._entries) > self.max_items or self._bytes > self.max_bytes):
            stem, size = self._entries.popleft()
            self._bytes -= size
            for suffix in _SUFFIXES:
                path = os.path.join(self.directory, stem + suffix)
                if os.path.exists(path):
                    os.remove(path)

    def recent(self, count):
        """The newest `count` stems, newest first (safe from another thread: one copy of the deque under the GIL)."""
        for _ in range(20):
            try:
                stems = [stem for stem, _ in list(self._entries)]
                break
            except RuntimeError:  # mutated during the copy: take it again
                continue
        return stems[::-1][:count]

    def path(self, stem, suffix):
        """The file `stem + suffix` of the queue; ValueError for a stem that is not a plain name."""
        if not _STEM.match(stem or ""):
            raise ValueError(f"not a review item name: {stem!r}")
        return os.path.join(self.directory, stem + suffix)

    def record(self, stem):
        """The saved item record (JSON) of `stem`; FileNotFoundError once trimmed, ValueError for a bad name."""
        with open(self.path(stem, ".json")) as handle:
            return json.load(handle)

    def write_label(self, stem, label, model_sha256, source="ui", when=None):
        """Write STEM.label.json atomically (the operator's answer); FileNotFoundError if the item is gone."""
        path = self.path(stem, LABEL_SUFFIX)
        if not os.path.exists(self.path(stem, ".jpg")):
            raise FileNotFoundError(2, "No such review item", stem)
        when = time.time() if when is None else when
        answer = {"label": label, "labelled_at": iso_time(when), "model_sha256": model_sha256, "source": source}
        atomic_write_bytes(path, (json.dumps(answer, indent=2) + "\n").encode())
        return answer

    def __len__(self):
        return len(self._entries)
