"""The metering contract in code: the usage event, the rejection classifier, the SQL."""

from schemas.events import AGENCY_LEVELS, CONTENT_FIELDS, UsageEvent, parse_rfc3339
from schemas.rejections import MAX_MESSAGE_BYTES, Reason, Rejection, classify, may_hold_content

__all__ = [
    "AGENCY_LEVELS",
    "CONTENT_FIELDS",
    "MAX_MESSAGE_BYTES",
    "Reason",
    "Rejection",
    "UsageEvent",
    "classify",
    "may_hold_content",
    "parse_rfc3339",
]
