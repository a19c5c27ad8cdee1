"""The review queue: uncertain items saved as JPEG + JSON so that someone can relabel them and grow the dataset.

It is bounded by item count and megabytes, removing the oldest first, so a drifting camera that makes every
item uncertain fills a fixed amount of disk and never the whole card.
"""

import io
import json
import os
from collections import deque

from edge.records import atomic_write_bytes

_SUFFIXES = (".jpg", ".json")


class ReviewQueue:
    def __init__(self, directory, max_items, max_mb, jpeg_quality=90):
        self.directory = directory
        self.max_items = max_items
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.quality = jpeg_quality
        os.makedirs(directory, exist_ok=True)
        # Names start with a zero-padded time, so sorting them sorts by age (also across restarts).
        stems = sorted({os.path.splitext(n)[0] for n in os.listdir(directory) if n.endswith(_SUFFIXES)})
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

    def __len__(self):
        return len(self._entries)
