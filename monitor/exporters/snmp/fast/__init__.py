"""Accelerators in front of pysnmp: the v1/v2c fast path and the SNMPv3 USM fast path and gate."""
