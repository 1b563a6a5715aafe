"""Readers of the store: Prometheus (metrics and HTTP) and SNMP (agent, MIB view, notifications)."""
