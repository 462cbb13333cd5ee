-- A node that was cut off from Redis (or whose subscription dropped) claims again a
-- session it still holds. Returns {epoch, verdict}:
--   kept    - Redis already names this session as the owner (re-opened if reaped);
--   lost    - a live node took the device over since: evict the local session;
--   claimed - nobody newer holds it: taken with a fresh epoch.
-- A session with an epoch is newer than the owner if its epoch is higher; one opened
-- while Redis was unreachable (epoch 0) is newer if its HELLO came later.
-- ARGV: prefix, device, node, session, since_ms, peer, now_ms, retention_s, history,
--       local_epoch
local device, node, session = ARGV[2], ARGV[3], ARGV[4]
local since = tonumber(ARGV[5])
local retention, history = tonumber(ARGV[8]), tonumber(ARGV[9])
local mine = tonumber(ARGV[10])
local dkey = dev_key(device)
local cur = redis.call('HMGET', dkey, 'epoch', 'node', 'session', 'since_ms')
local cur_epoch = tonumber(cur[1]) or 0
if cur[2] == node and cur[3] == session then
  redis.call('PERSIST', dkey)
  redis.call('SADD', ONLINE, device)
  redis.call('SADD', node_devices_key(node), device)
  open_session(device, node, session, ARGV[5], ARGV[6], retention, history)
  return {cur_epoch, 'kept'}
end
if cur[2] and cur[2] ~= node and redis.call('EXISTS', lease_key(cur[2])) == 1 then
  local newer
  if mine > 0 then
    newer = cur_epoch > mine
  else
    newer = (tonumber(cur[4]) or 0) > since
  end
  if newer then
    return {cur_epoch, 'lost'}
  end
end
local epoch = math.max(cur_epoch, mine) + 1
redis.call('HSET', dkey, 'epoch', epoch)
take(device, node, session, ARGV[5], ARGV[6], epoch, ARGV[7], retention, history)
return {epoch, 'claimed'}
