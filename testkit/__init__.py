"""Test tools shared by tests/, bench/, e2e/ and `make demo`: stores, fault proxy, kernel cores, waits."""
