"""Corrections, append-only: the `metering correct` command (`command.py`). The record
itself is `schemas.corrections` (the worker reads it too); the worker's applier is
`streams.corrections`; the store side is `store.corrections`."""

from metering.corrections.command import (
    add_correct_command,
    publish_correction,
    record_from_arguments,
    run_correct,
)

__all__ = ["add_correct_command", "publish_correction", "record_from_arguments", "run_correct"]
