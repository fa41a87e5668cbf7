"""Several writers on one store, on several hosts: plain `metering worker` processes in
one consumer group that share nothing but the store and the broker.

A "host" here is a process environment of its own: its own temporary directory and
lock directory (so nothing on the file system is shared), and, where the machine lets
a test create a UTS namespace (`unshare --uts`), its own host name, which the writers
register in the store. Each writer owns some partitions of the events topic and writes
its own flushes to the same store. That is only exact if the store orders their commits
and each commit holds only when the ledger of every partition it covers has not moved
since the writer read it: a writer whose partitions moved to another (a zombie, here
one paused for longer than the session timeout) must have its flush refused, and the
dedupe of event_id must hold across partitions owned by different writers.

Every test compares with an expectation computed apart from the pipeline (the golden
file of the standard corpus, or a reference built from the events the test sends),
exactly: the contract views, the counted events, the ledger's counted, duplicate and
rejected totals, and the ledger itself, whose ranges must tile every partition from
offset 0 to its end without a gap or an overlap, each flush number written by one
writer only; and `metering verify` and `metering certify` must pass.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError

from tests.integration.harness import CORPUS, FAST_REBALANCE_ENV, MeteringRun, expected
from tests.integration.test_codecs import bootstrap, create_events_topic
from tests.integration.test_transactions import Message, end_offsets, expected_views, make_event

pytestmark = pytest.mark.integration

PARTITIONS = 6
# The corpus is replayed this many times: a single copy is flushed by one writer in
# about 10 s, so the kill, the pause (longer than the session timeout of FAST_REBALANCE_ENV) and
# the paused writer's return all land while there is still work on the topic. Every
# valid line of a later copy is a duplicate of the first copy; the views stay golden.
REPLAYS = 3
PAUSE_SECONDS = 15.0
WAIT_SECONDS = 240.0  # the longest any writer may take to finish after its cue
PROBLEMS_SHOWN = 25


@dataclass(frozen=True)
class Expectation:
    """What the store must hold, computed without the pipeline."""

    views: dict[str, list[dict[str, Any]]]
    rejected: dict[str, int]
    counted: int
    duplicates: int
    messages: int


def corpus_expectation(replays: int) -> Expectation:
    """The golden expectation of the standard corpus, replayed `replays` times."""
    golden = expected()
    valid_lines = golden["valid_counted"] + golden["duplicates"]
    return Expectation(
        views={view: golden[view] for view in ("agency_daily", "agency_monthly", "monthly_totals")},
        rejected={reason: n * replays for reason, n in golden["rejected"].items()},
        counted=golden["valid_counted"],
        duplicates=golden["duplicates"] + (replays - 1) * valid_lines,
        messages=golden["lines"] * replays,
    )


# -- writer processes ------------------------------------------------------------


def writer_names(count: int) -> list[str]:
    return [f"writer-{number}" for number in range(1, count + 1)]


def _can_name_hosts() -> bool:
    try:
        probe = subprocess.run(
            ["unshare", "--uts", "sh", "-c", "hostname govmeter-probe && hostname"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and probe.stdout.strip() == "govmeter-probe"


NAMED_HOSTS = _can_name_hosts()


def host_env(run: MeteringRun, host: str) -> dict[str, str]:
    """What a host has of its own: a temporary directory and a lock directory."""
    home = run.workdir / "hosts" / host
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    return {"TMPDIR": str(home / "tmp"), "METERING_LOCK_DIR": str(home / "locks")}


def on_host(host: str, args: list[str]) -> list[str]:
    """`args` run under the host name `host` (when the machine allows it)."""
    if not NAMED_HOSTS:
        return args
    return ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "--", *args]


def start_writer(
    run: MeteringRun,
    name: str,
    until_idle: float | None,
    host: str = "host-a",
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """A plain `metering worker` of the run's consumer group, named `name`, on `host`."""
    args = [sys.executable, "-m", "metering.cli", "worker"]
    if until_idle is not None:
        args += ["--until-idle", str(until_idle)]
    return subprocess.Popen(
        on_host(host, args),
        env={
            **run.env,
            **FAST_REBALANCE_ENV,
            **host_env(run, host),
            "METERING_WORKER_NAME": name,
            **(extra_env or {}),
        },
        cwd=run.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Outputs:
    """Every line each process prints, read in threads (no pipe ever fills up).

    These tests wait for several cues and show what a writer said when it failed.
    """

    def __init__(self, processes: Sequence[subprocess.Popen[str]]) -> None:
        self._lines: dict[int, list[str]] = {process.pid: [] for process in processes}
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(process,), daemon=True)
            for process in processes
        ]
        for reader in self._readers:
            reader.start()

    def watch(self, process: subprocess.Popen[str]) -> None:
        """Read the lines of a process started later, too."""
        with self._changed:
            self._lines[process.pid] = []
        reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._readers.append(reader)
        reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self._lines[process.pid].append(line)
                self._changed.notify_all()

    def marks(self) -> dict[int, int]:
        """How many lines each process printed so far (for `next_to_log`)."""
        with self._changed:
            return {pid: len(lines) for pid, lines in self._lines.items()}

    def next_to_log(
        self,
        needle: str,
        among: Sequence[subprocess.Popen[str]],
        timeout: float,
        since: dict[int, int] | None = None,
    ) -> subprocess.Popen[str]:
        """The first process of `among` to print `needle` after the `since` marks."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for process in among:
                    start = (since or {}).get(process.pid, 0)
                    if any(needle in line for line in self._lines[process.pid][start:]):
                        return process
                left = deadline - time.monotonic()
                if left <= 0:
                    tails = "\n".join(self.tail(process, 1500) for process in among)
                    raise AssertionError(f"no writer logged {needle!r} in {timeout}s:\n{tails}")
                self._changed.wait(left)

    def tail(self, process: subprocess.Popen[str], chars: int = 3000) -> str:
        with self._changed:
            text = "".join(self._lines[process.pid])
        return f"--- pid {process.pid} (exit {process.poll()}):\n{text[-chars:]}"

    def join(self, timeout: float = 10.0) -> None:
        for reader in self._readers:
            reader.join(timeout)


@contextmanager
def writers(
    run: MeteringRun,
    names: Sequence[str],
    until_idle: float | None,
    hosts: Sequence[str] | None = None,
    extra_env: dict[str, dict[str, str]] | None = None,
) -> Iterator[tuple[list[subprocess.Popen[str]], Outputs]]:
    """Start one writer per name at once (name i on host i, or all on host-a); whatever
    is still running at the end is resumed (it may be paused), asked to stop, and
    killed if it does not."""
    on = list(hosts or ["host-a"] * len(names))
    processes = [
        start_writer(run, name, until_idle, host, (extra_env or {}).get(name))
        for name, host in zip(names, on, strict=True)
    ]
    outputs = Outputs(processes)
    try:
        yield processes, outputs
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        outputs.join()


def wait_for_exit(process: subprocess.Popen[str], outputs: Outputs, timeout: float) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"a writer did not finish in {timeout}s:\n{outputs.tail(process)}"
        ) from None


def assert_exited_zero(processes: Sequence[subprocess.Popen[str]], outputs: Outputs) -> None:
    for process in processes:
        code = wait_for_exit(process, outputs, WAIT_SECONDS)
        assert code == 0, outputs.tail(process)


# -- what the store holds --------------------------------------------------------


def count_problems(run: MeteringRun, want: Expectation) -> list[str]:
    """Every way the store's counts differ from the expectation."""
    problems: list[str] = []
    views = run.views()
    for view, rows in want.views.items():
        got = [{key: row[key] for key in rows[0]} for row in views[view]] if rows else views[view]
        if got != rows:
            differ = sum(1 for a, b in zip(got, rows, strict=False) if a != b)
            problems.append(
                f"{view}: {len(got)} rows, {len(rows)} expected, {differ} of the rows "
                f"in common differ; first difference: {_first_difference(got, rows)}"
            )
    rejected = run.rejected_by_reason()
    if rejected != want.rejected:
        problems.append(f"rejected_events by reason {rejected}, expected {want.rejected}")
    counted = run.query(
        "SELECT count() AS n, uniqExact(event_id) AS u FROM metering.counted_events"
    )[0]
    if (int(counted["n"]), int(counted["u"])) != (want.counted, want.counted):
        problems.append(
            f"counted_events holds {counted['n']} rows of {counted['u']} distinct ids, "
            f"expected {want.counted} of {want.counted}"
        )
    totals = run.query(
        "SELECT sum(messages) AS messages, sum(counted) AS counted, "
        "sum(duplicates) AS duplicates, sum(rejected) AS rejected FROM metering.flush_ledger"
    )[0]
    ledger = {key: int(value or 0) for key, value in totals.items()}
    wanted = {
        "messages": want.messages,
        "counted": want.counted,
        "duplicates": want.duplicates,
        "rejected": sum(want.rejected.values()),
    }
    if ledger != wanted:
        problems.append(f"flush_ledger totals {ledger}, expected {wanted}")
    return problems


def _first_difference(got: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    for a, b in zip(got, rows, strict=False):
        if a != b:
            return f"got {a}, expected {b}"
    return f"{len(got)} rows instead of {len(rows)}"


def ledger_rows(run: MeteringRun, topic: str) -> list[dict[str, Any]]:
    return run.query(
        "SELECT flush_seq, partition, first_offset, last_offset, messages, counted, "
        "duplicates, rejected, worker FROM metering.flush_ledger "
        f"WHERE topic = '{topic}' ORDER BY partition, first_offset, flush_seq"
    )


def tiling_problems(rows: list[dict[str, Any]], ends: dict[int, int]) -> list[str]:
    """Every way the ledger ranges fail to tile each partition from 0 to its end.

    Nothing here is transactional, so every offset holds a message: a range's messages
    are its length, and each is counted, a duplicate or rejected. A flush number is one
    commit by one writer: it may cover several partitions, each once.
    """
    problems: list[str] = []
    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    writers_of_seq: dict[int, set[str]] = defaultdict(set)
    for row in rows:
        by_partition[int(row["partition"])].append(row)
        writers_of_seq[int(row["flush_seq"])].add(str(row["worker"]))
    for partition, end in sorted(ends.items()):
        resume = 0
        seqs: set[int] = set()
        for row in by_partition.pop(partition, []):
            first, last, seq = (
                int(row["first_offset"]),
                int(row["last_offset"]),
                int(row["flush_seq"]),
            )
            where = f"partition {partition} flush {seq} [{first}, {last}] by {row['worker']}"
            if first < resume:
                problems.append(f"{where} overlaps offsets up to {resume - 1}")
            elif first > resume:
                problems.append(f"{where} leaves offsets {resume}..{first - 1} uncovered")
            if seq in seqs:
                problems.append(f"{where}: flush {seq} covers this partition twice")
            seqs.add(seq)
            parts = int(row["counted"]) + int(row["duplicates"]) + int(row["rejected"])
            if not int(row["messages"]) == last - first + 1 == parts:
                problems.append(
                    f"{where}: {row['messages']} messages, {last - first + 1} offsets, "
                    f"{parts} counted + duplicates + rejected"
                )
            resume = max(resume, last + 1)
        if resume != end:
            problems.append(
                f"partition {partition}: the ledger ends at {resume}, the topic at {end}"
            )
    for partition in sorted(by_partition):
        problems.append(f"partition {partition} is in the ledger but not on the topic")
    for seq, names in sorted(writers_of_seq.items()):
        if len(names) > 1:
            problems.append(f"flush {seq} was committed by several writers: {sorted(names)}")
    return problems


def evidence_problems(run: MeteringRun) -> list[str]:
    """`metering verify` and `metering certify` of every month with counted events."""
    problems: list[str] = []
    verified = run.metering("verify")
    if verified.returncode != 0 or not verified.stdout.rstrip().endswith("\nverified"):
        problems.append(f"metering verify: {(verified.stdout + verified.stderr)[-1500:]}")
    months = run.query(
        "SELECT DISTINCT toString(toStartOfMonth(occurred_at)) AS month "
        "FROM metering.counted_events ORDER BY month"
    )
    for row in months:
        month = str(row["month"])[:7]
        certified = run.metering("certify", "--month", month)
        if certified.returncode != 0 or not json.loads(certified.stdout)["complete"]:
            problems.append(
                f"metering certify --month {month}: {(certified.stdout + certified.stderr)[-1500:]}"
            )
    return problems


def registered_hosts(run: MeteringRun) -> set[str]:
    return {str(row["host"]) for row in run.query("SELECT host FROM metering.writers")}


def assert_exact_and_tiled(
    run: MeteringRun, want: Expectation, writers_expected: set[str] | int
) -> None:
    """Counts equal to the expectation, the ledger tiling every partition, and the
    flushes written by exactly these writers (or this many writers)."""
    topic = run.env["METERING_EVENTS_TOPIC"]
    rows = ledger_rows(run, topic)
    problems = count_problems(run, want) + tiling_problems(
        rows, end_offsets(run, topic, "read_committed")
    )
    names = {str(row["worker"]) for row in rows}
    if isinstance(writers_expected, int):
        if len(names) != writers_expected:
            problems.append(f"flushes by {sorted(names)}, expected {writers_expected} writers")
    elif names != writers_expected:
        problems.append(f"flushes by {sorted(names)}, expected {sorted(writers_expected)}")
    problems += evidence_problems(run)
    shown = "\n  ".join(problems[:PROBLEMS_SHOWN])
    more = len(problems) - PROBLEMS_SHOWN
    assert not problems, f"{len(problems)} problems:\n  {shown}" + (
        f"\n  ... and {more} more" if more > 0 else ""
    )


# -- test 1: a writer killed, another paused past the session timeout ---------------


def test_three_writers_on_two_hosts_one_killed_mid_flush_one_paused(
    kafka_env: dict[str, str], tmp_path: Path
) -> None:
    run = MeteringRun.fresh(kafka_env, tmp_path, partitions=PARTITIONS)
    run.replay(*[CORPUS] * REPLAYS)
    names = writer_names(3)
    hosts = ["host-a", "host-a", "host-b"]
    # writer-1 kills itself (SIGKILL) in its 4th flush, with its rows staged and no
    # commit: the others must count that range once, and nobody's staged rows but its
    # own may be deleted.
    crash = {"writer-1": {"METERING_FAULT_CRASH": "after_stage@4"}}
    with writers(run, names, until_idle=2.0, hosts=hosts, extra_env=crash) as (
        processes,
        outputs,
    ):
        victim = processes[0]
        assert wait_for_exit(victim, outputs, 120) == -signal.SIGKILL
        marks = outputs.marks()
        others = processes[1:]
        # Paused right after a commit of its own: its next batch is read and in flight.
        paused = outputs.next_to_log("flush committed", others, timeout=120, since=marks)
        paused.send_signal(signal.SIGSTOP)
        try:
            time.sleep(PAUSE_SECONDS)  # its partitions move to the other writer
        finally:
            paused.send_signal(signal.SIGCONT)
        assert_exited_zero(others, outputs)
    assert_exact_and_tiled(run, corpus_expectation(REPLAYS), set(names))
    if NAMED_HOSTS:
        assert registered_hosts(run) == {"host-a", "host-b"}
    # The killed writer's staged rows are gone: others counted its range, so its flush
    # could never commit, and a writer that stops idle tidies the store last.
    orphans = run.query(
        "SELECT (SELECT count() FROM metering.counted_events WHERE flush_seq NOT IN "
        "(SELECT flush_seq FROM metering.flush_ledger)) + (SELECT count() FROM "
        "metering.rejections_log WHERE flush_seq NOT IN (SELECT flush_seq FROM "
        "metering.flush_ledger)) AS n"
    )
    assert int(orphans[0]["n"]) == 0
    listed = run.metering("writers", "--all", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    states = {row["name"]: row["status"] for row in json.loads(listed.stdout)}
    assert states["writer-2"] == states["writer-3"] == "stopped"
    assert states["writer-1"] in ("live", "silent")  # it never said it stopped


# -- test 2: the copies of an event on partitions of different writers --------------


def group_assignment(run: MeteringRun, members: int, timeout: float = 90) -> list[set[int]]:
    """The events partitions of each member of the run's group, once the group is
    stable with `members` members that each own some (the same answer twice in a row)."""
    group, topic = run.env["METERING_CONSUMER_GROUP"], run.env["METERING_EVENTS_TOPIC"]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(run))
    deadline = time.monotonic() + timeout
    previous: list[set[int]] | None = None
    seen: Any = None
    try:
        while time.monotonic() < deadline:
            try:
                seen = admin.describe_groups([group])[group]
            except KafkaError:  # a fresh broker's coordinator is still loading
                time.sleep(1.0)
                continue
            owned = (
                sorted(
                    (_assigned(member, topic) for member in seen["members"]),
                    key=lambda parts: sorted(parts),
                )
                if seen["group_state"] == "Stable"
                else []
            )
            complete = len(owned) == members and all(owned)
            if complete and set().union(*owned) == set(range(PARTITIONS)):
                if owned == previous:
                    return owned
                previous = owned
            else:
                previous = None
            time.sleep(1.0)
    finally:
        admin.close()
    raise AssertionError(f"group {group} never settled with {members} owners: {seen}")


def _assigned(member: Any, topic: str) -> set[int]:
    assignment = member.get("member_assignment") or {}
    if not isinstance(assignment, dict):
        return set()
    return {
        int(partition)
        for entry in assignment.get("assigned_partitions", [])
        if entry["topic"] == topic
        for partition in entry["partitions"]
    }


@dataclass(frozen=True)
class Send:
    message: Message
    partition: int


def cross_partition_sends(
    owners: list[set[int]], seed: int, events: int, duplicated_every: int
) -> list[Send]:
    """`events` valid events on random partitions; every `duplicated_every`-th is sent a
    second time, the same bytes under another key, to a partition another writer owns.
    Half of the copies follow their original at once (the two writers see them at the
    same time), the other half come after every original."""
    rng = random.Random(seed)
    owner_of = {partition: index for index, parts in enumerate(owners) for partition in parts}
    sends: list[Send] = []
    late: list[Send] = []
    for number in range(events):
        original = make_event(rng)
        partition = rng.randrange(PARTITIONS)
        sends.append(Send(original, partition))
        if number % duplicated_every:
            continue
        elsewhere = sorted(p for p, owner in owner_of.items() if owner != owner_of[partition])
        key = (original.key or b"") + b"/copy"
        copy = Send(Message(key, original.value, event=original.event), rng.choice(elsewhere))
        (sends if rng.random() < 0.5 else late).append(copy)
    return sends + late


def publish(run: MeteringRun, sends: Sequence[Send]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap(run),
        acks="all",
        linger_ms=5,
        max_in_flight_requests_per_connection=1,
    )
    topic = run.env["METERING_EVENTS_TOPIC"]
    try:
        futures = [
            producer.send(topic, key=s.message.key, value=s.message.value, partition=s.partition)
            for s in sends
        ]
        producer.flush()
        for future in futures:
            future.get(timeout=30)
    finally:
        producer.close()


def wait_until_flushed(run: MeteringRun, timeout: float = 120) -> None:
    """Until the ledger reaches the end of every partition of the events topic."""
    topic = run.env["METERING_EVENTS_TOPIC"]
    ends = end_offsets(run, topic, "read_committed")
    deadline = time.monotonic() + timeout
    reached: dict[int, int] = {}
    while time.monotonic() < deadline:
        reached = {
            int(row["partition"]): int(row["next"])
            for row in run.query(
                "SELECT partition, max(last_offset) + 1 AS next FROM metering.flush_ledger "
                f"WHERE topic = '{topic}' GROUP BY partition"
            )
        }
        if all(reached.get(partition, 0) >= end for partition, end in ends.items() if end):
            return
        time.sleep(0.5)
    raise AssertionError(f"the ledger reached {reached} in {timeout}s, the topic ends at {ends}")


def test_duplicates_across_partitions_counted_once(
    kafka_env: dict[str, str], tmp_path: Path
) -> None:
    run = MeteringRun.fresh(kafka_env, tmp_path, partitions=PARTITIONS)
    create_events_topic(run)
    names = writer_names(3)
    with writers(run, names, until_idle=None) as (processes, outputs):
        owners = group_assignment(run, members=len(names))
        sends = cross_partition_sends(owners, seed=20261202, events=900, duplicated_every=3)
        publish(run, sends)
        wait_until_flushed(run)
        for process in processes:
            process.send_signal(signal.SIGTERM)
        assert_exited_zero(processes, outputs)
    events = {send.message.event["event_id"] for send in sends if send.message.event}
    assert (len(events), len(sends)) == (900, 1200)  # the reference itself
    want = Expectation(
        views=expected_views([send.message for send in sends]),
        rejected={},
        counted=len(events),
        duplicates=len(sends) - len(events),
        messages=len(sends),
    )
    assert_exact_and_tiled(run, want, set(names))


# -- a rolling restart: the new writer starts before the old one stops --------------


def test_a_rolling_restart_counts_exactly(kafka_env: dict[str, str], tmp_path: Path) -> None:
    """As a Deployment's rolling update does it: the new pod (another host) starts while
    the old one still counts, takes some partitions in the rebalance, then the old one
    gets SIGTERM and the new one counts the rest."""
    run = MeteringRun.fresh(kafka_env, tmp_path, partitions=PARTITIONS)
    run.replay(*[CORPUS] * REPLAYS)
    old = start_writer(run, "writer-old", None, host="host-a")
    outputs = Outputs([old])
    new: subprocess.Popen[str] | None = None
    try:
        outputs.next_to_log("flush committed", [old], timeout=120)
        new = start_writer(run, "writer-new", 2.0, host="host-b")
        outputs.watch(new)
        marks = outputs.marks()
        outputs.next_to_log("flush committed", [new], timeout=120, since=marks)
        old.send_signal(signal.SIGTERM)
        assert wait_for_exit(old, outputs, 60) == 0, outputs.tail(old)
        assert wait_for_exit(new, outputs, WAIT_SECONDS) == 0, outputs.tail(new)
    finally:
        for process in (old, new):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        outputs.join()
    assert_exact_and_tiled(run, corpus_expectation(REPLAYS), {"writer-old", "writer-new"})
    if NAMED_HOSTS:
        assert registered_hosts(run) == {"host-a", "host-b"}


# -- a correction applied while two hosts count ----------------------------------------


def correct(run: MeteringRun, *args: str) -> str:
    result = run.metering(
        "correct",
        *args,
        "--reason",
        "counted in error",
        "--requested-by",
        "ana.billing",
        "--approved-by",
        "ben.cfo",
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_corrections_applied_while_two_hosts_count(
    kafka_env: dict[str, str], tmp_path: Path
) -> None:
    run = MeteringRun.fresh(kafka_env, tmp_path, partitions=PARTITIONS)
    create_events_topic(run)
    rng = random.Random(20261207)
    first = [Send(make_event(rng), rng.randrange(PARTITIONS)) for _ in range(600)]
    later = [Send(make_event(rng), rng.randrange(PARTITIONS)) for _ in range(900)]
    voided = first[17].message.event
    amended = first[42].message.event
    assert voided is not None and amended is not None
    names = writer_names(2)
    with writers(run, names, until_idle=None, hosts=["host-a", "host-b"]) as (
        processes,
        outputs,
    ):
        group_assignment(run, members=2)
        publish(run, first)
        wait_until_flushed(run)
        # The corrections go out while the later events are being counted by both.
        sender = threading.Thread(target=publish, args=(run, later))
        sender.start()
        void_id = correct(run, "void", "--event-id", voided["event_id"])
        amend_id = correct(
            run, "amend", "--event-id", amended["event_id"], "--tokens-in", "7", "--tokens-out", "9"
        )
        sender.join()
        wait_until_flushed(run)
        wait_for(
            "both corrections applied",
            lambda: len(run.query("SELECT correction_id FROM metering.corrections_applied")) == 2,
            60,
        )
        for process in processes:
            process.send_signal(signal.SIGTERM)
        assert_exited_zero(processes, outputs)
    decided = run.query(
        "SELECT correction_id, status, events_marked FROM metering.corrections "
        "ORDER BY correction_seq"
    )
    assert [(d["correction_id"], d["status"], int(d["events_marked"])) for d in decided] == [
        (void_id, "applied", 1),
        (amend_id, "applied", 1),
    ]
    corrected: list[Message] = []
    for send in first + later:
        event = send.message.event
        assert event is not None
        if event["event_id"] == voided["event_id"]:
            continue
        if event["event_id"] == amended["event_id"]:
            event = {**event, "tokens_in": 7, "tokens_out": 9}
        corrected.append(Message(send.message.key, send.message.value, event=event))
    sends = first + later
    want = Expectation(
        views=expected_views(corrected),
        rejected={},
        counted=len(sends),
        duplicates=0,
        messages=len(sends),
    )
    assert_exact_and_tiled(run, want, set(names))


# -- test 3: the supervisor of N writers ------------------------------------------


def test_processes_flag_counts_exactly(kafka_env: dict[str, str], tmp_path: Path) -> None:
    run = MeteringRun.fresh(kafka_env, tmp_path, partitions=PARTITIONS)
    # Three copies: one is counted by the first writers to join before the third has
    # its partitions (the writers no longer wait for each other at the ledger).
    run.replay(*[CORPUS] * REPLAYS)
    result = run.metering(
        "worker", "--processes", "3", "--until-idle", "2", extra_env=FAST_REBALANCE_ENV, timeout=240
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert_exact_and_tiled(run, corpus_expectation(REPLAYS), writers_expected=3)


# -- test 4: the supervisor restarts a killed writer and takes its writers with it ----


def children_of(pid: int) -> set[int]:
    """The live child processes of `pid`, from /proc."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


def wait_for(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s")


def free_ports(count: int) -> int:
    """A port such that it and the `count - 1` after it are free (a supervisor serves
    the first, writer i the first plus i)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise AssertionError(f"no {count} consecutive free ports")


def http_get(url: str) -> tuple[int, str]:
    """Status and body; a refused connection is status 0."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()
    except OSError:
        return 0, ""


def supervisor_health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = http_get(f"http://127.0.0.1:{port}/healthz")
    return status, (json.loads(body) if body else {})


WRITER_NAMES = {"supervised-1", "supervised-2"}


def all_writers_healthy(port: int) -> bool:
    status, body = supervisor_health(port)
    writers = body.get("writers", {})
    return (
        status == 200
        and body.get("status") == "ok"
        and set(writers) == WRITER_NAMES
        and all(state.get("status") == "ok" for state in writers.values())
    )


def writers_up(port: int) -> set[str]:
    status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, (status, text[-500:])
    return {
        line.split('"')[1]
        for line in text.splitlines()
        if line.startswith("govmeter_writer_up{") and line.endswith(" 1")
    }


def test_supervisor_restarts_a_killed_writer_and_dies_with_its_writers(
    kafka_env: dict[str, str], tmp_path: Path
) -> None:
    """Also the supervisor's health endpoint over real writers: ok with both up, 503
    naming the killed one until its successor answers, ok again after."""
    run = MeteringRun.fresh(kafka_env, tmp_path, partitions=PARTITIONS)
    run.replay(*[CORPUS] * REPLAYS)
    port = free_ports(3)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "worker", "--processes", "2"],
        env={
            **run.env,
            **FAST_REBALANCE_ENV,
            "METERING_WORKER_NAME": "supervised",
            "METERING_HEALTH_PORT": str(port),
        },
        cwd=run.workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    outputs = Outputs([supervisor])
    try:
        outputs.next_to_log("flush committed", [supervisor], timeout=120)
        first = wait_for("two writers", lambda: (c := children_of(supervisor.pid)) and c, 30)
        assert len(first) == 2, first
        wait_for("both writers healthy", lambda: all_writers_healthy(port), 60)
        assert writers_up(port) == WRITER_NAMES
        victim = min(first)
        marks = outputs.marks()
        os.kill(victim, signal.SIGKILL)
        # The supervisor waits a second before it starts the writer again, and the new
        # one needs its imports before it answers: the endpoint says so meanwhile.
        status, body = wait_for(
            "the endpoint failing",
            lambda: (answer := supervisor_health(port))[0] != 200 and answer,
            10,
        )
        unavailable = {
            name
            for name, state in body["writers"].items()
            if state.get("status") == "writer_unavailable"
        }
        assert (status, body["status"], len(unavailable)) == (503, "writer_unavailable", 1), body
        assert writers_up(port) == WRITER_NAMES - unavailable
        outputs.next_to_log("starting it again", [supervisor], timeout=30, since=marks)
        again = wait_for(
            "a new writer", lambda: (c := children_of(supervisor.pid)) - first and c, 30
        )
        assert len(again) == 2 and victim not in again, again
        wait_for("both writers healthy again", lambda: all_writers_healthy(port), 60)
        assert writers_up(port) == WRITER_NAMES
        wait_until_flushed(run)
        writers_now = children_of(supervisor.pid)
        supervisor.send_signal(signal.SIGKILL)
        assert supervisor.wait(timeout=30) == -signal.SIGKILL
        # The kernel ends every writer with its supervisor (PR_SET_PDEATHSIG).
        wait_for(
            "writers ended with the supervisor",
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in writers_now),
            30,
        )
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(timeout=30)
        outputs.join()
    assert_exact_and_tiled(run, corpus_expectation(REPLAYS), {"supervised-1", "supervised-2"})
