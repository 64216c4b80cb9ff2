"""HTTP/1.1 reverse proxying without I/O: `wire` reads messages strictly and frames what the
gateway writes, `exchange` decides what is forwarded and recorded, `websocket` turns upgraded
streams into events."""
