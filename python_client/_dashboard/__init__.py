"""The operators' dashboard (``turnout dashboard``, ``Client.serve_dashboard``):
a web page with the live instance, served from this package's own files.

``server.Dashboard`` serves it; this module imports nothing, so the CLI can
name the command's options without loading aiohttp.
"""

# Ray's dashboard port: operators coming from Ray find it where they look.
DEFAULT_PORT = 8265
