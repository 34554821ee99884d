"""The tamper-evident journal: hash-chained SQLite records with signed checkpoints."""
