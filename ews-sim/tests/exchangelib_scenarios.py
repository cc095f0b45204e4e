#!/usr/bin/env python3
"""exchangelib scenarios against ews-sim, beyond the shared probe.

    python3 exchangelib_scenarios.py --base http://127.0.0.1:PORT --user svc --password secret \
        --mailbox user3@example.com [--impersonation]

Each step prints OK/FAIL; exit status 1 on the first failure.
  bulk: create 500 contacts in one call, update them all, delete them all
  paging: 1,000 changes read with sync_items in pages of 100, then nothing new
  streaming: a subscription receives an event caused through the /sim control API
  throttling: ErrorServerBusy with BackOffMilliseconds is honoured by exchangelib's back-off
  mime: a message created from MIME with encoded words, folded headers, quoted names with
        commas and a group reads back decoded (subject, author, sender, recipients, reply-to,
        Message-ID, date sent)
"""
import argparse
import datetime
import json
import sys
import threading
import time
import traceback
import urllib.request


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--mailbox", required=True)
    ap.add_argument("--impersonation", action="store_true")
    args = ap.parse_args()

    from exchangelib import (BASIC, DELEGATE, IMPERSONATION, Account, Build, CalendarItem, Configuration, Contact,
                             Credentials, EWSDateTime, EWSTimeZone, FaultTolerance, Version)

    def control(method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(args.base + path, data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read()
            return json.loads(text) if text else None

    tz = EWSTimeZone("UTC")
    config = Configuration(
        service_endpoint=args.base + "/EWS/Exchange.asmx",
        credentials=Credentials(args.user, args.password),
        auth_type=BASIC,
        version=Version(build=Build(15, 1, 2507, 6)),
        max_connections=4,
        retry_policy=FaultTolerance(max_wait=60),
    )
    acc = Account(primary_smtp_address=args.mailbox, config=config, autodiscover=False,
                  access_type=IMPERSONATION if args.impersonation else DELEGATE, default_timezone=tz)
    step_no = [0]

    def step(name, fn):
        step_no[0] += 1
        t0 = time.monotonic()
        try:
            res = fn()
        except Exception as e:  # noqa: BLE001
            print(f"[{step_no[0]:02d}] FAIL {name}: {e.__class__.__name__}: {e}", flush=True)
            traceback.print_exc()
            sys.exit(1)
        print(f"[{step_no[0]:02d}] OK   {name} ({time.monotonic() - t0:.2f}s): {res}", flush=True)

    def bulk():
        contacts = [Contact(account=acc, folder=acc.contacts, given_name=f"Bulk{i}", surname="Contact", display_name=f"Bulk{i} Contact") for i in range(500)]
        created = acc.bulk_create(folder=acc.contacts, items=contacts)
        errors = [c for c in created if isinstance(c, Exception)]
        if errors or len(created) != 500:
            raise AssertionError(f"{len(errors)} errors creating 500: {errors[:3]}")
        items = list(acc.contacts.filter(surname="Contact"))
        if len(items) != 500:
            raise AssertionError(f"found {len(items)} of 500")
        for c in items:
            c.job_title = "Updated"
        updated = acc.bulk_update(items=[(c, ["job_title"]) for c in items])
        if any(isinstance(u, Exception) for u in updated):
            raise AssertionError("update errors")
        again = list(acc.contacts.filter(surname="Contact"))
        if not all(c.job_title == "Updated" for c in again):
            raise AssertionError("not every contact was updated")
        deleted = acc.bulk_delete(ids=again)
        if any(d is not True for d in deleted):
            raise AssertionError(f"delete results: {set(map(str, deleted))}")
        left = acc.contacts.filter(surname="Contact").count()
        if left:
            raise AssertionError(f"{left} left after delete")
        return "500 created, updated and deleted"

    def paging():
        folder = acc.calendar
        state = None
        list(folder.sync_items(sync_state=state))  # start from now
        state = folder.item_sync_state
        start = EWSDateTime.now(tz=tz).replace(microsecond=0)
        items = [CalendarItem(account=acc, folder=folder, subject=f"page {i}", start=start + datetime.timedelta(hours=i),
                              end=start + datetime.timedelta(hours=i, minutes=30)) for i in range(1000)]
        res = acc.bulk_create(folder=folder, items=items)
        if any(isinstance(r, Exception) for r in res):
            raise AssertionError("create errors")
        seen = set()
        for change_type, item in folder.sync_items(sync_state=state, max_changes_returned=100):
            seen.add(item.id if hasattr(item, "id") else item[0])
        if len(seen) != 1000:
            raise AssertionError(f"saw {len(seen)} changes, expected 1000")
        again = list(folder.sync_items(sync_state=folder.item_sync_state))
        if again:
            raise AssertionError(f"{len(again)} changes on a second sync")
        acc.bulk_delete(ids=res)
        return "1000 changes in pages of 100"

    def streaming():
        folder = acc.inbox
        sub = folder.subscribe_to_streaming()

        def poke():
            time.sleep(1)
            control("POST", f"/sim/mailboxes/{args.mailbox}/items",
                    {"folder": "inbox", "type": "Message", "fields": {"Subject": "from the control API"}})

        t = threading.Thread(target=poke, daemon=True)
        t.start()
        got = []
        try:
            for n in folder.get_streaming_events(sub, connection_timeout=1, max_notifications_returned=1):
                got.extend(e.__class__.__name__ for e in n.events)
        finally:
            t.join(10)
            folder.unsubscribe(sub)
        if "CreatedEvent" not in got and "NewMailEvent" not in got:
            raise AssertionError(f"events: {got}")
        return f"events={got}"

    def throttling():
        control("POST", "/sim/faults", {"operation": "FindItem", "mailbox": args.mailbox, "error_code": "ErrorServerBusy",
                                        "back_off_ms": 2000, "count": 1})
        t0 = time.monotonic()
        n = acc.calendar.all().count()
        waited = time.monotonic() - t0
        stats = control("GET", "/sim/stats")
        if waited < 2.0:
            raise AssertionError(f"client retried after {waited:.2f}s, before the 2 s back-off")
        if stats["faults_injected"] < 1:
            raise AssertionError("the fault was not served")
        return f"retried after {waited:.2f}s, count={n}"

    def mime():
        raw = (
            "Subject: =?utf-8?q?=C3=BCber?= den\r\n =?UTF-8?B?UHLDvGZzdGFuZA==?=\r\n"
            "From: =?iso-8859-1?q?J=FCrgen_M=FCller?= <juergen@example.com>\r\n"
            "Sender: Assistenz <assistenz@example.com>\r\n"
            'To: "M\u00fcller, Anna" <anna@example.com>, bob@example.com\r\n'
            "Cc: Team: carl@example.com, \"Dora D.\" <dora@example.com>;\r\n"
            "Reply-To: =?utf-8?b?w4RyenRlLCBCw7xybw==?= <aerzte@example.com>\r\n"
            "Message-ID: <mime-scenario@example.com>\r\n"
            "Date: Tue, 3 Mar 2026 09:15:00 +0100\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHallo\r\n"
        )
        created = control("POST", f"/sim/mailboxes/{args.mailbox}/items",
                          {"folder": "inbox", "type": "Message", "mime": raw})
        (m,) = acc.fetch(ids=[(created["id"], created["change_key"])])
        got = {
            "subject": m.subject,
            "author": (m.author.name, m.author.email_address),
            "sender": (m.sender.name, m.sender.email_address),
            "to": [(r.name, r.email_address) for r in m.to_recipients or []],
            "cc": [(r.name, r.email_address) for r in m.cc_recipients or []],
            "reply_to": [(r.name, r.email_address) for r in m.reply_to or []],
            "message_id": m.message_id,
            "sent": m.datetime_sent.astimezone(tz).isoformat() if m.datetime_sent else None,
        }
        want = {
            "subject": "\u00fcber den Pr\u00fcfstand",
            "author": ("J\u00fcrgen M\u00fcller", "juergen@example.com"),
            "sender": ("Assistenz", "assistenz@example.com"),
            "to": [("M\u00fcller, Anna", "anna@example.com"), (None, "bob@example.com")],
            "cc": [(None, "carl@example.com"), ("Dora D.", "dora@example.com")],
            "reply_to": [("\u00c4rzte, B\u00fcro", "aerzte@example.com")],
            "message_id": "<mime-scenario@example.com>",
            "sent": "2026-03-03T08:15:00+00:00",
        }
        if got != want:
            raise AssertionError(f"read back {got}, expected {want}")
        acc.bulk_delete(ids=[m])
        return "envelope decoded"

    step("bulk create/update/delete of 500 contacts", bulk)
    step("sync_items paging over 1,000 changes", paging)
    step("streaming event caused through the control API", streaming)
    step("ErrorServerBusy honoured by the client's back-off", throttling)
    step("a message's envelope from MIME: encoded words, folding, quoted commas, groups", mime)
    print("ALL OK")


if __name__ == "__main__":
    main()
