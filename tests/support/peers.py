"""The Debian peers bench/ starts (NSD with the standard and the policy zones, Postfix), the in-process SMTP
server it measures against and the SNMPv3 flood sender, for bench alone.

bench/ imports tests.support only (tests/unit/test_support_imports.py holds it to that); the peers
themselves stay in tests/peers, where the integration tests use them.
"""

from tests.fakes.smtp_servers import AiosmtpdServer, ServerThread
from tests.peers import policy_zones, snmp_flood
from tests.peers.nsd import NsdServer
from tests.peers.postfix import PostfixServer
from tests.peers.zone import standard_zones

__all__ = [
    "AiosmtpdServer",
    "NsdServer",
    "PostfixServer",
    "ServerThread",
    "policy_zones",
    "snmp_flood",
    "standard_zones",
]
