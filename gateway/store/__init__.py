"""Storage below the UPS core: the Redis store (atomic Lua commits, secondary indexes) and the
embedded redis-server used when no Redis URL is configured."""
