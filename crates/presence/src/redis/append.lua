-- Logs messages, atomically per message: each one's dedupe check, seq and
-- log entry, the recipient's presence as of after it, and, when the
-- recipient has no live connection, its `message.stored` event. A message
-- without a letter is a dedupe record alone (a live-only message routed by
-- the sender's replica). Many messages of one flush window go in one call
-- (on Redis Cluster, those whose recipients share a slot).
--
-- The entry id is `0-<seq>`: the seq counter is its own key, without an
-- expiry, so seqs never repeat when a log expires.
--
-- For message i, KEYS[5i-4..5i]: log stream, seq counter, dedupe key (the
--   seq counter again when the message has none), presence hash, event
--   shard stream (the presence hash again when the shard is in another
--   slot: the caller queues the event);
-- ARGV[7i-6..7i]: dedupe record ('' for none), letter (MessagePack; ''
--   for a dedupe record alone), max len, log ttl ms ('0': keep the expiry
--   as it is), recipient, event text before the seq, event text after the
--   seq ('' when the caller took the recipient for live and did not build
--   the event).
-- Then the dedupe ttl (ms), '1' when events are on, and the nodes taken
-- for dead (their connections are not live).
-- Returns, per message, the previous dedupe record (a repeated send id:
-- nothing was logged), 0 for a new dedupe record alone, or {seq, due,
-- node...}: the new seq, 1 when an event is due that the caller queues (it
-- could not reach the shard, or has no event text) else 0, and the nodes
-- of the recipient's connections.
local count = #KEYS / 5
local dedupe_ttl = ARGV[7 * count + 1]
local events_on = ARGV[7 * count + 2] == '1'
local dead = {}
for i = 7 * count + 3, #ARGV do
  dead[ARGV[i]] = true
end
local function live(nodes)
  for _, node in ipairs(nodes) do
    if not dead[node] then
      return true
    end
  end
  return false
end
local answers = {}
for i = 1, count do
  local log, counter, dedupe, conns, events =
    KEYS[5 * i - 4], KEYS[5 * i - 3], KEYS[5 * i - 2], KEYS[5 * i - 1], KEYS[5 * i]
  local record, letter, max_len, ttl = ARGV[7 * i - 6], ARGV[7 * i - 5], ARGV[7 * i - 4], ARGV[7 * i - 3]
  local user, head, tail = ARGV[7 * i - 2], ARGV[7 * i - 1], ARGV[7 * i]
  local previous = false
  if record ~= '' then
    previous = redis.call('SET', dedupe, record, 'NX', 'GET', 'PX', dedupe_ttl)
  end
  if previous then
    answers[i] = previous
  elseif letter == '' then
    answers[i] = 0
  else
    local seq = redis.call('INCR', counter)
    local added = redis.pcall('XADD', log, 'MAXLEN', '~', max_len, '0-' .. seq, 'm', letter)
    if type(added) == 'table' and added.err then
      -- The counter fell behind the log (it was lost on its own): go on
      -- past the log's last entry.
      local last = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
      seq = tonumber(string.match(last[1][1], '^0%-(%d+)$')) + 1
      redis.call('SET', counter, seq)
      redis.call('XADD', log, 'MAXLEN', '~', max_len, '0-' .. seq, 'm', letter)
    end
    if ttl ~= '0' then
      redis.call('PEXPIRE', log, ttl)
    end
    local nodes = redis.call('HVALS', conns)
    local due = 0
    if events_on and not live(nodes) then
      if events == conns or head == '' then
        due = 1
      else
        redis.call('XADD', events, '*', 'u', user, 't', 'message.stored', 'e', head .. string.format('%d', seq) .. tail)
      end
    end
    answers[i] = {seq, due, unpack(nodes)}
  end
end
return answers
