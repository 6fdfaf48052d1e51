"""Turnout's shared infrastructure: imports only itself, ``turnout.v1`` and
third-party libraries, so that every process kind can use it."""
