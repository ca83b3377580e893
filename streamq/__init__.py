"""streamq: CUDA-stream style dispatch queues for plain CPUs, aware of CMGs/NUMA nodes.

The core is a GCD-like runtime: serial and concurrent :class:`Queue` objects
(``concurrent.futures`` executors) whose tasks run on worker threads pinned per
CMG, with barriers, groups, semaphores, ``apply``, ``after``, events and
cross-queue dependencies, plus a queue log for later analysis
(:mod:`streamq.trace`). See README.md for a tour.
"""

import os as _os

from . import trace
from ._runtime import install as _install_exit_hook
from .errors import DeadlockError, DependencyError, InvalidEventError, NotReadyError, StreamqError
from .events import Event
from .memory import empty, numa_node_of, zeros
from .primitives import Group, Semaphore
from .queue import Queue, current_queue, global_queue
from .task import Task
from .topology import CMG, TopologyError, current_cmg, topology

__version__ = "0.1.0"

__all__ = [
    "Queue", "Task", "Event", "Group", "Semaphore",
    "global_queue", "current_queue", "topology", "current_cmg", "CMG",
    "empty", "zeros", "numa_node_of", "trace",
    "StreamqError", "DependencyError", "DeadlockError", "NotReadyError", "InvalidEventError",
    "TopologyError",
]

_install_exit_hook()
if _os.environ.get("STREAMQ_LOG"):
    trace.enable(_os.environ["STREAMQ_LOG"])
