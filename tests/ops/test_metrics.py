"""The metrics table: the one list of every metric the shipper exports."""

from __future__ import annotations

from coredump_shipper.ops.metrics import METRICS, Metrics


def test_every_row_of_the_metrics_table_is_a_typed_attribute() -> None:
    # Metrics declares each attribute's type for mypy; the table is what registers them.
    declared = {name: kind for name, kind in Metrics.__annotations__.items()}
    assert declared == {spec.attribute: spec.kind.__name__ for spec in METRICS}
    assert len({spec.name for spec in METRICS}) == len(METRICS)
