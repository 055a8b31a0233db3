"""`endpointd usage`'s two forms of an answer of `GET /v2/usage/{ns}` (made here by the same pure
report the route uses): CSV rows per endpoint and bucket, and the table for people."""

from __future__ import annotations

from autoscaler.cli import USAGE_COLUMNS, build_parser, usage_rows, usage_table
from autoscaler.model.usage import Buckets, Hardware, Rates, ReplicaRow, TrafficRow, report

L4 = Hardware("gpu", "nvidia-l4", "x1")
CPU = Hardware("cpu", "intel-icl", "x2")
ANSWER = report(
    "acme", Buckets(0, 7200, 3600, 2),
    [ReplicaRow("acme", "chat", 0, L4, 3600), ReplicaRow("acme", "chat", 1, L4, 1800),
     ReplicaRow("acme", "chat", 1, CPU, 900), ReplicaRow("acme", "embed", 1, CPU, 60)],
    [TrafficRow("acme", "chat", 0, 10, 100, 1000, 50, 20), TrafficRow("acme", "embed", 1, 3, 30, 300, None, None)],
    Rates({"nvidia-l4": 0.8}),
)


def test_csv_has_a_row_per_endpoint_and_bucket():
    assert usage_rows(ANSWER) == [
        ["1970-01-01T00:00:00.000Z", "1970-01-01T01:00:00.000Z", "acme", "chat", "3600", "10", "100", "1000", "50", "20",
         "0.800000", "gpu/nvidia-l4/x1=3600"],
        ["1970-01-01T01:00:00.000Z", "1970-01-01T02:00:00.000Z", "acme", "chat", "2700", "0", "0", "0", "", "",
         "0.400000", "cpu/intel-icl/x2=900;gpu/nvidia-l4/x1=1800"],
        ["1970-01-01T01:00:00.000Z", "1970-01-01T02:00:00.000Z", "acme", "embed", "60", "3", "30", "300", "", "",
         "0.000000", "cpu/intel-icl/x2=60"],
    ]
    assert len(USAGE_COLUMNS) == len(usage_rows(ANSWER)[0])


def test_the_table_shows_buckets_totals_and_what_is_unpriced():
    lines = usage_table(ANSWER)
    assert lines[0] == "usage of acme from 1970-01-01T00:00:00.000Z to 1970-01-01T02:00:00.000Z"
    assert lines[1].split() == ["ENDPOINT", "REPLICA-HOURS", "REQUESTS", "TOKENS", "IN/OUT", "BYTES", "IN", "BYTES",
                                "OUT", "COST"]
    assert lines[2].split() == ["acme/chat", "1970-01-01T00:00:00.000Z", "1.000", "10", "50/20", "100", "1000", "0.8000"]
    assert lines[4].split() == ["acme/chat", "1.750", "10", "50/20", "100", "1000", "1.2000"]
    assert lines[6].split() == ["acme/embed", "0.017", "3", "-", "30", "300", "0.0000"]
    assert lines[7].split() == ["total", "1.767", "13", "50/20", "130", "1300", "1.2000"]
    assert lines[8] == "unpriced (no rate in [rates]): intel-icl"


def test_the_command_line_takes_a_period_a_step_and_csv():
    args = build_parser().parse_args(["usage", "acme", "--from", "2026-01-01T00:00:00Z", "--to", "1767312000",
                                      "--step", "3600", "--csv"])
    assert (args.namespace, args.from_, args.to, args.step, args.csv) == \
        ("acme", "2026-01-01T00:00:00Z", "1767312000", 3600.0, True)
    assert build_parser().parse_args(["usage"]).namespace is None
