"""Prefect tasks: thin, cached, retryable wrappers around one ``react_core`` call each.

Inputs are configs and artifact URIs, outputs are URIs: never tensors or DataFrames.
"""

import logging as _logging

# react_core's INFO lines (recall, failures by reason, damaged shards, the training summary) are what a person
# reads in a flow run's logs. PREFECT_LOGGING_EXTRA_LOGGERS=react_core gives the logger Prefect's handlers but
# not a level, and the root logger's WARNING would drop them; INFO unless someone chose otherwise.
if _logging.getLogger("react_core").level == _logging.NOTSET:
    _logging.getLogger("react_core").setLevel(_logging.INFO)
