"""Crash safety: a writer killed mid-stream loses nothing whose append had returned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from test_journal_support import HOST

from agent.journal.store import Journal
from agent.journal.verify import verify_journal

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from agent.journal.store import Journal
    from test_journal_support import HOST, finding

    j = Journal(Path(sys.argv[1]), host=HOST, checkpoint_every=50)
    i = 0
    for n in range(20000):  # bounded: the test kills it long before
        batch = [finding(i + k) for k in range(1 + n % 7)]
        i += len(batch)
        seqs = j.append_many(batch) if len(batch) > 1 else [j.append(batch[0])]
        print(seqs[-1], flush=True)
""")


def test_sigkill_mid_stream_loses_no_returned_append(tmp_path: Path) -> None:
    state = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(state)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    acked = 0
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 400 or time.monotonic() > deadline:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert acked > 0, "the writer printed nothing"
    r = verify_journal(state / "journal.db")
    assert r.ok, r.problem
    assert r.first_seq == 1 and r.last_seq >= acked  # every acknowledged record is there
    # The killed writer's lock died with it: a new agent opens and goes on.
    with Journal(state, host=HOST) as j:
        assert j.head.seq == r.last_seq
        j.append({"type": "lifecycle", "time": 0.0, "host": HOST, "kind": "agent.start", "detail": {}})
    assert verify_journal(state / "journal.db").ok
