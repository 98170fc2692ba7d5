from __future__ import annotations

import json

import attrs
import pytest

from sim.bench import BenchSettings
from sim.bench_versus import UGC_AT_THROUGHPUT, example_spec
from sim.cli import build_parser, main


def test_bench_json_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "bench",
            "--json",
            "--records=20000",
            "--batch=100",
            "--single-records=2000",
            "--repeat=1",
            "--memory-records=20000",
            "--video-events=20000",
            "--restore-records=5000",
            "--gateway-records=20000",
            "--tap-seconds=0.5",
            "--http-seconds=0.3",
            "--headline-events=20000",
            "--ugc-events=5000",
            "--ugc-shipped-events=2000",
            "--relay-events=3000",
            "--outage-seconds=1",
            "--bytewax=/nonexistent/python",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    relay = result["relay"]
    assert relay["every_record_delivered"] is True
    assert relay["ratio"] == pytest.approx(
        relay["failing_records_per_s"] / relay["clean_records_per_s"], rel=1e-2
    )
    assert relay["failing_requests"] > 0
    outage = result["outage"]
    assert outage["every_accepted_event_delivered"] is True
    assert outage["delivered"] >= outage["events_accepted"] > 0
    for key in ("raw_records_per_s", "pipeline_records_per_s", "single_records_per_s"):
        assert result[key] > 0
    # With one round the ratio is exactly pipeline / raw of that round.
    assert result["ratio"] == pytest.approx(
        result["pipeline_records_per_s"] / result["raw_records_per_s"]
    )
    # The slow consumer fills the ring to its capacity and never beyond.
    assert result["slow_consumer_peak_depth"] == result["slow_consumer_capacity"] == 1000
    assert result["slow_consumer_peak_rss_mb"] > 0
    assert result["machine"]["cpus"] >= 1
    assert result["video_run_events_per_s"] > 0
    assert result["plain_loop_events_per_s"] > 0
    assert result["video_ratio"] == pytest.approx(
        result["video_run_events_per_s"] / result["plain_loop_events_per_s"]
    )
    assert result["video_same_aggregates"] is True
    assert result["checkpoint_cost"] == pytest.approx(
        1 - result["checkpoint_every_second_events_per_s"] / result["no_checkpoint_events_per_s"]
    )
    assert result["logging_ratio"] == pytest.approx(
        result["logging_events_per_s"] / result["no_logging_events_per_s"]
    )
    assert result["logging_dropped_entries"] >= 0
    assert result["restore_records"] == 5000
    assert result["restore_seconds"] > 0
    assert result["gateway_records"] == 20000
    assert result["gateway_ratio"] == pytest.approx(
        result["gateway_records_per_s"] / result["raw_websocket_records_per_s"]
    )
    # The ESS example served in a child process: every request answered 202.
    for case in ("durable_1000", "ring_3500", "ring_batch100"):
        http = result[f"http_{case}"]
        assert http["errors"] == {}, case
        assert http["achieved_per_s"] > 0
        assert http["latency_ms"]["p50"] <= http["latency_ms"]["p95"]
    assert result["http_ring_batch100"]["events_per_request"] == 100
    assert result["tap_latency_records"] > 0
    assert 0 < result["tap_latency_p50_ms"] <= result["tap_latency_p99_ms"]
    # The video site with everything on, in a fresh process, against the plain loop.
    assert result["headline_events"] == 20000
    assert result["video_site_expect_ok"] is True
    assert result["headline_same_aggregates"] is True
    assert result["headline_loop_ratio"] == pytest.approx(
        result["video_site_events_per_s"] / result["headline_plain_loop_events_per_s"]
    )
    assert result["video_site_epochs"] > 0
    assert result["video_site_logged_entries"] > 0
    assert result["video_site_peak_rss_mb"] > 0
    assert result["bytewax"] == "no Bytewax in /nonexistent/python"
    assert result["bytewax_events_per_s"] is None
    assert result["ugc_same_aggregates"] is True
    assert result["ugc_ratio"] == pytest.approx(
        result["ugc_events_per_s"] / result["ugc_plain_loop_events_per_s"]
    )
    assert result["ugc_peak_rss_mb"] > 0
    assert result["ugc_shipped_events"] == 2000
    assert result["ugc_shipped_events_per_s"] > 0


def test_the_ugc_example_at_throughput_makes_the_same_events_in_bigger_batches() -> None:
    shipped = example_spec("ugc.yaml")
    faster = example_spec("ugc.yaml", UGC_AT_THROUGHPUT)
    for name, producer in faster.producers.items():
        assert (producer.rate, producer.max_batch, producer.linger) == (100_000.0, 5000, 0.2)
        assert attrs.evolve(producer, rate=1.0, max_batch=1, linger=0) == attrs.evolve(
            shipped.producers[name], rate=1.0, max_batch=1, linger=0
        )
    assert faster.topics == shipped.topics
    assert faster.consumers == shipped.consumers


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--records=0"], "must be at least 1, got 0"),
        (["bench", "--batch=ten"], "expected a whole number, got 'ten'"),
        (["launch"], "invalid choice: 'launch'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_every_bench_setting_is_an_option_with_the_settings_default() -> None:
    defaults = BenchSettings()
    args = build_parser().parse_args(["bench"])
    for field in attrs.fields(BenchSettings):
        assert getattr(args, field.name) == getattr(defaults, field.name), field.name
    args = build_parser().parse_args(["bench", "--restore-records=7", "--tap-seconds=0.5"])
    assert (args.restore_records, args.tap_seconds) == (7, 0.5)


@pytest.mark.parametrize("python", ["/bin/true", "/bin/false", "/nonexistent/python"])
def test_an_interpreter_without_bytewax_is_said_so(python: str) -> None:
    from sim.bench_versus import bytewax_interpreter, bytewax_run

    assert bytewax_interpreter(python) == (None, f"no Bytewax in {python}")
    if python == "/bin/true":  # says nothing: not the benchmark's output
        assert "not the output of the benchmark" in bytewax_run(python, 10)["error"]
