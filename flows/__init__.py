"""Prefect flows: compose tasks into ingest, answer, watch, evaluate and train runs."""
