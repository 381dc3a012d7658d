# Heartbeat lines after 0.2 s instead of 5 s: the test holds each step on a lock until its line appears.
import pytest_phase4.progress

pytest_phase4.progress.FIRST = pytest_phase4.progress.EVERY = 0.2
