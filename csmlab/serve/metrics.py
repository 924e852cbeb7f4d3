"""What `GET /metrics` reports, in Prometheus' text format (`prometheus_client`).

Each server gets its own registry, so several servers in one process (tests, notebooks) do not
share counters. Compute histograms are per pipeline layer (`encode`, `brain`, `decode`, ...), as
`Step.compute_ms` names them, in seconds as Prometheus prefers.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# 80 ms is the real-time deadline of one step: buckets straddle it.
STEP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)


class ServerMetrics:
    """The server's counters, gauges and histograms, registered in a registry of their own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("csmlab_sessions_active", "Sessions streaming now", registry=r)
        self.sessions = Counter("csmlab_sessions", "Sessions by how they ended", ["outcome"], registry=r)
        self.refused = Counter("csmlab_refused", "Connections refused before a session", ["reason"], registry=r)
        self.step_seconds = Histogram("csmlab_step_compute_seconds", "Compute per 80 ms step and layer",
                                      ["layer"], buckets=STEP_BUCKETS, registry=r)
        self.steps = Counter("csmlab_steps", "80 ms steps sent to clients", registry=r)
        self.late = Counter("csmlab_late_frames", "Steps whose compute overran 80 ms (silence went out)", registry=r)
        self.dropped = Counter("csmlab_dropped_frames", "Input frames dropped (backlog beyond the limit, or sent ahead of real time)", registry=r)
        self.errors = Counter("csmlab_errors", "Errors by kind (protocol, audio, pipeline)", ["kind"], registry=r)
        self.overloaded = Gauge("csmlab_overloaded_sessions", "Sessions whose brain cannot keep up now "
                                "(median compute per step above 80 ms)", registry=r)
        self.overload_events = Counter("csmlab_overload_events", "Times a session became overloaded", registry=r)
        self.reduced_rate = Gauge("csmlab_reduced_rate_sessions", "Sessions whose brain runs at a declared lower "
                                  "rate now (overload policy 'rate'; the notice says which)", registry=r)
        self.shed = Counter("csmlab_shed_steps", "Steps whose encode, brain and decode the overload policy shed "
                            "(silence went out)", registry=r)
        self.ready = Gauge("csmlab_ready", "1 once the brain is loaded and sessions are accepted", registry=r)

    def observe_step(self, step) -> None:
        self.steps.inc()
        if step.late:
            self.late.inc()
        if step.shed:
            self.shed.inc()
        if step.fault:  # the pipeline survived it (silence went out) and says which layer failed
            self.errors.labels(step.fault).inc()
        for layer, ms in step.compute_ms.items():
            self.step_seconds.labels(layer).observe(ms / 1000)

    def text(self) -> bytes:
        return generate_latest(self.registry)
