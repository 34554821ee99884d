"""Count-over-window conditions: a rule that fires on the Nth match within a time window, per key.

``threshold: {count: 5, within: 5m, by: [auth.account]}`` makes a rule fire
when its condition has held for ``count`` events with the same values of the
``by`` fields within ``within`` seconds of event time (登录失败处理: five
failed logins for one account in five minutes). Each firing starts the count
again, so a sustained attack gives one finding per ``count`` tries, not one
per try. State lives with the compiled rule set: a reload starts afresh.
Keys are bounded: past ``max_keys`` the oldest key is forgotten.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from agent.events import Event

Predicate = Callable[[Event], bool]


@dataclass(frozen=True, slots=True)
class Threshold:
    """How many matches (``count``) within how long (``within`` seconds), counted per ``by`` fields."""

    count: int
    within: float
    by: tuple[str, ...] = ()


class Window:
    """The counting state of one rule; ``hit(e)`` is True when ``e`` makes the count reach the threshold."""

    def __init__(self, threshold: Threshold, clock: Callable[[], float] = time.time, max_keys: int = 65536) -> None:
        self.threshold = threshold
        self._clock = clock
        self._max_keys = max_keys
        # event.kind is e.kind; process.pid is e.process.pid
        self._by = tuple(attrgetter(d.removeprefix("event.")) for d in threshold.by)
        self._seen: OrderedDict[tuple[Any, ...], deque[float]] = OrderedDict()

    def key(self, e: Event) -> tuple[Any, ...]:
        """The values of the ``by`` fields of ``e``."""
        return tuple(get(e) for get in self._by)

    def hit(self, e: Event) -> bool:
        """Count ``e``; True when it completes ``count`` matches within the window (then start again)."""
        t = self.threshold
        now = e.time if e.time is not None else self._clock()
        k = self.key(e)
        times = self._seen.get(k)
        if times is None:
            times = self._seen[k] = deque()
            if len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(k)
        times.append(now)
        while times and now - times[0] > t.within:
            times.popleft()
        if len(times) >= t.count:
            times.clear()
            return True
        return False

    def reset(self) -> None:
        """Forget every count (rule samples start from nothing)."""
        self._seen.clear()


def counted(test: Predicate, window: Window) -> Predicate:
    """``test`` that holds only when the window's count completes (the window sees only matching events)."""
    def holds(e: Event) -> bool:
        return bool(test(e)) and window.hit(e)
    return holds
