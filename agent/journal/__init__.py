"""The tamper-evident journal: hash-chained SQLite records with signed checkpoints.

Import what you need from its modules (``store.Journal``, ``verify.verify_journal``,
``statedir.quarantine_corrupt``, ``bundle``/``bundlecheck``, ``query``); this package
file imports nothing, so the command line starts without loading the crypto library.
"""
