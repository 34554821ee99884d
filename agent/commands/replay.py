"""``dutywatch replay``: evaluate recorded events (one JSON event a line) as the agent would.

Each event goes through attribution (the registry) and the engine, exactly
as live events do; each finding is printed as one JSON line (the journal
record of ``Finding.to_record`` plus ``seq`` and the input ``line``), and a
closing summary on standard error gives events, findings, bad lines,
events/s and the peak RSS. The input is streamed: memory stays flat however
long it is. A bad line is reported as ``path:line: message`` and skipped;
the run goes on, and exits 1 at the end if there was any.
"""

from __future__ import annotations

import argparse
import gc
import io
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent.attribution import Attributor
from agent.commands.common import add_config, error_lines, print_errors
from agent.config import load_config
from agent.engine.engine import Engine, Finding
from agent.engine.fold import for_host
from agent.engine.rules import RuleSet, load_rules
from agent.errors import LoadError, LoadErrors
from agent.events import EventDecoder
from agent.packages import no_owners
from agent.paths import DEMO_REGISTRY, shipped_rules_dir
from agent.records import RecordDecoder
from agent.registry import load_registry

MAX_LINE = 1 << 20  # a longer line is reported, not buffered: memory stays bounded


def register(sub: Any) -> None:
    """Add the command."""
    p = sub.add_parser("replay", help="evaluate recorded events (JSON lines) against the rules",
                       description="Evaluate recorded events, one JSON event a line (as in rule samples), "
                                   "through attribution and the engine. Findings go to standard output as "
                                   "JSON lines, a summary to standard error.")
    add_config(p)
    p.add_argument("--rules", nargs="+", type=Path, metavar="PATH",
                   help="rule files or directories, packs or Sigma rules (default: the config's, "
                        "else the shipped packs)")
    p.add_argument("--registry", type=Path, metavar="FILE",
                   help="registry for attribution (default: the config's, else the demo registry)")
    # Optional only so that ``--rules A B EVENTS.jsonl`` works: --rules takes
    # several paths and would otherwise swallow the events file (see _events_arg).
    p.add_argument("events", metavar="EVENTS.jsonl", nargs="?",
                   help="recorded events, or - for standard input (after --rules, the last path)")
    p.set_defaults(func=run)


def _events_arg(args: argparse.Namespace) -> str | None:
    """The events file; after ``--rules`` the last path given is it."""
    if args.events is not None:
        return str(args.events)
    if args.rules and len(args.rules) >= 2:
        return str(args.rules.pop())
    return None


@dataclass
class ReplayStats:
    """What a replay saw."""

    events: int = 0
    findings: int = 0
    bad: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Events evaluated per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def replay(stream: IO[bytes], name: str, engine: Engine, attribute: Attributor,
           emit: Callable[[dict[str, Any]], object], report: Callable[[str], None],
           clock: Callable[[], float] = time.perf_counter) -> ReplayStats:
    """Evaluate every line of ``stream``; ``emit`` each finding record, ``report`` each bad line.

    Lines are read a block at a time and decoded into records
    (``agent.records``), attributed in place and matched as records; only a
    line that some rule may fire on, or that a record cannot stand for (a bad
    line, a blank one, an event of a kind whose rules count), is decoded again
    as an Event, and its findings are that Event's.
    """
    decode = EventDecoder(attribute.build).decode  # decoded and attributed in one step
    by_kind = engine.matchers()  # the decoder admits only known kinds, and every kind has an entry
    records = RecordDecoder()
    record = records.decode
    attribute_record = attribute.for_records(records.empty)
    # Only kinds whose rules keep no state: such a record's line may be matched a second time, as an Event.
    quick = {kind: m for kind, m in by_kind.items() if kind in engine.stateless_kinds()}
    events = findings = bad = 0

    def evaluate(lineno: int, raw: bytes) -> None:
        """One line, as an Event: decoded, attributed, matched, its findings emitted."""
        nonlocal events, findings, bad
        try:
            event = decode(raw)
        except (ValueError, TypeError, RecursionError) as exc:
            if raw.strip():
                bad += 1
                report(f"{name}:{lineno}: bad event: {exc}")
            return
        events += 1
        rules = by_kind[event.kind](event)
        if rules:
            for rule in rules:
                findings += 1
                emit({"seq": findings, "line": lineno, **Finding(rule, event, attribute.names).to_record()})

    start = clock()
    for lineno, lines in _blocks(stream):
        if lines is None:
            bad += 1
            report(f"{name}:{lineno}: line longer than {MAX_LINE} bytes")
            continue
        try:
            block: list[Any] = list(map(record, lines))  # the loop runs in C
        except Exception:  # a line that is not a plain record: each on its own, the others as records
            block = [_record_or_none(record, raw) for raw in lines]
        for i, r in enumerate(block):
            if r is not None:
                try:
                    m = quick.get(r.event.kind)
                    if m is not None and attribute_record(r) and not m(r):
                        events += 1
                        continue
                except Exception:  # noqa: S110 - whatever a record cannot take, its Event takes below
                    pass
            evaluate(lineno + i, lines[i])
    return ReplayStats(events, findings, bad, clock() - start)


def _record_or_none(record: Callable[[bytes], Any], raw: bytes) -> Any:
    try:
        return record(raw)
    except Exception:
        return None


_BLOCK = 1 << 15  # bytes read at a time (about 80 lines): a block's records stay in the CPU cache; 128 KiB ran slower


def _blocks(stream: IO[bytes]) -> Iterator[tuple[int, list[bytes] | None]]:
    """``(number of the first line, lines)`` in order, each line with its newline; ``(number, None)`` for a long one.

    No line given is longer than MAX_LINE (without its newline); only the
    stream's last line may lack a newline. Memory stays bounded: a line
    longer than that is skipped as it is read, and reported.
    """
    # read1: what is there, up to a block; a pipe fed line by line (tail -f) is replayed as it comes.
    read = getattr(stream, "read1", stream.read)
    lineno = 1
    pending = b""
    skipping = False  # inside a long line, already reported
    while chunk := read(_BLOCK):
        if skipping:
            cut = chunk.find(b"\n")
            if cut < 0:
                continue
            chunk, skipping = chunk[cut + 1:], False
        data = pending + chunk if pending else chunk
        lines = io.BytesIO(data).readlines()  # split at each newline only, in C
        pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        if len(data) > MAX_LINE + 1 and max(map(len, lines), default=0) > MAX_LINE + 1:
            for line in lines:  # a long line among them (a rare long pending line grew past the limit)
                yield lineno, ([line] if len(line) <= MAX_LINE + 1 else None)
                lineno += 1
        elif lines:
            yield lineno, lines
            lineno += len(lines)
        if len(pending) > MAX_LINE:
            yield lineno, None
            lineno += 1
            pending, skipping = b"", True
    if pending:
        yield lineno, ([pending] if len(pending) <= MAX_LINE else None)


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _plain_text(value: Any) -> Any:
    if isinstance(value, str):
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def _no_system_accounts(uid: int) -> str | None:
    # Recorded events may come from another host: this machine's account
    # database says nothing about them, and results must not depend on it.
    return None


def _load(args: argparse.Namespace) -> tuple[RuleSet, Path]:
    cfg = load_config(args.config) if args.config is not None else None
    optional: tuple[Path, ...] = ()
    if args.rules:
        paths = list(args.rules)
    elif cfg is not None:
        paths, optional = list(cfg.rules), tuple(cfg.rules_optional)
    else:
        paths = [shipped_rules_dir()]
    skip = cfg.sigma_skip_unsupported if cfg is not None else False
    ruleset = load_rules(paths, optional=optional, sigma_skip_unsupported=skip)
    registry = args.registry or (cfg.registry if cfg is not None else DEMO_REGISTRY)
    return ruleset, registry


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every line was a valid event, 1 otherwise (or when rules or registry fail to load)."""
    t0 = time.perf_counter()
    events = _events_arg(args)
    if events is None:
        print("dutywatch replay: name the events file (EVENTS.jsonl, or - for standard input)", file=sys.stderr)
        return 2
    try:
        ruleset, registry_path = _load(args)
        registry = load_registry(registry_path)
    except (LoadError, LoadErrors) as exc:
        print_errors(error_lines(exc))
        return 1
    print_errors(f"{e} (skipped: sigma.skip_unsupported is true)" for e in ruleset.skipped)
    # Attribution gives every event the registry's host: the rules are compiled for it.
    engine = Engine(for_host(ruleset, registry.host))
    attribute = Attributor(registry, _no_system_accounts, no_owners)
    load_s = time.perf_counter() - t0
    # The rules and registry live as long as the run: keep the collector from rescanning them.
    gc.freeze()
    import msgspec  # the decoder needs it too; the encoder writes the same JSON faster than json

    # Rule texts are str subclasses that remember their YAML place; they encode as plain text.
    encode = msgspec.json.Encoder(enc_hook=_plain_text).encode
    out = sys.stdout.buffer
    source = "<stdin>" if events == "-" else events
    try:
        stream = sys.stdin.buffer if events == "-" else open(events, "rb")  # noqa: SIM115
    except OSError as exc:
        print(f"dutywatch: cannot read {events}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        with stream:
            stats = replay(stream, source, engine, attribute, lambda rec: out.write(encode(rec) + b"\n"),
                           lambda line: print(line, file=sys.stderr))
        out.flush()
    except BrokenPipeError:
        sys.stderr.write("replay: output closed early\n")
        return 1
    errors = f", {engine.errors} rule evaluation errors" if engine.errors else ""
    print(f"replay: {stats.events:,} events, {stats.findings:,} findings, {stats.bad:,} bad lines{errors}; "
          f"{len(ruleset.rules)} rules loaded in {load_s:.2f} s; {stats.seconds:.2f} s, "
          f"{stats.rate:,.0f} events/s, peak RSS {peak_rss_mb():.1f} MB", file=sys.stderr)
    return 1 if stats.bad else 0
