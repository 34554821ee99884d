"""Auditor reports: a period of the journal (or of evidence bundles) as HTML, PDF, CSV or JSON."""
