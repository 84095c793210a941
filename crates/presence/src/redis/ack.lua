-- Records one flush window's acks, for devices whose users share a slot:
-- each device's cursor and when it was seen (and, when due, the expiry of
-- its user's device hash), then a claim on the dedupe record of each acked
-- message whose sender waits for a receipt. The first claim of a message,
-- from whichever device, sends its receipt; once the record expired, every
-- claim does.
--
-- KEYS: the device hash of each cursor, then the dedupe key of each claim.
-- ARGV[1]: the number of cursors; then, per cursor: cursor field, cursor,
--   seen field, now ms, device hash ttl ms ('0': keep the expiry as it is);
--   then, per claim, the record claimed as routed (`msg:routed:r`).
-- Returns, per claim, 1 when it sends the receipt, else 0.
local cursors = tonumber(ARGV[1])
for i = 1, cursors do
  local a = 5 * i - 3
  redis.call('HSET', KEYS[i], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3])
  if ARGV[a + 4] ~= '0' then
    redis.call('PEXPIRE', KEYS[i], ARGV[a + 4])
  end
end
local answers = {}
for i = cursors + 1, #KEYS do
  -- The record is `msg:status`, and `msg:status:r` once claimed. Most
  -- acked messages were routed: claim as routed in one command, and put
  -- the status back when it was another.
  local claimed = ARGV[5 * cursors + 1 + i - cursors]
  local record = redis.call('SET', KEYS[i], claimed, 'XX', 'GET', 'KEEPTTL')
  local first = not record or string.sub(record, -2) ~= ':r'
  if record and first then
    record = record .. ':r'
  end
  if record and record ~= claimed then
    redis.call('SET', KEYS[i], record, 'XX', 'KEEPTTL')
  end
  answers[#answers + 1] = first and 1 or 0
end
return answers
