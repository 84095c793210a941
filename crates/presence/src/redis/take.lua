-- Takes events from one shard for the node that holds its lease: keeps
-- or takes the lease, then claims every entry pending in the consumer
-- group (once, page by page, right after the lease changed hands: what a
-- dead or departed node had taken and not finished; then the consumers
-- left with nothing are deleted) or reads new entries.
-- Claims come in entry order, before any new entry, so each user's
-- events are handed out in the order they were queued.
--
-- KEYS: shard stream, shard lease
-- ARGV: node, lease ms, group, most entries, '1' to take the lease if it
--       is free, claim cursor ('' to read new entries)
-- Returns false when another node holds the lease, else {claim cursor
-- ('' when claiming is done), id, user, type, body, id, user, ...}.

local node, group = ARGV[1], ARGV[3]
local owner = redis.call('GET', KEYS[2])
local cursor = ARGV[6]
if owner ~= node then
  if owner or ARGV[5] ~= '1' then
    return false
  end
  cursor = '0-0'
end
redis.call('SET', KEYS[2], node, 'PX', ARGV[2])
local entries
if cursor ~= '' then
  local claimed = redis.pcall('XAUTOCLAIM', KEYS[1], group, node, 0, cursor, 'COUNT', ARGV[4])
  if claimed.err then
    -- No group yet (a new shard, or Redis lost its state): nothing pending.
    redis.pcall('XGROUP', 'CREATE', KEYS[1], group, '0', 'MKSTREAM')
    return {''}
  end
  cursor = claimed[1] == '0-0' and '' or claimed[1]
  entries = claimed[2]
  if cursor == '' then
    -- Everything pending is ours now: forget the consumers left with
    -- nothing (nodes gone; one still alive is made again by its next read).
    for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], group)) do
      local info = {}
      for j = 1, #consumer, 2 do
        info[consumer[j]] = consumer[j + 1]
      end
      if info.name ~= node and info.pending == 0 then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], group, info.name)
      end
    end
  end
else
  local read = redis.pcall('XREADGROUP', 'GROUP', group, node, 'COUNT', ARGV[4], 'STREAMS', KEYS[1], '>')
  if type(read) == 'table' and read.err then
    redis.pcall('XGROUP', 'CREATE', KEYS[1], group, '0', 'MKSTREAM')
    return {''}
  end
  entries = read and read[1][2] or {}
end
local out = {cursor}
for _, entry in ipairs(entries) do
  local fields = {}
  local pairs_ = entry[2] or {}
  for j = 1, #pairs_, 2 do
    fields[pairs_[j]] = pairs_[j + 1]
  end
  table.insert(out, entry[1])
  table.insert(out, fields.u or '')
  table.insert(out, fields.t or '')
  table.insert(out, fields.e or '')
end
return out
