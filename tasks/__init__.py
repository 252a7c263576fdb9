"""Prefect tasks: thin wrappers that give one ``lrs_core`` call retries, tags and run logging."""
