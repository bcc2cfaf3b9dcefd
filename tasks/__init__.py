"""Prefect tasks: thin, cached, retryable wrappers around one ``react_core`` call each.

Inputs are configs and artifact URIs, outputs are URIs: never tensors or DataFrames.
"""
