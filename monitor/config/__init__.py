"""Configuration: the YAML document (document.py), its types and validation (schema.py), the forked reader (reader.py).

Nothing is imported here: `run` reads the document before the schema's models (pydantic) are imported."""
