#!/usr/bin/env python3
"""exchangelib's bulk write and bulk read of one mailbox, timed: the peer figure that
examples/speed_bench.rs prints mailsync's figures against.

    python3 bench/exchangelib_bulk.py --url http://127.0.0.1:PORT/EWS/Exchange.asmx \
        --user svc --password secret --mailbox user7@example.com --kind contacts --items 1000

- write: `Account.bulk_create` of ITEMS items into the folder of KIND (CreateItem, exchangelib's
  own chunking);
- read: every item of the folder by `folder.all().only("id", "changekey")` (FindItem, paged)
  and then `Account.fetch` of all of them with every field (GetItem, exchangelib's chunks).

Prints one JSON line: {"items", "write_seconds", "read_items", "read_seconds"}. Run one
process per mailbox to let exchangelib use several cores. Impersonation as svc, Basic auth,
version given (no probing round trips), max_connections 4.
"""
import argparse
import datetime
import json
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--mailbox", required=True)
    ap.add_argument("--kind", choices=["contacts", "calendar", "tasks"], required=True)
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("--build", default="15.0.1497.2")
    args = ap.parse_args()

    from exchangelib import (
        BASIC,
        IMPERSONATION,
        Account,
        Build,
        CalendarItem,
        Configuration,
        Contact,
        Credentials,
        EWSDateTime,
        EWSTimeZone,
        Task,
        Version,
    )
    from exchangelib.indexed_properties import EmailAddress

    tz = EWSTimeZone("UTC")
    config = Configuration(
        service_endpoint=args.url,
        credentials=Credentials(username=args.user, password=args.password),
        auth_type=BASIC,
        version=Version(build=Build(*[int(x) for x in args.build.split(".")])),
        max_connections=4,
    )
    acc = Account(
        primary_smtp_address=args.mailbox,
        config=config,
        autodiscover=False,
        access_type=IMPERSONATION,
        default_timezone=tz,
    )
    folder = {"contacts": acc.contacts, "calendar": acc.calendar, "tasks": acc.tasks}[args.kind]
    start = EWSDateTime(2027, 1, 4, 8, 0, tzinfo=tz)

    def item(n):
        if args.kind == "contacts":
            return Contact(
                folder=folder,
                display_name=f"Given{n} Surname{n}",
                given_name=f"Given{n}",
                surname=f"Surname{n}",
                company_name=f"Company {n % 50}",
                email_addresses=[EmailAddress(email=f"c{n}@example.com", label="EmailAddress1")],
            )
        if args.kind == "calendar":
            s = start + datetime.timedelta(hours=n)
            return CalendarItem(folder=folder, subject=f"Meeting {n}", start=s, end=s + datetime.timedelta(minutes=30),
                                location="Room 1")
        return Task(folder=folder, subject=f"Task {n}", due_date=(start + datetime.timedelta(days=n % 90)).date())

    items = [item(n) for n in range(args.items)]
    t0 = time.monotonic()
    results = acc.bulk_create(folder=folder, items=items)
    write_seconds = time.monotonic() - t0
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        print(f"bulk_create: {len(failed)} items failed, first: {failed[0]!r}", file=sys.stderr)
        sys.exit(1)

    t0 = time.monotonic()
    ids = list(folder.all().only("id", "changekey"))
    fetched = [i for i in acc.fetch(ids=ids) if not isinstance(i, Exception)]
    read_seconds = time.monotonic() - t0
    print(json.dumps({
        "items": len(results),
        "write_seconds": write_seconds,
        "read_items": len(fetched),
        "read_seconds": read_seconds,
    }), flush=True)


if __name__ == "__main__":
    main()
