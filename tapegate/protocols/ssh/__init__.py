"""SSH: what the gateway parses out of relayed channels (SFTP), without I/O."""
