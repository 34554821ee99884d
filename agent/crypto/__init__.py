"""Crypto suites (``intl``: SHA-256/Ed25519; ``gm``: SM3/SM2) for everything DutyWatch hashes and signs.

Import ``agent.crypto.suite``; this file imports nothing, so commands that never
sign start without loading a crypto library.
"""
