"""The rule engine: YAML rule packs compiled once, evaluated per event."""
