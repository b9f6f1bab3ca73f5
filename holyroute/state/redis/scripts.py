"""The Lua scripts the Redis backend runs: each one atomic against Redis's own clock, so no two processes can race
on a bucket or a health entry. Only text here: the callers register them (:mod:`holyroute.state.redis.grants` and
:mod:`holyroute.state.redis.sync`)."""

from __future__ import annotations

__all__ = ["ACQUIRE", "AWAY_HOLD_S", "DEBT", "HEALTH", "LIMITS_TTL_MS", "ONCE", "RECONCILE", "ROLLOUT", "SETTLE"]

LIMITS_TTL_MS = 120_000  # an idle bucket refills completely within 60 s, so a missing key means a full one
#: How long a hold for the processes still away after an outage (see DEBT) waits for them to come back and claim it.
AWAY_HOLD_S = 10

# Token buckets for rpm and tpm in one hash, refilled continuously, against Redis's clock. First ARGV[7] tokens this
# process owes the tpm bucket from settled calls are given back (negative: taken), the bucket kept within [-tpm, tpm].
# Then either all limits have room for this request and all are charged, or nothing is charged: the reply is
# {milliseconds until there is room, 0, 0}. Charged, the reply is {0, requests, tokens} granted: this request's, plus
# up to ARGV[5] requests and ARGV[6] tokens in all for the process's lease, taken only from what the bucket holds (see
# holyroute.state.base.Leases). Either reply ends with what the buckets hold after it (requests, tokens): a process
# that loses Redis starts its local share of each limit from there. The requests granted are also added up per process
# (field g:<ARGV[8]>), so that a new master can be told what its old one granted and never passed on (RECONCILE), and
# the time of the last grant is kept (field gs): DEBT tells from it whether some process never left during an outage.
# A hold for processes away (see DEBT) or for the others' lost grants after a promotion (fields p and pt, see
# RECONCILE) that nobody claimed within ARGV[9] seconds goes back to the bucket first.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'r', 'rt', 't', 'tt', 'h', 'ht', 'p', 'pt')
local function level(cap, value, stamp)
  if cap <= 0 then return 0 end
  local l, at = tonumber(value), tonumber(stamp)
  if l == nil or at == nil then return cap end
  return math.min(cap, l + math.max(0, now - at) * cap / 60)
end
local r, k = level(rpm, s[1], s[2]), level(tpm, s[3], s[4])
local held = tonumber(s[5]) or 0
if rpm > 0 and held > 0 and now - (tonumber(s[6]) or 0) > tonumber(ARGV[9] or 0) then
  r = math.min(rpm, r + held)  -- a hold for processes away (see DEBT) that nobody came back to claim
  redis.call('HSET', KEYS[1], 'r', tostring(r), 'rt', tostring(now), 'h', '0')
end
local lost = tonumber(s[7]) or 0
if rpm > 0 and lost > 0 and now - (tonumber(s[8]) or 0) > tonumber(ARGV[9] or 0) then
  r = math.min(rpm, r + lost)  -- a hold for the others' lost grants (see RECONCILE) that nobody claimed
  redis.call('HSET', KEYS[1], 'r', tostring(r), 'rt', tostring(now), 'p', '0')
end
local owed = tonumber(ARGV[7]) or 0
if tpm > 0 and owed ~= 0 then
  k = math.max(-tpm, math.min(tpm, k + owed))
  redis.call('HSET', KEYS[1], 't', tostring(k), 'tt', tostring(now))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local wait = 0
if rpm > 0 and r < 1 then wait = (1 - r) * 60 / rpm end
if tpm > 0 then
  local need = math.min(tokens, tpm)
  if k < need then wait = math.max(wait, (need - k) * 60 / tpm) end
end
if wait > 0 then return {math.max(1, math.ceil(wait * 1000)), 0, 0, math.floor(r), math.floor(k)} end
local want_r, want_t = tonumber(ARGV[5]), tonumber(ARGV[6])
local gr, gt = want_r, want_t
if rpm > 0 then
  gr = math.max(1, math.min(want_r, math.floor(r)))
  redis.call('HSET', KEYS[1], 'r', tostring(r - gr), 'rt', tostring(now), 'gs', tostring(now))
  if ARGV[8] and ARGV[8] ~= '' then redis.call('HINCRBY', KEYS[1], 'g:' .. ARGV[8], gr) end
end
if tpm > 0 then
  gt = math.max(tokens, math.min(want_t, math.floor(k)))
  redis.call('HSET', KEYS[1], 't', tostring(k - gt), 'tt', tostring(now))
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if rpm > 0 then r = r - gr end
if tpm > 0 then k = k - gt end
return {0, gr, gt, math.floor(r), math.floor(k)}
"""

# Settle finished calls' tpm grants: give ARGV[2] tokens back to the bucket (negative: take them), refilled up to now
# first as ACQUIRE refills it, kept within [-tpm, tpm]. A missing bucket is a full one: a credit changes nothing.
SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tpm, owed = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm == nil or owed == nil or tpm <= 0 then return 0 end
local s = redis.call('HMGET', KEYS[1], 't', 'tt')
local l, at = tonumber(s[1]), tonumber(s[2])
if l == nil or at == nil then
  if owed >= 0 then return 0 end
  l = tpm
else
  l = math.min(tpm, l + math.max(0, now - at) * tpm / 60)
end
l = math.max(-tpm, math.min(tpm, l + owed))
redis.call('HSET', KEYS[1], 't', tostring(l), 'tt', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# One health change: set (keeping a longer entry) or delete a field, drop expired fields, expire the hash after the
# last entry, and publish the change. Values are "<until> <json>".
HEALTH = """
local now = tonumber(redis.call('TIME')[1])
local field, value, untl = ARGV[1], ARGV[2], tonumber(ARGV[3])
if ARGV[4] == 'del' then
  redis.call('HDEL', KEYS[1], field)
else
  local current = redis.call('HGET', KEYS[1], field)
  if not current or (tonumber(string.match(current, '^%S+')) or 0) < untl then
    redis.call('HSET', KEYS[1], field, value)
  end
end
local all = redis.call('HGETALL', KEYS[1])
local latest = 0
for i = 1, #all, 2 do
  local u = tonumber(string.match(all[i + 1], '^%S+')) or 0
  if u < now then redis.call('HDEL', KEYS[1], all[i]) elseif u > latest then latest = u end
end
if latest > 0 then redis.call('EXPIREAT', KEYS[1], math.ceil(latest) + 60) end
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""

# Add a batch of increments at most once: KEYS[1] holds each process's last batch counted (field ARGV[1], the
# process; ARGV[2] the batch's sequence number, ARGV[3] that hash's ttl). A batch at or below it was counted already:
# nothing is added (a batch sent again after a failure whose first sending had landed). Then for each further key:
# its ttl, a count n, and n triples (f: HINCRBYFLOAT / i: HINCRBY, field, amount). Returns 1 added, 0 already counted.
ONCE = """
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1])) or 0
local seq = tonumber(ARGV[2])
if seq == nil or seq <= last then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local a = 4
for k = 2, #KEYS do
  local ttl, n = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, n do
    if ARGV[a] == 'f' then
      redis.call('HINCRBYFLOAT', KEYS[k], ARGV[a + 1], ARGV[a + 2])
    else
      redis.call('HINCRBY', KEYS[k], ARGV[a + 1], ARGV[a + 2])
    end
    a = a + 3
  end
  redis.call('EXPIRE', KEYS[k], ttl)
end
return 1
"""

# A rollout's state, compare-and-set: written only if the key still holds what the caller read (ARGV[1] its type:
# none, string or other; ARGV[2] the string read), then the change is published (ARGV[4] the channel, ARGV[5] the
# message). One key, one script: the same on one server, Sentinel's master, or the cluster node holding the slot.
# Returns 1 written, 0 changed meanwhile (read again and retry).
ROLLOUT = """
local t = redis.call('TYPE', KEYS[1])['ok']
local kind = (t == 'none' or t == 'string') and t or 'other'
if kind ~= ARGV[1] then return 0 end
if kind == 'string' and redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
if kind == 'other' then redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

# Charge the rpm bucket with ARGV[2] requests a process gave out on its own while Redis was away (refilled up to now
# first, as ACQUIRE refills it; kept within [-rpm, rpm]; a missing bucket is a full one). ARGV[1] is the limit.
# ARGV[4], when given and not negative, says the process is coming back from an outage (of ARGV[5] seconds), and
# holds for the processes still away what they are presumed to have given out on their own (their local shares): the
# bucket refilled for the whole fleet meanwhile, so without it the first process back would take again what the
# others already gave out. The first process back takes ARGV[4] requests from the bucket into a hold (fields h, ht);
# each one back after it (a hold made during its own outage) charges its own requests against the hold first, and
# only what exceeds it to the bucket. No hold is made when the bucket granted in the latter half of this process's
# outage (field gs: some process was not away; one that only noticed the outage a little later than this one could
# be granted in its first half); a charge (this one's own spared requests, a reconcile) is no grant and does not
# count. What nobody claims within ARGV[6] seconds goes back. A bucket with no gs (written before it was kept) is
# judged by its last write (rt).
DEBT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm, taken = tonumber(ARGV[1]), tonumber(ARGV[2])
local away, away_s, hold_s = tonumber(ARGV[4]) or -1, tonumber(ARGV[5]) or 0, tonumber(ARGV[6]) or 0
if rpm == nil or taken == nil or rpm <= 0 then return 0 end
taken = math.max(0, taken)
if taken <= 0 and away < 0 then return 0 end
local s = redis.call('HMGET', KEYS[1], 'r', 'rt', 'h', 'ht', 'gs')
local l, at = tonumber(s[1]), tonumber(s[2])
local granted = tonumber(s[5]) or at
if l == nil or at == nil then l = rpm else l = math.min(rpm, l + math.max(0, now - at) * rpm / 60) end
local h, ht = tonumber(s[3]) or 0, tonumber(s[4])
if h > 0 and (ht == nil or now - ht > hold_s) then
  l = math.min(rpm, l + h)
  h = 0
end
if away >= 0 then
  if ht ~= nil and ht >= now - away_s then  -- a hold made while this process was away: this outage's
    local claimed = math.min(h, taken)
    h = h - claimed
    taken = taken - claimed
  else
    l = math.min(rpm, l + h)  -- what is left of another outage's hold goes back first
    h = 0
    if away > 0 and (granted == nil or granted < now - away_s / 2) then  -- no grant lately: the others are away too
      h, ht = away, now
      taken = taken + away
    end
  end
end
l = math.max(-rpm, l - taken)
redis.call('HSET', KEYS[1], 'r', tostring(l), 'rt', tostring(now))
if ht ~= nil then redis.call('HSET', KEYS[1], 'h', tostring(h), 'ht', tostring(ht)) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# After a failover: ARGV[3] is how many requests this process (ARGV[2]) was granted from the rpm bucket (ARGV[1] the
# limit) in all; the bucket's g:<process> field says how many of them this master knows of. Those it does not (its
# old master granted them and was replaced before passing them on) are taken from the bucket now, refilled first and
# kept within [-rpm, rpm]. A bucket or field this master never had (it started afresh) is only told the count.
# The old master lost the other processes' last grants too, and each tells the bucket only when its own sync sees
# the new master: until then the bucket would grant them again. So the first process to find grants missing on this
# master (named by its run_id, field pm) also holds what the other ARGV[5] - 1 processes presumably lost, a like share
# each, as far as the bucket has it (fields p and pt); each one after it within ARGV[6] seconds takes its own missing
# grants from that hold first, and only what exceeds it from the bucket. What nobody claims within ARGV[6] seconds
# goes back (here or in ACQUIRE); later reconciles with the same master hold nothing more. Where INFO is refused, a
# master is told apart by the window alone. Returns this process's requests the master did not know of.
RECONCILE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rpm, mine = tonumber(ARGV[1]), tonumber(ARGV[3])
local others, hold_s = math.max(0, (tonumber(ARGV[5]) or 1) - 1), tonumber(ARGV[6]) or 0
if rpm == nil or mine == nil or rpm <= 0 then return 0 end
local field = 'g:' .. ARGV[2]
local seen = tonumber(redis.call('HGET', KEYS[1], field))
if seen == nil then
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], field, ARGV[3]) end
  return 0
end
local missing = mine - seen
if missing <= 0 then return 0 end
local info = redis.pcall('INFO', 'server')
local master = type(info) == 'string' and string.match(info, 'run_id:(%w+)') or ''
local s = redis.call('HMGET', KEYS[1], 'r', 'rt', 'p', 'pt', 'pm')
local l, at = tonumber(s[1]), tonumber(s[2])
if l == nil or at == nil then l = rpm else l = math.min(rpm, l + math.max(0, now - at) * rpm / 60) end
local p, pt, pm = tonumber(s[3]) or 0, tonumber(s[4]), s[5] or ''
local recent = pt ~= nil and now - pt <= hold_s
if pm == master and (master ~= '' or recent) then  -- this master's hold: claim from it while it lasts
  local claimed = recent and math.min(p, missing) or 0
  p = p - claimed
  l = math.max(-rpm, l - (missing - claimed))
else  -- the first to find grants missing on this master
  l = math.min(rpm, l + p)  -- what is left of an older hold goes back first
  local before = l
  l = math.max(-rpm, l - missing - missing * others)
  p, pt, pm = math.max(0, before - l - missing), now, master  -- held: only what left the bucket for the others
end
redis.call('HSET', KEYS[1], 'r', tostring(l), 'rt', tostring(now), field, ARGV[3], 'p', tostring(p),
  'pt', tostring(pt or 0), 'pm', pm)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return missing
"""
