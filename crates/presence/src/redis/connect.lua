-- A device connects: marks it seen, and returns the user's latest seq, the
-- device's cursor, what the user's other devices seen lately have all
-- acked, and the log entries the device has not acked (or those after
-- `since`). A device seen for the first time starts where every device
-- seen lately has acked: at the oldest message still in the log. What is
-- no longer in the log (trimmed past `inbox-max-len`, expired) counts as
-- acked: nothing would ever fill the gap. What every device acked is
-- trimmed.
--
-- KEYS: devices hash, log stream, seq counter
-- ARGV: device, now ms, since ('' for the device's cursor), device ttl ms,
--       most entries
-- Returns {seq, cursor text, others' cursor text or '', {{entry id,
--   {field, value}}, ...}}
-- A device's acked part of a log, as `cursor.rs` keeps it: every seq up to
-- `up`, and the seqs in `above`; as text "up,seq,seq" in the devices hash.
local max_above = 256

local function parse(text)
  local cursor = {up = 0, above = {}}
  if not text then
    return cursor
  end
  local first = true
  for part in string.gmatch(text, '[^,]+') do
    local n = tonumber(part)
    if n then
      if first then
        cursor.up = n
      else
        cursor.above[n] = true
      end
    end
    first = false
  end
  return cursor
end

local function contains(cursor, seq)
  return seq <= cursor.up or cursor.above[seq] == true
end

local function settle(cursor)
  for seq in pairs(cursor.above) do
    if seq <= cursor.up then
      cursor.above[seq] = nil
    end
  end
  while cursor.above[cursor.up + 1] do
    cursor.above[cursor.up + 1] = nil
    cursor.up = cursor.up + 1
  end
end

local function sorted_above(cursor)
  local seqs = {}
  for seq in pairs(cursor.above) do
    seqs[#seqs + 1] = seq
  end
  table.sort(seqs)
  return seqs
end

local function text(cursor)
  local seqs = sorted_above(cursor)
  local parts = {string.format('%d', cursor.up)}
  for i = math.max(1, #seqs - max_above + 1), #seqs do
    parts[#parts + 1] = string.format('%d', seqs[i])
  end
  return table.concat(parts, ',')
end

local function copy(cursor)
  local other = {up = cursor.up, above = {}}
  for seq in pairs(cursor.above) do
    other.above[seq] = true
  end
  return other
end

-- What both acked. Past the lower `up`, only seqs in one of the `above`
-- sets can be in both.
local function intersect(a, b)
  local both = {up = math.min(a.up, b.up), above = {}}
  for _, c in ipairs({a, b}) do
    for seq in pairs(c.above) do
      if contains(a, seq) and contains(b, seq) then
        both.above[seq] = true
      end
    end
  end
  settle(both)
  return both
end

-- The cursors of the devices seen within `ttl` ms of `now`, by device, from
-- the devices hash's fields; the others are forgotten (their fields
-- deleted).
local function seen_devices(key, fields, now, ttl)
  local cursors, seen, stale = {}, {}, {}
  for i = 1, #fields, 2 do
    local name, value = fields[i], fields[i + 1]
    local kind, device = string.sub(name, 1, 2), string.sub(name, 3)
    if kind == 'c:' then
      cursors[device] = parse(value)
    elseif kind == 't:' then
      seen[device] = tonumber(value) or 0
    end
  end
  for device in pairs(cursors) do
    if not seen[device] or now - seen[device] > ttl then
      stale[#stale + 1] = 'c:' .. device
      stale[#stale + 1] = 't:' .. device
      cursors[device] = nil
    end
  end
  if #stale > 0 then
    redis.call('HDEL', key, unpack(stale))
  end
  return cursors
end

-- What every device seen lately acked; nil when there is none.
local function acked_by_all(cursors)
  local all = nil
  for _, cursor in pairs(cursors) do
    if all then
      all = intersect(all, cursor)
    else
      all = copy(cursor)
    end
  end
  return all
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
return {seq, text(mine), others and text(others) or '', entries}
