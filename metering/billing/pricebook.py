"""Load and validate the price book (`pricebook.toml`); look up plans and list prices.

The rules the numbers follow are written in the TOML file itself, where reviewers
read them. This module only enforces the file's shape strictly (unknown keys, floats,
mid-month effective dates and duplicate entries are errors) and answers "which entry
is in force for this tenant or model in this month".
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal

from schemas.errors import InputError

__all__ = [
    "DEFAULT_PRICE_BOOK",
    "ModelPrice",
    "Plan",
    "PlanKind",
    "PriceBook",
    "PriceBookError",
    "load_price_book",
    "parse_price_book",
]

DEFAULT_PRICE_BOOK: Final = Path(__file__).with_name("pricebook.toml")

PlanKind = Literal["per_agency_fiscal_year", "per_active_user_month"]
_PLAN_KINDS: Final[tuple[PlanKind, ...]] = ("per_agency_fiscal_year", "per_active_user_month")

_PLAN_KEYS: Final = {"tenant", "kind", "price_usd", "effective_from", "note"}
_MODEL_KEYS: Final = {
    "model",
    "model_prefix",
    "input_per_million_usd",
    "output_per_million_usd",
    "effective_from",
    "note",
}


class PriceBookError(InputError):
    """The price book is malformed, or has no entry for what is being priced."""


@dataclass(frozen=True)
class Plan:
    tenant: str
    kind: PlanKind
    price_usd: Decimal
    effective_from: date
    note: str


@dataclass(frozen=True)
class ModelPrice:
    pattern: str  # the exact model name, or the prefix when `is_prefix`
    is_prefix: bool
    input_per_million_usd: Decimal
    output_per_million_usd: Decimal
    effective_from: date

    @property
    def describe(self) -> str:
        return f"model_prefix {self.pattern!r}" if self.is_prefix else f"model {self.pattern!r}"


@dataclass(frozen=True)
class PriceBook:
    source: str  # the path, for error messages
    sha256: str  # of the file's bytes, recorded with every billing run
    currency: str
    plans: tuple[Plan, ...]
    models: tuple[ModelPrice, ...]

    def plan_for(self, tenant: str, month_start: date) -> Plan:
        """The tenant's plan in force on the first day of `month_start`'s month."""
        candidates = [
            p for p in self.plans if p.tenant == tenant and p.effective_from <= month_start
        ]
        if not candidates:
            known = [p for p in self.plans if p.tenant == tenant]
            if known:
                first = min(p.effective_from for p in known)
                raise PriceBookError(
                    f"{self.source}: tenant {tenant!r} has no plan in force in "
                    f"{month_start:%Y-%m} (its first plan starts {first.isoformat()})"
                )
            raise PriceBookError(
                f"{self.source}: no plan for tenant {tenant!r}; add a [[plans]] entry "
                "for it and have it reviewed before billing"
            )
        return max(candidates, key=lambda p: p.effective_from)

    def price_for(self, model: str, month_start: date) -> ModelPrice:
        """Exact name first, then the longest matching prefix; the latest entry in force."""
        exact = [m for m in self.models if not m.is_prefix and m.pattern == model]
        if exact:
            return self._in_force(exact, model, month_start)
        prefixed = [m for m in self.models if m.is_prefix and model.startswith(m.pattern)]
        if prefixed:
            longest = max(len(m.pattern) for m in prefixed)
            return self._in_force(
                [m for m in prefixed if len(m.pattern) == longest], model, month_start
            )
        raise PriceBookError(
            f"{self.source}: no list price for model {model!r} (used in {month_start:%Y-%m}); "
            "there is no default price: add a [[models]] entry with `model` or "
            "`model_prefix` and have it reviewed before billing"
        )

    def _in_force(self, entries: list[ModelPrice], model: str, month_start: date) -> ModelPrice:
        candidates = [m for m in entries if m.effective_from <= month_start]
        if not candidates:
            first = min(m.effective_from for m in entries)
            raise PriceBookError(
                f"{self.source}: model {model!r} has no list price in force in "
                f"{month_start:%Y-%m} (its first entry starts {first.isoformat()})"
            )
        return max(candidates, key=lambda m: m.effective_from)


def load_price_book(path: Path | None = None) -> PriceBook:
    source = path or DEFAULT_PRICE_BOOK
    try:
        data = source.read_bytes()
    except OSError as error:
        raise PriceBookError(f"{source}: cannot read the price book: {error}") from None
    return parse_price_book(data, str(source))


def parse_price_book(data: bytes, source: str) -> PriceBook:
    try:
        document = tomllib.loads(data.decode("utf-8"), parse_float=Decimal)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise PriceBookError(f"{source}: not valid TOML: {error}") from None
    unknown = set(document) - {"schema_version", "currency", "plans", "models"}
    if unknown:
        raise PriceBookError(f"{source}: unknown top-level keys {sorted(unknown)}")
    if document.get("schema_version") != 1:
        raise PriceBookError(f"{source}: schema_version must be 1")
    if document.get("currency") != "USD":
        raise PriceBookError(f'{source}: currency must be "USD"')
    plans = tuple(
        _plan(entry, f"{source}: plans[{i}]")
        for i, entry in enumerate(_tables(document, "plans", source))
    )
    models = tuple(
        _model(entry, f"{source}: models[{i}]")
        for i, entry in enumerate(_tables(document, "models", source))
    )
    if not plans:
        raise PriceBookError(f"{source}: no [[plans]] entries")
    _no_duplicates(
        [(p.tenant, p.effective_from) for p in plans], f"{source}: two plans for", "tenant"
    )
    _no_duplicates(
        [(("prefix " if m.is_prefix else "") + m.pattern, m.effective_from) for m in models],
        f"{source}: two list prices for",
        "model",
    )
    return PriceBook(
        source=source,
        sha256=hashlib.sha256(data).hexdigest(),
        currency="USD",
        plans=plans,
        models=models,
    )


def _tables(document: dict[str, Any], key: str, source: str) -> list[dict[str, Any]]:
    value = document.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise PriceBookError(f"{source}: {key} must be an array of tables ([[{key}]])")
    return value


def _plan(entry: dict[str, Any], where: str) -> Plan:
    _known_keys(entry, _PLAN_KEYS, where)
    tenant = _text(entry, "tenant", where)
    kind = entry.get("kind")
    if kind not in _PLAN_KINDS:
        raise PriceBookError(f"{where}: kind must be one of {list(_PLAN_KINDS)}, not {kind!r}")
    return Plan(
        tenant=tenant,
        kind=kind,
        price_usd=_money(entry, "price_usd", where, places=2),
        effective_from=_month_start(entry, where),
        note=str(entry.get("note", "")),
    )


def _model(entry: dict[str, Any], where: str) -> ModelPrice:
    _known_keys(entry, _MODEL_KEYS, where)
    if ("model" in entry) == ("model_prefix" in entry):
        raise PriceBookError(f"{where}: give exactly one of `model` and `model_prefix`")
    is_prefix = "model_prefix" in entry
    pattern = _text(entry, "model_prefix" if is_prefix else "model", where)
    return ModelPrice(
        pattern=pattern,
        is_prefix=is_prefix,
        input_per_million_usd=_money(entry, "input_per_million_usd", where, places=6),
        output_per_million_usd=_money(entry, "output_per_million_usd", where, places=6),
        effective_from=_month_start(entry, where),
    )


def _known_keys(entry: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise PriceBookError(f"{where}: unknown keys {sorted(unknown)}")


def _text(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise PriceBookError(f"{where}: {key} must be a non-empty string")
    return value


def _money(entry: dict[str, Any], key: str, where: str, *, places: int) -> Decimal:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise PriceBookError(f"{where}: {key} must be a decimal number such as 1.00")
    amount = Decimal(value)
    if not amount.is_finite() or amount < 0:
        raise PriceBookError(f"{where}: {key} must be a finite amount >= 0")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -places:
        raise PriceBookError(f"{where}: {key} has more than {places} decimal places")
    return amount


def _month_start(entry: dict[str, Any], where: str) -> date:
    value = entry.get("effective_from")
    # tomllib gives `date` for a TOML local date and `datetime` for anything with a time.
    if not isinstance(value, date) or hasattr(value, "hour"):
        raise PriceBookError(f"{where}: effective_from must be a TOML date such as 2025-08-01")
    if value.day != 1:
        raise PriceBookError(
            f"{where}: effective_from {value.isoformat()} must be the first day of a month "
            "(prices apply to whole months)"
        )
    return value


def _no_duplicates(keys: list[tuple[str, date]], message: str, noun: str) -> None:
    seen: set[tuple[str, date]] = set()
    for key in keys:
        if key in seen:
            raise PriceBookError(f"{message} {noun} {key[0]!r} from {key[1].isoformat()}")
        seen.add(key)
