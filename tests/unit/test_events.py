"""Events: JSON round trip, levels, and clear errors for bad input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.events import FIELDS, GROUP_TYPES, KINDS, Event
from agent.levels import Level, parse_level

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "str": TEXT,
    "int": st.integers(min_value=0, max_value=2**32),
    "float": st.floats(allow_nan=False, allow_infinity=False, width=64),
    "bool": st.booleans(),
    "level": st.sampled_from(list(Level)),
}


@st.composite
def events(draw: st.DrawFn) -> Event:
    groups = {}
    for gname, cls in GROUP_TYPES.items():
        if draw(st.booleans()):
            values = {}
            for f in cls._fields:
                spec = FIELDS[f"{gname}.{f}"]
                values[f] = draw(st.none() | VALUES[spec.type])
            groups[gname] = cls(**values)
    return Event(
        kind=draw(st.sampled_from(KINDS)),
        time=draw(st.none() | VALUES["float"]),
        collector=draw(st.none() | TEXT),
        detail=draw(st.none() | TEXT),
        **groups,
    )


# Generating an event of every group is slow on a busy machine; that is not what this test judges.
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_json_round_trip_is_exact(e: Event) -> None:
    assert Event.from_json(e.to_json()) == e
    assert Event.from_dict(json.loads(json.dumps(e.to_dict()))) == e


def test_unset_fields_are_none_and_left_out() -> None:
    e = Event("process.exec")
    assert e.process.pid is None and e.net.remote_ip is None and e.field("media.serial") is None
    assert e.to_dict() == {"event": {"kind": "process.exec"}}


@pytest.mark.parametrize(("name", "level"), [
    ("public", Level.PUBLIC), ("公开", Level.PUBLIC), ("internal", Level.INTERNAL), ("内部", Level.INTERNAL),
    ("confidential", Level.CONFIDENTIAL), ("秘密", Level.CONFIDENTIAL), ("secret", Level.SECRET),
    ("机密", Level.SECRET), ("top_secret", Level.TOP_SECRET), ("绝密", Level.TOP_SECRET),
    ("Top-Secret", Level.TOP_SECRET),
])
def test_levels_in_english_and_chinese(name: str, level: Level) -> None:
    assert parse_level(name) is level


def test_levels_are_ordered() -> None:
    order = [parse_level(x) for x in ("公开", "内部", "秘密", "机密", "绝密")]
    assert order == sorted(order)
    assert parse_level("secret") > parse_level("confidential")


@pytest.mark.parametrize("bad", ["ultra", "", "机要", 3, None])
def test_bad_level_names_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="bad level name"):
        parse_level(bad)


@pytest.mark.parametrize(("data", "message"), [
    ({"event": {"kind": "net.conect"}}, "event.kind must be one of"),
    ({"event": {"kind": "net.connect"}, "process": {"pid": "12"}}, "process.pid must be int"),
    ({"event": {"kind": "net.connect"}, "proces": {}}, "unknown event group 'proces'"),
    ({"event": {"kind": "net.connect"}, "net": {"port": 1}}, "unknown field net.port"),
    ({"event": {"kind": "file.open"}, "file": {"level": "ultra"}}, "bad level name"),
    ({"event": {"kind": "file.open"}, "file": {"on_removable": "yes"}}, "file.on_removable must be bool"),
])
def test_bad_event_dicts_name_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Event.from_dict(data)
