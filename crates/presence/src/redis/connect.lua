
-- A device connects: marks it seen, and returns the user's latest seq, the
-- device's cursor and the log entries the device has not acked (or those
-- after `since`). A device seen for the first time starts where every device
-- seen lately has acked: at the oldest message still in the log. What is
-- no longer in the log (trimmed past `inbox-max-len`, expired) counts as
-- acked: nothing would ever fill the gap. What every device acked is
-- trimmed.
--
-- KEYS: devices hash, log stream, seq counter, block flag
-- ARGV: device, now ms, since ('' for the device's cursor), device ttl ms,
--       most entries
-- Returns {seq, cursor text, {{entry id, {field, value}}, ...}}, or nil
-- when the user is blocked.

if redis.call('EXISTS', KEYS[4]) == 1 then
  return false
end

local device, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local cursors = seen_devices(KEYS[1], redis.call('HGETALL', KEYS[1]), now, ttl)
local mine = cursors[device]
cursors[device] = nil
local others = acked_by_all(cursors)
if not mine then
  mine = others and copy(others) or parse(nil)
end
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
local all = others and intersect(others, mine) or mine
if all.up > 0 then
  redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. string.format('%d', all.up + 1))
end
redis.call('HSET', KEYS[1], 'c:' .. device, text(mine), 't:' .. device, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[3] ~= '' then
  entries = after(tonumber(ARGV[3]))
end
return {seq, text(mine), entries}
