"""Exceptions raised by the core runtime."""

from __future__ import annotations


class StreamqError(Exception):
    """Base class of streamq's own errors."""


class DependencyError(StreamqError):
    """A task did not run because a task or event it waited on failed or was cancelled.

    ``__cause__`` is the dependency's own exception (or its CancelledError), and
    :attr:`dependency` the Task that failed.
    """

    def __init__(self, message: str, dependency=None):
        super().__init__(message)
        self.dependency = dependency


class DeadlockError(StreamqError, RuntimeError):
    """A blocking call would wait on work that can only run after the caller returns.

    Raised, for example, by ``sync`` on the serial queue the caller is running on,
    where GCD would hang forever.
    """


class NotReadyError(StreamqError):
    """The work an event stands for has not finished yet (CUDA's ``cudaErrorNotReady``)."""


class InvalidEventError(StreamqError, ValueError):
    """An event cannot answer the question: never recorded, or created without timing."""
