"""HTTP/1.1 reverse proxying without I/O: h11 frames messages, `exchange` decides what is forwarded
and recorded, `websocket` turns upgraded streams into events."""
