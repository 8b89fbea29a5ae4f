"""The PostgreSQL job store (asyncpg): leases, fenced writes, ordered events, versioned migrations."""
