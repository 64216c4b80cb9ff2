"""The recording proxy: runs as the Fargate task and as `tapegate up`."""
