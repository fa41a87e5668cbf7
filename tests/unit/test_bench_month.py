"""The month benchmark's corpus: its expected totals against an independent count.

The expectation is computed from the kinds the fault layer assigned; the test classifies
every line with the pipeline's own classifier and dedupes by event id over the whole run,
so a fault that is not the rejection it claims to be, or a duplicate the corpus missed,
shows as a difference.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson

from bench.month_corpus import BAD_KINDS, month_corpus
from schemas.rejections import Rejection, classify

MESSAGES = 30_000


def test_expected_totals_equal_classify_then_dedupe(tmp_path: Path) -> None:
    corpus = month_corpus(tmp_path, MESSAGES, seed=11)
    lines = corpus.path.read_bytes().split(b"\n")[:-1]
    totals: dict[tuple[str, str, str, str], list[int]] = {}
    seen: set[str] = set()
    rejected: Counter[str] = Counter()
    duplicates = 0
    offsets: Counter[str] = Counter()
    for line in lines:
        verdict = classify(line)
        if isinstance(verdict, Rejection):
            rejected[verdict.reason.value] += 1
            continue
        if verdict.event_id in seen:
            duplicates += 1
            continue
        seen.add(verdict.event_id)
        occurred = orjson.loads(line)["occurred_at"]
        offsets[occurred[23:]] += 1
        key = (
            verdict.occurred_at.date().isoformat(),
            verdict.tenant,
            verdict.agency_id,
            verdict.agency_level,
        )
        row = totals.setdefault(key, [0, 0, 0])
        row[0] += 1
        row[1] += verdict.tokens_in
        row[2] += verdict.tokens_out
    expected = corpus.expected
    assert expected.lines == len(lines)
    assert expected.reference.messages == len(seen) == MESSAGES
    assert expected.reference.totals == totals
    assert expected.duplicates == duplicates == round(MESSAGES * 0.02)
    assert expected.rejected == dict(rejected)
    assert set(rejected) == {"too_large", *BAD_KINDS}  # every class
    assert 0.025 * MESSAGES < sum(rejected.values()) < 0.035 * MESSAGES
    assert min(len(line) for line in lines if len(line) > 64 * 1024) > 70 * 1024
    assert len(offsets) > 5 and offsets["Z"] > 0  # several UTC offsets
    assert sum(1 for line in lines if b'"client":' in line) > 0.05 * MESSAGES


def test_the_corpus_is_generated_once(tmp_path: Path) -> None:
    first = month_corpus(tmp_path, 2_000, seed=3)
    stamp = first.path.stat().st_mtime_ns
    again = month_corpus(tmp_path, 2_000, seed=3)
    assert again.path.stat().st_mtime_ns == stamp
    assert again.expected.to_json() == first.expected.to_json()
