"""Bounded waits for the cluster tests: a broken cluster fails a test instead of hanging it."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_until(what: str, check: Callable[[], object], timeout_s: float, poll_s: float = 0.5) -> object:
    """Poll `check` every `poll_s` until it returns a truthy value (returned); fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {value!r})")
        time.sleep(poll_s)
