"""knative-rag query function: serves one versioned index artifact over HTTP."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
