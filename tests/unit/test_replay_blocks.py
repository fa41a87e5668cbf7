"""The block reader: the same lines as a line-at-a-time reader, wherever the blocks end,
and line numbers that count every line (blank ones too), for naming refused messages."""

from __future__ import annotations

import gzip
import io
import random
from pathlib import Path

import pytest

import metering.replay as replay
from metering.replay import line_blocks, numbered_lines, read_lines


def _previous_reader(content: bytes) -> list[tuple[int, bytes]]:
    """The reader replay had before: binary readline, drop the `\n`, then one `\r`."""
    out = []
    for number, raw in enumerate(io.BytesIO(content), 1):
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if line.endswith(b"\r"):
            line = line[:-1]
        if line:
            out.append((number, line))
    return out


def _random_content(rng: random.Random, size: int) -> bytes:
    pieces = [b"\n", b"\r\n", b"\r", b"{", b"}", b'"agency_id"', b"x" * 7, b"\xff", b" "]
    return b"".join(rng.choice(pieces) for _ in range(size))


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_any_block_size_reads_the_same_numbered_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int, suffix: str
) -> None:
    monkeypatch.setattr(replay, "_BLOCK", block)
    rng = random.Random(block)
    for attempt in range(20):
        content = _random_content(rng, rng.randint(0, 300))
        path = tmp_path / f"events-{attempt}{suffix}"
        path.write_bytes(gzip.compress(content) if suffix.endswith(".gz") else content)
        expected = _previous_reader(content)
        assert list(numbered_lines(path)) == expected, content
        assert list(read_lines(path)) == [line for _, line in expected]


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"a\n\n\r\nb\r\n\nc")
    assert list(numbered_lines(path)) == [(1, b"a"), (4, b"b"), (6, b"c")]


def test_blocks_keep_blank_lines_so_positions_are_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"a\n\nb\r\n")
    assert [line for block in line_blocks(path) for line in block] == [b"a", b"", b"b"]


def test_a_carriage_return_split_from_its_newline_by_a_block_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay, "_BLOCK", 4)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"abc\r\ndef\r\n")  # the first block ends between \r and \n
    assert list(numbered_lines(path)) == [(1, b"abc"), (2, b"def")]
