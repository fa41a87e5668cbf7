"""Seeded synthetic usage traffic for the government chat service.

Every user message becomes one usage event, one compact JSON object per line. The generator
streams: agency and user tables (about 90k users) are held in memory, events never are, so a run
of 18 million messages uses the same memory as a run of 18 thousand.

Shape of the traffic:

* agencies are federal / state / local (about 15% / 25% / 60% by count); users per agency follow
  a power law, so a few federal departments have thousands of users and most local agencies a
  handful; federal agencies hold the largest share of users;
* each agency sits in one US time zone (UTC-5 .. UTC-10); traffic follows local working hours
  (peak 9-17) and weekdays are much busier than weekends;
* messages per user are log-normal (heavy users, long tail); a user's consecutive messages share
  a conversation id until the conversation ends or goes idle;
* models and features have fixed shares; token counts are log-normal per model and feature.

Time zones are fixed standard-time offsets (no daylight saving; the default start, 2 November
2026, is the day after US daylight time ends).

Events are produced hour by hour, each hour in consecutive slices of at most ``_SLICE_MAX``
events sorted by time, so ``occurred_at`` never decreases along the stream without any sorting
of the whole run. Two deliberate exceptions: producer retries (``duplicate_rate``) re-send an
identical line shortly after the original, and late events (``late_rate``) carry an
``occurred_at`` one to six hours before their neighbours (never before the plan's start).

The output is a pure function of the plan: same plan, same bytes.
"""

from metering.simulate.events import generate_events
from metering.simulate.output import write_jsonl
from metering.simulate.plan import FEATURES, MODELS, SimulationPlan, SimulationStats
from metering.simulate.population import population_stats

__all__ = [
    "FEATURES",
    "MODELS",
    "SimulationPlan",
    "SimulationStats",
    "generate_events",
    "population_stats",
    "write_jsonl",
]
