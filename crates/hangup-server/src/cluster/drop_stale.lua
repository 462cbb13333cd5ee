-- Reconciliation found the device owned by this node in Redis, by a session the node
-- does not hold (a previous run of the same node id that died, or an end that never
-- reached Redis): the session is gone; record it so.
-- ARGV: prefix, device, node, now_ms, retention_s
local device, node = ARGV[2], ARGV[3]
local retention = tonumber(ARGV[5])
local cur = redis.call('HMGET', dev_key(device), 'node', 'session')
if cur[1] == node then
  disown(device, node, retention)
  end_session(node .. '/' .. cur[2], 'server_lost', ARGV[4], retention)
  return 1
end
redis.call('SREM', node_devices_key(node), device)
return 0
