-- A session on this node ended: disown the device if this session still owns it, and
-- record the end (unless the takeover that replaced it already did).
-- ARGV: prefix, device, node, session, cause, now_ms, retention_s
local device, node, session = ARGV[2], ARGV[3], ARGV[4]
local retention = tonumber(ARGV[7])
local cur = redis.call('HMGET', dev_key(device), 'node', 'session')
if cur[1] == node and cur[2] == session then
  disown(device, node, retention)
end
end_session(node .. '/' .. session, ARGV[5], ARGV[6], retention)
redis.call('EXPIRE', hist_key(device), retention)
return 1
