"""Real peer servers (Postfix, NSD, snmptrapd) on free loopback ports, for integration tests."""
