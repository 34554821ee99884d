"""The files collector joins each filesystem operation to the process fanotify names, however late it comes.

Driven through the collector's own two inbound streams (inotify operations and
fanotify records), with the clock in the test's hands: what a busy machine
does to the order and timing of the two is replayed exactly.
"""

from __future__ import annotations

import os

from files_support import collector, op, record

import collectors.fanotify as fan
from collectors.files import WINDOW
from collectors.watch import CREATED, DELETED, MOVED, FsOp


def test_a_create_made_due_by_a_delete_waits_for_its_late_record() -> None:
    c, out, flush = collector()
    me = os.getpid()
    op(c, CREATED, "/d/own.txt", 0.0)
    op(c, DELETED, "/d/own.txt", 0.01)  # the delete makes the create due at once
    flush(0.02)
    assert out == []  # no record yet for either: both wait, in order
    record(c, "/d/own.txt", fan.FAN_CREATE, me, 0.5)
    record(c, "/d/own.txt", fan.FAN_DELETE, me, 0.5)
    for t in (0.6, 1.0, 2.0, 5.0):
        flush(t)
    assert out == []  # the agent's own operations: never reported


def test_another_process_gets_both_operations_in_order() -> None:
    c, out, flush = collector()
    op(c, CREATED, "/d/theirs.txt", 0.0)
    op(c, DELETED, "/d/theirs.txt", 0.01)
    flush(0.02)
    record(c, "/d/theirs.txt", fan.FAN_DELETE, 4242, 0.3)  # the later operation's record first
    flush(0.4)
    assert out == []  # the delete waits behind the create, whose record is still missing
    record(c, "/d/theirs.txt", fan.FAN_CREATE, 4242, 0.5)
    flush(0.6)
    assert [(e.kind, e.process.pid) for e in out] == [("file.create", 4242), ("file.delete", 4242)]


def test_a_record_that_never_comes_delays_the_event_but_does_not_lose_it() -> None:
    c, out, flush = collector()
    c._fan_synced = 0.05  # fanotify has handed over every record of what happened before 0.05 s
    op(c, CREATED, "/d/x.txt", 0.0)
    op(c, DELETED, "/d/x.txt", 0.01)
    t = 0.02
    while len(out) < 2 and t < 30:
        flush(t)
        t += WINDOW / 3
    assert [e.kind for e in out] == ["file.create", "file.delete"] and out[0].process.pid is None
    assert t < 2  # no use waiting longer: its record is not among those read
    assert all("operator unknown" in (e.detail or "") for e in out)  # and it says so


def test_while_fanotify_is_behind_the_operation_waits_for_its_record() -> None:
    c, out, flush = collector()
    op(c, CREATED, "/d/late.txt", 0.0)
    t = 0.02
    while t < 8:  # a busy machine: fanotify's reader has not caught up with the operation
        flush(t)
        t += WINDOW / 3
    assert out == []
    record(c, "/d/late.txt", fan.FAN_CREATE, 4242, 8.0)
    flush(8.1)
    flush(8.1 + 2 * WINDOW)
    assert [(e.kind, e.process.pid) for e in out] == [("file.create", 4242)]


def test_a_record_that_never_comes_while_fanotify_is_behind_goes_out_in_the_end() -> None:
    c, out, flush = collector()
    op(c, CREATED, "/d/lost.txt", 0.0)
    t = 0.02
    while not out and t < 60:
        flush(t)
        t += WINDOW / 3
    assert [e.kind for e in out] == ["file.create"] and 10 < t < 30


def test_a_rename_taken_long_after_its_record_still_names_its_writer() -> None:
    """A busy machine: the fanotify reader took the rename's record at once, the joining thread was held up
    and read the rename from inotify a second later. The record is older than the window, but the rename
    happened after the joining thread's previous inotify read, so its record is no older than that either."""
    c, out, flush = collector()
    c._fan_synced = 2.0  # every record of what happened before 2 s is in
    c._ops_after = 0.05  # the previous inotify read began at 0.05 s: what this read finds happened after
    record(c, "/d/unit.new", fan.FAN_MOVED_FROM, 4242, 0.1)
    record(c, "/d/unit", fan.FAN_MOVED_TO, 4242, 0.1)
    c._take(("op", FsOp(MOVED, "/d/unit.new", False, "/d/unit"), 1.1, 1.7e9))
    for t in (1.2, 1.5, 2.0, 3.0):
        flush(t)
    assert [(e.kind, e.process.pid) for e in out] == [("file.rename", 4242)]


def test_a_record_from_before_the_previous_read_is_not_taken_for_a_later_operation() -> None:
    """The near miss: the same name renamed earlier by another process, whose record came before the
    joining thread's previous read; the new rename's record never comes: it goes out with no one, not
    with the earlier writer."""
    c, out, flush = collector()
    record(c, "/d/unit.new", fan.FAN_MOVED_FROM, 777, 0.1)
    c._fan_synced = 2.0
    c._ops_after = 0.5
    c._take(("op", FsOp(MOVED, "/d/unit.new", False, "/d/unit"), 1.1, 1.7e9))
    t = 1.2
    while not out and t < 30:
        flush(t)
        t += WINDOW / 3
    assert [(e.kind, e.process.pid) for e in out] == [("file.rename", None)]
