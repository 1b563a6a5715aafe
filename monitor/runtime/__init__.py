"""The running agent: wiring and signals, the scheduler, the probe process, sharding and logging."""
