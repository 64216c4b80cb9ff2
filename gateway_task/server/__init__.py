"""The gateway's I/O: listeners and lifecycle (`gateway`), PostgreSQL connections (`postgres`)."""

from gateway_task.server.gateway import Gateway, make_sink, serve

__all__ = ["Gateway", "make_sink", "serve"]
