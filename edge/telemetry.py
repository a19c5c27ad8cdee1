"""Prometheus telemetry for the line's monitoring system (`--metrics-port`), through prometheus-client.

Each runner has its own CollectorRegistry (two runners in one process, as in the tests, never share counters),
served over HTTP on 127.0.0.1 unless `--metrics-host` says otherwise: the metrics name the model and the line's
throughput, which is nobody else's business by default. The counters are the summary's: a scrape after the run
gives exactly summary.json's per_class, per_bin and per_reason.
"""

PREFIX = "mineralnet_runner_"
# Latency buckets in seconds: camera-to-PLC budgets are 8-15 ms plus inference; belts travel about 0.1-1 s.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class Telemetry:
    def __init__(self, model):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

        self.registry = registry = CollectorRegistry()
        self.by_class = Counter(PREFIX + "items_by_class", "Sorted items by most probable class", ["class"],
                                registry=registry)
        self.by_bin = Counter(PREFIX + "items_by_bin", "Sorted items by bin", ["bin"], registry=registry)
        self.by_reason = Counter(PREFIX + "items_by_reason", "Sorted items by reason (confident, uncertain, late, "
                                 "error, no_position)", ["reason"], registry=registry)
        self.latency = {
            stage: Histogram(PREFIX + f"{stage}_seconds", text, buckets=BUCKETS, registry=registry)
            for stage, text in (
                ("preprocess", "Crop, resize and quantisation time per item"),
                ("inference", "Interpreter time per item"),
                ("capture_to_decision", "From the picture being taken to the item's decision"),
            )
        }
        self.queue_depth = Gauge(PREFIX + "queue_depth", "Frames waiting between capture and the model",
                                 registry=registry)
        self.recheck_share = Gauge(PREFIX + "recheck_share", "Share of the alarm window's items sent to recheck",
                                   registry=registry)
        self.source_up = Gauge(PREFIX + "source_up", "1 while frames arrive, 0 while the source is stalled",
                               registry=registry)
        self.actuator_up = Gauge(PREFIX + "actuator_up", "1 while the actuator is open, 0 while it is being retried",
                                 registry=registry)
        self.drift_statistic = Gauge(PREFIX + "drift_statistic", "Drift PSI of the last window against the "
                                     "calibration images (0 until the window is full or without a reference)",
                                     registry=registry)
        self.drift_alarm = Gauge(PREFIX + "drift_alarm", "1 while the drift alarm is tripped", registry=registry)
        self.blind = Gauge(PREFIX + "blind", "1 while frames arrive but none can be used (edge/blind.py)",
                           registry=registry)
        self.size = Gauge(PREFIX + "particle_size_mm", "Particle size (equal-area diameter) of the last minute's "
                          "decided particles, by quantile (p20, p50, p80)", ["quantile"], registry=registry)
        self.by_outcome = Counter(PREFIX + "particles_by_outcome", "Segmented particles by outcome (decided, "
                                  "entering, leaving, tracked, too_small, too_large)", ["outcome"], registry=registry)
        self.frames_skipped = Counter(PREFIX + "frames_skipped_by_reason", "Frames skipped, by reason (undecodable, "
                                      "frame_size, roi, belt, paused: read while an OPC UA Stop pauses sorting)",
                                      ["reason"], registry=registry)
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, CPU seconds, open files (Linux)
        self._summary = None  # () -> the summary's figures, once watched
        registry.register(_SummaryCounters(self))
        self.model = Info(PREFIX + "model", "The model being run (changes with a promotion or rollback)",
                          registry=registry)
        self.set_model(model)
        self.server = None

    def set_model(self, model):
        """The live model's path, sha256 and labels (edge/sorter.py calls it again when a promotion swaps it)."""
        self.model.info({"path": model.path, "sha256": model.sha256, "labels": ",".join(model.labels)})

    def watch(self, summary):
        """Serve the counters of `summary()` (the runner's snapshot: summary.json's figures) at every scrape."""
        self._summary = summary

    def serve(self, host, port):
        """Start the HTTP endpoint (port 0: any free one); returns the address for the start log line."""
        from prometheus_client import start_http_server

        self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        return f"metrics http://{host}:{self.server.server_port}/metrics"

    def publish(self, item):
        """A subscriber of the stream of decisions (edge/publish.py)."""
        self.observe(item.label, item.bin, item.reason, item.latency)

    def observe(self, label, bin_name, reason, latency):
        """One decided item: `latency` in seconds by stage (preprocess and inference absent after an error)."""
        if label is not None:
            self.by_class.labels(label).inc()
        self.by_bin.labels(bin_name).inc()
        self.by_reason.labels(reason).inc()
        for stage, key in (("preprocess", "preprocess"), ("inference", "inference"), ("capture_to_decision", "total")):
            if key in latency:
                self.latency[stage].observe(latency[key])

    def particles(self, outcomes):
        """One frame's particles by outcome (edge/tally.py OUTCOMES)."""
        for outcome, number in outcomes.items():
            if number:
                self.by_outcome.labels(outcome).inc(number)

    def skipped(self, reason):
        self.frames_skipped.labels(reason).inc()

    def update(self, queue_depth, recheck_share, source_up, actuator_up, blind=False, size_mm=None):
        """The gauges, from the sorting loop; `size_mm` the last minute's {p20, p50, p80} (edge/trends.py)."""
        self.blind.set(int(blind))
        for quantile, value in (size_mm or {}).items():
            self.size.labels(quantile).set(value)
        self.queue_depth.set(queue_depth)
        self.recheck_share.set(recheck_share)
        self.source_up.set(int(source_up))
        self.actuator_up.set(int(actuator_up))

    def drift(self, statistic, alarm):
        self.drift_statistic.set(statistic)
        self.drift_alarm.set(int(alarm))

    def close(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# summary.json's counters that no per-item metric above carries: (summary key or path, metric name, help)
SUMMARY_COUNTERS = (
    ("frames_dropped", "frames_dropped", "Frames a live source dropped because the runner was behind"),
    ("source_errors", "source_errors", "Source open or read failures (each retried)"),
    ("actuator_errors", "actuator_errors", "Actuator open, send or publish failures (each retried)"),
    ("alarms", "recheck_alarms", "Recheck-share alarms raised"),
    ("drift_alarms", "drift_alarms", "Drift alarms raised"),
    ("blind_alarms", "blind_alarms", "Blind alarms raised (frames arrive but none can be used)"),
    ("events_lost", "events_lost", "Event lines that could not be written"),
    ("review_lost", "review_lost", "Review copies that could not be saved"),
    ("promotions", "model_promotions", "Live model swaps to a candidate (edge/promotion.py)"),
    ("rollbacks", "model_rollbacks", "Live model swaps back to the model a promotion replaced"),
    ("frames_unmoved", "frames_unmoved", "Single items not decided again: the encoder belt had not moved"),
    ("encoder.read_errors", "encoder_read_errors", "Encoder count reads that failed"),
    ("encoder.fired", "encoder_ejections_fired", "Ejections fired at their encoder count"),
    ("encoder.missed", "encoder_ejections_missed", "Ejections not fired (count unreadable, passed, or stopped)"),
    ("particles.frames", "belt_frames", "Belt frames segmented once the empty belt was learned"),
    ("particles.conflict", "valve_conflicts", "Particles to eject whose pulse would have hit one to keep ([valves] "
     "conflict)"),
    ("particles.hit", "kept_particles_hit", "Particles to keep that an earlier frame's pulse hit anyway"),
)


class _SummaryCounters:
    """A collector read at scrape time from the runner's summary (no work per item; equal to summary.json after
    the run): the counters above where the summary has them, the particles decided per frame (mean, max) and the
    particles' area by bin (tests/edge/test_edge_modbus_metrics.py: every counter of the summary is a metric)."""

    def __init__(self, telemetry):
        self.telemetry = telemetry

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self.telemetry._summary is None:
            return
        summary = self.telemetry._summary()
        for key, name, text in SUMMARY_COUNTERS:
            value = summary
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                yield CounterMetricFamily(PREFIX + name, text, value=value)
        per_frame = (summary.get("particles") or {}).get("per_frame", {}).get("mean")
        if per_frame is not None:
            yield GaugeMetricFamily(PREFIX + "particles_per_frame", "Mean particles decided per belt frame",
                                    value=per_frame)
            yield GaugeMetricFamily(PREFIX + "particles_per_frame_max", "Most particles decided in one belt frame",
                                    value=summary["particles"]["per_frame"]["max"])
            area = CounterMetricFamily(PREFIX + "particle_area_mm2_by_bin", "Decided particles' area (mm2) by bin",
                                       labels=["bin"])
            for bin_name, mm2 in summary["particles"]["area_mm2_per_bin"].items():
                area.add_metric([bin_name], mm2)
            yield area
        if summary.get("shadow") is not None:
            yield from shadow_metrics(summary["shadow"])


def shadow_metrics(report):
    """The --shadow candidate's figures (edge/shadow.py Shadow.report()) as metric families, read at scrape time."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    items = CounterMetricFamily(PREFIX + "shadow_items", "Items offered to the shadow candidate, by outcome "
                                "(compared, dropped: candidate behind, not_sampled: --shadow-every, errors)",
                                labels=["outcome"])
    for outcome in ("compared", "dropped", "not_sampled", "errors"):
        items.add_metric([outcome], report[outcome])
    yield items
    yield CounterMetricFamily(PREFIX + "shadow_failures", "Times the candidate's process failed (it is not restarted: "
                              "the shadow state is then 'failed')", value=report["failures"])
    for key, text in (("agreement", "Share of compared items the candidate sends to the live model's bin"),
                      ("class_agreement", "Share of compared items with the live model's most probable class")):
        if report[key] is not None:
            yield GaugeMetricFamily(PREFIX + f"shadow_{key}", text, value=report[key])
    share = GaugeMetricFamily(PREFIX + "shadow_recheck_share", "Share of the compared items each model sends to "
                              "recheck (model: live, shadow)", labels=["model"])
    for model, value in report["recheck_share"].items():
        if value is not None:
            share.add_metric([model], value)
    yield share
    confusion = CounterMetricFamily(PREFIX + "shadow_confusion", "Compared items by the live model's class and the "
                                    "candidate's class", labels=["live", "shadow"])
    for live, row in report["confusion"].items():
        for shadow, count in row.items():
            confusion.add_metric([live, shadow], count)
    yield confusion
    latency = GaugeMetricFamily(PREFIX + "shadow_latency_seconds", "The candidate's preprocess + inference time "
                                "per item, by quantile (p50, p95, p99; recent items)", labels=["quantile"])
    for quantile, ms in report["latency_ms"].items():
        if ms is not None:
            latency.add_metric([quantile], ms / 1000.0)
    yield latency
