-- Logs one message for one recipient, atomically on the recipient's slot,
-- and returns the recipient's presence. Given a dedupe key, a repeated send
-- id is answered with the original record and nothing else happens.
--
-- The entry id is `0-<seq>`: the seq counter is its own key, without an
-- expiry, so seqs never repeat when the log expires.
--
-- KEYS: log stream, seq counter, presence hash [, dedupe key]
-- ARGV: msg id, letter (MessagePack), max len, log ttl ms ('0': keep the
--       expiry as it is), dedupe ttl ms
-- Returns {previous record} or {false, seq, {node, ...}}
local nodes = redis.call('HVALS', KEYS[3])
if #KEYS == 4 then
  local status = 'stored'
  if #nodes > 0 then status = 'routed' end
  local previous = redis.call('SET', KEYS[4], ARGV[1] .. ':' .. status, 'NX', 'GET', 'PX', ARGV[5])
  if previous then
    return {previous}
  end
end
local seq = redis.call('INCR', KEYS[2])
local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '0-' .. seq, 'm', ARGV[2])
if type(added) == 'table' and added.err then
  -- The counter fell behind the log (it was lost on its own): go on past
  -- the log's last entry.
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  seq = tonumber(string.match(last[1][1], '^0%-(%d+)$')) + 1
  redis.call('SET', KEYS[2], seq)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '0-' .. seq, 'm', ARGV[2])
end
if ARGV[4] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return {false, seq, nodes}
