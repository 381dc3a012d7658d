"""Which fleet target a run is: a fleet's child run is told the target's name in its environment, and its
evidence says it (`target.name`; None outside a fleet)."""

from __future__ import annotations

import os

FLEET_TARGET_ENV = "PHASE4_FLEET_TARGET"


def target_name() -> str | None:
    return os.environ.get(FLEET_TARGET_ENV) or None
