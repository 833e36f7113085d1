-- Portcullis login limiter: operator unlock. Clears the account's streak (and lock) and its
-- pair streaks; known IPs stay known. Returns 1 if the account was locked.
--
-- KEYS[1]  account streak     KEYS[2]  pair streaks
-- ARGV     hard_cap

local failures = tonumber(redis.call('HGET', KEYS[1], 'f')) or 0
redis.call('DEL', KEYS[1], KEYS[2])
if failures >= tonumber(ARGV[1]) then
  return 1
end
return 0
