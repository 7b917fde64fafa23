"""The topics gridwatch reads and writes, with their partitioning and retention."""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.settings import Settings

DAY_MS = 86_400_000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(s: Settings) -> list[TopicSpec]:
    """Readings are keyed by area so an area's meters share a partition; the topology and
    line-loss topics are compacted (latest archive record per meter, latest result per
    area-window)."""
    keep_readings = {"retention.ms": str(35 * DAY_MS)}  # a concentrator re-sends up to 31 days
    compact = {"cleanup.policy": "compact"}
    return [
        TopicSpec(s.topic_readings, s.partitions, keep_readings),
        TopicSpec(s.topic_supply, s.partitions, keep_readings),
        TopicSpec(s.topic_topology, s.partitions, compact),
        TopicSpec(s.topic_lineloss, s.partitions, compact),
        TopicSpec(s.topic_deadletter, s.partitions, {"retention.ms": str(35 * DAY_MS)}),
        TopicSpec(s.topic_inspections, s.partitions, {"retention.ms": str(400 * DAY_MS)}),
        *alert_topic_specs(s),
    ]


def alert_topic_specs(s: Settings) -> list[TopicSpec]:
    """Alerts are keyed by entity, so each entity's opened/resolved events stay in order."""
    keep = {"retention.ms": str(35 * DAY_MS)}
    return [
        TopicSpec(s.topic_alerts, s.partitions, keep),
        TopicSpec(s.topic_alerts_deadletter, s.partitions, keep),
    ]
