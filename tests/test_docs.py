"""The documentation a newcomer reads points at things that exist (issue 26, points 5 and 6): every relative link
and every `tests/...py`, `edge/...py`, `mineralnet/...py` or `benchmarks/...py` path named in README.md,
ARCHITECTURE.md, docs/*.md and edge/README.md is a file of the checkout."""

import glob
import os
import re

from helpers import REPO

DOCS = ["README.md", "ARCHITECTURE.md", "edge/README.md", *sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
PATH = re.compile(r"\b((?:tests|edge|mineralnet|benchmarks)/[a-z_/]+\.py)\b")  # lower case: `NAME.py` is a pattern


def test_architecture_page_exists_and_names_the_stages():
    with open(os.path.join(REPO, "ARCHITECTURE.md")) as handle:
        text = handle.read()
    for stage in ("segment.py", "track.py", "classify.py", "decision.py", "schedule.py", "actuate.py", "publish.py"):
        assert stage in text, stage


def test_every_link_and_named_file_exists():
    missing = []
    for doc in DOCS:
        with open(os.path.join(REPO, doc)) as handle:
            text = handle.read()
        folder = os.path.dirname(os.path.join(REPO, doc))
        for target in LINK.findall(text):
            if "://" not in target and not os.path.exists(os.path.join(folder, target)):
                missing.append(f"{doc}: link {target}")
        for path in PATH.findall(text):
            if not os.path.exists(os.path.join(REPO, path)):
                missing.append(f"{doc}: names {path}")
    assert missing == []
