"""Prometheus: the collector built per scrape and the HTTP endpoints (/metrics, /probe, health)."""
