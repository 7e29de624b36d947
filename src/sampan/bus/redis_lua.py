"""The Lua scripts of the Redis Streams bus.

Every state change of the bus is one script, so it is atomic across every process that shares
the Redis server. Keys are derived inside the scripts from a base name passed as ``KEYS[1]``;
all of a bus's keys share the ``{prefix}`` hash tag, so they live in one cluster slot.

Layout, for topic ``T`` of a bus with prefix ``P`` (``B = {P}:t:T``):

* ``{P}:topics`` — set of topic names; ``{P}:lease`` / ``{P}:epoch`` — counters.
* ``B:meta`` — hash: ``next`` (next offset), ``messages``, ``bytes``, ``max_age``,
  ``max_bytes``, ``epoch`` (changes when the topic is deleted and created again).
* ``B:s`` — the stream. Offset ``n`` is the entry with explicit id ``0-(n+1)``; fields
  ``v`` value, ``k`` key, ``h`` headers (JSON), ``ts`` published_at (server clock),
  ``d`` deliver_at, ``g`` the only group it is for (dead-letter re-drives).
* ``B:groups`` — hash: group name -> next offset the group reads from the stream.
* ``B:g:G:vis`` — sorted set of the group's in-flight offsets scored by the time they become
  visible (lease end, retry time, due time); ``WAITING`` for a message that waits behind an
  earlier one of its key.
* ``B:g:G:inf`` — hash: offset -> JSON ``{a: attempt, l: lease, k: key}``.
* ``B:g:G:keys`` — sorted set (all scores 0) of ``key NUL offset(20 digits)`` for keyed
  in-flight entries: the lowest member of a key is the one that may be leased.
* ``B:dd:<epoch>:<dedupe key>`` — string holding an offset, with the dedupe TTL.
"""

from __future__ import annotations

WAITING = "1e18"

PRELUDE = r"""
local WAITING = 1e18
local function now_seconds()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.6f', x) end
local function sid(offset) return '0-' .. string.format('%d', offset + 1) end
local function offset_of(id) return tonumber(string.match(id, '^0%-(%d+)$')) - 1 end
local function entry_fields(raw)
  local f = {}
  for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
  return f
end
local function keymember(key, offset) return key .. '\0' .. string.format('%020d', offset) end
local function group_base(base, group) return base .. ':g:' .. group end

-- The first entry at or after `offset`, or nil.
local function first_from(base, offset)
  local r = redis.call('XRANGE', base .. ':s', sid(offset), '+', 'COUNT', 1)
  if #r == 0 then return nil end
  return r[1]
end

local function first_offset(base)
  local r = redis.call('XRANGE', base .. ':s', '-', '+', 'COUNT', 1)
  if #r == 0 then return tonumber(redis.call('HGET', base .. ':meta', 'next')) end
  return offset_of(r[1][1])
end

-- The first offset whose entry was published at or after `t` (published_at grows with the
-- offset: both are assigned by this server under its clock), or the next offset.
local function offset_at_time(base, t)
  local lo = first_offset(base)
  local hi = tonumber(redis.call('HGET', base .. ':meta', 'next'))
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local e = first_from(base, mid)
    if e == nil or tonumber(entry_fields(e[2]).ts) >= t then hi = mid else lo = mid + 1 end
  end
  local e = first_from(base, lo)
  if e == nil then return tonumber(redis.call('HGET', base .. ':meta', 'next')) end
  return offset_of(e[1])
end

local function create_topic(prefix, name, max_age, max_bytes, now)
  local base = prefix .. ':t:' .. name
  local meta = base .. ':meta'
  if redis.call('EXISTS', meta) == 0 then
    local epoch = redis.call('INCR', prefix .. ':epoch')
    redis.call('HSET', meta, 'next', 0, 'messages', 0, 'bytes', 0, 'epoch', epoch,
      'created', fmt(now))
    redis.call('SADD', prefix .. ':topics', name)
  end
  if max_age == '' then redis.call('HDEL', meta, 'max_age')
  else redis.call('HSET', meta, 'max_age', max_age) end
  if max_bytes == '' then redis.call('HDEL', meta, 'max_bytes')
  else redis.call('HSET', meta, 'max_bytes', max_bytes) end
  return base
end

-- Append one message; returns its offset. `m` has v, k, h, d, g (strings, '' = none).
local function append(base, m, now)
  local meta = base .. ':meta'
  local offset = redis.call('HINCRBY', meta, 'next', 1) - 1
  local args = {base .. ':s', sid(offset), 'v', m.v, 'ts', fmt(now)}
  if m.k ~= nil then table.insert(args, 'k'); table.insert(args, m.k) end
  if m.h ~= nil and m.h ~= '' then table.insert(args, 'h'); table.insert(args, m.h) end
  if m.d ~= nil and m.d ~= '' then table.insert(args, 'd'); table.insert(args, m.d) end
  if m.g ~= nil and m.g ~= '' then table.insert(args, 'g'); table.insert(args, m.g) end
  redis.call('XADD', unpack(args))
  redis.call('HINCRBY', meta, 'messages', 1)
  redis.call('HINCRBY', meta, 'bytes', string.len(m.v))
  return offset
end

-- Let the lowest in-flight entry of `key` go if it waits for an earlier one.
local function next_in_line(gb, key, now)
  local first = redis.call('ZRANGE', gb .. ':keys', '[' .. key .. '\0', '+', 'BYLEX',
    'LIMIT', 0, 1)
  if #first == 0 then return end
  local k, off = string.match(first[1], '^(.*)%z(%d+)$')
  if k ~= key then return end
  local offset = tonumber(off)
  local score = redis.call('ZSCORE', gb .. ':vis', offset)
  if score and tonumber(score) >= WAITING then
    redis.call('ZADD', gb .. ':vis', fmt(now), offset)
  end
end

local function key_busy(gb, key)
  local first = redis.call('ZRANGE', gb .. ':keys', '[' .. key .. '\0', '+', 'BYLEX',
    'LIMIT', 0, 1)
  if #first == 0 then return false end
  local k = string.match(first[1], '^(.*)%z%d+$')
  return k == key
end

-- Forget an in-flight entry; returns its state table (or nil).
local function forget(gb, offset)
  local raw = redis.call('HGET', gb .. ':inf', offset)
  if not raw then return nil end
  local st = cjson.decode(raw)
  redis.call('HDEL', gb .. ':inf', offset)
  redis.call('ZREM', gb .. ':vis', offset)
  if st.k then redis.call('ZREM', gb .. ':keys', keymember(st.k, offset)) end
  return st
end

local function state(gb, offset)
  local raw = redis.call('HGET', gb .. ':inf', offset)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function check_group(base, group)
  if redis.call('EXISTS', base .. ':meta') == 0 then
    return redis.error_reply('SAMPAN-NOTOPIC topic does not exist')
  end
  if redis.call('HEXISTS', base .. ':groups', group) == 0 then
    return redis.error_reply('SAMPAN-NOGROUP group does not exist')
  end
  return nil
end
"""

# KEYS[1] prefix. ARGV: name, max_age, max_bytes ('' = unlimited).
CREATE_TOPIC = (
    PRELUDE
    + r"""
create_topic(KEYS[1], ARGV[1], ARGV[2], ARGV[3], now_seconds())
return 1
"""
)

# KEYS[1] prefix. ARGV: name.
DELETE_TOPIC = (
    PRELUDE
    + r"""
local prefix, name = KEYS[1], ARGV[1]
local base = prefix .. ':t:' .. name
if redis.call('EXISTS', base .. ':meta') == 0 then
  return redis.error_reply('SAMPAN-NOTOPIC topic does not exist')
end
for _, g in ipairs(redis.call('HKEYS', base .. ':groups')) do
  local gb = group_base(base, g)
  redis.call('DEL', gb .. ':vis', gb .. ':inf', gb .. ':keys')
end
redis.call('DEL', base .. ':groups', base .. ':s', base .. ':meta')
redis.call('SREM', prefix .. ':topics', name)
return 1
"""
)

# KEYS[1] prefix. Returns per topic: name, messages, bytes, first, next, max_age, max_bytes,
# groups (array).
TOPICS = (
    PRELUDE
    + r"""
local prefix = KEYS[1]
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', prefix .. ':topics')) do
  local base = prefix .. ':t:' .. name
  local m = redis.call('HMGET', base .. ':meta', 'messages', 'bytes', 'next', 'max_age',
    'max_bytes')
  if m[3] then
    table.insert(out, {name, m[1], m[2], tostring(first_offset(base)), m[3], m[4] or '',
      m[5] or '', redis.call('HKEYS', base .. ':groups')})
  end
end
return out
"""
)

# KEYS[1] prefix. ARGV: topic, auto_create ('1'/'0'), default max_age, default max_bytes,
# target group ('' = all), count, then 7 per message: value, has_key, key, headers,
# deliver_at, dedupe key ('' = none), dedupe ttl ms.
PUBLISH = (
    PRELUDE
    + r"""
local prefix, topic = KEYS[1], ARGV[1]
local now = now_seconds()
local base = prefix .. ':t:' .. topic
if redis.call('EXISTS', base .. ':meta') == 0 then
  if ARGV[2] ~= '1' then return redis.error_reply('SAMPAN-NOTOPIC topic does not exist') end
  create_topic(prefix, topic, ARGV[3], ARGV[4], now)
end
local target = ARGV[5]
local count = tonumber(ARGV[6])
local epoch = redis.call('HGET', base .. ':meta', 'epoch')
local result, seen = {}, {}
for i = 0, count - 1 do
  local j = 7 + i * 7
  local dk = ARGV[j + 5]
  local offset = nil
  if dk ~= '' then
    offset = seen[dk]
    if offset == nil then
      local found = redis.call('GET', base .. ':dd:' .. epoch .. ':' .. dk)
      if found then offset = tonumber(found) end
    end
  end
  if offset == nil then
    local m = {v = ARGV[j], h = ARGV[j + 3], d = ARGV[j + 4], g = target}
    if ARGV[j + 1] == '1' then m.k = ARGV[j + 2] end
    offset = append(base, m, now)
    if dk ~= '' then
      seen[dk] = offset
      redis.call('SET', base .. ':dd:' .. epoch .. ':' .. dk, offset, 'PX', ARGV[j + 6])
    end
  end
  table.insert(result, offset)
end
return result
"""
)

# KEYS[1] prefix. ARGV: topic, group, start ('earliest'/'latest'), auto_create ('1'/'0'),
# default max_age, default max_bytes.
CREATE_GROUP = (
    PRELUDE
    + r"""
local prefix, topic, group = KEYS[1], ARGV[1], ARGV[2]
local base = prefix .. ':t:' .. topic
if redis.call('EXISTS', base .. ':meta') == 0 then
  if ARGV[4] ~= '1' then return redis.error_reply('SAMPAN-NOTOPIC topic does not exist') end
  create_topic(prefix, topic, ARGV[5], ARGV[6], now_seconds())
end
if redis.call('HEXISTS', base .. ':groups', group) == 1 then return 0 end
local position
if ARGV[3] == 'earliest' then position = first_offset(base)
else position = tonumber(redis.call('HGET', base .. ':meta', 'next')) end
redis.call('HSET', base .. ':groups', group, position)
return 1
"""
)

# KEYS[1] prefix. ARGV: topic. Returns per group: name, lag, in_flight, next_offset.
GROUPS = (
    PRELUDE
    + r"""
local prefix, topic = KEYS[1], ARGV[1]
local base = prefix .. ':t:' .. topic
if redis.call('EXISTS', base .. ':meta') == 0 then
  return redis.error_reply('SAMPAN-NOTOPIC topic does not exist')
end
local nxt = tonumber(redis.call('HGET', base .. ':meta', 'next'))
local first = first_offset(base)
local out = {}
local flat = redis.call('HGETALL', base .. ':groups')
for i = 1, #flat, 2 do
  local position = tonumber(flat[i + 1])
  local in_flight = redis.call('HLEN', group_base(base, flat[i]) .. ':inf')
  local unread = math.max(0, nxt - math.max(position, first))
  table.insert(out, {flat[i], unread + in_flight, in_flight, position})
end
return out
"""
)

# KEYS[1] prefix. ARGV: topic, group, consumer, max_messages, lease_seconds, max_in_flight.
# Returns per delivery: offset, has_key, key, value, headers, published_at, attempt, lease.
FETCH = (
    PRELUDE
    + r"""
local prefix, topic, group = KEYS[1], ARGV[1], ARGV[2]
local base = prefix .. ':t:' .. topic
local err = check_group(base, group)
if err then return err end
local gb = group_base(base, group)
local max_messages = tonumber(ARGV[4])
local now = now_seconds()
local lease_until = fmt(now + tonumber(ARGV[5]))
local out = {}

local function deliver(offset, e, attempt, lease)
  local f = entry_fields(e[2])
  local has_key = '0'
  if f.k then has_key = '1' end
  table.insert(out, {offset, has_key, f.k or '', f.v, f.h or '', f.ts, attempt, lease})
end

-- 1. In-flight entries that are due: retries, expired leases, released, delayed, unblocked.
local due = redis.call('ZRANGE', gb .. ':vis', '-inf', fmt(now), 'BYSCORE', 'LIMIT', 0,
  max_messages)
for _, member in ipairs(due) do
  local offset = tonumber(member)
  local st = state(gb, offset)
  local e = first_from(base, offset)
  if st == nil or e == nil or offset_of(e[1]) ~= offset then
    -- the entry vanished (trimmed by an operator): forget it, unblock its key
    forget(gb, offset)
    if st and st.k then next_in_line(gb, st.k, now) end
  else
    st.a = st.a + 1
    st.l = redis.call('INCR', prefix .. ':lease')
    redis.call('HSET', gb .. ':inf', offset, cjson.encode(st))
    redis.call('ZADD', gb .. ':vis', lease_until, offset)
    deliver(offset, e, st.a, st.l)
  end
end

local room = max_messages - #out
room = math.min(room, tonumber(ARGV[6]) - redis.call('HLEN', gb .. ':inf'))
if room <= 0 then return out end

-- 2. New entries past the group's position.
local position = tonumber(redis.call('HGET', base .. ':groups', group))
local fresh = redis.call('XRANGE', base .. ':s', sid(position), '+', 'COUNT', room)
if #fresh == 0 then return out end
redis.call('HSET', base .. ':groups', group, offset_of(fresh[#fresh][1]) + 1)
for _, e in ipairs(fresh) do
  local offset = offset_of(e[1])
  local f = entry_fields(e[2])
  if f.g == nil or f.g == group then
    if f.d and tonumber(f.d) > now then
      -- delayed: ordered by due time, holds back no key
      redis.call('HSET', gb .. ':inf', offset, cjson.encode({a = 0, l = 0}))
      redis.call('ZADD', gb .. ':vis', f.d, offset)
    elseif f.k and key_busy(gb, f.k) then
      redis.call('HSET', gb .. ':inf', offset, cjson.encode({a = 0, l = 0, k = f.k}))
      redis.call('ZADD', gb .. ':vis', WAITING, offset)
      redis.call('ZADD', gb .. ':keys', 0, keymember(f.k, offset))
    else
      local lease = redis.call('INCR', prefix .. ':lease')
      redis.call('HSET', gb .. ':inf', offset, cjson.encode({a = 1, l = lease, k = f.k}))
      redis.call('ZADD', gb .. ':vis', lease_until, offset)
      if f.k then redis.call('ZADD', gb .. ':keys', 0, keymember(f.k, offset)) end
      deliver(offset, e, 1, lease)
    end
  end
end
return out
"""
)

# KEYS[1] prefix. ARGV: topic, group, then pairs offset, lease.
ACK = (
    PRELUDE
    + r"""
local base = KEYS[1] .. ':t:' .. ARGV[1]
local gb = group_base(base, ARGV[2])
local now = now_seconds()
for i = 3, #ARGV, 2 do
  local offset = tonumber(ARGV[i])
  local st = state(gb, offset)
  if st and st.l == tonumber(ARGV[i + 1]) then
    forget(gb, offset)
    if st.k then next_in_line(gb, st.k, now) end
  end
end
return 1
"""
)

# KEYS[1] prefix. ARGV: topic, group, then pairs offset, lease.
RELEASE = (
    PRELUDE
    + r"""
local base = KEYS[1] .. ':t:' .. ARGV[1]
local gb = group_base(base, ARGV[2])
local now = now_seconds()
for i = 3, #ARGV, 2 do
  local offset = tonumber(ARGV[i])
  local st = state(gb, offset)
  if st and st.l == tonumber(ARGV[i + 1]) and st.a > 0 then
    st.a = st.a - 1
    redis.call('HSET', gb .. ':inf', offset, cjson.encode(st))
    redis.call('ZADD', gb .. ':vis', fmt(now), offset)
  end
end
return 1
"""
)

# KEYS[1] prefix. ARGV: topic, group, lease_seconds, then pairs offset, lease.
EXTEND = (
    PRELUDE
    + r"""
local base = KEYS[1] .. ':t:' .. ARGV[1]
local gb = group_base(base, ARGV[2])
local until_ = fmt(now_seconds() + tonumber(ARGV[3]))
for i = 4, #ARGV, 2 do
  local offset = tonumber(ARGV[i])
  local st = state(gb, offset)
  if st and st.l == tonumber(ARGV[i + 1]) then
    local score = redis.call('ZSCORE', gb .. ':vis', offset)
    if score and tonumber(score) < WAITING then
      redis.call('ZADD', gb .. ':vis', until_, offset)
    end
  end
end
return 1
"""
)

# KEYS[1] prefix. ARGV: topic, group, offset, lease, exhausted ('1'/'0'), backoff seconds,
# then for a dead letter: value, has_key, key, headers JSON (with the sampan-dlq-* headers;
# the failure time is added here as HEADER_DLQ_FAILED_AT = ARGV[11]).
# Returns 1 when dead-lettered.
NACK = (
    PRELUDE
    + r"""
local prefix = KEYS[1]
local base = prefix .. ':t:' .. ARGV[1]
local err = check_group(base, ARGV[2])
if err then return err end
local gb = group_base(base, ARGV[2])
local offset = tonumber(ARGV[3])
local now = now_seconds()
local st = state(gb, offset)
if st == nil or st.l ~= tonumber(ARGV[4]) then return 0 end
if ARGV[5] ~= '1' then
  redis.call('ZADD', gb .. ':vis', fmt(now + tonumber(ARGV[6])), offset)
  return 0
end
local dlq_name = ARGV[1] .. '.dlq'
local dlq = prefix .. ':t:' .. dlq_name
if redis.call('EXISTS', dlq .. ':meta') == 0 then create_topic(prefix, dlq_name, '', '', now) end
forget(gb, offset)
local headers = cjson.decode(ARGV[10])
headers[ARGV[11]] = fmt(now)
local m = {v = ARGV[7], h = cjson.encode(headers)}
if ARGV[8] == '1' then m.k = ARGV[9] end
append(dlq, m, now)
if st.k then next_in_line(gb, st.k, now) end
return 1
"""
)

# KEYS[1] prefix. ARGV: topic, offset ('' = from the topic's next offset), timestamp ('' =
# by offset), then group. Returns the offset the group reads next.
REPLAY = (
    PRELUDE
    + r"""
local base = KEYS[1] .. ':t:' .. ARGV[1]
local group = ARGV[4]
local err = check_group(base, group)
if err then return err end
local gb = group_base(base, group)
local nxt = tonumber(redis.call('HGET', base .. ':meta', 'next'))
local target
if ARGV[3] ~= '' then target = offset_at_time(base, tonumber(ARGV[3]))
else target = math.min(tonumber(ARGV[2]), nxt) end
for _, member in ipairs(redis.call('HKEYS', gb .. ':inf')) do
  local offset = tonumber(member)
  if offset >= target then forget(gb, offset) end
end
redis.call('HSET', base .. ':groups', group, target)
return target
"""
)

# KEYS[1] prefix. ARGV: topic, dlq header names (topic, group), then either '*' and the dlq
# offset to continue from (at most 1000 letters per call), or '=' and the dlq offsets.
# Returns {re-driven count, dlq offset to continue from or -1}.
REDRIVE = (
    PRELUDE
    + r"""
local prefix = KEYS[1]
local dlq = prefix .. ':t:' .. ARGV[1] .. '.dlq'
if redis.call('EXISTS', dlq .. ':meta') == 0 then return {0, -1} end
local now = now_seconds()
local entries = {}
local more = -1
if ARGV[4] == '*' then
  entries = redis.call('XRANGE', dlq .. ':s', sid(tonumber(ARGV[5])), '+', 'COUNT', 1000)
  if #entries == 1000 then more = offset_of(entries[#entries][1]) + 1 end
else
  for i = 5, #ARGV do
    local r = redis.call('XRANGE', dlq .. ':s', sid(tonumber(ARGV[i])), sid(tonumber(ARGV[i])))
    if #r > 0 then table.insert(entries, r[1]) end
  end
end
local moved = 0
for _, e in ipairs(entries) do
  local f = entry_fields(e[2])
  local headers = {}
  if f.h then headers = cjson.decode(f.h) end
  local origin = headers[ARGV[2]] or ARGV[1]
  local group = headers[ARGV[3]] or ''
  local base = prefix .. ':t:' .. origin
  if redis.call('HEXISTS', base .. ':groups', group) == 1 then
    local clean, any = {}, false
    for name, value in pairs(headers) do
      if string.sub(name, 1, 11) ~= 'sampan-dlq-' then clean[name] = value; any = true end
    end
    local h = ''
    if any then h = cjson.encode(clean) end
    append(base, {v = f.v, k = f.k, h = h, g = group}, now)
    redis.call('XDEL', dlq .. ':s', e[1])
    redis.call('HINCRBY', dlq .. ':meta', 'messages', -1)
    redis.call('HINCRBY', dlq .. ':meta', 'bytes', -string.len(f.v))
    moved = moved + 1
  end
end
return {moved, more}
"""
)

# KEYS[1] prefix. ARGV: topic, max entries to examine, offset to start from. Deletes entries
# past retention that no group has in flight; returns {removed, offset to continue from or -1}.
RETENTION = (
    PRELUDE
    + r"""
local prefix = KEYS[1]
local base = prefix .. ':t:' .. ARGV[1]
local budget = tonumber(ARGV[2])
local meta = redis.call('HMGET', base .. ':meta', 'max_age', 'max_bytes', 'bytes', 'next')
if not meta[4] then return {0, -1} end
local now = now_seconds()
local cutoff = nil
if meta[1] then cutoff = offset_at_time(base, now - tonumber(meta[1])) end
if meta[2] and tonumber(meta[3]) > tonumber(meta[2]) then
  local excess = tonumber(meta[3]) - tonumber(meta[2])
  local freed, start, found = 0, '-', nil
  while found == nil do
    local batch = redis.call('XRANGE', base .. ':s', start, '+', 'COUNT', 1000)
    if #batch == 0 then break end
    for _, e in ipairs(batch) do
      freed = freed + string.len(entry_fields(e[2]).v)
      if freed >= excess then found = offset_of(e[1]) + 1; break end
    end
    start = '(' .. batch[#batch][1]
  end
  if found and (cutoff == nil or found > cutoff) then cutoff = found end
end
if cutoff == nil or cutoff <= 0 then return {0, -1} end
local groups = redis.call('HKEYS', base .. ':groups')
local removed, freed = 0, 0
local batch = redis.call('XRANGE', base .. ':s', sid(tonumber(ARGV[3])), '(' .. sid(cutoff),
  'COUNT', budget)
for _, e in ipairs(batch) do
  local offset = offset_of(e[1])
  local kept = false
  for _, g in ipairs(groups) do
    if redis.call('HEXISTS', group_base(base, g) .. ':inf', offset) == 1 then
      kept = true
      break
    end
  end
  if not kept then
    redis.call('XDEL', base .. ':s', e[1])
    removed = removed + 1
    freed = freed + string.len(entry_fields(e[2]).v)
  end
end
if removed > 0 then
  redis.call('HINCRBY', base .. ':meta', 'messages', -removed)
  redis.call('HINCRBY', base .. ':meta', 'bytes', -freed)
end
local more = -1
if #batch == budget then more = offset_of(batch[#batch][1]) + 1 end
return {removed, more}
"""
)
