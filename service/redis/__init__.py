"""The Redis layer: connections (one node, Sentinel, Cluster), the key layout and
partitions, the channels, durable writes, the Lua scripts with one typed call each, and
the private redis-server."""
