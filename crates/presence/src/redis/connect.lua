-- A device connects: marks it seen, and returns the user's latest seq, the
-- device's cursor and the log entries it has not acked (or those after
-- `since`). A device seen for the first time starts where every device
-- seen lately has acked: at the oldest message still in the log. What is
-- no longer in the log (trimmed past `inbox-max-len`, expired) counts as
-- acked: nothing would ever fill the gap.
--
-- KEYS: devices hash, log stream, seq counter
-- ARGV: device, now ms, since ('' for the device's cursor), device ttl ms,
--       most entries
-- Returns {seq, cursor text, {{entry id, {field, value}}, ...}}
local device, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local cursors, seen = seen_devices(KEYS[1], redis.call('HGETALL', KEYS[1]), now, ttl)
local mine = cursors[device] or acked_by_all(cursors) or parse(nil)
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
local function after(from)
  return redis.call('XRANGE', KEYS[2], '(0-' .. string.format('%d', from), '+', 'COUNT', ARGV[5])
end
local entries = after(mine.up)
local first = entries[1] and tonumber(string.match(entries[1][1], '^0%-(%d+)$')) or seq + 1
if first > mine.up + 1 then
  mine.up = first - 1
  settle(mine)
end
redis.call('HSET', KEYS[1], 'c:' .. device, text(mine), 't:' .. device, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[3] ~= '' then
  entries = after(tonumber(ARGV[3]))
end
return {seq, text(mine), entries}
