"""broker: one daemon per user that owns every LLM credential and serves it over a Unix socket.

Kept empty on purpose: ``broker token`` imports this package, and must stay fast.
"""

__version__ = "0.1.0"
