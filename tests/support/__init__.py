"""Helpers that need only the Python packages of the lock: ports, process trees, certificates, the peer template.

Every tier may import them, and so may bench/ (which imports nothing else from tests/: see
tests/unit/test_support_imports.py).  tests.support.peers re-exports the Debian peers bench starts.
"""
