"""A shadow model (`--shadow CANDIDATE.tflite`): a candidate classifies the same crops as the live model, and its
decisions are recorded beside the live ones, without ever deciding anything or delaying a live decision.

The sorting thread only offers each frame's crops and live decisions (`offer`, a put into a bounded queue that
never blocks: when the candidate is behind, the frame is dropped and counted); a worker thread of its own runs
the candidate (its own interpreter and Decider, with the candidate's sidecar reject block) and compares. So the
shadow costs the belt one queue put per frame, plus whatever CPU the candidate's interpreter takes from the live
one (the shadow's interpreter runs 1 thread unless --shadow-threads says otherwise). With `--shadow-every N` only
every Nth frame is offered, for a candidate too slow for every frame.

Per compared item it records a `shadow` event (seq, frame, the live and the candidate's class and bin) and
counts: agreement (same bin decided), class agreement (same most probable class), the confusion of live class
against candidate class, each model's recheck share on the compared items, and the candidate's time per item.
`report()` is those figures (in summary.json, on the line page, in Prometheus); `write_report` writes them as
JSON and a short Markdown table, atomically, every REPORT_INTERVAL_S and when the shadow ends (runner stop or
promotion of the candidate). Offered items = compared + dropped + not sampled + failed (+ any still queued).
"""

import argparse
import os
import queue
import threading
import time
from collections import Counter, deque

from edge.classify import CropClassifier
from edge.config import ConfigError
from edge.decision import Decider
from edge.promotion import load_candidate
from edge.records import atomic_write_bytes, atomic_write_json, check_writable, percentile

REPORT_INTERVAL_S = 30.0
QUEUE_FRAMES = 16  # frames waiting for the candidate before new ones are dropped
_WINDOW = 10_000  # latency samples kept (memory stays flat over weeks)
NICE = 19  # the worker thread's nice value (Linux): lowest priority, never more than the live thread's


def default_report_path(summary_path):
    """summary.json -> summary.shadow.json (its Markdown twin: summary.shadow.md)."""
    return os.path.splitext(summary_path)[0] + ".shadow.json"


class Shadow:
    def __init__(self, model, config, events, every=1, report_path=None, queue_frames=QUEUE_FRAMES):
        self.model, self.events, self.every, self.report_path = model, events, every, report_path
        self.decider = Decider(model.labels, config.bins, model.reject, config.decision.confidence_threshold)
        self.classifier = CropClassifier(model)
        self.recheck = config.bins.recheck
        self.live_model = lambda: None  # () -> the live Model (edge/sorter.py attach_shadow sets it)
        self.against = None  # the live model of the last frame offered: the report's "live"
        self._queue = queue.Queue(maxsize=queue_frames)
        self._thread = None
        self._lock = threading.Lock()  # the worker's counts against report() from the page/metrics threads
        self._closing = threading.Lock()
        self._frames = 0
        self.offered = self.dropped = self.not_sampled = 0  # written by the sorting thread only
        self.compared = self.agree = self.agree_class = self.errors = 0
        self.rechecks = Counter()  # "live", "shadow": items each sent to recheck, of the compared ones
        self.confusion = Counter()  # (live class, candidate class) -> items
        self.inference_s = deque(maxlen=_WINDOW)  # candidate's preprocess + invoke per item
        self.lag_s = deque(maxlen=_WINDOW)  # from the offer to the candidate's decision
        self.state = "waiting"  # running, then stopped or promoted
        self.accepting = True  # False once retired: offers are ignored from then on
        self._closed = False
        self._last_report = time.monotonic()

    def retire(self):
        """Take no more offers (edge/promotion.py calls it between two frames when the candidate is promoted, so
        the report's counts are final before its queue is drained)."""
        self.accepting = False

    def start(self):
        """Start the worker (Sorter.run does, with the capture); frames offered before wait in the queue."""
        if self._thread is None:
            self.state = "running"
            self._thread = threading.Thread(target=self._work, name="shadow", daemon=True)
            self._thread.start()

    def offer(self, frame_id, items):
        """From the sorting thread: `items` = [(seq, crop, live Decision)] of one frame. Never blocks."""
        if not items or not self.accepting:
            return
        self.offered += len(items)
        self._frames += 1
        self.against = self.live_model()
        if (self._frames - 1) % self.every:
            self.not_sampled += len(items)
            return
        try:
            self._queue.put_nowait((frame_id, items, time.perf_counter()))
        except queue.Full:
            self.dropped += len(items)

    def _work(self):
        try:  # Linux: a thread's own nice value; the candidate yields the CPU to the live model and the belt
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except (AttributeError, OSError):
            pass
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._compare(*job)
            self._queue.task_done()  # wait_idle() returns once every offered frame is compared
            if self.report_path and time.monotonic() - self._last_report >= REPORT_INTERVAL_S:
                self.write_report()

    def _compare(self, frame_id, items, offered_at):
        start = time.perf_counter()
        try:
            probabilities = self.classifier.classify([crop for _, crop, _ in items])
        except Exception as error:  # the candidate's fault never reaches the belt
            with self._lock:
                self.errors += len(items)
            self.events.emit("shadow_error", frame=frame_id, error=f"{type(error).__name__}: {error}")
            return
        done = time.perf_counter()
        per_item = (done - start) / len(items)
        for (seq, _, live), row in zip(items, probabilities):
            mine = self.decider.decide(row)
            with self._lock:
                self.compared += 1
                self.agree += mine.bin == live.bin
                self.agree_class += mine.label == live.label
                self.rechecks["live"] += live.bin == self.recheck
                self.rechecks["shadow"] += mine.bin == self.recheck
                self.confusion[live.label, mine.label] += 1
                self.inference_s.append(per_item)
                self.lag_s.append(done - offered_at)
            self.events.emit("shadow", seq=seq, frame=frame_id, live={"class": live.label, "bin": live.bin},
                             shadow={"class": mine.label, "bin": mine.bin, "reason": mine.reason,
                                     "top3": [{"label": label, "p": round(p, 6)} for label, p in mine.top3]},
                             agree=mine.bin == live.bin)

    def wait_idle(self):
        """Until every frame queued so far is compared (the worker must be running): for tests and benchmarks."""
        self._queue.join()

    def close(self, state="stopped"):
        """Let the worker finish what is queued, then stop it and write the report (`state`: stopped/promoted)."""
        with self._closing:  # a second close (the runner stopping during a promotion) waits for the first
            if self._closed:
                return
            self.retire()
            self.start()  # a shadow never started (frames sorted without run()) still compares what it was offered
            self.state = state
            self._queue.put(None)
            self._thread.join(30)
            if self.report_path:
                self.write_report()
            self._closed = True

    def report(self):
        """The figures so far: what summary.json, the page, Prometheus and the report file show."""
        with self._lock:
            compared, agree, agree_class, errors = self.compared, self.agree, self.agree_class, self.errors
            rechecks, confusion = dict(self.rechecks), dict(self.confusion)
            inference, lag = list(self.inference_s), list(self.lag_s)
        live = self.against or self.live_model()
        share = (lambda n: n / compared) if compared else (lambda n: None)
        return {
            "candidate": self.model.path, "candidate_sha256": self.model.sha256,
            "live": live.path if live is not None else None, "state": self.state, "every": self.every,
            "offered": self.offered, "compared": compared, "dropped": self.dropped,
            "not_sampled": self.not_sampled, "errors": errors,
            "agreement": share(agree), "class_agreement": share(agree_class),
            "recheck_share": {"live": share(rechecks.get("live", 0)), "shadow": share(rechecks.get("shadow", 0))},
            "confusion": {a: {b: confusion[a, b] for b in self.model.labels if confusion.get((a, b))}
                          for a in self.model.labels if any(confusion.get((a, b)) for b in self.model.labels)},
            "latency_ms": {f"p{q}": percentile(inference, q) for q in (50, 95, 99)},
            "lag_ms": {f"p{q}": percentile(lag, q) for q in (50, 99)},
        }

    def write_report(self):
        """The report as JSON at report_path and as Markdown beside it (.md), each written atomically."""
        report = self.report()
        self._last_report = time.monotonic()
        try:
            atomic_write_json(self.report_path, report)
            atomic_write_bytes(os.path.splitext(self.report_path)[0] + ".md", markdown(report).encode())
        except OSError as error:  # the report is advice: sorting goes on
            self.events.emit("shadow_error", error=f"report '{self.report_path}' not written: {error}")


def _pct(value):
    return "-" if value is None else f"{value * 100:.1f} %"


def markdown(report):
    """A short Markdown page of a report: the figures, then the confusion (rows live, columns candidate)."""
    labels = sorted({b for row in report["confusion"].values() for b in row} | set(report["confusion"]))
    latency = report["latency_ms"]
    lines = [
        f"# Shadow report: {os.path.basename(report['candidate'])} beside {os.path.basename(report['live'] or '-')}",
        "",
        f"candidate `{report['candidate']}` sha256 `{report['candidate_sha256'][:12]}...`, state {report['state']}, "
        f"every {report['every']} frame(s)",
        "",
        "| figure | value |", "|---|---|",
        f"| items offered | {report['offered']} |", f"| compared | {report['compared']} |",
        f"| dropped (candidate behind) | {report['dropped']} |", f"| not sampled | {report['not_sampled']} |",
        f"| candidate errors | {report['errors']} |", f"| agreement (same bin) | {_pct(report['agreement'])} |",
        f"| class agreement | {_pct(report['class_agreement'])} |",
        f"| recheck share live / candidate | {_pct(report['recheck_share']['live'])} / "
        f"{_pct(report['recheck_share']['shadow'])} |",
        f"| candidate ms per item p50 / p95 / p99 | {latency['p50']} / {latency['p95']} / {latency['p99']} |",
        "",
        "Confusion, live class (rows) against candidate class (columns):",
        "",
        "| live \\ candidate | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels),
    ]
    lines += [f"| {a} | " + " | ".join(str(report["confusion"].get(a, {}).get(b, 0)) for b in labels) + " |"
              for a in labels]
    return "\n".join(lines) + "\n"


def _at_least_one(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of at least 1")
    return value


def add_shadow_options(parser):
    """The runner's --shadow flags (edge/runner.py)."""
    parser.add_argument("--shadow", metavar="CANDIDATE.tflite", help="run this candidate model on the same crops "
                        "as the live one, never deciding, and report how it would have decided (edge/shadow.py)")
    parser.add_argument("--shadow-sidecar", help="the candidate's sidecar (default: its path with .json)")
    parser.add_argument("--shadow-every", type=_at_least_one, default=1, metavar="N",
                        help="offer only every Nth frame to the candidate (default 1: every frame)")
    parser.add_argument("--shadow-threads", type=_at_least_one, default=1, metavar="N",
                        help="the candidate's interpreter threads (default 1: the live model keeps the rest)")
    parser.add_argument("--shadow-report", metavar="FILE.json", help="the shadow report, JSON and a .md beside it "
                        "(default: the summary's path with .shadow.json)")


def open_shadow(args, config, live, events):
    """The Shadow --shadow asks for (None without it): the candidate loaded and checked like a promotion's
    (edge/promotion.py), its report path tried now. ModelError or ConfigError: one line, exit 2."""
    if not args.shadow:
        return None
    model = load_candidate(args.shadow, live, config, args.shadow_sidecar, args.shadow_threads)
    path = args.shadow_report or default_report_path(config.records.summary)
    try:
        check_writable(path)
    except OSError as error:
        raise ConfigError(f"--shadow-report '{path}' cannot be written ({error.strerror}): pass a writable file "
                          "path.") from None
    return Shadow(model, config, events, args.shadow_every, path)
