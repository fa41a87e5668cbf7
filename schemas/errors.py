"""One exception tree for the whole project, in the lowest layer so every layer can use it.

    GovmeterError                 every error raised on purpose; its message names the
    │                             file, field or setting that failed and what to do
    ├── InputError (ValueError)   bad input: settings, a price book, a period, an agency
    │                             id, a batch, a pseudonym key, DDL
    └── ServiceError (RuntimeError)  a service or the store's state: the store and its
                                  migrations, the local server, Kafka, the intake,
                                  replay, billing, a gap in the ledger

`metering.errors.explain` prints any `GovmeterError` as it is; the CLI exits 1.
"""

from __future__ import annotations

__all__ = ["GovmeterError", "InputError", "ServiceError"]


class GovmeterError(Exception):
    """Raised on purpose; the message says what failed and what to do."""


class InputError(GovmeterError, ValueError):
    """Input that cannot be used: settings, files, arguments, messages."""


class ServiceError(GovmeterError, RuntimeError):
    """A service (store, Kafka, local server) or the store's state stands in the way."""
