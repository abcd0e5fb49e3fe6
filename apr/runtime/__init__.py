"""The APR decoding runtime: thread trees over an engine, spawn/join, limits, metrics."""

from apr.runtime.config import RuntimeConfig
from apr.runtime.runtime import Runtime
from apr.runtime.thread import Finish, Span, Status, Thread, ThreadTree

__all__ = ["Finish", "Runtime", "RuntimeConfig", "Span", "Status", "Thread", "ThreadTree"]
