"""turnout.replica"""
