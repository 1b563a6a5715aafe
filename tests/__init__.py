"""Test suite; a package so that `tests.peers` imports however pytest is started."""
