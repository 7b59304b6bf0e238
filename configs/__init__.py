"""Experiment configs: ``common.base()`` is the schema; each experiment file only overrides it."""
