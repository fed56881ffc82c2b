"""The Lua scripts behind the fair lines (shared/jobs/fair.py): every change is one atomic call.

Keys of a fair queue q, under `<prefix>fair:<q>:` (ARGV[1] of every script):
`u:<uid>` a user's line (ZSET job → submit sequence: FIFO), `active` the users
with jobs to release (ZSET uid → pass), `capped` users at their running cap
(HASH uid → pass), `last` a user's pass when their line emptied (HASH, for
re-entry), `released` the jobs let onto the broker and not finished (ZSET job
→ ms), `owners` (HASH released job → uid), `running` (HASH uid → released
count), `msg` (HASH waiting job → its message), `waiting` (jobs in lines),
`seq`, `vtime` (the pass of the last release), `policy` (HASH uid →
"weight|max_running", a cache of the fair_shares table) and `slots` (HASH
worker → "slots|expires_ms").

Stride scheduling: each release goes to the active user with the lowest pass,
whose pass then grows by 1_000_000 / weight. A user who enters holds
max(last pass, V - 1), V the lowest active pass (or `vtime`): a newcomer goes
first at the next release, a user just served cannot jump ahead by leaving
and coming back.
"""

from __future__ import annotations

STRIDE_UNIT = 1_000_000

COMMON = """
local base = ARGV[1]
local default_cap = tonumber(ARGV[2])
local function k(name) return base .. name end
local function num(x) return string.format('%d', x) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function policy(uid)
  local p = redis.call('HGET', k('policy'), uid)
  local weight, cap = 1, default_cap
  if p then
    local sep = string.find(p, '|', 1, true)
    weight = tonumber(string.sub(p, 1, sep - 1)) or 1
    local c = tonumber(string.sub(p, sep + 1))
    if c then cap = c end
  end
  if weight < 1 then weight = 1 end
  return weight, cap
end
local function stride(weight) return math.floor(STRIDE_UNIT / weight + 0.5) end
local function vtime()
  local top = redis.call('ZRANGE', k('active'), 0, 0, 'WITHSCORES')
  if #top > 0 then return tonumber(top[2]) end
  return tonumber(redis.call('GET', k('vtime')) or '0')
end
local function running_of(uid) return tonumber(redis.call('HGET', k('running'), uid) or '0') end
-- A user with jobs in their line takes their place: active, or capped when at the cap.
local function seat(uid, pass)
  local _, cap = policy(uid)
  if cap > 0 and running_of(uid) >= cap then
    redis.call('HSET', k('capped'), uid, num(pass))
  else
    redis.call('ZADD', k('active'), num(pass), uid)
  end
end
local function window()
  local fixed = tonumber(ARGV[3])
  if fixed > 0 then return fixed end
  local now = now_ms()
  local total, any = 0, false
  local fields = redis.call('HGETALL', k('slots'))
  for i = 1, #fields, 2 do
    local v = fields[i + 1]
    local sep = string.find(v, '|', 1, true)
    if tonumber(string.sub(v, sep + 1)) > now then
      total = total + tonumber(string.sub(v, 1, sep - 1))
      any = true
    else
      redis.call('HDEL', k('slots'), fields[i])
    end
  end
  if any then return total end
  return tonumber(ARGV[4])
end
local function release(out)
  local win = window()
  local now = now_ms()
  while redis.call('ZCARD', k('released')) < win do
    local top = redis.call('ZRANGE', k('active'), 0, 0, 'WITHSCORES')
    if #top == 0 then break end
    local uid, pass = top[1], tonumber(top[2])
    local line = k('u:' .. uid)
    local weight, cap = policy(uid)
    if cap > 0 and running_of(uid) >= cap then
      -- The cap was lowered meanwhile: wait, holding the place.
      redis.call('ZREM', k('active'), uid)
      redis.call('HSET', k('capped'), uid, num(pass))
    else
      local head = redis.call('ZPOPMIN', line)
      if #head == 0 then
        redis.call('ZREM', k('active'), uid)
        redis.call('HSET', k('last'), uid, num(pass))
      else
        local job = head[1]
        redis.call('ZADD', k('released'), now, job)
        redis.call('HSET', k('owners'), job, uid)
        local running = redis.call('HINCRBY', k('running'), uid, 1)
        redis.call('DECR', k('waiting'))
        out[#out + 1] = job
        out[#out + 1] = redis.call('HGET', k('msg'), job) or ''
        redis.call('HDEL', k('msg'), job)
        redis.call('SET', k('vtime'), num(pass))
        local next_pass = pass + stride(weight)
        if redis.call('ZCARD', line) == 0 then
          redis.call('ZREM', k('active'), uid)
          redis.call('HSET', k('last'), uid, num(next_pass))
        elseif cap > 0 and running >= cap then
          redis.call('ZREM', k('active'), uid)
          redis.call('HSET', k('capped'), uid, num(next_pass))
        else
          redis.call('ZADD', k('active'), num(next_pass), uid)
        end
      end
    end
  end
  return out
end
""".replace("STRIDE_UNIT", str(STRIDE_UNIT))

# ARGV = base, default cap, fixed window, idle window, then (uid, job, message)
# triples. Returns {released: job, message, job, message…; already: jobs that
# were already released (their message is to be published again at once)}.
ENQUEUE_AND_RELEASE = (
    COMMON
    + """
local already = {}
for i = 5, #ARGV, 3 do
  local uid, job, msg = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local line = k('u:' .. uid)
  if redis.call('ZSCORE', k('released'), job) then
    already[#already + 1] = job
  elseif not redis.call('ZSCORE', line, job) then
    redis.call('ZADD', line, redis.call('INCR', k('seq')), job)
    redis.call('HSET', k('msg'), job, msg)
    redis.call('INCR', k('waiting'))
    if not redis.call('ZSCORE', k('active'), uid)
       and redis.call('HEXISTS', k('capped'), uid) == 0 then
      local last = tonumber(redis.call('HGET', k('last'), uid) or '')
      local pass = vtime() - 1
      if last and last > pass then pass = last end
      seat(uid, pass)
    end
  end
end
return {release({}), already}
"""
)

# ARGV = base, default cap, fixed window, idle window, then finished job ids.
# A job not in `released` (finished before, or never released) changes
# nothing: finishing is idempotent. Returns what was released meanwhile.
FINISH_AND_RELEASE = (
    COMMON
    + """
for i = 5, #ARGV do
  local job = ARGV[i]
  if redis.call('ZREM', k('released'), job) == 1 then
    local uid = redis.call('HGET', k('owners'), job)
    redis.call('HDEL', k('owners'), job)
    if uid then
      local running = redis.call('HINCRBY', k('running'), uid, -1)
      if running <= 0 then redis.call('HDEL', k('running'), uid) end
      local held = redis.call('HGET', k('capped'), uid)
      local _, cap = policy(uid)
      if held and (cap == 0 or running < cap) then
        redis.call('HDEL', k('capped'), uid)
        if redis.call('ZCARD', k('u:' .. uid)) > 0 then
          redis.call('ZADD', k('active'), held, uid)
        else
          redis.call('HSET', k('last'), uid, held)
        end
      end
    end
  end
end
if tonumber(ARGV[3]) < 0 then return {} end  -- withdrawing: release nothing
return release({})
"""
)

# ARGV = base, default cap, fixed window, idle window, uid, job. Removes a
# waiting job from its user's line (a cancel); 1 if it was there.
REMOVE = (
    COMMON
    + """
local uid, job = ARGV[5], ARGV[6]
local line = k('u:' .. uid)
if redis.call('ZREM', line, job) == 0 then return 0 end
redis.call('HDEL', k('msg'), job)
redis.call('DECR', k('waiting'))
if redis.call('ZCARD', line) == 0 then
  local pass = redis.call('ZSCORE', k('active'), uid) or redis.call('HGET', k('capped'), uid)
  redis.call('ZREM', k('active'), uid)
  redis.call('HDEL', k('capped'), uid)
  if pass then redis.call('HSET', k('last'), uid, pass) end
end
return 1
"""
)

# ARGV = base, default cap, fixed window, idle window, uid, job. The job's
# place in the fair order: {ahead, reason}; ahead = -1 if it waits in no line.
# Exact for the stride order: the job is its user's turn rank+1, served at
# pass p_u + rank * s_u; each other waiting user v is served before that at
# every pass p_v + j * s_v below it (equal passes go by user id, as ZRANGE
# orders them), at most as many times as v has jobs. O(users).
POSITION = (
    COMMON
    + """
local uid, job = ARGV[5], ARGV[6]
local rank = redis.call('ZRANK', k('u:' .. uid), job)
if not rank then return {-1, ''} end
local weight = policy(uid)
local reason = 'worker'
if rank > 0 then reason = 'own_jobs' end
local mine = redis.call('ZSCORE', k('active'), uid)
if not mine then
  mine = redis.call('HGET', k('capped'), uid)
  if mine then reason = 'user_cap' end
end
if not mine then return {rank, reason} end
local target = tonumber(mine) + rank * stride(weight)
local ahead = rank
local function count(v, pass)
  if v == uid then return end
  local s_v = stride(policy(v))
  local gap = target - tonumber(pass)
  local c = 0
  if gap > 0 then c = math.ceil(gap / s_v) end
  if gap >= 0 and gap % s_v == 0 and v < uid then c = c + 1 end
  local len = redis.call('ZCARD', k('u:' .. v))
  if c > len then c = len end
  ahead = ahead + c
end
local active = redis.call('ZRANGE', k('active'), 0, -1, 'WITHSCORES')
for i = 1, #active, 2 do count(active[i], active[i + 1]) end
local capped = redis.call('HGETALL', k('capped'))
for i = 1, #capped, 2 do count(capped[i], capped[i + 1]) end
return {ahead, reason}
"""
)
