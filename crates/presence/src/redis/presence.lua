-- Adds or removes one connection of a user, and decides in the same step
-- whether that was the user's first connection in the cluster (none
-- before) or its last (none after): then it queues `user.online` or
-- `user.offline` on the user's event shard.
--
-- KEYS: presence hash, event shard stream (the presence hash again when
--       the shard is in another slot: the caller queues the event)
-- ARGV: '+' or '-', connection id, node id, event type ('' events off),
--       event body, user
-- Returns 1 when an event is due and the caller queues it, else 0.

local before = redis.call('HLEN', KEYS[1])
local changed
if ARGV[1] == '+' then
  changed = redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]) == 1 and before == 0
else
  changed = redis.call('HDEL', KEYS[1], ARGV[2]) == 1 and before == 1
end
if not changed or ARGV[4] == '' then
  return 0
end
if KEYS[2] == KEYS[1] then
  return 1
end
redis.call('XADD', KEYS[2], '*', 'u', ARGV[6], 't', ARGV[4], 'e', ARGV[5])
return 0
