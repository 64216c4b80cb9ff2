"""The tests' PostgreSQL: the same throwaway server `make demo` uses."""

from gateway_task.devtools.throwaway_pg import APP_PASSWORD, PgServer, free_port, start_postgres

__all__ = ["APP_PASSWORD", "PgServer", "free_port", "start_postgres"]
