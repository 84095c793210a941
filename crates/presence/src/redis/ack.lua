-- One device acks: its cursor takes in what the connection reports, and
-- the answer lists the seqs no device of the user had acked before (their
-- receipts are due). What every device seen lately has acked is trimmed
-- from the log, a few entries at a time.
--
-- KEYS: devices hash, log stream
-- ARGV: device, now ms, the device's cursor text as the connection knows
--       it, device ttl ms
-- Returns {seq, ...}: the receipts due
local trim_step = 16
local device, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local fields = redis.call('HGETALL', KEYS[1])
local cursors, seen = seen_devices(KEYS[1], fields, now, ttl)
local receipted, trimmed = parse(nil), 0
for i = 1, #fields, 2 do
  if fields[i] == 'r' then
    receipted = parse(fields[i + 1])
  elseif fields[i] == 'm' then
    trimmed = tonumber(fields[i + 1]) or 0
  end
end
local mine = cursors[device] or parse(nil)
merge(mine, parse(ARGV[3]))
cursors[device] = mine

local earlier = copy(receipted)
merge(receipted, mine)
local due = {}
for seq = earlier.up + 1, receipted.up do
  if not earlier.above[seq] then
    due[#due + 1] = seq
  end
end
for seq in pairs(receipted.above) do
  if not contains(earlier, seq) then
    due[#due + 1] = seq
  end
end

local update = {'c:' .. device, text(mine), 't:' .. device, ARGV[2], 'r', text(receipted)}
local all = acked_by_all(cursors)
if all and all.up >= trimmed + trim_step then
  redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. string.format('%d', all.up + 1))
  update[#update + 1] = 'm'
  update[#update + 1] = string.format('%d', all.up)
end
redis.call('HSET', KEYS[1], unpack(update))
if not seen[device] or now - seen[device] > ttl / 16 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return due
