"""Events produced by the Apache Kafka Java client, the client most services use.

A small Java program (`java/StepProducer.java`, run from source by the machine's Java
17 with the broker's own kafka-clients jar) sends recorded steps: plain sends of an
idempotent producer and the sends of a transactional producer, committed or aborted.
The Java client writes its own record batches (producer ids, sequence numbers,
compression, transaction markers); the views must be exactly what the messages say.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.integration.harness import ROOT, MeteringRun
from tests.integration.test_codecs import (
    assert_corpus_exact,
    corpus_messages,
    create_events_topic,
    decoder_calls,
)
from tests.integration.test_transactions import (
    SMALL_BATCHES,
    Message,
    Step,
    assert_exact,
    make_steps,
    run_worker,
)

pytestmark = pytest.mark.integration

PROGRAM = Path(__file__).parent / "java" / "StepProducer.java"


def kafka_jars() -> Path:
    """The jar cache `infra/kafka/start` fills (it holds kafka-clients and its codecs)."""
    found = subprocess.run(
        ["bash", "-c", 'source infra/kafka/lib.sh && printf %s "$KAFKA_JARS_DIR"'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jars = Path(found)
    if not any(jars.glob("kafka-clients-*.jar")):
        pytest.fail(
            f"no kafka-clients jar in {jars} (KAFKA_JARS_DIR): run infra/kafka/start once, "
            "it fetches the jars from Maven Central"
        )
    return jars


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    command = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if command is None:
        pytest.fail("no `java` on PATH and JAVA_HOME is not set: the broker needs Java 17 too")
    return command


def write_steps(path: Path, records: Sequence[tuple[bytes, Message | None]]) -> None:
    """The steps file StepProducer reads: an op byte, then key and value for sends."""
    with path.open("wb") as out:
        for op, message in records:
            out.write(op)
            if message is not None:
                key = message.key
                out.write(struct.pack(">i", -1 if key is None else len(key)))
                out.write(key or b"")
                out.write(struct.pack(">i", len(message.value)))
                out.write(message.value)


def produce_with_java(run: MeteringRun, topic: str, compression: str, steps_file: Path) -> str:
    jars = kafka_jars()
    result = subprocess.run(
        [
            java(),
            "-cp",
            os.pathsep.join(str(jar) for jar in sorted(jars.glob("*.jar"))),
            str(PROGRAM),
            run.env["KAFKA_BOOTSTRAP_SERVERS"],
            topic,
            compression,
            str(steps_file),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def transaction_records(steps: list[Step]) -> list[tuple[bytes, Message | None]]:
    records: list[tuple[bytes, Message | None]] = []
    for step in steps:
        if step.mode == "plain":
            records.extend((b"P", m) for m in step.messages)
            continue
        records.append((b"B", None))
        records.extend((b"T", m) for m in step.messages)
        records.extend((b"P", m) for m in step.plain_while_open)
        records.append((b"C" if step.mode == "commit" else b"A", None))
    return records


def test_corpus_from_the_java_client_is_exact(
    run: MeteringRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = create_events_topic(run)
    records = [(b"P", Message(key, value)) for key, value in corpus_messages()]
    write_steps(tmp_path / "steps.bin", records)

    output = produce_with_java(run, topic, "zstd", tmp_path / "steps.bin")
    assert output.strip() == f"sent {len(records)} plain and 0 transactional message(s) to {topic}"
    assert set(decoder_calls(run, topic, monkeypatch)) == {"zstd"}  # the Java client's zstd

    result = run.worker(until_idle=1.0)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_corpus_exact(run)


@pytest.mark.parametrize("intake", ["batch", "agent"])
def test_transactions_from_the_java_client_are_exact(
    run: MeteringRun, tmp_path: Path, intake: str
) -> None:
    run.env["METERING_INTAKE"] = intake
    topic = create_events_topic(run)
    steps = make_steps(seed=20261202, transactions=30)
    records = transaction_records(steps)
    write_steps(tmp_path / "steps.bin", records)

    output = produce_with_java(run, topic, "snappy", tmp_path / "steps.bin")
    plain = sum(1 for op, _ in records if op == b"P")
    transactional = sum(1 for op, _ in records if op == b"T")
    assert output.strip() == (
        f"sent {plain} plain and {transactional} transactional message(s) to {topic}"
    )

    run_worker(run, SMALL_BATCHES)
    assert_exact(run, steps, topic, ledger_at_end=intake == "batch")
    run_worker(run, SMALL_BATCHES)  # again: nothing new, nothing twice
    assert_exact(run, steps, topic, ledger_at_end=intake == "batch")
