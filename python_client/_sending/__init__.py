"""The sending layer: how a request reaches a replica, for the proxy and for handles."""
