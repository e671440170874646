"""The metrics exporter: Stats copied into Prometheus, and the multiprocess directory's care."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import metrics
from service.app import build_runtime
from service.runtime import Runtime
from service.settings import Settings


@pytest.fixture(autouse=True)
def _restore_environment() -> Iterator[None]:
    # prepare_multiprocess() sets PROMETHEUS_MULTIPROC_DIR for the workers; left set, it
    # would switch every later test's metrics to multiprocess mode.
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _runtime() -> Runtime:
    return build_runtime(Settings(_env_file=None))  # type: ignore[call-arg]


def _samples(exporter: metrics.Exporter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exporter.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_follow_stats_by_delta_and_gauges_by_value() -> None:
    """Each scrape shows the Stats as they are now; counters never count twice."""
    runtime = _runtime()
    exporter = metrics.Exporter(runtime, multiprocess=False)
    stats = runtime.stats
    stats.connections_active, stats.connections_total = 3, 5
    stats.messages_received, stats.messages_sent = 10, 20
    stats.rejected["unauthorized"] += 2
    first = _samples(exporter)
    assert first[("ws_connections_active", ())] == 3
    assert first[("ws_connections_total", ())] == 5
    assert first[("ws_messages_received_total", ())] == 10
    assert first[("ws_rejected_total", (("reason", "unauthorized"),))] == 2
    stats.connections_active = 1
    stats.messages_received = 12
    second = _samples(exporter)
    assert second[("ws_connections_active", ())] == 1
    assert second[("ws_messages_received_total", ())] == 12
    assert second[("ws_messages_sent_total", ())] == 20


def test_known_reasons_and_close_codes_are_exported_at_zero() -> None:
    """rate() needs a series before its first event: every refusal reason starts at 0."""
    samples = _samples(metrics.Exporter(_runtime(), multiprocess=False))
    for reason in ("unauthorized", "origin", "max_connections", "per_ip_limit", "draining"):
        assert samples[("ws_rejected_total", (("reason", reason),))] == 0
    for code in ("1000", "1008", "1009", "1011", "1012"):
        assert samples[("ws_closes_total", (("code", code),))] == 0


def test_client_chosen_close_codes_share_one_label() -> None:
    """Codes 3000-4999 come from clients: they are "other", not a series each."""
    runtime = _runtime()
    exporter = metrics.Exporter(runtime, multiprocess=False)
    runtime.stats.closes.update({4000: 2, 4999: 1, 1008: 1})
    samples = _samples(exporter)
    assert samples[("ws_closes_total", (("code", "other"),))] == 3
    assert samples[("ws_closes_total", (("code", "1008"),))] == 1
    assert not any(labels == (("code", "4000"),) for _, labels in samples)


def test_message_sizes_land_in_the_right_buckets() -> None:
    """Size classes from the hot path become cumulative `le` buckets; the sum is the bytes."""
    runtime = _runtime()
    exporter = metrics.Exporter(runtime, multiprocess=False)
    stats = runtime.stats
    for size in (1, 16, 17, 1000, 1024, 1025, 5_000_000):
        stats.size_classes[(size - 1).bit_length()] += 1
        stats.bytes_received += size
    samples = _samples(exporter)

    def bucket(le: str) -> float:
        return samples[("ws_message_size_bytes_bucket", (("le", le),))]

    assert bucket("16.0") == 2  # 1 and 16
    assert bucket("64.0") == 3  # + 17
    assert bucket("1024.0") == 5  # + 1000 and 1024
    assert bucket("4096.0") == 6  # + 1025
    assert bucket("1.6777216e+07") == 7 == bucket("+Inf")
    assert samples[("ws_message_size_bytes_count", ())] == 7
    assert samples[("ws_message_size_bytes_sum", ())] == sum((1, 16, 17, 1000, 1024, 1025, 5e6))


def test_delivery_latency_is_a_histogram_of_seconds() -> None:
    """Observations of the plain Distribution come out as the Prometheus histogram."""
    runtime = _runtime()
    exporter = metrics.Exporter(runtime, multiprocess=False)
    for seconds in (0.0002, 0.003, 0.003, 0.2, 30.0):
        runtime.stats.delivery_latency.observe(seconds)
    samples = _samples(exporter)
    assert samples[("ws_delivery_latency_seconds_bucket", (("le", "0.0005"),))] == 1
    assert samples[("ws_delivery_latency_seconds_bucket", (("le", "0.005"),))] == 3
    assert samples[("ws_delivery_latency_seconds_bucket", (("le", "0.25"),))] == 4
    assert samples[("ws_delivery_latency_seconds_bucket", (("le", "10.0"),))] == 4
    assert samples[("ws_delivery_latency_seconds_count", ())] == 5
    assert samples[("ws_delivery_latency_seconds_sum", ())] == pytest.approx(30.2062)


def test_broker_figures_are_read_from_the_broker() -> None:
    """publish_errors, local_only and the state come from the broker object itself."""
    runtime = _runtime()
    exporter = metrics.Exporter(runtime, multiprocess=False)
    broker: Any = runtime.broker
    broker.publish_errors, broker.local_only, broker.outbox = 4, 7, 2
    samples = _samples(exporter)
    assert samples[("ws_broker_publish_errors_total", ())] == 4
    assert samples[("ws_broker_local_only_total", ())] == 7
    assert samples[("ws_broker_outbox", ())] == 2
    assert samples[("ws_broker_up", ())] == 0  # the memory broker is not connected yet


class _Sub:
    def __init__(self, depth: int) -> None:
        self.queue_depth = depth


def test_queue_sample_finds_the_deepest_and_counts_the_backlogged() -> None:
    """Only subscribers with frames waiting count; the sample stops at its limit."""
    subs = [_Sub(0), _Sub(3), _Sub(0), _Sub(40), _Sub(7)]
    assert metrics.sample_queues(subs, limit=10) == (40, 3)
    assert metrics.sample_queues(subs, limit=3) == (3, 1)
    assert metrics.sample_queues([], limit=10) == (0, 0)


def _touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_bytes(b"\0" * 8)


def test_prepare_multiprocess_empties_the_configured_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a fresh start the directory keeps nothing from a previous run."""
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    monkeypatch.delenv("GUNICORN_PID", raising=False)
    _touch(tmp_path, "counter_123.db", "gauge_livesum_123.db", "histogram_9.db")
    (tmp_path / "notes.txt").write_text("not ours")
    assert metrics.prepare_multiprocess() == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_prepare_multiprocess_uses_the_systemd_runtime_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unset, the directory goes under $RUNTIME_DIRECTORY and is handed to the workers."""
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    monkeypatch.delenv("GUNICORN_PID", raising=False)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    path = metrics.prepare_multiprocess()
    assert path == str(tmp_path / "metrics") and os.path.isdir(path)
    assert os.environ[metrics.MULTIPROC_ENV] == path


def test_prepare_multiprocess_clears_directories_of_masters_killed_with_sigkill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A private directory whose writers are all gone (and quiet) is removed; no other."""
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("GUNICORN_PID", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, live, empty = (tmp_path / f"{metrics.PRIVATE_PREFIX}{n}" for n in ("a", "b", "c"))
    for directory in (dead, live, empty):
        directory.mkdir()
    _touch(dead, "counter_999999999.db")
    os.utime(dead / "counter_999999999.db", (time.time() - 600, time.time() - 600))
    _touch(live, f"counter_{os.getpid()}.db")
    os.utime(live / f"counter_{os.getpid()}.db", (time.time() - 600, time.time() - 600))
    fresh = Path(metrics.prepare_multiprocess())
    assert not dead.exists() and live.exists() and empty.exists()
    assert fresh.parent == tmp_path and fresh.name.startswith(metrics.PRIVATE_PREFIX)


def test_prepare_multiprocess_keeps_live_files_on_a_usr2_reexec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-exec'd master (GUNICORN_PID set) runs beside the old workers: their files stay."""
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    monkeypatch.setenv("GUNICORN_PID", "1")
    _touch(tmp_path, "counter_123.db")
    metrics.prepare_multiprocess()
    assert (tmp_path / "counter_123.db").exists()


def test_mark_dead_removes_only_the_live_gauges_of_that_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead worker's gauges stop counting; its counters and other workers' files stay."""
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    _touch(
        tmp_path,
        "counter_41.db",
        "histogram_41.db",
        "gauge_livesum_41.db",
        "gauge_livemin_41.db",
        "gauge_livemax_41.db",
        "gauge_liveall_41.db",
        "gauge_livesum_42.db",
    )
    metrics.mark_dead(41)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter_41.db",
        "gauge_livesum_42.db",
        "histogram_41.db",
    ]
