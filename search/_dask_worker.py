"""The preload of the worker processes of the Dask cluster that ``evaluator=dask`` starts (``LocalCluster(preload=...)``).

A Ctrl-C in a terminal reaches the whole process group, the workers too: each printed a KeyboardInterrupt traceback,
while the search process stops the search and closes the cluster in order. A worker ignores SIGINT from here on.
"""

from __future__ import annotations

from typing import Any


def dask_setup(worker: Any) -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
