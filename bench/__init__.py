"""Benchmarks of the agent against blackbox_exporter and net-snmp's snmpd on loopback peers."""
