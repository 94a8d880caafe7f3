"""``pipstrack serve``: the ZeroMQ tracking service."""
