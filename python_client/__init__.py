"""Turnout: serve Python functions and classes with weighted traffic between backends."""
