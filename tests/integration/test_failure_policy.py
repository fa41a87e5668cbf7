"""The failure policy end to end: what a real worker does when the store or Kafka fails.

  * the ClickHouse server is killed mid-stream and started again: transient, retried,
    every view exact, each failed attempt counted by cause;
  * a table lacks a column the worker writes: not transient, the worker stops after
    METERING_STORE_FATAL_TRIES tries naming the cause and the fix (credentials refused
    by the server, AUTHENTICATION_FAILED, are judged the same way: tests/unit);
  * the dead-letter topic refuses the copies: the worker stops with the DLQ's own message
    and counts no store error;
and after each fix, a restart counts everything exactly once.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

from tests.integration.harness import CORPUS, MeteringRun
from tests.integration.test_exactly_once import assert_exact

pytestmark = pytest.mark.integration

SMALL_BATCHES = {
    "METERING_BATCH_MAX_EVENTS": "25",
    "METERING_BATCH_MAX_SECONDS": "0.2",
    "METERING_BATCH_MIN_SECONDS": "0",
    "METERING_STORE_RETRY_MAX_SECONDS": "1",
    "METERING_SESSION_TIMEOUT_SECONDS": "6",
}


class Worker:
    """A `metering worker --until-idle` subprocess whose output lines are read as they come."""

    def __init__(self, run: MeteringRun, extra_env: dict[str, str], idle: float = 1.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *("-m", "metering.cli", "worker", "--until-idle", str(idle))],
            env={**run.env, **extra_env},
            cwd=run.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            self._new.put(line)

    def wait_for(self, needle: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if needle in self._new.get(timeout=0.5):
                    return
            except queue.Empty:
                if self.process.poll() is not None and self._new.empty():
                    break
        raise AssertionError(f"the worker never logged {needle!r}:\n{self.output[-3000:]}")

    def finish(self, timeout: float = 240) -> int:
        code = self.process.wait(timeout=timeout)
        time.sleep(0.2)  # let the reader take the last lines
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def logged(self, msg: str) -> list[dict[str, Any]]:
        entries = []
        for line in self.lines:
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("msg") == msg:
                    entries.append(entry)
        return entries


def test_a_server_killed_mid_stream_is_retried_and_every_failure_counted(
    run: MeteringRun,
) -> None:
    run.replay(CORPUS)
    worker = Worker(run, SMALL_BATCHES)
    worker.wait_for('"flush committed"')
    run.store.kill()
    time.sleep(1.5)
    run.store.start()
    assert worker.finish() == 0, worker.output[-3000:]
    retries = worker.logged("store step failed, retrying")
    assert len(retries) >= 1, "the kill did not land while the worker was flushing"
    assert all(entry["transient"] is True for entry in retries)
    causes: dict[str, int] = {}
    for entry in retries:
        causes[entry["cause"]] = causes.get(entry["cause"], 0) + 1
    [stopped] = worker.logged("worker stopped")
    assert stopped["store_errors"] == len(retries)
    assert stopped["store_errors_by_cause"] == dict(sorted(causes.items()))
    assert stopped["dead_letter_errors"] == 0
    assert worker.logged("store step failed and retrying cannot fix it; stopping the worker") == []
    assert_exact(run)


def test_a_table_missing_a_column_stops_the_worker_naming_the_schema(run: MeteringRun) -> None:
    assert run.metering("migrate").returncode == 0
    run.store.as_owner("ALTER TABLE metering.counted_events DROP COLUMN conversation_id")
    run.replay(CORPUS)
    failed = run.worker(extra_env={**SMALL_BATCHES, "METERING_STORE_FATAL_TRIES": "2"})
    assert failed.returncode == 70, failed.stderr[-3000:]
    entries = [json.loads(line) for line in failed.stderr.splitlines() if line.startswith("{")]
    attempts = [
        e
        for e in entries
        if e["msg"].startswith("store step failed") and e.get("step") == "stage counted events"
    ]
    assert [(e["transient"], e.get("tries_left")) for e in attempts[:-1]] == [(False, 1)]
    final = attempts[-1]
    assert [e["cause"] for e in attempts] == ["NO_SUCH_COLUMN_IN_TABLE"] * 2
    assert final["attempts"] == 2
    assert final["msg"] == "store step failed and retrying cannot fix it; stopping the worker"
    assert "run `metering migrate` against CLICKHOUSE_URL" in final["what_to_do"]
    assert run.query("SELECT count() AS n FROM metering.flush_ledger") == [{"n": 0}]
    run.store.as_owner(
        "ALTER TABLE metering.counted_events ADD COLUMN conversation_id String AFTER user_id"
    )
    finished = run.worker(extra_env=SMALL_BATCHES)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_exact(run)


def test_a_dead_letter_topic_that_refuses_the_copies_stops_the_worker(run: MeteringRun) -> None:
    topic = run.env["METERING_DLQ_TOPIC"]
    admin = KafkaAdminClient(bootstrap_servers=run.env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        admin.create_topics([NewTopic(topic, 3, 1, topic_configs={"max.message.bytes": "100"})])
        run.replay(CORPUS)
        failed = run.worker(extra_env=SMALL_BATCHES)
        assert failed.returncode == 70, failed.stderr[-3000:]
        entries = [json.loads(line) for line in failed.stderr.splitlines() if line.startswith("{")]
        retried = [e for e in entries if e["msg"] == "dead-letter publish failed, retrying"]
        [final] = [
            e
            for e in entries
            if e["msg"]
            == "dead-letter publish failed and retrying cannot fix it; stopping the worker"
        ]
        assert [(e["cause"], e["tries_left"]) for e in retried] == [
            ("MessageSizeTooLargeError", 2),
            ("MessageSizeTooLargeError", 1),
        ]
        assert "max.message.bytes of the METERING_DLQ_TOPIC topic" in final["what_to_do"]
        assert [e for e in entries if e["msg"].startswith("store step failed")] == []
        # Flushes before the first rejection committed; none that holds a rejection did.
        assert run.query("SELECT sum(rejected) AS r FROM metering.flush_ledger") == [{"r": 0}]
        admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": "1048588"}
                )
            ]
        )
    finally:
        admin.close()
    finished = run.worker(extra_env=SMALL_BATCHES)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_exact(run)


def _new_events(tag: str, count: int) -> str:
    lines = []
    for n in range(count):
        lines.append(
            json.dumps(
                {
                    "schema_version": 1,
                    "event_id": f"9e1b7c2d-4a5f-4b6e-8c7d-{tag}{n:08d}",
                    "occurred_at": "2026-11-20T10:00:00Z",
                    "tenant": "chatgpt-gov",
                    "agency_id": f"fed-expiry-{tag}-{n}",
                    "agency_level": "federal",
                    "user_id": f"u-expiry-{tag}-{n}",
                    "conversation_id": "c-expiry",
                    "model": "gpt-4o",
                    "tokens_in": 10,
                    "tokens_out": 5,
                }
            )
        )
    return "\n".join(lines) + "\n"


def _end_offsets(run: MeteringRun) -> dict[int, int]:
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    topic = run.env["METERING_EVENTS_TOPIC"]
    consumer = KafkaConsumer(bootstrap_servers=run.env["KAFKA_BOOTSTRAP_SERVERS"])
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        return {tp.partition: int(offset) for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def _reconcile_json(run: MeteringRun) -> dict[str, Any]:
    result = run.metering("reconcile", "--month", "2026-11", "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_offsets_deleted_before_they_were_counted_are_counted_and_shown_by_reconcile(
    run: MeteringRun, tmp_path: Any
) -> None:
    from kafka.structs import TopicPartition

    topic = run.env["METERING_EVENTS_TOPIC"]
    # The topic is created keeping events one day, the deployment promises 35.
    run.env.update({"METERING_TOPIC_RETENTION_HOURS": "24", "METERING_MAX_LATENESS_DAYS": "35"})
    run.replay(CORPUS)
    first = Worker(run, SMALL_BATCHES)
    assert first.finish() == 0, first.output[-3000:]
    [warned] = first.logged("the events topic may delete events before they are counted")
    assert (warned["retention_ms"], warned["max_lateness_days"]) == ("86400000", 35)
    assert (
        "retention.ms=86400000 (1 days) is shorter than METERING_MAX_LATENESS_DAYS=35"
        in (warned["warning"])
    )

    counted = _end_offsets(run)  # the ledger resumes here
    deleted_batch, kept_batch = tmp_path / "deleted.jsonl", tmp_path / "kept.jsonl"
    deleted_batch.write_text(_new_events("aaaa", 24))
    kept_batch.write_text(_new_events("bbbb", 24))
    run.replay(deleted_batch)
    published = _end_offsets(run)
    partition = max(published, key=lambda p: published[p] - counted[p])
    lost = published[partition] - counted[partition]
    assert lost >= 1, "no new event landed on any partition"
    admin = KafkaAdminClient(bootstrap_servers=run.env["KAFKA_BOOTSTRAP_SERVERS"])
    try:  # what retention would do: the partition now starts after the new events
        admin.delete_records({TopicPartition(topic, partition): published[partition]})
    finally:
        admin.close()
    run.replay(kept_batch)

    gap = {
        "topic": topic,
        "partition": partition,
        "first_missing": counted[partition],
        "last_missing": published[partition] - 1,
        "messages": lost,
    }
    before = _reconcile_json(run)
    assert before["expired_offsets"] == []
    assert [
        {k: g[k] for k in gap} | {"detected_at": g["detected_at"]}
        for g in before["expired_offsets_pending"]
    ] == [gap | {"detected_at": None}]

    second = Worker(run, SMALL_BATCHES)
    assert second.finish() == 0, second.output[-3000:]
    [recorded] = second.logged(
        "expired offsets counted and recorded: the broker deleted them uncounted"
    )
    assert (recorded["partition"], recorded["first_missing"], recorded["resume_at"]) == (
        partition,
        counted[partition],
        published[partition],
    )
    [stopped] = second.logged("worker stopped")
    assert stopped["offsets_expired"] == {f"{topic}[{partition}]": lost}

    after = _reconcile_json(run)
    assert after["expired_offsets_pending"] == []
    assert [{k: g[k] for k in gap} for g in after["expired_offsets"]] == [gap]
    assert after["ok"] is True
    table = run.metering("reconcile", "--month", "2026-11")
    assert (
        f"  {topic}[{partition}] offsets {counted[partition]}..{published[partition] - 1} "
        f"({lost:,} message(s)): recorded "
    ) in table.stdout
    # Everything else was counted: the corpus, the new events that survived, the rest.
    rows = run.query("SELECT count() AS n FROM metering.counted_events")
    assert rows == [{"n": 3539 + 24 - lost + 24}]
