-- Shared by every hangup cluster script (prepended to each). Standalone Redis: the
-- keys are built here from the prefix in ARGV[1], so the scripts do not run on Redis
-- Cluster. See docs/CLUSTER.md for the layout.
local P = ARGV[1]
local ONLINE = P .. 'online'
local NODES = P .. 'nodes'
local function dev_key(device) return P .. 'dev:' .. device end
local function sess_key(id) return P .. 'sess:' .. id end
local function hist_key(device) return P .. 'hist:' .. device end
local function lease_key(node) return P .. 'lease:' .. node end
local function node_devices_key(node) return P .. 'node-devices:' .. node end

-- Records the end of session `id` (node/session), unless it already has one.
local function end_session(id, cause, at_ms, retention)
  local skey = sess_key(id)
  if redis.call('EXISTS', skey) == 1 then
    if not redis.call('HGET', skey, 'ended_ms') then
      redis.call('HSET', skey, 'ended_ms', at_ms, 'cause', cause)
    end
    redis.call('EXPIRE', skey, retention)
  end
end

-- The session's history record: created (and pushed on the device's bounded list), or
-- re-opened when a node that still holds it claims it again.
local function open_session(device, node, session, since, peer, retention, history)
  local id = node .. '/' .. session
  local skey = sess_key(id)
  if redis.call('EXISTS', skey) == 1 then
    redis.call('HDEL', skey, 'ended_ms', 'cause')
  else
    redis.call('HSET', skey, 'device', device, 'node', node, 'session', session,
      'peer', peer, 'connected_ms', since)
    redis.call('LPUSH', hist_key(device), id)
    redis.call('LTRIM', hist_key(device), 0, history - 1)
  end
  redis.call('PERSIST', skey)
  redis.call('EXPIRE', hist_key(device), retention)
end

-- Makes (node, session) the device's owner at `epoch`; ends the previous owner's
-- session (takeover, or server_lost when its node's lease is gone) and, when it was on
-- another node, tells that node to evict it: "device epoch since_ms new_node".
local function take(device, node, session, since, peer, epoch, now, retention, history)
  local dkey = dev_key(device)
  local prev = redis.call('HMGET', dkey, 'node', 'session')
  local prev_node, prev_session = prev[1], prev[2]
  redis.call('HSET', dkey, 'epoch', epoch, 'node', node, 'session', session,
    'since_ms', since, 'peer', peer)
  redis.call('PERSIST', dkey)
  redis.call('SADD', ONLINE, device)
  redis.call('SADD', node_devices_key(node), device)
  if prev_node and not (prev_node == node and prev_session == session) then
    local alive = redis.call('EXISTS', lease_key(prev_node)) == 1
    local cause = 'server_lost'
    if alive then cause = 'takeover' end
    end_session(prev_node .. '/' .. prev_session, cause, now, retention)
    if prev_node ~= node then
      redis.call('SREM', node_devices_key(prev_node), device)
      redis.call('PUBLISH', P .. 'evict:' .. prev_node,
        device .. ' ' .. epoch .. ' ' .. since .. ' ' .. node)
    end
  end
  open_session(device, node, session, since, peer, retention, history)
end

-- Drops the device's owner fields (the epoch stays, so that it only ever grows).
local function disown(device, node, retention)
  local dkey = dev_key(device)
  redis.call('HDEL', dkey, 'node', 'session', 'since_ms', 'peer')
  redis.call('EXPIRE', dkey, retention)
  redis.call('SREM', ONLINE, device)
  redis.call('SREM', node_devices_key(node), device)
end
