-- Logs messages, atomically per message: each one's dedupe check, seq and
-- log entry. Many messages of one flush window go in one call (on Redis
-- Cluster, those whose recipients share a slot).
--
-- The entry id is `0-<seq>`: the seq counter is its own key, without an
-- expiry, so seqs never repeat when a log expires.
--
-- For message i, KEYS[3i-2..3i]: log stream, seq counter, dedupe key (the
--   seq counter again when the message has none);
-- ARGV[4i-3..4i]: dedupe record ('' for none), letter (MessagePack), max
--   len, log ttl ms ('0': keep the expiry as it is).
-- The dedupe ttl (ms) is the last ARGV.
-- Returns, per message, the previous dedupe record (a repeated send id:
-- nothing was logged) or the new seq.
local dedupe_ttl = ARGV[#ARGV]
local answers = {}
for i = 1, #KEYS / 3 do
  local log, counter, dedupe = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local record, letter, max_len, ttl = ARGV[4 * i - 3], ARGV[4 * i - 2], ARGV[4 * i - 1], ARGV[4 * i]
  local previous = false
  if record ~= '' then
    previous = redis.call('SET', dedupe, record, 'NX', 'GET', 'PX', dedupe_ttl)
  end
  if previous then
    answers[i] = previous
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
    answers[i] = seq
  end
end
return answers
