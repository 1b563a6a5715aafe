"""The status page exporter: server-rendered HTML and JSON of every probe, from the store and the history."""
