"""SNMP: the read-only agent serving SMTP-MONITOR-MIB from the results store."""

from monitor.snmp.agent import SnmpAgent, SnmpAgentError, SnmpBindError, SnmpStateError
from monitor.snmp.mibview import MibTable, MibView

__all__ = ["MibTable", "MibView", "SnmpAgent", "SnmpAgentError", "SnmpBindError", "SnmpStateError"]
