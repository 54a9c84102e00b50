"""Provider-agnostic OAuth 2.0 grants, one module per grant, written against the RFCs.

A flow takes endpoints and client settings as data and returns a ``TokenSet``; it never
prints, never opens a browser and never reads the clock itself: the caller injects UI
callbacks, ``now`` and ``sleep``. Nothing here imports ``broker`` or ``providers``.
"""
