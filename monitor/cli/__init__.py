"""The command line: one-shot probes with plugin output, check-config, status, and `run`."""
