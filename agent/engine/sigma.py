"""Sigma rules (SigmaHQ format) as DutyWatch rules, compiled by DutyWatch's own engine.

A file is a Sigma rule when its document is a mapping with ``detection``
and ``logsource`` (and no ``pack``). Its detection is translated into a
``when`` condition over catalogue fields (``sigma_values`` for field tests,
``sigma_condition`` for the condition) and the rule then goes through the
same merge, override and compile passes as a pack rule (``rules.py``):
it gets the same kinds, index triggers, attribution and accountability.

Supported: ``product: linux`` with the categories of ``sigma_fields``.
Everything else that is valid Sigma but not evaluable here (other
products or services, unmapped fields, some modifiers, aggregations,
keyword selections) raises ``SigmaUnsupported`` with its place; malformed
rules raise ``LoadError``. The loader fails on either, unless the config
says ``sigma: {skip_unsupported: true}``, in which case unsupported rules
are reported and left out (never dropped silently).

What a compiled rule carries: the Sigma ``id`` and ``title`` (the Chinese
title is the English one behind a 「Sigma 规则」 prefix), severity from
``level`` (informational -> info; medium when absent), the Sigma tags plus
``sigma``, ``action: alert``, accountable ``operator`` and ``host.unit``,
control GB/T 22239-2019 8.1.4.4 (intrusion detection), and a message built
from the title and the category's key fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.engine.sigma_condition import condition_of
from agent.engine.sigma_fields import CATEGORIES, Category
from agent.engine.sigma_values import Cond, SigmaUnsupported, all_of, any_of, field_test
from agent.errors import LoadError, LoadErrors, Location
from agent.yamlsrc import LDict, LList

LEVELS = {"informational": "info", "low": "low", "medium": "medium", "high": "high", "critical": "critical"}
DEFAULT_LEVEL = "medium"
CONTROLS = ("GB/T 22239-2019 8.1.4.4",)
ACCOUNTABLE = ("operator", "host.unit")
PACK = "sigma"


def is_sigma(doc: Any) -> bool:
    """Whether a loaded YAML document is a Sigma rule rather than a rule pack.

    A Sigma rule has ``detection`` and ``logsource``; a mapping with either
    (and no ``pack``) is taken for a broken Sigma rule, so the error names
    what it lacks rather than complaining that it is not a pack.
    """
    return isinstance(doc, LDict) and ("detection" in doc or "logsource" in doc) and "pack" not in doc


@dataclass(frozen=True, slots=True)
class SigmaRule:
    """A translated Sigma rule: the values a pack rule would hold, with their places."""

    id: str
    where: Location
    category: str
    values: dict[str, Any]
    value_where: dict[str, Location]


def unsupported_only(exc: LoadError | LoadErrors) -> bool:
    """Whether every problem of a failed translation is an unsupported (not malformed) construct."""
    errors = exc.errors if isinstance(exc, LoadErrors) else [exc]
    return all(isinstance(e, SigmaUnsupported) for e in errors)


def translate(doc: LDict, path: str) -> SigmaRule:
    """Translate one Sigma rule document; raise LoadErrors naming every problem with its place."""
    problems: list[LoadError] = []
    title = doc.get("title")
    if not isinstance(title, str) or not title.strip():
        problems.append(LoadError(doc.at("title"), "a Sigma rule needs a title"))
        title = Path(path).stem
    rid = doc.get("id", f"sigma:{Path(path).stem}")
    if not isinstance(rid, str) or not rid.strip():
        problems.append(LoadError(doc.at("id"), "id must be a non-empty string"))
        rid = f"sigma:{Path(path).stem}"
    level = doc.get("level", DEFAULT_LEVEL)
    severity = LEVELS.get(str(level).lower()) if isinstance(level, str) else None
    if severity is None:
        problems.append(LoadError(doc.at("level"), f"level must be one of {', '.join(LEVELS)}, not {level!r}"))
    tags = doc.get("tags", LList())
    if not isinstance(tags, LList) or not all(isinstance(t, str) and t for t in tags):
        problems.append(LoadError(doc.at("tags"), "tags must be a list of strings"))
        tags = LList()
    cat: Category | None = None
    for key in ("logsource", "detection"):
        if key not in doc:
            problems.append(LoadError(doc.where, f"a Sigma rule needs {key}"))
    try:
        if "logsource" in doc:
            cat = _category(doc["logsource"], doc.at("logsource"))
    except LoadError as exc:
        problems.append(exc)
    when = ""
    if cat is not None and "detection" in doc:
        try:
            when = _detection(doc["detection"], doc.at("detection"), cat)
        except LoadErrors as exc:
            problems.extend(exc.errors)
    if problems:
        raise LoadErrors(problems)
    assert cat is not None and severity is not None
    where, dwhere = doc.where, doc.at("detection")
    label = _brace_safe(title)
    values: dict[str, Any] = {
        "id": rid,
        "title": _ldict({"zh": f"Sigma 规则：{title}", "en": str(title)}, doc.at("title")),
        "when": when,
        "severity": severity,
        "action": "alert",
        "accountable": _llist(ACCOUNTABLE, where),
        "controls": _llist(CONTROLS, where),
        "tags": _llist(("sigma", *(str(t) for t in tags)), doc.at("tags")),
        "message": _ldict({"zh": f"Sigma 规则「{label}」：{cat.message_zh}",
                           "en": f"Sigma rule '{label}': {cat.message_en}"}, where),
    }
    value_where = {k: where for k in values}
    value_where.update(title=doc.at("title"), when=dwhere, severity=doc.at("level"), tags=doc.at("tags"))
    return SigmaRule(rid, where, cat.name, values, value_where)


def _category(src: Any, where: Location) -> Category:
    if not isinstance(src, LDict):
        raise LoadError(where, "logsource must be a mapping")
    product = src.get("product")
    if not isinstance(product, str) or product.lower() != "linux":
        raise SigmaUnsupported(src.at("product"), f"logsource product {product!r} is not supported (only linux)")
    if "service" in src:
        raise SigmaUnsupported(src.at("service"), f"logsource service {src['service']!r} is not supported "
                                                  f"(only the categories {', '.join(CATEGORIES)})")
    category = src.get("category")
    cat = CATEGORIES.get(str(category)) if isinstance(category, str) else None
    if cat is None:
        raise SigmaUnsupported(src.at("category"), f"logsource category {category!r} is not supported "
                                                   f"(supported: {', '.join(CATEGORIES)})")
    return cat


def _detection(det: Any, where: Location, cat: Category) -> str:
    if not isinstance(det, LDict):
        raise LoadErrors([LoadError(where, "detection must be a mapping")])
    problems: list[LoadError] = []
    if "timeframe" in det:
        problems.append(SigmaUnsupported(det.key_at("timeframe"), "timeframe (correlation) is not supported"))
    selections: dict[str, Cond] = {}
    for name, body in det.items():
        if name in ("condition", "timeframe"):
            continue
        try:
            selections[name] = _selection(body, det.at(name), det.key_at(name), cat)
        except LoadErrors as exc:
            problems.extend(exc.errors)
        except LoadError as exc:
            problems.append(exc)
    if "condition" not in det:
        problems.append(LoadError(where, "detection needs a condition"))
    if problems:
        raise LoadErrors(problems)
    cond = det["condition"]
    conds = list(cond) if isinstance(cond, LList) else [cond]
    parsed = []
    for i, c in enumerate(conds):
        at = cond.at(i) if isinstance(cond, LList) else det.at("condition")
        if not isinstance(c, str):
            raise LoadErrors([LoadError(at, "condition must be a string")])
        try:
            parsed.append(condition_of(c, at, selections))
        except LoadError as exc:
            raise LoadErrors([exc]) from None
    # A list of conditions means any of them (Sigma 1.0). The rule fires where it is true.
    body = any_of(parsed).true
    kinds = cat.kinds
    head = f"event.kind == {kinds[0]!r}" if len(kinds) == 1 else f"event.kind in {kinds!r}"
    return f"{head} and {body}"


def _selection(body: Any, where: Location, key_at: Location, cat: Category) -> Cond:
    if isinstance(body, LDict):
        return _mapping(body, cat)
    if isinstance(body, LList) and body and all(isinstance(x, LDict) for x in body):
        return any_of([_mapping(x, cat) for x in body])
    if isinstance(body, LList) and any(isinstance(x, LDict) for x in body):
        raise LoadError(where, "a selection list must hold only field mappings or only keywords")
    if body is None or (isinstance(body, LList) and not body):
        raise LoadError(where, "a selection cannot be empty")
    raise SigmaUnsupported(key_at, "keyword selections (full-text search) are not supported; "
                                   "name a field such as CommandLine|contains")


def _mapping(m: LDict, cat: Category) -> Cond:
    if not m:
        raise LoadError(m.where, "a selection cannot be empty")
    problems: list[LoadError] = []
    parts = []
    for key, value in m.items():
        try:
            parts.append(field_test(cat, key, m.key_at(key), value, m.at(key)))
        except LoadError as exc:
            problems.append(exc)
    if problems:
        raise LoadErrors(problems)
    return all_of(parts)


def _brace_safe(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _ldict(items: dict[str, Any], where: Location) -> LDict:
    d = LDict(items)
    d.where = where
    d.key_where = dict.fromkeys(items, where)
    d.value_where = dict.fromkeys(items, where)
    return d


def _llist(items: tuple[str, ...], where: Location) -> LList:
    seq = LList(items)
    seq.where = where
    seq.item_where = [where] * len(items)
    return seq


__all__ = ["CONTROLS", "LEVELS", "PACK", "SigmaRule", "SigmaUnsupported", "is_sigma", "translate",
           "unsupported_only"]
