"""The gateway's I/O: lifecycle (`gateway`), every protocol's listener (`registry`), the limits
and admission (`admission`, `refusals`), and one module per protocol's client connection
(`postgres`, `http`, `ssh` with `ssh_channels`, `listeners` for TLS and plain HTTP on one port)."""

from gateway_task.server.gateway import Gateway, make_sink, serve

__all__ = ["Gateway", "make_sink", "serve"]
