"""Checks of a node's set-up: `doctor`'s rows and the daemon's start-up self-test."""
