"""Prometheus exposition of the index, computed at scrape time.

Counters come from the database rather than from in-process counters, so they are right across
restarts and whichever process did the work (the scrape costs a few grouped COUNTs).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class _Snapshot:
    def __init__(self, counts: dict[str, Any], models_loaded: int) -> None:
        self.counts = counts
        self.models_loaded = models_loaded

    def collect(self) -> Any:
        c = self.counts
        yield CounterMetricFamily(
            "tamperscan_instances", "Instances stored (indexed).", value=c["instances"]
        )
        yield GaugeMetricFamily(
            "tamperscan_instance_bytes", "Bytes of stored instances.", value=c["instance_bytes"]
        )
        for name, help_text, key, label in (
            ("tamperscan_studies", "Studies by state.", "studies", "state"),
            (
                "tamperscan_associations",
                "DICOM associations by outcome.",
                "associations",
                "outcome",
            ),
            ("tamperscan_jobs", "Scoring jobs by state.", "jobs", "state"),
            ("tamperscan_current_verdicts", "Current verdicts by outcome.", "verdicts", "outcome"),
            (
                "tamperscan_verdicts",
                "All verdicts ever recorded, by outcome.",
                "verdicts_all",
                "outcome",
            ),
            ("tamperscan_deliveries", "Report deliveries by state.", "deliveries", "state"),
        ):
            family = GaugeMetricFamily(name, help_text, labels=[label])
            for value, count in sorted(c[key].items()):
                family.add_metric([value], count)
            yield family
        durations = c["scoring_seconds"]
        buckets = [(str(b), sum(1 for d in durations if d <= b)) for b in LATENCY_BUCKETS] + [
            ("+Inf", len(durations))
        ]
        yield HistogramMetricFamily(
            "tamperscan_scoring_seconds",
            "Wall time of finished scoring jobs (claim to verdict).",
            buckets=buckets,
            sum_value=float(sum(durations)),
        )
        yield GaugeMetricFamily(
            "tamperscan_models_loaded", "Detectors loaded by serve.", value=self.models_loaded
        )


def render_metrics(counts: dict[str, Any], models_loaded: int) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(counts, models_loaded))
    return generate_latest(registry), CONTENT_TYPE_LATEST
