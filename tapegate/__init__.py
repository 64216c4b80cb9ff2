"""tapegate: what the gateway and the archive share, and the auditor's tools."""

__version__ = "0.1.0"
