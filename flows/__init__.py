"""Prefect flows: sequence and map tasks; no arithmetic and no I/O of their own."""
