"""The report laid out as sections of paragraphs, tables and charts, shared by HTML and PDF.

Only words and numbers are decided here; each renderer decides how they
look. Every cell is already cut to a bounded length by the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.report.build import Report
from agent.report.cells import kind_name
from agent.report.charts import COLORS, Chart, bar_chart, trend_chart
from agent.report.i18n import duration, tr
from agent.report.model import EXAMPLES, OTHER, SEVERITIES, Capped, Evidence, Repeat, Tally

MAX_GROUPS_SHOWN = 60  # groups in a table of the HTML/PDF report; every group is in the JSON


@dataclass(frozen=True, slots=True)
class Para:
    """A paragraph; ``style`` is plain, note, ok, warn, bad or code."""

    text: str
    style: str = "plain"


@dataclass(frozen=True, slots=True)
class Table:
    """A table with a header row; ``weights`` are the relative column widths."""

    caption: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    weights: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Figure:
    """A chart with its caption."""

    caption: str
    chart: Chart


Block = Para | Table | Figure


@dataclass(frozen=True, slots=True)
class Section:
    """One numbered section of the report."""

    id: str
    title: str
    blocks: tuple[Block, ...]


def _name(lang: str, value: str, empty: str) -> str:
    if value == OTHER:
        return tr(lang, "other_keys")
    return value or tr(lang, empty)


def _person(lang: str, name: str, account: str) -> str:
    """A person by name, the account beside it when the registry or the record gives one."""
    shown = _name(lang, name, "unknown")
    return f"{shown} ({account})" if account and name else shown


def level_name(lang: str, level: str) -> str:
    """A level as the report's language writes it (机密, secret)."""
    if not level:
        return ""
    try:
        from agent.levels import parse_level
        lv = parse_level(level)
    except ValueError:
        return level
    return lv.zh if lang == "zh" else str(lv)


def zone_name(lang: str, zone: str) -> str:
    """A zone name, in Chinese for the usual ones."""
    from agent.engine.message import ZONES_ZH
    return ZONES_ZH.get(zone, zone) if lang == "zh" else zone


def _sev_cells(t: Tally) -> tuple[str, ...]:
    return tuple(str(n) for n in t.by_severity)


def header(r: Report) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The report's title and its key facts (period, generated, source)."""
    lang = r.lang
    since = r.when(r.period.since) or tr(lang, "open_start")
    until = r.when(r.period.until) or tr(lang, "open_end")
    src = tr(lang, "src_bundles") if r.fleet else tr(lang, "src_journal")
    # Only what the figures were made from; a refused or failed source is a banner of its own.
    src += ": " + (", ".join(i.path for i in r.integrity if i.ok) or tr(lang, "none"))
    facts: tuple[tuple[str, str], ...] = ((tr(lang, "period"), f"{since} — {until}"),)
    info = dict(r.data.host_info)
    hosts = [i.host for i in r.integrity if i.ok and i.host] or list(info)
    for h in hosts[:1] if not r.fleet else ():
        unit, dept, custodian, level, zone = info.get(h, ("", "", "", "", ""))
        facts += ((tr(lang, "host"), h), (tr(lang, "unit"), _name(lang, unit, "unregistered")),
                  (tr(lang, "department"), _name(lang, dept, "unregistered")),
                  (tr(lang, "custodian"), _name(lang, custodian, "unknown")),
                  (tr(lang, "host_level"), " / ".join(x for x in (level_name(lang, level), zone_name(lang, zone)) if x)
                   or tr(lang, "unknown")))
    if r.fleet:
        facts += ((tr(lang, "hosts"), str(len(hosts))),)
    facts += ((tr(lang, "generated"), r.when(r.generated)), (tr(lang, "timezone"), r.zone()), (tr(lang, "source"), src))
    return tr(lang, "fleet_title" if r.fleet else "title"), facts


def _every_hour(r: Report, seen: dict[str, Tally]) -> list[tuple[str, Tally]]:
    import datetime as dt
    start = dt.datetime.fromtimestamp(r.span[0], r.tz).replace(minute=0, second=0, microsecond=0)
    out: list[tuple[str, Tally]] = []
    t = start
    while t.timestamp() < r.span[1] and len(out) < 49:
        key = t.strftime("%Y-%m-%d %H:00")
        out.append((t.strftime("%H:00"), seen.get(key, Tally())))
        t = dt.datetime.fromtimestamp(t.timestamp() + 3600, r.tz)
    return out


def summary(r: Report) -> Section:
    """Counts by severity, department and unit, and the daily trend."""
    lang, d = r.lang, r.data
    t = d.total
    blocks: list[Block] = [Table("", (tr(lang, "records"), tr(lang, "findings"), tr(lang, "violations"),
                                      tr(lang, "audits"), tr(lang, "hosts")),
                                 ((str(d.records), str(t.total), str(t.alerts), str(t.audits), str(len(d.hosts))),),
                                 (1, 1, 1, 1, 1))]
    if not t.total:
        blocks.append(Para(tr(lang, "no_findings_watched"), "note") if r.monitored > 0
                      else Para(tr(lang, "v_no_conclusion"), "bad"))
    sev_rows = [(tr(lang, s), n, COLORS[s]) for s, n in zip(SEVERITIES, t.by_severity, strict=True)]
    blocks.append(Figure(tr(lang, "by_severity"), bar_chart(sev_rows)))
    names = [tr(lang, s) for s in SEVERITIES]
    slots = dict(d.by_5min)
    if r.span[1] - r.span[0] <= 3 * 3600 and d.by_5min and -1.0 not in slots:
        # up to three hours: every five minutes of the period, labelled HH:MM
        import datetime as dt
        start = r.span[0] - r.span[0] % 300.0
        cols = [(dt.datetime.fromtimestamp(k, r.tz).strftime("%H:%M"), slots.get(k, Tally()))
                for k in (start + 300.0 * i for i in range(37)) if k < r.span[1]]
        blocks.append(Figure(tr(lang, "trend_5min"), trend_chart(cols, names)))
    elif r.span[1] - r.span[0] <= 2 * 86400 and d.by_hour and OTHER not in dict(d.by_hour):
        # a day or two: findings per hour (every hour of the period, empty ones too), labelled HH:00
        hours = _every_hour(r, dict(d.by_hour))
        blocks.append(Figure(tr(lang, "trend_hour"), trend_chart(hours, names)))
    elif d.by_day:
        blocks.append(Figure(tr(lang, "trend"), trend_chart(d.by_day, names)))
    sev_heads = tuple(tr(lang, s) for s in SEVERITIES)
    rows = tuple((_name(lang, g.department, "unregistered"), _name(lang, g.unit, "unregistered"),
                  str(g.host_count), *_sev_cells(g.tally), str(g.tally.alerts), str(g.tally.audits))
                 for g in d.groups)
    blocks.append(Table(tr(lang, "by_unit"), (tr(lang, "department"), tr(lang, "unit"), tr(lang, "hosts"),
                                              *sev_heads, tr(lang, "alert"), tr(lang, "audit")),
                        rows, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)))
    if d.groups:
        per_unit: dict[str, int] = {}
        for g in d.groups:
            name = _name(lang, g.unit, "unregistered")
            per_unit[name] = per_unit.get(name, 0) + g.tally.total
        top = sorted(per_unit.items(), key=lambda kv: (-kv[1], kv[0]))[:12]
        blocks.append(Figure(tr(lang, "by_unit_chart"), bar_chart([(u, n, COLORS["low"]) for u, n in top])))
    if r.fleet:
        rows = tuple((_name(lang, g.department, "unregistered"), _name(lang, g.unit, "unregistered"),
                      ", ".join(g.hosts) + (" …" if g.host_count > len(g.hosts) else "")) for g in d.groups)
        blocks.append(Table(tr(lang, "host_list"), (tr(lang, "department"), tr(lang, "unit"),
                                                    tr(lang, "host_list")), rows, (2, 2, 4)))
    return Section("summary", tr(lang, "s_summary"), tuple(blocks))


def controls(r: Report) -> Section:
    """The controls a reader must look at in full (findings, or no rule evidence at all), the rest in one line.

    A row names only the rules that found something; the rules in force that
    found nothing are counted. Every control and rule is in the JSON report.
    """
    lang = r.lang
    rows = []
    quiet: list[str] = []
    for c in r.controls:
        area = c.area_zh if lang == "zh" else c.area_en
        if c.status == "quiet" or (c.status == "none" and c.built_in):
            note = tr(lang, "ctl_rules", n=len(c.rules)) if c.rules else tr(lang, f"bi_{c.built_in}")
            quiet.append(f"{c.name} {area}（{note}）" if lang == "zh" else f"{c.name} {area} ({note})")
            continue
        found = [x for x in c.rules if x.count]
        rules = "; ".join(f"{x.id} {x.title_zh if lang == 'zh' else x.title_en} ({x.count})" for x in found)
        if len(c.rules) > len(found):
            rules += ("; " if rules else "") + tr(lang, "ctl_more", n=len(c.rules) - len(found))
        status = tr(lang, f"st_{c.status}")
        if c.built_in:
            status += " — " + tr(lang, f"bi_{c.built_in}")
        name = f"{c.name} ({', '.join(c.items)})" if c.items else c.name
        rows.append((name, area, c.summary_zh if lang == "zh" else c.summary_en, rules or tr(lang, "none"),
                     str(c.findings), status))
    blocks: list[Block] = []
    if rows:
        blocks.append(Table(tr(lang, "ctl_issues"), (tr(lang, "control"), tr(lang, "area"), tr(lang, "requirement"),
                                                     tr(lang, "rules"), tr(lang, "findings"), tr(lang, "status")),
                            tuple(rows), (2.2, 1.2, 2.8, 3.6, 0.8, 1.6)))
    if quiet:
        blocks.append(Para(tr(lang, "ctl_quiet", list=("；" if lang == "zh" else "; ").join(quiet)), "note"))
    from agent.report.assessment_blocks import assessment_blocks  # it builds on this module's blocks
    return Section("controls", tr(lang, "s_controls"), (*blocks, *assessment_blocks(r)))


CMD_SHOWN = 100  # characters of a command line in a table; CSV and JSON hold it whole


def _clip(text: str, n: int = CMD_SHOWN) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _evidence_rows(lang: str, r: Report, rows: tuple[Evidence, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple((r.short(e.time), e.host, _clip(e.process), _name(lang, e.operator, "unknown"), _clip(e.object),
                  e.rule, tr(lang, e.severity), e.message_zh if lang == "zh" else e.message_en) for e in rows)


def _program(path: str) -> str:
    """A program by its file name (the whole path is in JSON and CSV)."""
    return _clip(path.rsplit("/", 1)[-1] or path, 40)


def _repeat_table(lang: str, r: Report, caption: str, rows: tuple[Repeat, ...], who: str) -> Table:
    """Findings grouped by rule × person (or program) × object, with count and first and last time."""
    cells = tuple((tr(lang, x.severity), f"{x.rule} {x.title_zh if lang == 'zh' else x.title_en}",
                   _name(lang, x.operator, "unknown") if who == "person" else _program(x.operator or x.process),
                   _name(lang, x.unit, "unregistered"), _name(lang, x.custodian, "unknown"),
                   _clip(x.object, 80) or "—",
                   str(x.count), r.compact(x.first), r.compact(x.last)) for x in rows)
    return Table(caption, (tr(lang, "severity"), tr(lang, "rule"), tr(lang, who), tr(lang, "unit"),
                           tr(lang, "custodian"), tr(lang, "object"), tr(lang, "count"), tr(lang, "first_seen"),
                           tr(lang, "last_seen")), cells, (0.7, 2.2, 1.3, 1.5, 1, 2, 0.6, 1.1, 1.1))


def _evidence_heads(lang: str) -> tuple[str, ...]:
    return tuple(tr(lang, k) for k in ("time", "host", "process", "operator", "object", "rule", "severity",
                                        "message"))


EVIDENCE_WEIGHTS = (2.1, 1.4, 2.0, 1.0, 2.0, 1.4, 0.8, 2.8)  # a full time and a rule id fit on one line


def _capped_notes(lang: str, c: Capped) -> list[Block]:
    out: list[Block] = [Para(tr(lang, "listed_of", listed=len(c.rows), total=c.total), "note")]
    if c.omitted:
        parts = ", ".join(f"{tr(lang, s)} {n}" for s, n in zip(SEVERITIES, c.omitted_by_severity, strict=True) if n)
        out.append(Para(tr(lang, "omitted", parts=parts), "note"))
    return out


def accountability(r: Report) -> Section:
    """Per operator and per unit: violations and audit records; unattributed operations apart."""
    lang, d = r.lang, r.data
    sep = "、" if lang == "zh" else ", "
    people = tuple((_person(lang, p.operator, p.account), _name(lang, p.unit, "unregistered"),
                    _name(lang, p.host_unit, "unregistered"), sep.join(tr(lang, f"role_{x}") for x in p.roles),
                    str(p.tally.alerts), str(p.tally.audits), ", ".join(f"{rid} ×{n}" for rid, n in p.rules))
                   for p in d.operators)
    units = tuple((_name(lang, g.department, "unregistered"), _name(lang, g.unit, "unregistered"),
                   str(g.tally.alerts), str(g.tally.audits)) for g in d.groups)
    blocks: list[Block] = [
        Table(tr(lang, "per_operator"), (tr(lang, "person"), tr(lang, "own_unit"), tr(lang, "host_unit"),
                                         tr(lang, "role"), tr(lang, "violations"), tr(lang, "audits"),
                                         tr(lang, "top_rules")), people, (1.6, 2.2, 2.2, 1.4, 1, 1, 3)),
        Table(tr(lang, "per_unit"), (tr(lang, "department"), tr(lang, "unit"), tr(lang, "violations"),
                                     tr(lang, "audits")), units, (3, 3, 1, 1)),
    ]
    if d.owners:
        blocks.append(Table(tr(lang, "per_owner"), (tr(lang, "owner_unit"), tr(lang, "violations"),
                                                    tr(lang, "audits")),
                            tuple((_name(lang, o.unit, "unregistered"), str(o.tally.alerts), str(o.tally.audits))
                                  for o in d.owners), (4, 1, 1)))
    u = d.unattributed
    if u.total:
        blocks.append(Para(tr(lang, "unattributed_n", n=u.total), "bad"))
        shown = d.unattributed_repeats[:MAX_GROUPS_SHOWN]
        blocks.append(_repeat_table(lang, r, tr(lang, "unattributed"), shown, "program"))
        if len(d.unattributed_repeats) > len(shown):
            blocks.append(Para(tr(lang, "groups_listed", listed=len(shown), total=len(d.unattributed_repeats)),
                               "note"))
    else:
        blocks += [Para(tr(lang, "unattributed"), "plain"), Para(tr(lang, "none_unattributed"), "note")]
    return Section("accountability", tr(lang, "s_account"), tuple(blocks))


def violations(r: Report) -> Section:
    """Violations with their evidence, the first rows by severity then time."""
    lang, v = r.lang, r.data.violations
    if not v.total:
        if r.monitored <= 0:
            return Section("violations", tr(lang, "s_violations"), (Para(tr(lang, "v_no_conclusion"), "bad"),))
        return Section("violations", tr(lang, "s_violations"), (Para(
            tr(lang, "v_no_violations", monitored=duration(lang, r.monitored)), "note"),))
    d = r.data
    shown = d.repeats[:MAX_GROUPS_SHOWN]
    blocks: list[Block] = [_repeat_table(lang, r, tr(lang, "grouped"), shown, "person")]
    if len(d.repeats) > len(shown) or d.repeats_folded:
        blocks.append(Para(tr(lang, "groups_listed", listed=len(shown), total=len(d.repeats)) +
                           (tr(lang, "groups_folded", n=d.repeats_folded) if d.repeats_folded else ""), "note"))
    blocks += [Para(tr(lang, "details", n=EXAMPLES), "plain"), *_capped_notes(lang, v),
               Table("", _evidence_heads(lang), _evidence_rows(lang, r, v.rows), EVIDENCE_WEIGHTS)]
    return Section("violations", tr(lang, "s_violations"), tuple(blocks))


def continuity(r: Report) -> Section:
    """Runs of the agent, gaps, and the lifecycle records (reloads, rule-set changes)."""
    lang, c = r.lang, r.data.continuity
    runs = tuple((e.host, r.short(e.start), r.short(e.stop) if e.stop is not None else tr(lang, "no_stop"),
                  tr(lang, "clean") if e.clean else tr(lang, "no_stop")) for e in c.runs)
    blocks: list[Block] = [Table(tr(lang, "runs"), (tr(lang, "host"), tr(lang, "start"), tr(lang, "stop"),
                                                    tr(lang, "status")), runs, (2, 2, 2, 1.5))]
    blocks.append(coverage_table(r))
    stretches = tuple((cv.host, tr(lang, f"w_{x.where}"), r.short(x.since), r.short(x.until),
                       duration(lang, x.seconds)) for cv in r.coverage for x in cv.stretches)
    if stretches:
        blocks.append(Table(tr(lang, "unmonitored"), (tr(lang, "host"), tr(lang, "where"), tr(lang, "from"),
                                                      tr(lang, "to"), tr(lang, "length")),
                            stretches, (2, 1.6, 2, 2, 1.5)))
    if c.gaps:
        gaps = tuple((g.host, r.short(g.since), r.short(g.until), duration(lang, g.seconds)) for g in c.gaps)
        blocks.append(Table(tr(lang, "gaps"), (tr(lang, "host"), tr(lang, "from"), tr(lang, "to"),
                                               tr(lang, "length")), gaps, (2, 2, 2, 1.5)))
        blocks.append(Para(f"{tr(lang, 'gap_total')}: {duration(lang, c.gap_seconds)}", "bad"))
    elif r.watched_all:
        blocks.append(Para(tr(lang, "gaps_none_full"), "ok"))
    counts = ", ".join(f"{kind_name(lang, k)} {n}" for k, n in c.counts) or tr(lang, "none")
    blocks.append(Para(f"{tr(lang, 'counts')}: {counts}; {tr(lang, 'reload_failures')}: {c.reload_failures}"))
    events = tuple((str(e.seq), r.short(e.time), e.host, e.kind, e.text_zh if lang == "zh" and e.text_zh else e.text)
                   for e in c.events)
    blocks.append(Table(tr(lang, "life_events"), ("seq", tr(lang, "time"), tr(lang, "host"), tr(lang, "kind"),
                                                  tr(lang, "detail")), events, (0.8, 2, 1.6, 1.5, 5)))
    if c.events_total > len(c.events):
        blocks.append(Para(tr(lang, "life_listed", listed=len(c.events), total=c.events_total), "note"))
    return Section("continuity", tr(lang, "s_continuity"), tuple(blocks))


def integrity(r: Report) -> Section:
    """The verify result of every source, its head hash and key, and the command to repeat it."""
    lang = r.lang
    blocks: list[Block] = []
    for i in r.integrity:
        result = tr(lang, "verify_ok") if i.ok else f"{tr(lang, 'verify_bad')}: {i.problem}"
        rows: tuple[tuple[str, ...], ...] = ((tr(lang, "source"), f"{i.kind} {i.path}"), (tr(lang, "host"), i.host),
                (tr(lang, "result"), result), (tr(lang, "crypto_suite"), tr(lang, f"suite_{i.suite}")),
                (tr(lang, "seq_range"), f"{i.first_seq}..{i.last_seq} ({i.records})"),
                (tr(lang, "fingerprint"), i.fingerprint), (tr(lang, "key_source"), i.key_source),
                (tr(lang, "key_trust"), tr(lang, "trusted" if i.trusted else "self_key")))
        if not r.fleet and r.data.first_seq is not None:
            rows += ((tr(lang, "period_seqs"), f"{r.data.first_seq}..{r.data.last_seq}"),)
        if i.through_seq:
            through = f"seq {i.through_seq}"
            if i.extends_to:
                through += tr(lang, "through_bundle", last=i.extends_to)
            signed = tr(lang, "signed_manifest") if i.kind == "bundle" and not i.signed_seq else \
                _signed(r, i.signed_seq, i.signed_time)
            rows += ((tr(lang, "through"), through), (tr(lang, "chain_head"), i.through_hash),
                     (tr(lang, "signed_by"), signed))
        elif i.kind == "journal":
            rows += ((tr(lang, "through"), tr(lang, "none")),)
        blocks.append(Table("", ("", ""), rows, (1, 4)))
        blocks.append(Para(tr(lang, "statement"), "plain"))
        blocks.append(Para(i.command, "code"))
    if r.refused:
        rows2 = tuple((i.path, i.host or "?", i.problem) for i in r.refused)
        blocks.append(Table(tr(lang, "refused"), (tr(lang, "bundle"), tr(lang, "host"), tr(lang, "problem")),
                            rows2, (2, 1, 4)))
    return Section("integrity", tr(lang, "s_integrity"), tuple(blocks))


def _signed(r: Report, seq: int, t: float) -> str:
    if not seq:
        return tr(r.lang, "v_unsigned")
    return tr(r.lang, "v_signed", seq=seq, time=r.when(t))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def coverage_table(r: Report) -> Table:
    """Per host: monitored time, and unmonitored time before the first start, in gaps, after the last sign."""
    lang = r.lang
    rows = tuple((c.host or tr(lang, "unknown"), duration(lang, c.monitored), duration(lang, c.before),
                  duration(lang, c.gaps), duration(lang, c.after), _pct(c.share)) for c in r.coverage)
    return Table(tr(lang, "coverage"), (tr(lang, "host"), tr(lang, "monitored"), tr(lang, "before_start"),
                                        tr(lang, "gaps_col"), tr(lang, "after_last"), tr(lang, "share")),
                 rows, (2, 1.5, 1.5, 1.5, 1.5, 1))


def verdict(r: Report) -> Section:
    """Page 1: what failed, how much was watched, what was found, who answers, and how far it is proven."""
    lang, d = r.lang, r.data
    blocks: list[Block] = []
    for i in r.integrity:
        if not i.ok:
            blocks.append(Para(tr(lang, "banner_failed", kind=i.kind, path=i.path, host=i.host or "?",
                                  problem=i.problem), "bad"))
    for i in r.refused:
        blocks.append(Para(tr(lang, "banner_refused", path=i.path, host=i.host or "?", problem=i.problem), "bad"))
    length = sum(c.length for c in r.coverage)
    if r.monitored <= 0:
        blocks.append(Para(tr(lang, "banner_no_coverage"), "bad"))
    elif not r.watched_all:
        blocks.append(Para(tr(lang, "banner_partial", unmonitored=duration(lang, length - r.monitored),
                              share=_pct(r.monitored / length if length else 0.0)), "warn"))
    blocks.append(coverage_table(r))
    quiet = [c.host for c in r.coverage if c.still_running and c.unmonitored > 0]
    if quiet:
        blocks.append(Para(tr(lang, "still_running", hosts=", ".join(quiet)), "note"))
    t = d.total
    if t.alerts:
        parts = ("、" if lang == "zh" else ", ").join(
            f"{tr(lang, s)} {n}" for s, n in zip(SEVERITIES, d.alerts_by_severity, strict=True) if n)
        blocks.append(Para(tr(lang, "v_violations", n=t.alerts, parts=parts), "bad"))
    elif r.monitored > 0:
        blocks.append(Para(tr(lang, "v_no_violations", monitored=duration(lang, r.monitored)),
                           "ok" if r.watched_all else "warn"))
    else:
        blocks.append(Para(tr(lang, "v_no_conclusion"), "bad"))
    sep = "；" if lang == "zh" else "; "
    people = [p for p in d.operators if p.tally.alerts and p.operator and p.operator != OTHER][:3]
    if d.unattributed.total:
        blocks.append(Para(tr(lang, "unattributed_n", n=d.unattributed.total), "bad"))
    if people:
        blocks.append(Para(tr(lang, "v_people", list=sep.join(
            f"{_person(lang, p.operator, p.account)}（{_name(lang, p.unit, 'unregistered')}）{p.tally.alerts}"
            if lang == "zh" else
            f"{_person(lang, p.operator, p.account)} ({_name(lang, p.unit, 'unregistered')}) {p.tally.alerts}"
            for p in people))))
    units = sorted((g for g in d.groups if g.tally.alerts), key=lambda g: (-g.tally.alerts, g.unit))[:3]
    if units:
        blocks.append(Para(tr(lang, "v_units", list=sep.join(
            f"{_name(lang, g.unit, 'unregistered')} {g.tally.alerts}" for g in units))))
    for i in r.integrity:
        if not i.ok:
            continue
        if i.kind == "journal" and not i.through_seq:
            blocks.append(Para(tr(lang, "v_integrity_empty"), "warn"))
        elif i.kind == "journal":
            blocks.append(Para(tr(lang, "v_integrity", first=i.first_seq, last=i.last_seq, seq=i.through_seq,
                                  hash=i.through_hash, signed=_signed(r, i.signed_seq, i.signed_time)),
                               "plain" if i.signed_seq else "warn"))
        blocks.append(Para(tr(lang, "v_key_trusted" if i.trusted else "v_key_self", source=i.key_source),
                           "plain" if i.trusted else "warn"))
    if r.fleet and r.integrity:
        blocks.append(Para(tr(lang, "v_bundles_ok", n=sum(1 for i in r.integrity if i.ok))))
        beyond = sum(1 for i in r.integrity if i.ok and i.extends_to)
        if beyond:
            blocks.append(Para(tr(lang, "v_bundles_through", k=beyond)))
    return Section("verdict", tr(lang, "s_verdict"), tuple(blocks))


def fleet(r: Report) -> Section | None:
    """Fleet-wide figures from Prometheus, when asked for; no data is never counted as down time."""
    m = r.prometheus
    if m is None:
        return None
    lang = r.lang
    dash = "—"
    data_since = r.when(m.data_since) if m.data_since is not None else tr(lang, "prom_never")
    facts = ((tr(lang, "prom_url"), f"{m.url} (job {m.job})"), (tr(lang, "hosts_monitored"), str(m.hosts_monitored)),
             (tr(lang, "prom_data_since"), data_since), (tr(lang, "prom_no_data"), duration(lang, m.no_data_seconds)),
             (tr(lang, "down_total"), duration(lang, m.down_seconds)))
    units = tuple((_name(lang, u.department, "unregistered"), _name(lang, u.unit, "unregistered"), str(u.hosts),
                   str(u.violations), str(u.audits), f"{u.per_host_day:.2f}" if u.per_host_day is not None else dash)
                  for u in m.units)
    down = tuple((d.instance, duration(lang, d.down_seconds), duration(lang, d.no_data_seconds)) for d in m.downtime)
    blocks: list[Block] = [
        Table("", ("", ""), facts, (1, 3)),
        Table(tr(lang, "by_unit"), (tr(lang, "department"), tr(lang, "unit"), tr(lang, "hosts"),
                                    tr(lang, "violations"), tr(lang, "audits"), tr(lang, "rate")),
              units, (3, 3, 1, 1, 1, 1.5)),
    ]
    if any(u.per_host_day is None for u in m.units):
        blocks.append(Para(tr(lang, "prom_no_rate"), "note"))
    blocks.append(Table(tr(lang, "down"), (tr(lang, "instance"), tr(lang, "down"), tr(lang, "prom_no_data_col")),
                        down, (3, 2, 2)))
    blocks.append(Para(tr(lang, "prom_down_note"), "note"))
    if not r.fleet:
        prom = {u.unit: u.violations for u in m.units}
        rows = []
        for g in r.data.groups:
            if g.unit in prom:
                rows.append((_name(lang, g.unit, "unregistered"), str(g.tally.alerts), str(prom[g.unit])))
        if rows:
            blocks.append(Table(tr(lang, "prom_vs_journal"), (tr(lang, "unit"), tr(lang, "prom_journal"),
                                                              "Prometheus"), tuple(rows), (3, 1, 1)))
        if any(a != b for _, a, b in rows):
            blocks.append(Para(tr(lang, "prom_differs"), "note"))
    return Section("fleet", tr(lang, "s_fleet"), tuple(blocks))


def all_sections(r: Report) -> list[Section]:
    """Every section in order."""
    out = [verdict(r), summary(r), controls(r), accountability(r), violations(r), continuity(r), integrity(r)]
    f = fleet(r)
    if f is not None:
        out.append(f)
    return out
