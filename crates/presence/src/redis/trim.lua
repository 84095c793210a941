
-- Trims what every device of the user seen lately has acked, read from the
-- devices hash at the moment of the trim: a device that connected since
-- an ack was sent holds the trim back.
--
-- KEYS: devices hash, log stream
-- ARGV: now ms, device ttl ms
-- Returns the seq trimmed up to (0: nothing).
local all = acked_by_all(seen_devices(KEYS[1], redis.call('HGETALL', KEYS[1]), tonumber(ARGV[1]), tonumber(ARGV[2])))
if not all or all.up == 0 then
  return 0
end
redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. string.format('%d', all.up + 1))
return all.up
