"""The one sending layer of the HTTP proxy and of Python handles.

``sender.Sender`` holds every rule between a request message and a
replica's reply; the proxy (``turnout.proxy.app``) and handles
(``turnout._handle_router``) are thin shells around it. Imports only
``turnout._internal`` and ``turnout.v1``.
"""
