"""What a forked worker process must shed of its parent: exit hooks of the parent's service threads.

Prefect's background services (the API log worker, the events worker) register ``_at_exit`` callbacks
with ``threading._register_atexit``. A process forked from one that ran a flow (a DataLoader worker
inside a task, or in a test session after a flow) inherits those callbacks but not the services'
threads; at the child's exit ``threading._shutdown()`` runs them, they fail an assertion, and
multiprocessing reports exit code 1 with no message. PyTorch then raises "DataLoader worker exited
unexpectedly" although every batch was delivered. (Seen with Prefect 3 on Python 3.11; Prefect's own
fork handlers reset the services but leave the callbacks registered.)

:func:`forget_parent_exit_hooks` is the ``worker_init_fn`` of our DataLoaders: it drops the inherited
callbacks of Prefect's services from the child only. The library never imports prefect; the hooks are
recognised by the module of the object they are bound to.
"""

from __future__ import annotations

import threading


def _owner_module(hook: object) -> str:
    func = getattr(hook, "func", hook)  # threading wraps each hook in functools.partial
    owner = getattr(func, "__self__", None)
    return type(owner).__module__ if owner is not None else ""


def forget_parent_exit_hooks(worker_id: int | None = None) -> None:
    """Drop inherited thread-exit hooks of Prefect's services (call in the forked child only)."""
    hooks = getattr(threading, "_threading_atexits", None)
    if hooks:
        hooks[:] = [h for h in hooks if not _owner_module(h).startswith("prefect.")]
