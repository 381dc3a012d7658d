"""Scratch database names (scratchdb.py): unit tests, no database needed; what a run does with a database of the
same name is tested on a real server in test_blast_attacks.py."""

from __future__ import annotations

from pytest_phase4 import scratchdb


def test_a_scratch_name_fits_63_bytes_and_keeps_its_token_and_purpose() -> None:
    long = "ü" * 40  # 80 bytes: cut by bytes, whole characters only
    name = scratchdb.name_for(long, "blast", "0123abcd")
    assert len(name.encode()) <= scratchdb.MAX_NAME
    assert name.endswith("_0123abcd_phase4_blast")
    assert name.startswith("ü" * 20)
    assert scratchdb.name_for("crm", "verify", "0123abcd") == "crm_0123abcd_phase4_verify"
