"""Development tools of the runtime: the demo and the throwaway servers tests, demo and bench
start (PostgreSQL, sshd)."""
