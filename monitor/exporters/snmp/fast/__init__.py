"""Accelerators in front of pysnmp: the sockets' reader, the v1/v2c fast path, the SNMPv3 USM fast path and gate."""
