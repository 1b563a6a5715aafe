"""The Debian peers bench/ starts (NSD with the standard zone, Postfix) and the SNMPv3 flood sender, for bench alone.

bench/ imports tests.support only (tests/unit/test_support_imports.py holds it to that); the peers
themselves stay in tests/peers, where the integration tests use them.
"""

from tests.peers import snmp_flood
from tests.peers.nsd import NsdServer
from tests.peers.postfix import PostfixServer
from tests.peers.zone import standard_zones

__all__ = ["NsdServer", "PostfixServer", "snmp_flood", "standard_zones"]
