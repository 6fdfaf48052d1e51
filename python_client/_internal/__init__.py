"""Shared infrastructure of every Turnout process: imports only itself,
``turnout.v1`` and third-party libraries."""
