"""turnout.controller"""
