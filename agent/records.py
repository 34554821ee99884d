"""Recorded events decoded into records that attribution and the engine read like Events.

``dutywatch replay`` reads millions of JSON lines, and nearly all of them
fire nothing: building each one's named tuples (the Event) costs more than
finding that out. A line is decoded in C (msgspec) into a record: structs
with the Event's groups and fields
under the same names, so a rule's compiled test and the engine's lookups
read ``r.process.cmdline`` as they read ``e.process.cmdline``, and
``r.kind`` as ``e.kind``. A group the line does not give is a shared empty
group (every field None), as in an Event. Attribution fills a record in
place (``Attributor.attribute_record``); a line that may fire a rule is
decoded again as an Event, and its findings are the Event's.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from agent.events import FIELDS, GROUP_TYPES


class RecordDecoder:
    """JSON lines to records; the struct types are generated from the field catalogue, as ``EventDecoder``'s.

    Every group is a frozen struct whose default is its empty instance (in
    ``empty``), so records share them; attribution replaces a group whole,
    never edits one. A level field is typed null, as in ``EventDecoder``: a
    level name makes the line fail here and take the Event's path, which
    converts it. So does a group given as null.
    """

    def __init__(self) -> None:
        import msgspec  # the recording and central paths need it, the agent's import does not

        py = {"str": str, "int": int, "float": float, "bool": bool, "level": None}

        def optional(t: Any) -> Any:
            return None if t is None else t | None

        self.empty: dict[str, Any] = {}
        fields: list[tuple[str, Any, Any]] = []
        for group, cls in GROUP_TYPES.items():
            struct = msgspec.defstruct(
                f"{group}_record", [(f, optional(py[FIELDS[f"{group}.{f}"].type]), None) for f in cls._fields],
                forbid_unknown_fields=True, frozen=True, gc=False)
            self.empty[group] = struct()
            fields.append((group, struct, self.empty[group]))
        head = msgspec.defstruct("event_record", [("kind", str), ("time", float | None, None),
                                                 ("collector", str | None, None), ("detail", str | None, None)],
                                 forbid_unknown_fields=True, frozen=True, gc=False)
        # The event group's fields read as an Event's own (e.kind); only a rule's test reads them.
        top = {name: property(attrgetter(f"event.{name}")) for name in ("kind", "time", "collector", "detail")}
        # Not frozen: attribution sets the operator, host and the groups it fills in.
        record = msgspec.defstruct("record", [("event", head), *fields], forbid_unknown_fields=True, gc=False,
                                   namespace=top)
        # One line to its record; msgspec.DecodeError (a ValueError) when it is not a plain one. Mapped over a
        # block's lines, the loop runs in C (msgspec's decode_lines would tie values to lines only loosely:
        # it takes any whitespace between them, newlines within one and several on a line).
        self.decode = msgspec.json.Decoder(record).decode
