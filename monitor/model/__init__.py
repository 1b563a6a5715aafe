"""Result values and typed facts: what every probe returns and every exporter reads (the lowest layer)."""
