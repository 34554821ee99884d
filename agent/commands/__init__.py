"""The dutywatch commands, one module each (see agent.cli)."""
