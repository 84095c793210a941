-- Records one flush window's acks, for devices whose users share a slot:
-- each device's cursor and when it was seen (and, when due, the expiry of
-- its user's device hash), then a claim on the dedupe record of each acked
-- message whose sender waits for a receipt. The first claim of a message,
-- from whichever device, sends its receipt; once the record expired, every
-- claim does.
--
-- KEYS: the device hash of each cursor, then the dedupe key of each claim.
-- ARGV[1]: the number of cursors; then, per cursor: cursor field, cursor,
--   seen field, now ms, device hash ttl ms ('0': keep the expiry as it is).
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
  -- The record is `msg:status`, and `msg:status:r` once claimed.
  local record = redis.call('GET', KEYS[i])
  if not record then
    answers[#answers + 1] = 1
  elseif string.sub(record, -2) == ':r' then
    answers[#answers + 1] = 0
  else
    redis.call('SET', KEYS[i], record .. ':r', 'KEEPTTL')
    answers[#answers + 1] = 1
  end
end
return answers
