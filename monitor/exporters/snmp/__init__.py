"""SNMP: the read-only agent serving SMTP-MONITOR-MIB from the results store, and notifications."""
