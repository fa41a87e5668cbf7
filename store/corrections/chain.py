"""Tamper evidence for corrections: each committed correction carries a hash of what it
decided and of every event it marked, chained to the previous correction's hash.

A correction changes what agencies are billed, so its record must not change unnoticed:
`metering verify` recomputes both hashes from `metering.corrections` and
`metering.correction_marks` and names the first correction that differs (an edited
reason or approver, a mark added, removed or changed, a correction removed or
inserted). The content is UTF-8 JSON, one line for the decision and one per mark in
event id order, so the definition is exactly this module:

    decision: [id, seq, status, refused_reason, action, reason, requested_by,
               approved_by, requested_at_ms, event_id, scope_agency_id, scope_from_ms,
               scope_to_ms, amendments, events_marked, source_topic, source_partition,
               source_offset, worker, committed_at_ms]
    mark:     [event_id, action, agency_id, agency_level, tokens_in, tokens_out]
    chain:    sha256(previous chain + content), "" before the first correction
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import orjson

from store.ledger.chain import chain_sha256, epoch_milliseconds

__all__ = ["DECISION_FIELDS", "MARK_FIELDS", "chain_sha256", "correction_content_sha256"]

DECISION_FIELDS: Final = (
    "correction_id",
    "correction_seq",
    "status",
    "refused_reason",
    "action",
    "reason",
    "requested_by",
    "approved_by",
    "requested_at",
    "event_id",
    "scope_agency_id",
    "scope_from",
    "scope_to",
    "amendments",
    "events_marked",
    "source_topic",
    "source_partition",
    "source_offset",
    "worker",
    "committed_at",
)
MARK_FIELDS: Final = ("event_id", "action", "agency_id", "agency_level", "tokens_in", "tokens_out")


def _value(value: Any) -> Any:
    if isinstance(value, datetime):
        return epoch_milliseconds(value)
    if isinstance(value, str | int) or value is None:
        return value
    return str(value)


def correction_content_sha256(decision: Mapping[str, Any], marks: Iterable[Sequence[Any]]) -> str:
    """The hash of one correction: its decision row and its marks (`MARK_FIELDS` each)."""
    digest = hashlib.sha256()
    digest.update(orjson.dumps([_value(decision[name]) for name in DECISION_FIELDS]) + b"\n")
    for mark in sorted((tuple(_value(v) for v in mark) for mark in marks), key=lambda m: m[0]):
        digest.update(orjson.dumps(list(mark)) + b"\n")
    return digest.hexdigest()
