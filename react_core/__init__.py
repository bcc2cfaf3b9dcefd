"""REACT's library: every stage, with no Prefect in it (flows and tasks wrap it)."""

from react_core.on_worker import on_worker

on_worker()  # first, before torch is imported: a worker's flow run keeps its temporary files to itself
