"""The price book file and the pricing rules it documents (statements, no store)."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from metering.billing.pricebook import (
    DEFAULT_PRICE_BOOK,
    PriceBookError,
    load_price_book,
    parse_price_book,
)
from metering.billing.statements import (
    BillingError,
    ModelTokens,
    MonthQuantities,
    Usage,
    price_statement,
    to_cents,
)
from metering.periods import fiscal_quarter, month
from metering.simulate import MODELS as SIMULATED_MODELS

CORPUS = Path(__file__).resolve().parents[1] / "replay/corpus.jsonl"
OCT, NOV, DEC = date(2026, 10, 1), date(2026, 11, 1), date(2026, 12, 1)

BOOK = b"""
schema_version = 1
currency = "USD"

[[plans]]
tenant = "gov"
kind = "per_agency_fiscal_year"
price_usd = 1.00
effective_from = 2025-08-01

[[plans]]
tenant = "ent"
kind = "per_active_user_month"
price_usd = 60.00
effective_from = 2025-01-01

[[plans]]
tenant = "ent"
kind = "per_active_user_month"
price_usd = 55.00
effective_from = 2026-12-01

[[models]]
model = "gpt-4o"
input_per_million_usd = 2.50
output_per_million_usd = 10.00
effective_from = 2025-01-01

[[models]]
model_prefix = "ft:"
input_per_million_usd = 1.00
output_per_million_usd = 1.00
effective_from = 2025-01-01

[[models]]
model_prefix = "ft:gpt-4o-2024-08-06:"
input_per_million_usd = 3.75
output_per_million_usd = 15.00
effective_from = 2025-01-01
"""


def corpus_models() -> set[str]:
    models = set()
    for raw in CORPUS.read_bytes().splitlines():
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        model = event.get("model") if isinstance(event, dict) else None
        if isinstance(model, str) and 1 <= len(model) <= 64:
            models.add(model)
    return models


def test_the_shipped_price_book_prices_every_tenant_and_model_in_use() -> None:
    book = load_price_book()
    assert book.sha256 == hashlib.sha256(DEFAULT_PRICE_BOOK.read_bytes()).hexdigest()
    for tenant in ("chatgpt-gov", "chatgpt-enterprise"):
        book.plan_for(tenant, OCT)
    models = corpus_models() | {name for name, *_ in SIMULATED_MODELS}
    assert {"gpt-4o", "gpt-4.1", "o3", "gpt-4o-mini", "o4-mini"} <= models
    for model in sorted(models):
        book.price_for(model, OCT)


def test_the_gov_plan_is_one_dollar_per_agency_year_and_enterprise_sixty_per_seat() -> None:
    book = load_price_book()
    gov = book.plan_for("chatgpt-gov", OCT)
    assert (gov.kind, gov.price_usd) == ("per_agency_fiscal_year", Decimal("1.00"))
    enterprise = book.plan_for("chatgpt-enterprise", OCT)
    assert (enterprise.kind, enterprise.price_usd) == ("per_active_user_month", Decimal("60.00"))
    assert isinstance(gov.price_usd, Decimal)


def test_effective_dates_apply_to_whole_months() -> None:
    book = load_price_book()
    assert book.price_for("o3", date(2025, 6, 1)).input_per_million_usd == Decimal("10.00")
    assert book.price_for("o3", date(2025, 7, 1)).input_per_million_usd == Decimal("2.00")
    with pytest.raises(PriceBookError, match=r"'o3' has no list price in force in 2025-03"):
        book.price_for("o3", date(2025, 3, 1))
    custom = parse_price_book(BOOK, "book.toml")
    assert custom.plan_for("ent", NOV).price_usd == Decimal("60.00")
    assert custom.plan_for("ent", DEC).price_usd == Decimal("55.00")


def test_exact_name_then_longest_prefix() -> None:
    book = parse_price_book(BOOK, "book.toml")
    assert book.price_for("gpt-4o", OCT).input_per_million_usd == Decimal("2.50")
    fine_tuned = book.price_for("ft:gpt-4o-2024-08-06:agency:x", OCT)
    assert fine_tuned.input_per_million_usd == Decimal("3.75")
    assert book.price_for("ft:other:agency:x", OCT).input_per_million_usd == Decimal("1.00")


def test_an_unknown_model_or_tenant_is_an_error_naming_it_and_the_file() -> None:
    book = parse_price_book(BOOK, "prices/book.toml")
    with pytest.raises(PriceBookError) as error:
        book.price_for("gpt-9", OCT)
    assert "prices/book.toml" in str(error.value)
    assert "'gpt-9'" in str(error.value)
    assert "no default price" in str(error.value)
    with pytest.raises(PriceBookError, match=r"prices/book.toml: no plan for tenant 'other'"):
        book.plan_for("other", OCT)
    with pytest.raises(PriceBookError, match=r"'gov' has no plan in force in 2025-07"):
        book.plan_for("gov", date(2025, 7, 1))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("price_usd = 1.00", 'price_usd = "1.00"'), "must be a decimal number"),
        (("price_usd = 1.00", "price_usd = 1.005"), "more than 2 decimal places"),
        (("price_usd = 1.00", "price_usd = -1.00"), ">= 0"),
        (("effective_from = 2025-08-01", "effective_from = 2025-08-15"), "first day of a month"),
        (("effective_from = 2025-08-01", 'effective_from = "2025-08-01"'), "TOML date"),
        (('kind = "per_agency_fiscal_year"', 'kind = "per_message"'), "kind must be one of"),
        (('tenant = "gov"', 'tenant = "gov"\nprice = 2.00'), "unknown keys"),
        (('model = "gpt-4o"', 'model = "gpt-4o"\nmodel_prefix = "gpt"'), "exactly one of"),
        (("schema_version = 1", "schema_version = 2"), "schema_version must be 1"),
        (("effective_from = 2026-12-01", "effective_from = 2025-01-01"), "two plans for"),
        (('currency = "USD"', 'currency = "EUR"'), "currency must be"),
        (("schema_version = 1", "schema_version = 1\nextra = 1"), "unknown top-level keys"),
        (("= 2.50", "= nan"), "finite"),
    ],
)
def test_a_malformed_price_book_is_refused(change: tuple[str, str], message: str) -> None:
    old, new = change
    with pytest.raises(PriceBookError, match=message):
        parse_price_book(BOOK.replace(old.encode(), new.encode(), 1), "book.toml")


def test_plans_must_be_an_array_of_tables() -> None:
    with pytest.raises(PriceBookError, match=r"book.toml: plans must be an array of tables"):
        parse_price_book(b'schema_version = 1\ncurrency = "USD"\nplans = 3\n', "book.toml")
    with pytest.raises(PriceBookError, match=r"book.toml: not valid TOML"):
        parse_price_book(b"schema_version = = 1", "book.toml")


# ---------------------------------------------------------------------------------
# pricing rules


def quantities(
    when: date, tenant: str, agency: str, messages: int, tokens: int, users: int
) -> MonthQuantities:
    return MonthQuantities(when, tenant, agency, "federal", messages, tokens, 0, users)


def tokens(when: date, tenant: str, agency: str, model: str, count: int) -> ModelTokens:
    return ModelTokens(when, tenant, agency, "federal", model, count, 0)


def key(tenant: str, agency: str) -> tuple[str, str, str]:
    return (tenant, agency, "federal")


def test_enterprise_is_charged_per_active_seat_and_list_value_is_exact() -> None:
    book = parse_price_book(BOOK, "book.toml")
    usage = Usage(
        month("2026-10"),
        (quantities(OCT, "ent", "a", 10, 1_000_000, 7),),
        (tokens(OCT, "ent", "a", "gpt-4o", 600_000), tokens(OCT, "ent", "a", "ft:x", 400_000)),
        {key("ent", "a"): 7},
        {key("ent", "a"): OCT},
    )
    (line,) = price_statement(usage, book).lines
    assert (line.billable_units, line.charge_usd) == (7, Decimal("420.00"))
    assert line.list_value_usd == Decimal("1.90")  # 0.6 x 2.50 + 0.4 x 1.00
    assert line.models == (("ft:x", 400_000, 0), ("gpt-4o", 600_000, 0))
    assert line.month == OCT and line.period == "2026-10"


def test_the_gov_fee_is_charged_once_in_the_first_active_month_of_the_fiscal_year() -> None:
    book = parse_price_book(BOOK, "book.toml")
    rows = (quantities(NOV, "gov", "a", 5, 0, 3), quantities(NOV, "gov", "b", 5, 0, 3))
    first_active = {key("gov", "a"): OCT, key("gov", "b"): NOV}
    users = {key("gov", "a"): 3, key("gov", "b"): 3}
    lines = price_statement(Usage(month("2026-11"), rows, (), users, first_active), book).lines
    assert [(li.agency_id, li.billable_units, li.charge_usd) for li in lines] == [
        ("a", 0, Decimal("0.00")),
        ("b", 1, Decimal("1.00")),
    ]


def test_a_quarter_charges_seat_months_and_reports_distinct_users_over_the_quarter() -> None:
    book = parse_price_book(BOOK, "book.toml")
    rows = (
        quantities(OCT, "ent", "a", 1, 0, 4),
        quantities(NOV, "ent", "a", 1, 0, 5),
        quantities(DEC, "ent", "a", 1, 0, 2),
        quantities(OCT, "gov", "g", 1, 0, 9),
        quantities(NOV, "gov", "g", 1, 0, 9),
    )
    users = {key("ent", "a"): 6, key("gov", "g"): 12}
    first = {key("ent", "a"): OCT, key("gov", "g"): OCT}
    lines = price_statement(Usage(fiscal_quarter("2027Q1"), rows, (), users, first), book).lines
    ent, gov = lines
    assert (ent.messages, ent.active_users, ent.billable_units) == (3, 6, 11)
    assert ent.charge_usd == Decimal("650.00")  # (4 + 5) x 60.00 + 2 x 55.00 (December price)
    assert (gov.active_users, gov.billable_units, gov.charge_usd) == (12, 1, Decimal("1.00"))
    assert ent.month is None and ent.period == "FY2027Q1"


def test_rounding_is_half_even_once_per_line_after_summing_months() -> None:
    assert to_cents(Decimal("0.005")) == Decimal("0.00")
    assert to_cents(Decimal("0.015")) == Decimal("0.02")
    assert to_cents(Decimal("0.0250000001")) == Decimal("0.03")
    book = parse_price_book(BOOK, "book.toml")
    # 2,000 gpt-4o input tokens = 0.005 USD exactly, in each of two months: the line is
    # 0.01 (rounded once), not 0.00 + 0.00 (rounded per month).
    rows = (quantities(OCT, "ent", "a", 1, 2_000, 1), quantities(NOV, "ent", "a", 1, 2_000, 1))
    model_rows = (
        tokens(OCT, "ent", "a", "gpt-4o", 2_000),
        tokens(NOV, "ent", "a", "gpt-4o", 2_000),
    )
    usage = Usage(fiscal_quarter("2027Q1"), rows, model_rows, {key("ent", "a"): 1}, {})
    (line,) = price_statement(usage, book).lines
    assert line.list_value_usd == Decimal("0.01")
    single = Usage(month("2026-10"), rows[:1], model_rows[:1], {key("ent", "a"): 1}, {})
    assert price_statement(single, book).lines[0].list_value_usd == Decimal("0.00")


def test_tokens_per_model_must_add_up_to_the_agency_rollup() -> None:
    book = parse_price_book(BOOK, "book.toml")
    usage = Usage(
        month("2026-10"),
        (quantities(OCT, "ent", "a", 1, 100, 1),),
        (tokens(OCT, "ent", "a", "gpt-4o", 99),),
        {key("ent", "a"): 1},
        {},
    )
    with pytest.raises(BillingError, match="partly applied"):
        price_statement(usage, book)


def test_the_input_digest_covers_quantities_not_prices() -> None:
    usage = Usage(
        month("2026-10"),
        (quantities(OCT, "ent", "a", 1, 100, 1),),
        (tokens(OCT, "ent", "a", "gpt-4o", 100),),
        {key("ent", "a"): 1},
        {},
    )
    book = parse_price_book(BOOK, "book.toml")
    cheaper = parse_price_book(BOOK.replace(b"60.00", b"50.00"), "book.toml")
    first, repriced = price_statement(usage, book), price_statement(usage, cheaper)
    assert first.input_sha256 == repriced.input_sha256
    assert first.price_book_sha256 != repriced.price_book_sha256
    more = Usage(
        usage.period,
        (quantities(OCT, "ent", "a", 2, 100, 1),),
        usage.model_tokens,
        usage.period_users,
        {},
    )
    assert price_statement(more, book).input_sha256 != first.input_sha256


# ---------------------------------------------------------------------------------
# a model the price book lacks: exact charges, the list value marked unpriced


def _new_model_usage() -> Usage:
    return Usage(
        month("2026-10"),
        (
            quantities(OCT, "ent", "a", 10, 1_000_000, 7),
            MonthQuantities(OCT, "gov", "g", "federal", 3, 200_000, 50_000, 2),
        ),
        (
            tokens(OCT, "ent", "a", "gpt-4o", 600_000),
            tokens(OCT, "ent", "a", "gpt-9", 400_000),
            ModelTokens(OCT, "gov", "g", "federal", "gpt-9", 200_000, 50_000),
        ),
        {key("ent", "a"): 7, key("gov", "g"): 2},
        {key("ent", "a"): OCT, key("gov", "g"): OCT},
    )


def test_a_model_without_a_price_leaves_the_charges_exact_and_its_list_value_unpriced() -> None:
    book = parse_price_book(BOOK, "prices/book.toml")
    statement = price_statement(_new_model_usage(), book)
    ent, gov = statement.lines
    assert (ent.billable_units, ent.charge_usd) == (7, Decimal("420.00"))
    assert ent.list_value_usd == Decimal("1.50")  # 0.6 M gpt-4o in x 2.50; gpt-9 left out
    assert ent.unpriced_models == ("gpt-9",)
    assert ent.models == (("gpt-4o", 600_000, 0), ("gpt-9", 400_000, 0))
    assert (gov.billable_units, gov.charge_usd) == (1, Decimal("1.00"))
    assert gov.list_value_usd == Decimal("0.00")
    assert gov.unpriced_models == ("gpt-9",)
    assert (statement.charge_usd, statement.list_value_usd) == (Decimal("421.00"), Decimal("1.50"))
    [unpriced] = statement.unpriced
    assert (unpriced.model, unpriced.month, unpriced.lines) == ("gpt-9", OCT, 2)
    assert (unpriced.tokens_in, unpriced.tokens_out) == (600_000, 50_000)
    assert unpriced.reason == (
        "prices/book.toml: no list price for model 'gpt-9' (used in 2026-10); there is no "
        "default price: add a [[models]] entry with `model` or `model_prefix` and have it "
        "reviewed before billing"
    )
    assert unpriced.warning().startswith(f"warning: {unpriced.reason}. The list value of 'gpt-9'")
    assert "(600,000 tokens in, 50,000 out, 2 line(s))" in unpriced.warning()
    assert "--strict" in unpriced.warning()
    # The quantities, and so the input digest, are those of a fully priced statement.
    priced_book = parse_price_book(
        BOOK.replace(b'model = "gpt-4o"', b'model_prefix = "gpt-"'), "prices/book.toml"
    )
    priced = price_statement(_new_model_usage(), priced_book)
    assert priced.unpriced == () and priced.input_sha256 == statement.input_sha256
    assert priced.lines[0].list_value_usd == Decimal("2.50")  # 1 M tokens in x 2.50


def test_strict_keeps_the_refusal_naming_the_model_and_the_book() -> None:
    book = parse_price_book(BOOK, "prices/book.toml")
    with pytest.raises(PriceBookError, match=r"prices/book.toml: no list price for model 'gpt-9'"):
        price_statement(_new_model_usage(), book, strict=True)


def test_a_price_not_yet_in_force_is_unpriced_too() -> None:
    book = load_price_book()
    usage = Usage(
        month("2025-03"),
        (quantities(date(2025, 3, 1), "chatgpt-enterprise", "a", 1, 1_000_000, 1),),
        (tokens(date(2025, 3, 1), "chatgpt-enterprise", "a", "o3", 1_000_000),),
        {key("chatgpt-enterprise", "a"): 1},
        {},
    )
    statement = price_statement(usage, book)
    [line] = statement.lines
    assert (line.charge_usd, line.list_value_usd) == (Decimal("60.00"), Decimal("0.00"))
    assert "model 'o3' has no list price in force in 2025-03" in statement.unpriced[0].reason


def test_the_rendered_statement_marks_the_unpriced_list_value() -> None:
    from metering.billing.render import render_statement
    from metering.billing.runs import BillingOutcome

    statement = price_statement(_new_model_usage(), parse_price_book(BOOK, "prices/book.toml"))
    outcome = BillingOutcome("not_recorded", statement, None, None, ())
    table = render_statement(outcome, "table", "prices/book.toml")
    assert table.splitlines()[-1] == (
        "* list value without the unpriced model(s) gpt-9: prices/book.toml has no list "
        "price for them (charges are exact: they do not depend on list prices)"
    )
    assert "1.50*" in table and "0.00*" in table
    document = json.loads(render_statement(outcome, "json", "prices/book.toml"))
    assert document["totals"]["unpriced_models"] == ["gpt-9"]
    assert document["totals"]["charge_usd"] == "421.00"
    assert document["unpriced"] == [
        {
            "model": "gpt-9",
            "month": "2026-10-01",
            "tokens_in": 600_000,
            "tokens_out": 50_000,
            "lines": 2,
            "reason": statement.unpriced[0].reason,
        }
    ]
    ent = document["lines"][0]
    assert ent["unpriced_models"] == ["gpt-9"]
    assert [(m["model"], m["priced"]) for m in ent["models"]] == [
        ("gpt-4o", True),
        ("gpt-9", False),
    ]
    csv_lines = render_statement(outcome, "csv", "prices/book.toml").splitlines()
    assert csv_lines[0].endswith(",list_value_usd,unpriced_models")
    assert csv_lines[1].endswith(",420.00,1.50,gpt-9")
