"""Transports a failed TLS handshake leaves open, collected in the test that caused them."""

from __future__ import annotations

import gc

import pytest


def collect_tls_leaks() -> None:
    """Collect, here, the transports a failed TLS handshake leaves open.

    asyncio on Python 3.11 does not close the transport of a handshake that fails, and aiohttp keeps
    no handle on it: it is reported as an unclosed-transport ResourceWarning whenever the garbage
    collector finds it, which may be in some later test. Tests that provoke handshake failures call
    this at their end, under a filter for exactly that warning.
    """
    gc.collect()


# Marks the tests that call collect_tls_leaks().
ignores_tls_leaks = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
