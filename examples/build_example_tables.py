"""Builds the SYNTHETIC input tables of the classification and extraction examples (made-up text).

    python examples/build_example_tables.py   # writes examples/data/{tickets,invoices}.parquet

Deterministic (fixed seed). The tables look like what users hold: their own keys and metadata beside
a free-text column, about a third of the texts repeated (the same ticket filed twice, a daily invoice
mail), and a few rows with a missing text for the quarantine.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).parent / "data"

_TICKETS = {
    "billing": [
        "I was charged twice for my {plan} subscription this month, order {n}.",
        "My invoice {n} shows the {plan} price but I downgraded last week.",
        "Can I get a refund for the annual {plan} plan? I cancelled on day {d}.",
    ],
    "bug": [
        "The export button crashes the {app} app on {os} since the last update.",
        "Sync stops at {d}% every time I open a shared folder in {app}.",
        "{app} shows a blank screen after login on {os}, error code {n}.",
    ],
    "feature_request": [
        "Please add dark mode to the {app} web editor.",
        "It would help if {app} could export reports to CSV on a schedule.",
        "Could the {plan} plan include more than {d} seats?",
    ],
    "account": [
        "I cannot reset my password, the email never arrives ({os}).",
        "Please merge my two accounts, the old one is on the {plan} plan.",
        "How do I change the owner of our {plan} workspace?",
    ],
}
_APPS, _OSES, _PLANS = ["Notes", "Drive", "Board"], ["iOS 18", "Android 15", "Windows 11", "macOS 15"], ["Team", "Pro", "Basic"]
_VENDORS = ["Acme Tools GmbH", "Northwind Traders", "Globex Ltd", "Initech SA", "Umbrella Supplies"]


def tickets(rng: random.Random, n: int = 240) -> pa.Table:
    rows: list[dict] = []
    start = datetime(2026, 11, 30, 8, tzinfo=timezone.utc)
    for i in range(n):
        if rows and rng.random() < 0.3:
            text = rng.choice(rows)["text"]  # the same ticket filed again
        else:
            label = rng.choice(sorted(_TICKETS))
            text = rng.choice(_TICKETS[label]).format(
                plan=rng.choice(_PLANS), app=rng.choice(_APPS), os=rng.choice(_OSES), n=rng.randint(1000, 9999), d=rng.randint(2, 90)
            ) + f" (customer {rng.randint(100, 999)})"
        rows.append({
            "ticket_id": 100_000 + i,
            "customer_tier": rng.choice(["free", "pro", "enterprise"]),
            "opened_at": start + timedelta(minutes=7 * i),
            "text": None if i % 97 == 13 else text,  # a ticket whose text failed to load upstream
        })  # fmt: skip
    schema = pa.schema([("ticket_id", pa.int64()), ("customer_tier", pa.string()), ("opened_at", pa.timestamp("us", tz="UTC")), ("text", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def invoices(rng: random.Random, n: int = 160) -> pa.Table:
    rows: list[dict] = []
    for i in range(n):
        if rows and rng.random() < 0.3:
            body = rng.choice(rows)["email_body"]
        else:
            vendor, total = rng.choice(_VENDORS), rng.randint(1_000, 250_000) / 100
            currency, due = rng.choice(["EUR", "USD", "GBP"]), date(2026, 12, 1) + timedelta(days=rng.randint(5, 60))
            body = (
                f"Hello,\n\nplease find attached invoice INV-{rng.randint(10000, 99999)} from {vendor} "
                f"for the services of November. The amount due is {total:,.2f} {currency}, payable by "
                f"{due.isoformat()}.\n\nKind regards,\nAccounts receivable, {vendor}"
            )
        rows.append({"message_id": f"msg-{i:05d}", "mailbox": rng.choice(["ap@", "finance@"]), "email_body": body})
    return pa.Table.from_pylist(rows, schema=pa.schema([("message_id", pa.string()), ("mailbox", pa.string()), ("email_body", pa.string())]))


def main() -> None:
    OUT.mkdir(exist_ok=True)
    pq.write_table(tickets(random.Random(7)), OUT / "tickets.parquet")
    pq.write_table(invoices(random.Random(11)), OUT / "invoices.parquet")
    print(f"wrote {OUT / 'tickets.parquet'} and {OUT / 'invoices.parquet'}")


if __name__ == "__main__":
    main()
