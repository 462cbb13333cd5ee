-- Every node runs this each sweep interval: a node whose lease expired has its
-- sessions ended (server_lost) and leaves the node set. Atomic, so exactly one sweeper
-- records each lost node. Returns {node, sessions, node, sessions, ...}.
-- ARGV: prefix, now_ms, retention_s
local now, retention = ARGV[2], tonumber(ARGV[3])
local lost = {}
for _, node in ipairs(redis.call('SMEMBERS', NODES)) do
  if redis.call('EXISTS', lease_key(node)) == 0 then
    local count = 0
    for _, device in ipairs(redis.call('SMEMBERS', node_devices_key(node))) do
      local cur = redis.call('HMGET', dev_key(device), 'node', 'session')
      if cur[1] == node then
        disown(device, node, retention)
        end_session(node .. '/' .. cur[2], 'server_lost', now, retention)
        count = count + 1
      end
    end
    redis.call('DEL', node_devices_key(node))
    redis.call('SREM', NODES, node)
    table.insert(lost, node)
    table.insert(lost, tostring(count))
  end
end
return lost
