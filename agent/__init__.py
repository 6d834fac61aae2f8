"""Agent: drives the seed Software Delivery flow (steps 1-9) on top of mcast.

Public API: :class:`AgentConfig`, :class:`Agent` (``run_once``, ``run_forever``, and
``Agent.cache``, the peer cache it serves to its subnet: :mod:`agent.cache`),
:class:`CycleResult`, and the ``mcast-agent`` console script (:mod:`agent.cli`).
"""

from .config import AgentConfig, ConfigError
from .core import Agent, CycleResult, Fetcher
from .state import JobState

__all__ = ["Agent", "AgentConfig", "ConfigError", "CycleResult", "Fetcher", "JobState"]
