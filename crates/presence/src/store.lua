-- Takes responsibility for one message, atomically on the recipient's slot:
-- answers a repeated send id with the original answer; otherwise stores the
-- message (durable mode), records the send id, and returns the recipient's
-- connections so the caller can route.
--
-- KEYS: inbox stream, presence hash, dedupe key
-- ARGV: msg id, store (1/0), inbox max len, inbox ttl ms, payload,
--       dedupe ttl ms, dedupe (1/0)
-- Returns {previous dedupe record or false, inbox entry id or false, {conn, node, ...}}
if ARGV[7] == '1' then
  local previous = redis.call('GET', KEYS[3])
  if previous then
    return {previous, false, {}}
  end
end
local entry = false
if ARGV[2] == '1' then
  entry = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '*', 'm', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local conns = redis.call('HGETALL', KEYS[2])
if ARGV[7] == '1' then
  local status = 'stored'
  if #conns > 0 then status = 'routed' end
  redis.call('SET', KEYS[3], ARGV[1] .. ':' .. status, 'PX', ARGV[6])
end
return {false, entry, conns}
