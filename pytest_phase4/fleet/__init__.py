"""A fleet: one plan run on many databases (--phase4-targets), each target a run of its own. No pytest here."""
