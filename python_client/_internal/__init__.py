"""Infrastructure shared by every Turnout process: the bottom layer.

The controller, the proxy, the replicas and the client all build on these
modules, and these import nothing of Turnout's but each other and the
generated protos (``turnout.v1``), so that a replica process does not load
the client, and no layer reaches into another's package. ``scripts/check``
enforces the layers (import-linter, ``.importlinter``).
"""
