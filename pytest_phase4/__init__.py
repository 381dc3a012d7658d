"""pytest-phase4: a database migration runbook as ordered, halting pytest checks on a real PostgreSQL."""

__version__ = "0.1.0"
