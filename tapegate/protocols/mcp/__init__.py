"""MCP (Streamable HTTP) targets: tool calls read, policed and recorded on HTTP's exchanges."""
