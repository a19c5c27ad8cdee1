"""A shadow model (`--shadow CANDIDATE.tflite`): a candidate classifies the same crops as the live model, and its
decisions are recorded beside the live ones, without ever deciding anything or delaying a live decision.

The sorting thread only offers each frame's crops and live decisions (`offer`: a put into a bounded queue that
never blocks; when the candidate is behind, the frame is dropped and counted). The candidate runs in a child
process of its own (edge/shadow_worker.py: its own interpreter, `--shadow-threads`, default 1, and Decider with the
candidate's sidecar reject block, at nice 19), so neither its CPU-bound Python work nor its interpreter's threads
hold the runner's GIL or outrank the live model. The child's decisions come back on a second queue that a thread
of this process drains (mostly asleep in a read): it compares them with the live decisions it kept, counts and
records. So the belt pays one queue put per frame and the pickling of the crops. With `--shadow-every N` only
every Nth frame is offered, for a candidate too slow for every frame.

Per compared item it records a `shadow` event (seq, frame, the live and the candidate's class and bin) and
counts: agreement (same bin decided), class agreement (same most probable class), the confusion of live class
against candidate class, each model's recheck share on the compared items, and the candidate's time per item.
`report()` is those figures (in summary.json, on the line page, in Prometheus); `write_report` writes them as
JSON and a short Markdown table, atomically, every REPORT_INTERVAL_S and when the shadow ends (runner stop or
promotion of the candidate). Offered items = compared + dropped + not sampled + errors (+ any still queued).

A child that dies (killed, out of memory, a crash in the candidate's interpreter) is one stderr line, a
`shadow_failed` event, `failures` in the report and the state "failed"; the items it had and every later one count
as errors, and the belt sorts on. The child is not restarted: a candidate that crashed needs a look first.
"""

import argparse
import atexit
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections import Counter, deque

from edge.config import ConfigError
from edge.promotion import load_candidate
from edge.records import atomic_write_bytes, atomic_write_json, check_writable, percentile
from edge.shadow_worker import serve

REPORT_INTERVAL_S = 30.0
QUEUE_FRAMES = 16  # frames waiting for the candidate before new ones are dropped
_WINDOW = 10_000  # latency samples kept (memory stays flat over weeks)
NICE = 19  # the child's nice value: lowest priority, never more than the live model's
CLOSE_TIMEOUT_S = 30.0  # at close, how long the child may take for what is queued before it is ended
_POLL_S = 0.5  # how often the results thread checks that the child is alive while no result comes


def default_report_path(summary_path):
    """summary.json -> summary.shadow.json (its Markdown twin: summary.shadow.md)."""
    return os.path.splitext(summary_path)[0] + ".shadow.json"


class Shadow:
    def __init__(self, model, config, events, every=1, report_path=None, queue_frames=QUEUE_FRAMES, threads=1):
        """`model`: the candidate as the runner loaded and checked it (edge/promotion.py load_candidate); the child
        loads the same file again (its sha256 checked) with `threads` interpreter threads."""
        self.model, self.events, self.every, self.report_path = model, events, every, report_path
        self.config, self.threads = config, threads
        self.recheck = config.bins.recheck
        self.live_model = lambda: None  # () -> the live Model (edge/sorter.py attach_shadow sets it)
        self.against = None  # the live model of the last frame offered: the report's "live"
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no copy of the runner's threads
        self._jobs = context.Queue(maxsize=queue_frames)  # (number, crops) to the child
        self._results = context.Queue()  # the child's answers, drained by the results thread
        self._pending = {}  # job number -> (frame id, [(seq, live Decision)], offered at): what the child has
        self._number = 0
        self._process = self._drain = None
        self._lock = threading.Lock()  # the results thread's counts against report() from the page/metrics threads
        self._idle = threading.Condition(self._lock)  # wait_idle(): notified as jobs come back
        self._closing = threading.Lock()
        self._frames = 0
        self.offered = self.dropped = self.not_sampled = 0  # written by the sorting thread only
        self.compared = self.agree = self.agree_class = self.errors = self.failures = 0
        self.rechecks = Counter()  # "live", "shadow": items each sent to recheck, of the compared ones
        self.confusion = Counter()  # (live class, candidate class) -> items
        self.inference_s = deque(maxlen=_WINDOW)  # candidate's preprocess + invoke per item
        self.lag_s = deque(maxlen=_WINDOW)  # from the offer to the candidate's decision back in this process
        self.state = "waiting"  # running, then stopped, promoted or failed
        self.accepting = True  # False once retired: offers are ignored from then on
        self._closed = False
        self._last_report = time.monotonic()

    @property
    def pid(self):
        """The child's process id (None before start)."""
        return self._process.pid if self._process is not None else None

    def retire(self):
        """Take no more offers (edge/promotion.py calls it between two frames when the candidate is promoted, so
        the report's counts are final before its queue is drained)."""
        self.accepting = False

    def start(self):
        """Start the child and the results thread (Sorter.run does, with the capture); frames offered before wait
        in the queue. Returns at once; the child imports and loads the candidate (about a second) while they wait.
        The child is spawned, so it runs the main script's top level again: a script that starts a shadow needs the
        `if __name__ == "__main__":` guard (edge/runner.py and the benchmarks have it), else its child fails."""
        if self._process is not None:
            return
        if self.state == "waiting":
            self.state = "running"
        model, config, context = self.model, self.config, multiprocessing.get_context("spawn")
        self._process = context.Process(
            target=serve, name="shadow", daemon=True,
            args=(self._jobs, self._results, model.path, model.sidecar_path, self.threads, model.sha256,
                  config.bins, config.decision.confidence_threshold, NICE))
        self._process.start()
        atexit.register(self._kill_at_exit)  # runs before multiprocessing's own join of its children at exit
        self._drain = threading.Thread(target=self._receive, name="shadow-results", daemon=True)
        self._drain.start()
        self.events.emit("shadow_started", candidate=model.path, pid=self._process.pid)

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
        if self.state == "failed":  # no child to compare: every item is one the candidate failed on
            with self._lock:
                self.errors += len(items)
            return
        self._number += 1
        number = self._number
        self._pending[number] = (frame_id, [(seq, live) for seq, _, live in items], time.perf_counter())
        try:
            self._jobs.put_nowait((number, [crop for _, crop, _ in items]))
        except queue.Full:
            del self._pending[number]
            self.dropped += len(items)

    def _receive(self):
        """The results thread: applies the child's answers until its last one (None) or its death."""
        while True:
            try:
                message = self._results.get(timeout=_POLL_S)
            except queue.Empty:
                if not self._process.is_alive():
                    return self._failed(f"its process exited with code {self._process.exitcode}")
                continue
            except (EOFError, OSError) as error:
                return self._failed(f"its results could not be read ({error})")
            if message is None:
                return
            if message[0] == "failed":
                return self._failed(message[1])
            self._apply(*message)
            if self.report_path and time.monotonic() - self._last_report >= REPORT_INTERVAL_S:
                self.write_report()

    def _apply(self, kind, number, answer, seconds=None):
        entry = self._pending.pop(number, None)
        if entry is None:  # counted lost already (close ran out of time)
            return
        frame_id, lives, offered_at = entry
        if kind == "error":  # the candidate's fault never reaches the belt
            with self._idle:
                self.errors += len(lives)
                self._idle.notify_all()
            self.events.emit("shadow_error", frame=frame_id, error=answer)
            return
        done = time.perf_counter()
        per_item = seconds / len(lives)
        with self._idle:
            for (_, live), mine in zip(lives, answer):
                self.compared += 1
                self.agree += mine.bin == live.bin
                self.agree_class += mine.label == live.label
                self.rechecks["live"] += live.bin == self.recheck
                self.rechecks["shadow"] += mine.bin == self.recheck
                self.confusion[live.label, mine.label] += 1
                self.inference_s.append(per_item)
                self.lag_s.append(done - offered_at)
            self._idle.notify_all()
        for (seq, live), mine in zip(lives, answer):
            self.events.emit("shadow", seq=seq, frame=frame_id, live={"class": live.label, "bin": live.bin},
                             shadow={"class": mine.label, "bin": mine.bin, "reason": mine.reason,
                                     "top3": [{"label": label, "p": round(p, 6)} for label, p in mine.top3]},
                             agree=mine.bin == live.bin)

    def _failed(self, why):
        """The child is gone: what it had counts as errors, later offers too; said once (stderr and an event)."""
        with self._idle:
            self.state = "failed"
            self.failures += 1
            self._count_lost()
            self._idle.notify_all()
        self.events.emit("shadow_failed", candidate=self.model.path, error=why)
        print(f"runner: shadow candidate '{self.model.path}' failed ({why}); the live model sorts on, the candidate "
              "compares nothing more until the runner is restarted.", file=sys.stderr, flush=True)

    def _count_lost(self):
        while self._pending:  # popitem: an offer may add one meanwhile
            _, (_, lives, _) = self._pending.popitem()
            self.errors += len(lives)

    def wait_idle(self, timeout=60.0):
        """Until every frame queued so far is compared or the child failed (it must be started): for tests and
        benchmarks. False when `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending or self.state == "failed", timeout)

    def close(self, state="stopped"):
        """Let the child finish what is queued, then end it and write the report (`state`: stopped/promoted; a
        failed shadow stays "failed" unless promoted). No child is left behind: one that does not finish within
        CLOSE_TIMEOUT_S is terminated (its items count as errors)."""
        with self._closing:  # a second close (the runner stopping during a promotion) waits for the first
            if self._closed:
                return
            self.retire()
            if self._process is None and self._pending:
                self.start()  # a shadow never started (frames sorted without run()) still compares what it was offered
            if self._process is not None:
                self._end_child()
            with self._idle:
                self._count_lost()
            if self.state != "failed" or state == "promoted":
                self.state = state
            self._jobs.cancel_join_thread()  # nothing left to deliver: exiting never waits on the queue's pipe
            self._jobs.close()
            self._results.close()
            if self.report_path:
                self.write_report()
            self._closed = True

    def _end_child(self):
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        if self.state != "failed":
            try:
                self._jobs.put(None, timeout=CLOSE_TIMEOUT_S)
            except queue.Full:
                pass
        self._drain.join(max(0.0, deadline - time.monotonic()))
        self._process.join(max(0.1, deadline - time.monotonic()))
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._drain.join(2 * _POLL_S + 1)

    def _kill_at_exit(self):
        """A runner leaving without close() (an error before Sorter.run's finally) leaves no child: the child
        ignores SIGTERM (the runner ends it through the queue), so multiprocessing's exit would wait on it."""
        if self._process is not None and self._process.is_alive():
            self._process.kill()

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
            "not_sampled": self.not_sampled, "errors": errors, "failures": self.failures,
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
        f"| candidate errors | {report['errors']} |", f"| candidate process failures | {report['failures']} |",
        f"| agreement (same bin) | {_pct(report['agreement'])} |",
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
    return Shadow(model, config, events, args.shadow_every, path, threads=args.shadow_threads)
