"""The tests' PostgreSQL: the same throwaway server `make demo` uses."""

from tapegate.throwaway_pg import APP_PASSWORD, PgServer, free_port, start_postgres

__all__ = ["APP_PASSWORD", "PgServer", "free_port", "start_postgres"]
