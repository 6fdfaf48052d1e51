"""turnout.proxy"""
