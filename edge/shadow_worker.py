"""The shadow candidate's own process (edge/shadow.py starts it): it loads the candidate, classifies the crops it
is sent and decides them with the candidate's own reject rule, nothing else.

Why a process and not a thread of the runner: the candidate's Python work (resizing each crop, the decision) would
hold the runner's GIL, and a candidate that crashes its interpreter would take the runner down. Here it has its
own interpreter lock and its own fate, and its nice (19, set before the interpreter's XNNPACK threads start, so
they inherit it) applies to all of its threads. (A thread's heavy candidate once raised the live p99 from 8-10 ms
to 15-37 ms on 2 loaded cores, which a later alternating run did not reproduce: benchmarks/RESULTS.md.) Comparing
with the live decisions, counting and the records stay in the runner (edge/shadow.py), so this file holds no
second copy of the shadow's logic.

It imports edge/ and the LiteRT interpreter only (never TensorFlow), ignores SIGINT and SIGTERM (the runner ends it
through the job queue, after comparing what was queued, so a Ctrl-C or a service stop ends both cleanly) and leaves
on its own within POLL_S when the runner is gone (killed), so it is never left behind.
"""

import multiprocessing
import os
import queue
import signal
import time

from edge.classify import CropClassifier
from edge.decision import Decider
from edge.model import Model, ModelError

POLL_S = 1.0  # how often an idle child checks that the runner still exists


def _lower_priority(nice):
    try:  # Linux/macOS: the process's nice value, inherited by the threads the interpreter starts later
        os.nice(max(0, nice - os.nice(0)))
    except (AttributeError, OSError):
        pass


def serve(jobs, results, model_path, sidecar_path, threads, sha256, bins, threshold, nice):
    """The child's main: jobs are (number, [crops]) or None (the end); results are ("done", number, [Decision],
    seconds of preprocess + inference), ("error", number, text) for a job the interpreter failed on,
    ("failed", text) when the candidate cannot be loaded, and None after the last job."""
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    _lower_priority(nice)
    parent = multiprocessing.parent_process()
    try:
        model = Model(model_path, sidecar_path, threads)
        if model.sha256 != sha256:
            raise ModelError(f"candidate model '{model_path}' changed on disk since the runner checked it "
                             f"(sha256 {model.sha256[:12]}..., checked {sha256[:12]}...): restart the shadow.")
    except Exception as error:  # the runner reports it and sorts on
        results.put(("failed", f"{type(error).__name__}: {error}"))
        return
    decider = Decider(model.labels, bins, model.reject, threshold)
    classifier = CropClassifier(model)
    while True:
        try:
            job = jobs.get(timeout=POLL_S)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return  # the runner was killed: nobody reads the results
            continue
        if job is None:
            break
        number, crops = job
        start = time.perf_counter()
        try:
            rows = classifier.classify(crops)
        except Exception as error:  # one job's fault; the next may be fine
            results.put(("error", number, f"{type(error).__name__}: {error}"))
            continue
        seconds = time.perf_counter() - start
        results.put(("done", number, [decider.decide(row) for row in rows], seconds))
    results.put(None)
