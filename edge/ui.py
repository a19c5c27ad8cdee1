"""The operator's line page (`--ui-port`): live figures and the review queue in a browser, on Starlette + uvicorn.

    GET  /              the line page: items/s, counts per class and bin, recheck share and alarm, latency, health,
                        model, the particle size distribution, the belt as last seen, the last hour's trend, the
                        newest uncertain items; server-rendered, so it reads without JavaScript; the script
                        (ui_static/ui.js) only refreshes the figures and the picture every second
    GET  /api/status    the same as JSON (Sorter.snapshot(): summary.json's fields plus live state)
    GET  /frame.jpg     the latest frame, each particle outlined in its decision's colour (edge/view.py)
    GET  /review        the review queue, one button per class (and number keys) to give the true class
    POST /api/label     {"stem", "label"} with header X-Token: writes STEM.label.json beside the item
    POST /review/label  the same from the page's plain HTML form (fields token, pick = "STEM|label")
    POST /model/promote the --shadow candidate becomes the live model (Sorter.promote), /model/rollback goes back
                        (Sorter.rollback): token in the form's field or X-Token; JSON answer with X-Token, else
                        back to the page; 409 with the one-line reason when refused

The server runs in a daemon thread with its own event loop, so the sorting loop is untouched: nothing is computed
per frame for the page; each request takes one snapshot. It listens on 127.0.0.1 unless `--ui-host` says
otherwise (the page shows the model and the line's throughput). Pages and the JSON are read-only for everyone;
labelling and swapping the model need the token given with `--ui-token` (or MINERALNET_UI_TOKEN): without one
both are off.
"""

import hmac
import html
import json
import os
import socket
import string
import threading
import time
import urllib.parse
from collections import deque

from edge.review import DISCARD, LABEL_SUFFIX, UNKNOWN
from edge.ui_shadow import confusion, shadow_rows
from edge.ui_table import fmt, rows

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui_static")
TOKEN_HEADER = "X-Token"
TOKEN_ENV = "MINERALNET_UI_TOKEN"
RECENT = 8  # thumbnails on the line page
REVIEW_PAGE = 60  # items listed on /review, newest first
RATE_WINDOW_S = 10.0  # items/s over about the last ten seconds of requests


class LabelRefused(Exception):
    """A label POST that is not written: `status` is the HTTP code, the message says why and what to do."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def _template(name):
    with open(os.path.join(STATIC, name)) as handle:
        return string.Template(handle.read())


def _trend_svg(minutes, width=600, height=80):
    """The last hour as two polylines (items/s, scaled to its maximum; recheck share, 0-1) in an inline SVG, so the
    trend shows without JavaScript; ui.js redraws it from /api/status in the same way."""
    if not minutes:
        return '<svg id="trend" viewBox="0 0 600 80" role="img" aria-label="no minute yet"></svg>'
    top = max(m["items_per_s"] for m in minutes) or 1.0
    step = width / max(len(minutes) - 1, 1)

    def line(values, cls):
        points = " ".join(f"{i * step:.1f},{height - v * (height - 4):.1f}" for i, v in enumerate(values))
        return f'<polyline class="{cls}" fill="none" points="{points}"/>'

    rate = line([m["items_per_s"] / top for m in minutes], "rate")
    share = line([m["recheck_share"] or 0.0 for m in minutes], "share")
    label = f"last {len(minutes)} minutes: up to {top:.1f} items/s"
    return f'<svg id="trend" viewBox="0 0 {width} {height}" role="img" aria-label="{label}">{rate}{share}</svg>'


def _grade_targets(reject):
    """The grade targets the runner applies (edge/decision.py: that class's items below the threshold go to
    recheck), for the page's header; "" when there are none."""
    targets = (reject or {}).get("grade_targets") or {}
    return "".join(f" · grade target <b>{html.escape(label)} ≥ {rule['target']:g}</b> (p below "
                   f"{rule['threshold']:.3f} to recheck)" for label, rule in sorted(targets.items()))


def _top3(item, separator=", "):
    return separator.join(f"{t['label']} {t['p']:.2f}" for t in item.get("top3", []))


class LineUI:
    def __init__(self, runner, token=None):
        from starlette.applications import Starlette
        from starlette.routing import Mount, Route
        from starlette.staticfiles import StaticFiles

        self.runner = runner
        self.token = token or None  # None: labelling is off
        self._rates = deque(maxlen=256)  # (uptime_s, items) of recent requests, for items/s
        self._rates_lock = threading.Lock()  # web threads only: the sorting thread never takes it
        self.app = Starlette(routes=[
            Route("/", self.line_page),
            Route("/api/status", self.api_status),
            Route("/frame.jpg", self.frame_picture),
            Route("/review", self.review_page),
            Route("/review/{stem}.jpg", self.thumbnail),
            Route("/api/label", self.api_label, methods=["POST"]),
            Route("/review/label", self.form_label, methods=["POST"]),
            Route("/model/{action}", self.model_action, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ])
        self.server = self._thread = None

    # --- state -------------------------------------------------------------------------------------------------

    def _rate(self, uptime, items):
        """Items/s since the oldest request of the last RATE_WINDOW_S (since start for the first request)."""
        with self._rates_lock:
            while self._rates and uptime - self._rates[0][0] > RATE_WINDOW_S:
                self._rates.popleft()
            self._rates.append((uptime, items))
            then, before = self._rates[0]
        if uptime - then >= 1.0:
            return (items - before) / (uptime - then)
        return items / uptime if uptime > 0 else None

    def status(self):
        """Runner.snapshot() plus items/s, the drift monitor's state, the newest review items and labelling."""
        status = self.runner.snapshot()
        status["items_per_s"] = self._rate(status["uptime_s"], status["items"])
        drift = getattr(self.runner, "drift", None)  # edge/drift.py when the runner has one
        status["drift"] = drift.status() if drift is not None else None
        status["review"] = self.review_items(RECENT)
        status["labelling"] = self.token is not None
        return status

    def review_items(self, count):
        """The newest `count` review items: stem, saved time, record fields and the operator's label if given."""
        review = self.runner.review
        items = []
        for stem in review.recent(count) if review is not None else []:
            try:
                record = review.record(stem)
                saved = os.path.getmtime(review.path(stem, ".jpg"))
            except (OSError, ValueError):  # trimmed meanwhile, or half written: not listed
                continue
            try:
                with open(review.path(stem, LABEL_SUFFIX)) as handle:
                    answer = json.load(handle)["label"]
            except (OSError, ValueError, KeyError, TypeError):
                answer = None
            items.append({
                "stem": stem, "saved": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(saved)),
                "frame": record.get("frame"), "class": record.get("class"), "top3": record.get("top3", []),
                "bin": record.get("bin"), "labels": self.choices(record), "label": answer,
            })
        return items

    def choices(self, record):
        """The answers for one item: the labels of the model that saved it, then unknown and discard."""
        return [*(record.get("labels") or self.runner.model.labels), UNKNOWN, DISCARD]

    # --- pages -------------------------------------------------------------------------------------------------

    async def frame_picture(self, request):
        """The latest frame, each particle outlined in its decision's colour (edge/view.py), drawn here."""
        from starlette.responses import Response

        picture = self.runner.view.jpeg()
        if picture is None:
            return Response("no frame yet", status_code=404, media_type="text/plain")
        return Response(picture, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def line_page(self, request):
        from starlette.responses import HTMLResponse

        status = self.status()
        figures = rows(status, [
            ("items", "items", ""), ("items/s", "items_per_s", "rate"), ("recheck", "recheck", ""),
            ("recheck share (alarm window)", "recheck_share", "pct"), ("recheck alarm", "alarm_active", "alarm"),
            ("alarms so far", "alarms", ""), ("latency p50 (ms)", "latency_ms.p50", "ms"),
            ("latency p95 (ms)", "latency_ms.p95", "ms"), ("frames skipped", "frames_skipped", ""),
            ("frames dropped", "frames_dropped", ""), ("size P20 / P50 / P80 (mm, last minute)", "size_mm", "sizes"),
        ])
        health = rows(status, [
            ("source", "source_up", "updown"), ("source errors", "source_errors", ""),
            ("queue depth", "queue_depth", ""), ("actuator", "actuator_up", "updown"),
            ("actuator errors", "actuator_errors", ""), ("model", "model_ok", "updown"),
            ("events lost", "events_lost", ""), ("review lost", "review_lost", ""),
        ])
        per_class = rows(status, [(label, f"per_class.{label}", "") for label in status["labels"]])
        per_bin = rows(status, [(name, f"per_bin.{name}", "") for name in status["bins"]])
        drift = status["drift"] or {}
        page = _template("line.html").substitute(
            model=html.escape(status["model_name"]), sha256=html.escape(status["model_sha256"]),
            labels=html.escape(", ".join(status["labels"])), grade_targets=_grade_targets(status.get("reject")),
            state="running" if status["running"] else "stopped",
            mode=html.escape(fmt(status["mode"], "mode")),
            figures=figures, health=health, per_class=per_class, per_bin=per_bin,
            alarm_class="alarm" if status["alarm_active"] else "",
            drift_hidden="" if drift.get("alarm") else "hidden",
            drift_message=html.escape(str(drift.get("message", ""))), trend=_trend_svg(status["trends"]),
            blind_hidden="" if status["blind"] else "hidden", blind_message=html.escape(status["blind"] or ""),
            shadow=shadow_rows(status.get("shadow")), confusion=confusion(status.get("shadow")),
            recent="\n".join(
                f'<li><img src="/review/{html.escape(i["stem"])}.jpg" alt="{html.escape(i["stem"])}" width="96" '
                f'height="96"><span>{html.escape(i["saved"])}</span><span>{html.escape(_top3(i, chr(10)))}</span></li>'
                for i in status["review"]
            ) or "<li>none yet</li>",
        )
        return HTMLResponse(page)

    async def api_status(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse(self.status(), headers={"Cache-Control": "no-store"})

    async def review_page(self, request):
        from starlette.responses import HTMLResponse

        review = self.runner.review
        rows = []
        for item in self.review_items(REVIEW_PAGE):
            stem = html.escape(item["stem"])
            buttons = "".join(
                f'<button type="submit" name="pick" value="{stem}|{shown}" data-label="{shown}"'
                f'{" class=chosen" if label == item["label"] else ""}>'
                f'{f"<kbd>{n}</kbd> " if n <= 9 else ""}{shown}</button>'
                for n, label, shown in ((n, label, html.escape(label)) for n, label in enumerate(item["labels"], 1))
            )
            rows.append(
                f'<li class="item{" done" if item["label"] else ""}" data-stem="{stem}">'
                f'<img src="/review/{stem}.jpg" alt="{stem}" width="160" height="160">'
                f'<div><p>{html.escape(item["saved"])} · frame {html.escape(str(item["frame"]))} · '
                f'top-3: {html.escape(_top3(item))}</p>'
                f'<p class="answer">{"labelled: " + html.escape(item["label"]) if item["label"] else ""}</p>'
                f'<p>{buttons}</p></div></li>'
            )
        if review is None:
            note = "No review queue: set [review] dir in the config."
        elif self.token is None:
            note = "Labelling is off: start the runner with --ui-token TOKEN (or MINERALNET_UI_TOKEN) to allow it."
        else:
            note = "Click the true class, or press its number for the highlighted item."
        page = _template("review.html").substitute(
            note=html.escape(note), count=len(review) if review is not None else 0,
            token=html.escape(request.query_params.get("token", ""), quote=True),
            items="\n".join(rows) or "<li>The queue is empty.</li>",
        )
        return HTMLResponse(page)

    async def thumbnail(self, request):
        from starlette.responses import FileResponse, PlainTextResponse

        review = self.runner.review
        try:
            path = review.path(request.path_params["stem"], ".jpg") if review is not None else ""
        except ValueError:
            path = ""
        if not path or not os.path.isfile(path):
            return PlainTextResponse("no such review item", status_code=404)
        return FileResponse(path, media_type="image/jpeg")

    # --- labelling ---------------------------------------------------------------------------------------------

    def _authorise(self, token, what):
        """LabelRefused (403) unless `token` is the runner's --ui-token; `what` names what is off without one."""
        if self.token is None:
            raise LabelRefused(403, f"{what} is off: start the runner with --ui-token TOKEN (or {TOKEN_ENV}) to "
                                    "allow it.")
        if not token or not hmac.compare_digest(token.encode(), self.token.encode()):
            raise LabelRefused(403, "wrong or missing token: give the runner's --ui-token in the page's token field "
                                    "(or ?token=) or the X-Token header.")

    def label(self, stem, label, token):
        """Check the token, the item and the label, then write STEM.label.json; LabelRefused says why not."""
        self._authorise(token, "labelling")
        review = self.runner.review
        if review is None:
            raise LabelRefused(404, "no review queue: set [review] dir in the config.")
        try:
            record = review.record(stem)
        except ValueError:
            raise LabelRefused(400, f"'{stem}' is not a review item name.") from None
        except OSError:
            raise LabelRefused(404, f"review item '{stem}' is gone (trimmed from the queue).") from None
        choices = self.choices(record)
        if label not in choices:
            raise LabelRefused(400, f"label '{label}' is not one of {', '.join(choices)}.")
        try:
            return review.write_label(stem, label, record.get("model_sha256") or self.runner.model.sha256)
        except FileNotFoundError:
            raise LabelRefused(404, f"review item '{stem}' is gone (trimmed from the queue).") from None
        except OSError as error:
            raise LabelRefused(500, f"the label could not be written ({error.strerror or error}).") from None

    async def api_label(self, request):
        from starlette.responses import JSONResponse

        try:
            body = json.loads(await request.body())
            stem, label = body["stem"], body["label"]
            if not isinstance(stem, str) or not isinstance(label, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'the body must be JSON {"stem": str, "label": str}.'}, status_code=400)
        try:
            answer = self.label(stem, label, request.headers.get(TOKEN_HEADER))
        except LabelRefused as refused:
            return JSONResponse({"error": str(refused)}, status_code=refused.status)
        return JSONResponse({"stem": stem, **answer})

    async def form_label(self, request):
        """The page's form without JavaScript: label, then back to /review (token kept in the address)."""
        from starlette.responses import PlainTextResponse, RedirectResponse

        fields = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        token = fields.get("token", [""])[0]
        stem, _, label = fields.get("pick", [""])[0].partition("|")
        try:
            self.label(stem, label, token)
        except LabelRefused as refused:
            return PlainTextResponse(str(refused), status_code=refused.status)
        return RedirectResponse("/review?" + urllib.parse.urlencode({"token": token}), status_code=303)

    async def model_action(self, request):
        """Promote the shadow's candidate or roll back (edge/promotion.py), in a worker thread: loading a model and
        waiting for the frame being sorted never holds up the page's other requests."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse

        from edge.model import ModelError

        action = request.path_params["action"]
        if action not in ("promote", "rollback"):
            return PlainTextResponse("no such action: POST /model/promote or /model/rollback.", status_code=404)
        header = request.headers.get(TOKEN_HEADER)
        fields = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        try:
            self._authorise(header or fields.get("token", [""])[0], "swapping the model")
            model = await run_in_threadpool(self.runner.promote if action == "promote" else self.runner.rollback)
        except LabelRefused as refused:
            return PlainTextResponse(str(refused), status_code=refused.status)
        except ModelError as error:
            return PlainTextResponse(f"{action} refused: {error}", status_code=409)
        if header is not None:
            return JSONResponse({"action": action, "model": model.path, "sha256": model.sha256})
        return RedirectResponse("/", status_code=303)

    # --- server ------------------------------------------------------------------------------------------------

    def serve(self, host, port):
        """Bind now (OSError for a taken port or a bad host: the caller's one line), then serve in a daemon thread.

        Returns the address for the runner's `listening` list. Port 0 picks a free port.
        """
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="ui", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise OSError(f"the page server did not start on {host}:{port}")
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        return f"ui http://{shown}:{bound}/"

    def cpu_s(self):
        """CPU seconds the page's thread has used so far (Linux), for benchmarks/runner_soak.py's cost figure."""
        return time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident))

    def close(self):
        if self.server is not None:
            self.server.should_exit = True
            self._thread.join(5)
            self.server = None
