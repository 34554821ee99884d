"""Classification levels, ordered and comparable, named in English or Chinese."""

from __future__ import annotations

import enum


class Level(enum.IntEnum):
    """A classification level; larger is more sensitive."""

    PUBLIC = 0
    INTERNAL = 1
    CONFIDENTIAL = 2  # 秘密
    SECRET = 3  # 机密
    TOP_SECRET = 4  # 绝密

    def __str__(self) -> str:
        return self.name.lower()

    @property
    def zh(self) -> str:
        """The Chinese name of the level."""
        return _ZH_OF[self]


_ZH_OF = {
    Level.PUBLIC: "公开",
    Level.INTERNAL: "内部",
    Level.CONFIDENTIAL: "秘密",
    Level.SECRET: "机密",
    Level.TOP_SECRET: "绝密",
}

_BY_NAME: dict[str, Level] = {}
for _lvl in Level:
    _BY_NAME[_lvl.name.lower()] = _lvl
    _BY_NAME[_lvl.name.lower().replace("_", "-")] = _lvl
    _BY_NAME[_lvl.name.lower().replace("_", "")] = _lvl
    _BY_NAME[_ZH_OF[_lvl]] = _lvl

LEVEL_NAMES = tuple(str(lvl) for lvl in Level)


def parse_level(value: object) -> Level:
    """Return the level a name stands for; raise ValueError for anything else.

    Accepts the English names (``secret``, ``top_secret``), their ``-`` forms,
    the Chinese names (公开 内部 秘密 机密 绝密) and Level values themselves.
    """
    if isinstance(value, Level):
        return value
    if isinstance(value, str):
        found = _BY_NAME.get(value.strip().lower())
        if found is not None:
            return found
    raise ValueError(
        f"bad level name {value!r}: expected one of {', '.join(LEVEL_NAMES)} "
        "(or 公开 内部 秘密 机密 绝密)"
    )
