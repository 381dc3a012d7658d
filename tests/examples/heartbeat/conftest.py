# Heartbeat lines after 0.2 s instead of 5 s: the test holds each step on a lock until its line appears.
import pytest_phase4.plugin.progress

pytest_phase4.plugin.progress.FIRST = pytest_phase4.plugin.progress.EVERY = 0.2
