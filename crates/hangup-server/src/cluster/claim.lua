-- A HELLO on this node: the newest HELLO always wins, its epoch one above every
-- epoch the device ever had.
-- ARGV: prefix, device, node, session, since_ms, peer, now_ms, retention_s, history
local device = ARGV[2]
local epoch = redis.call('HINCRBY', dev_key(device), 'epoch', 1)
take(device, ARGV[3], ARGV[4], ARGV[5], ARGV[6], epoch, ARGV[7],
  tonumber(ARGV[8]), tonumber(ARGV[9]))
return epoch
