-- The helpers the device scripts share; each script is this file followed
-- by its own body.
--
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
