"""XLA compilation bookkeeping: a counter of real compilations and the persistent cache.

jax reports every executable it builds or fetches from the persistent cache as a
"backend compile" event, and each fetch also as a cache hit, so real compilations are the
difference. The counter lets tests prove that a new prompt of a known shape compiles nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax

logger = logging.getLogger(__name__)

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_counts = {"executables": 0, "cache_hits": 0}


def _on_duration(event: str, duration: float, **kwargs) -> None:
    if event == _BACKEND_COMPILE:
        _counts["executables"] += 1


def _on_event(event: str, **kwargs) -> None:
    if event == _CACHE_HIT:
        _counts["cache_hits"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)
jax.monitoring.register_event_listener(_on_event)


def compilations() -> int:
    """Return how many executables XLA compiled in this process (persistent cache hits excluded)."""
    return _counts["executables"] - _counts["cache_hits"]


def default_cache_dir() -> Path:
    """$QWEN3VL_CACHE_DIR, else $XDG_CACHE_HOME/qwen3vl-jax/xla, else ~/.cache/qwen3vl-jax/xla."""
    if os.environ.get("QWEN3VL_CACHE_DIR"):
        return Path(os.environ["QWEN3VL_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "qwen3vl-jax" / "xla"


def enable_persistent_cache(directory: str | os.PathLike | None = None) -> Path:
    """Store compiled executables on disk so that later processes with the same shapes skip compilation."""
    path = Path(directory) if directory is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every executable: the default skips those that compiled in under a second.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    logger.info("persistent compilation cache in %s", path)
    return path
