"""Replay input: lines byte for byte (JSONL and JSONL.gz) and their Kafka keys."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from metering.replay import ReplayError, key_for, read_lines

CONTENT = (
    b'{"agency_id": "dept-1"}\n'
    b'{"agency_id": "dept-2"}\r\n'
    b"\n"
    b"\r\n"
    b"   \n"
    b"\t\r\n"
    b"not json \xff\xfe\x00 bytes\n"
    b"inner\rcarriage\n"
    b"  padded  \n"
    b"last line without newline"
)

EXPECTED = [
    b'{"agency_id": "dept-1"}',
    b'{"agency_id": "dept-2"}',
    b"   ",
    b"\t",
    b"not json \xff\xfe\x00 bytes",
    b"inner\rcarriage",
    b"  padded  ",
    b"last line without newline",
]


def test_read_lines_strips_newlines_skips_empty_keeps_everything_else(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(CONTENT)
    assert list(read_lines(path)) == EXPECTED


def test_read_lines_reads_gzip_the_same(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(gzip.compress(CONTENT))
    assert list(read_lines(path)) == EXPECTED


def test_trailing_carriage_return_without_newline_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"a\r\nb\r")
    assert list(read_lines(path)) == [b"a", b"b"]


def test_empty_file_yields_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert list(read_lines(path)) == []


def test_missing_file_is_a_replay_error(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="no such file"):
        list(read_lines(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize(
    ("line", "key"),
    [
        (b'{"agency_id": "dept-1", "tokens_in": 3}', b"dept-1"),
        (b'{"agency_id": "D\xc3\xa9pt"}', "Dépt".encode()),
        (b'{"agency_id": ""}', b""),
        (b'{"agency_id": "dept-1", "content": "x"}', b"dept-1"),
        (b'{"agency_id": 12}', None),
        (b'{"agency_id": null}', None),
        (b'{"tenant": "gov"}', None),
        (b'[{"agency_id": "dept-1"}]', None),
        (b'"dept-1"', None),
        (b'{"agency_id": "dept-1"', None),
        (b"not json", None),
        (b'{"agency_id": "dept-\xff"}', None),
    ],
)
def test_key_for_is_the_agency_id_where_the_line_parses(line: bytes, key: bytes | None) -> None:
    assert key_for(line) == key
