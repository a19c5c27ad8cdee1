"""Which model may replace the live one while the belt runs: the checks a candidate passes before a promotion
(edge/sorter.py Sorter.promote) or before it runs as a shadow (edge/shadow.py).

A swapped model must be one the running line can use without a restart, so beyond the checks edge/model.py makes
of any model against its own sidecar (sha256, input and output tensors, quantisation, preprocessing contract, the
reject block) the candidate must fit what the runner already set up from the live model:

- the same labels in the same order: the Modbus ring codes a class by its index (edge/drivers/modbus_server.py),
  review copies and the events name classes, and `[bins.classes]` was checked against these labels at start;
  a model with another class list needs a new config, i.e. a restart;
- a decision config that applies: every class `[bins.classes]` names is one of the candidate's (Config.check_labels),
  and the candidate's calibrated reject block (or, without one, `[decision] confidence_threshold`) is what its
  Decider will use, exactly as at start.

The input size may differ: every crop is resized to the model's own input by the model (edge/model.py
input_tensor), so a candidate at another resolution is a fair comparison and a valid replacement.
"""

import os
import sys
import threading

from edge.config import ConfigError
from edge.model import Model, ModelError


def candidate_problem(live, candidate, config):
    """Why `candidate` (an edge/model.py Model) cannot replace `live` under `config`, or None when it can."""
    if list(candidate.labels) != list(live.labels):
        missing = [label for label in live.labels if label not in candidate.labels]
        extra = [label for label in candidate.labels if label not in live.labels]
        if missing or extra:
            what = "; ".join(part for part in (f"lacks {', '.join(missing)}" if missing else "",
                                               f"adds {', '.join(extra)}" if extra else "") if part)
        else:
            what = "lists the same classes in another order"
        return (f"has other classes than the live model '{live.path}' ({what}): a model with other classes needs "
                "a config made for it and a restart (edge/runner.py --init-config)")
    try:
        config.check_labels(candidate.labels)
    except ConfigError as error:
        return f"does not fit the decision config ({error})"
    return None


def load_candidate(path, live, config, sidecar=None, threads=None):
    """The model at `path` (its sidecar beside it unless given), checked as at start and against the live model;
    ModelError with one line naming the file and the fix when it cannot be swapped in."""
    candidate = Model(path, sidecar, threads)
    problem = candidate_problem(live, candidate, config)
    if problem:
        raise ModelError(f"candidate model '{path}' {problem}.")
    return candidate


class ModelSwitch:
    """Promotion and rollback of a Sorter's live model (edge/sorter.py Sorter.promote / rollback / request).

    Each frame is sorted holding `lock`; a swap takes it too, so it happens between two frames and no frame sees
    half of one model and half of another. The candidate is loaded and checked before the lock is taken, so the
    belt never waits on a model file being read. The replaced models are kept (newest last) for rollback: an
    interpreter is a few MB, and going back needs no file that may have changed meanwhile.
    """

    def __init__(self, sorter):
        self.sorter = sorter
        self.lock = threading.Lock()
        self._one_at_a_time = threading.Lock()  # a second request waits for the first, then sees its outcome
        self.threads = None  # interpreter threads for a promoted model (the runner sets its --threads)
        self.previous = []  # models promotion replaced, newest last
        self.promotions = self.rollbacks = 0

    def promote(self, path=None, sidecar=None):
        with self._one_at_a_time:
            return self._promote(path, sidecar)

    def rollback(self):
        with self._one_at_a_time:
            return self._rollback()

    def _promote(self, path, sidecar):
        sorter = self.sorter
        shadow = sorter.shadow
        if path is None:
            if shadow is not None and shadow.state == "failed":  # its interpreter may have crashed its process
                raise self._refused("promote", shadow.model.path, ModelError(
                    f"the shadow candidate '{shadow.model.path}' failed in its process (the shadow_failed event "
                    "says why): run it as --shadow again and promote it once it compares"))
            if shadow is None or not shadow.accepting:
                raise self._refused("promote", None, ModelError(
                    "no candidate to promote: start the runner with --shadow CANDIDATE.tflite, or name the model file"))
            path, sidecar = shadow.model.path, shadow.model.sidecar_path
        try:
            candidate = load_candidate(path, sorter.model, sorter.config, sidecar, self.threads)
        except ModelError as error:
            raise self._refused("promote", path, error) from None
        ends_shadow = shadow is not None and os.path.abspath(shadow.model.path) == os.path.abspath(candidate.path)
        with self.lock:
            replaced = sorter.model
            self.previous.append(replaced)
            sorter._use_model(candidate)
            self.promotions += 1
            if ends_shadow:  # the candidate decides now: comparing it with itself would say nothing
                shadow.retire()
        self._log("model_promoted", "promoted", replaced, candidate)
        if ends_shadow:
            shadow.close("promoted")  # drains what it was offered (outside the lock: the belt never waits)
        return candidate

    def _rollback(self):
        sorter = self.sorter
        with self.lock:
            if not self.previous:
                error = ModelError("nothing to roll back to: no model has been promoted since the runner started")
            else:
                error, replaced = None, sorter.model
                sorter._use_model(self.previous.pop())
                self.rollbacks += 1
        if error is not None:
            raise self._refused("rollback", None, error)
        self._log("model_rolled_back", "rolled back to", replaced, sorter.model)
        return sorter.model

    def start(self, action):
        """Run "promote" (the shadow's candidate) or "rollback" in a thread of its own (a signal's request)."""
        def act():
            try:
                self.promote() if action == "promote" else self.rollback()
            except ModelError:
                pass  # already logged; the live model sorts on

        threading.Thread(target=act, name=f"model-{action}", daemon=True).start()

    def _refused(self, action, path, error):
        sorter = self.sorter
        sorter.events.emit("model_refused", action=action, model=path, live=sorter.model.path, error=str(error))
        print(f"runner: {action} refused: {error}", file=sys.stderr, flush=True)
        return error

    def _log(self, kind, verb, old, new):
        self.sorter.events.emit(kind, model=new.path, model_sha256=new.sha256, replaced=old.path,
                                replaced_sha256=old.sha256, reject=self.sorter.decider.describe())
        print(f"runner: {verb} model '{new.path}' sha256 {new.sha256[:12]}... (was '{old.path}' sha256 "
              f"{old.sha256[:12]}...)", file=sys.stderr, flush=True)


PROMOTE_SIGNAL, ROLLBACK_SIGNAL = "SIGUSR1", "SIGUSR2"


def install_model_signals(sorter):
    """SIGUSR1 promotes the --shadow candidate, SIGUSR2 rolls back (`kill -USR1 PID`): the handler only asks
    (Sorter.request); the sorting loop does it in a thread of its own."""
    import signal

    signal.signal(getattr(signal, PROMOTE_SIGNAL), lambda _signum, _frame: sorter.request("promote"))
    signal.signal(getattr(signal, ROLLBACK_SIGNAL), lambda _signum, _frame: sorter.request("rollback"))
