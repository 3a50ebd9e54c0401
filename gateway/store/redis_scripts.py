"""The Lua scripts of the Redis store: each decision runs atomically inside Redis,
so concurrent replicas cannot interleave between its read and its write.

They restate ``gateway.store.rules`` (Redis cannot run Python); the contract
suite holds both stores to the same answers. Times arrive as decimal strings of
the caller's clock; Redis's own expiries only collect garbage. Every key a
script touches is passed in KEYS.

A rule that more than one script applies is a Lua function (``local function remember``
...), written once here and prepended to each script that calls it: ``ADMIT`` and
``COMPLETE`` run the steps of ``Store.admit`` and ``Store.complete`` in one script (one
round trip, atomic), with the same functions the single-step scripts run. Redis refuses a
script (out of memory, a read-only replica) at its first write, so none of these is left
half done; a script that errs later (a key of the wrong type, which the key families rule
out) keeps its earlier writes.
"""

from __future__ import annotations

from gateway.store.records import MESSAGE_TAG, SEQ_TAG


def number(value: float) -> str:
    """A time or duration as an ARGV string that ``tonumber`` reads back exactly."""
    return repr(float(value))


# The value of field ``name`` in a stream entry's flat [field, value, ...] list.
_FIELD = """
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return false
end
"""

# remember(dedup hash, body_hash, now_s, expires_at_s, ttl_ms) -> {status, outcome}.
# rules.dedup_status: live while now < expires_at; NEW replaces an expired entry.
_REMEMBER = """
local function remember(key, body_hash, now_s, expires_at_s, ttl_ms)
  local stored = redis.call('HMGET', key, 'hash', 'expires_at', 'outcome')
  if stored[1] and tonumber(now_s) < tonumber(stored[2]) then
    if stored[1] == body_hash then return {'replay', stored[3]} end
    return {'conflict', false}
  end
  redis.call('DEL', key)
  redis.call('HSET', key, 'hash', body_hash, 'expires_at', expires_at_s)
  redis.call('PEXPIRE', key, ttl_ms)
  return {'new', false}
end
"""

# KEYS: dedup hash. ARGV: body_hash, now_s, expires_at_s, ttl_ms.
REMEMBER = _REMEMBER + "return remember(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])\n"

# record_outcome(dedup hash, outcome, expires_at_s or '', ttl_ms or '') -> 1, or 0 for a
# key that is no longer held (left alone).
_RECORD_OUTCOME = """
local function record_outcome(key, outcome, expires_at_s, ttl_ms)
  if redis.call('EXISTS', key) == 0 then return 0 end
  redis.call('HSET', key, 'outcome', outcome)
  if expires_at_s ~= '' then
    redis.call('HSET', key, 'expires_at', expires_at_s)
    redis.call('PEXPIRE', key, ttl_ms)
  end
  return 1
end
"""

# KEYS: dedup hash. ARGV: outcome, expires_at_s or '', ttl_ms or ''.
RECORD_OUTCOME = _RECORD_OUTCOME + "return record_outcome(KEYS[1], ARGV[1], ARGV[2], ARGV[3])\n"

# entity_seq(entity counter, seq) -> {verdict, expected}. rules.entity_decision.
_ENTITY_SEQ = """
local function entity_seq(key, seq_text)
  local last = tonumber(redis.call('GET', key) or '0')
  local seq = tonumber(seq_text)
  if seq == last + 1 then
    redis.call('SET', key, seq_text)
    return {'apply', seq + 1}
  end
  if seq <= last then return {'duplicate', last + 1} end
  return {'gap', last + 1}
end
"""

# KEYS: entity counter. ARGV: seq.
ENTITY_SEQ = _ENTITY_SEQ + "return entity_seq(KEYS[1], ARGV[1])\n"

# KEYS: entity seq. ARGV: the applied seq to undo.
RELEASE_ENTITY_SEQ = """
if tonumber(redis.call('GET', KEYS[1]) or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], tonumber(ARGV[1]) - 1)
return 1
"""

# append_event(event stream, seq counter, notice channel, body, at_s, replica id, user)
# -> seq. The counter gives the seq; the stream entry's ID is "<seq>-0". PERSIST undoes
# the idle expiry TRIM_EVENTS may have set, since the log has a fresh event now. The
# notice "<replica> <seq> <user>" wakes the user's subscribers on the other replicas.
_APPEND_EVENT = """
local function append_event(stream, counter, channel, body, at_s, replica, user)
  local seq = redis.call('INCR', counter)
  redis.call('XADD', stream, string.format('%d-0', seq), 'at', at_s, 'body', body)
  redis.call('PERSIST', stream)
  redis.call('PUBLISH', channel, replica .. ' ' .. seq .. ' ' .. user)
  return seq
end
"""

# KEYS: event stream, seq counter, notice channel. ARGV: body, at_s, replica id, user.
APPEND_EVENT = (
    _APPEND_EVENT
    + "return append_event(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])\n"
)

# KEYS: event stream. ARGV: max_len, cutoff_s (rules.age_cutoff_s).
# By size (MAXLEN), then by age up to the first young-enough entry (MINID), so no hole.
# A log whose newest entry will be too old expires then: an idle user's log goes away.
TRIM_EVENTS = (
    _FIELD
    + """
local removed = redis.call('XTRIM', KEYS[1], 'MAXLEN', '=', ARGV[1])
local cutoff = tonumber(ARGV[2])
local start, young = '-', false
repeat
  local batch = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 128)
  for _, entry in ipairs(batch) do
    if tonumber(field(entry[2], 'at')) >= cutoff then young = entry[1]; break end
  end
  if #batch > 0 then start = '(' .. batch[#batch][1] end
until young or #batch < 128
if young then
  removed = removed + redis.call('XTRIM', KEYS[1], 'MINID', young)
else
  removed = removed + redis.call('XTRIM', KEYS[1], 'MAXLEN', '=', 0)
end
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest == 0 then
  redis.call('DEL', KEYS[1])
else
  local left_ms = math.ceil((tonumber(field(newest[1][2], 'at')) - cutoff) * 1000)
  redis.call('PEXPIRE', KEYS[1], string.format('%d', math.max(left_ms, 1)))
end
return removed
"""
)

# Shared by DELIVER and FAIL. KEYS: queue stream, attempts hash, errors hash, dead stream.
# ARGV[1..4]: group, max_attempts, now_s, backend.
_BURY = (
    _FIELD
    + """
local function bury(id, attempts, err)
  local entry = redis.call('XRANGE', KEYS[1], id, id)
  if #entry > 0 then
    local f = entry[1][2]
    redis.call('XADD', KEYS[4], '*', 'backend', ARGV[4], 'message_id', field(f, 'message_id'),
      'body', field(f, 'body'), 'attempts', attempts, 'error', err, 'dead_at', ARGV[3])
  end
  redis.call('XACK', KEYS[1], ARGV[1], id)
  redis.call('XDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
"""
)

# ARGV[5..]: entry ids just delivered (XAUTOCLAIM, then XREADGROUP). Counts the delivery;
# an entry that already had max_attempts (rules.goes_dead) is buried instead, with
# rules.lost_delivery_error. Returns [id, attempts, ...] of the entries to hand out.
DELIVER = (
    _BURY
    + """
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local n = redis.call('HINCRBY', KEYS[2], id, 1)
  if n - 1 >= tonumber(ARGV[2]) then
    local last = redis.call('HGET', KEYS[3], id)
    local err = 'delivery not acknowledged'
    if last and last ~= '' then err = err .. ' (last error: ' .. last .. ')' end
    bury(id, n - 1, err)
  else
    table.insert(out, id)
    table.insert(out, n)
  end
end
return out
"""
)

# ARGV[5]: entry id, ARGV[6]: error. Returns the deliveries so far (0: not pending).
FAIL = (
    _BURY
    + """
local n = tonumber(redis.call('HGET', KEYS[2], ARGV[5]) or '0')
if n == 0 then return 0 end
redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
if n >= tonumber(ARGV[2]) then bury(ARGV[5], n, ARGV[6]) end
return n
"""
)

# KEYS: dead stream, the dead letter's queue stream. ARGV: dead id, now_s, backend.
REPLAY_DEAD_LETTER = (
    _FIELD
    + """
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entry == 0 or field(entry[1][2], 'backend') ~= ARGV[3] then return false end
local f = entry[1][2]
local id = redis.call('XADD', KEYS[2], '*', 'message_id', field(f, 'message_id'),
  'body', field(f, 'body'), 'enqueued_at', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""
)

# KEYS: window sorted set. ARGV: cutoff_s (now - window), limit, now_s, member, ttl_ms.
# As SlidingWindow.acquire: drop events at or before the cutoff; refuse when full,
# returning the oldest event's time (the caller computes rules.retry_after_s).
RATE_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return false
"""

# Connection counts: KEYS[1] a user's hash {replica id: open count}, KEYS[2] the replica
# hash {replica id: alive until}. ARGV[1..3]: replica id, now_s, alive_until_s. Each
# call first marks its own replica alive; fields of replicas not alive are dropped, so
# the counts of a replica that died stop counting once its heartbeat lapses.
_LIVE_COUNT = """
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local function live_count(prune)
  local total, fields = 0, redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    local alive = redis.call('HGET', KEYS[2], fields[i])
    if alive and tonumber(alive) > tonumber(ARGV[2]) then
      total = total + tonumber(fields[i + 1])
    elseif prune then
      redis.call('HDEL', KEYS[1], fields[i])
    end
  end
  return total
end
"""

# ARGV[4]: limit. Returns 1 when counted, 0 at the limit.
CONN_OPEN = (
    _LIVE_COUNT
    + """
if live_count(true) >= tonumber(ARGV[4]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
"""
)

CONN_CLOSE = (
    _LIVE_COUNT
    + """
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""
)

CONN_COUNT = _LIVE_COUNT + "\nreturn live_count(false)\n"

# KEYS: replica hash. ARGV: replica id, now_s, alive_until_s. Also forgets dead replicas.
HEARTBEAT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) <= tonumber(ARGV[2]) then redis.call('HDEL', KEYS[1], all[i]) end
end
return 1
"""

# KEYS: the queue's holder key. ARGV: holder, lease in ms. Take the key when free, renew
# it when ours; 1 when the holder has it.
HOLD_QUEUE = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# track_inflight(in-flight hash, in-flight index, in-flight id, message_id, backend, body,
# until_s): keep a message in flight until its lease ends at until_s.
_TRACK_INFLIGHT = """
local function track_inflight(hash, index, id, message_id, backend, body, until_s)
  redis.call('HSET', hash, 'message_id', message_id, 'backend', backend, 'body', body)
  redis.call('ZADD', index, until_s, id)
end
"""

# KEYS: the in-flight message's hash, the in-flight index.
# ARGV: in-flight id, message_id, backend, body, until_s.
TRACK_INFLIGHT = (
    _TRACK_INFLIGHT
    + "track_inflight(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])\nreturn 1\n"
)

# settle_inflight(in-flight hash, in-flight index, queue stream, in-flight id, requeue,
# now_s): forget it, or with requeue '1' move it into its back-end's queue stream; returns
# the queue entry id, or "" (also for an id that is gone).
_SETTLE_INFLIGHT = """
local function settle_inflight(hash, index, queue, id, requeue, now_s)
  local f = redis.call('HGETALL', hash)
  redis.call('DEL', hash)
  redis.call('ZREM', index, id)
  if #f == 0 or requeue ~= '1' then return '' end
  local fields = {}
  for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
  return redis.call('XADD', queue, '*', 'message_id', fields['message_id'],
    'body', fields['body'], 'enqueued_at', now_s)
end
"""

# KEYS: the in-flight message's hash, the in-flight index, its back-end's queue stream.
# ARGV: in-flight id, requeue (1/0), now_s.
SETTLE_INFLIGHT = (
    _SETTLE_INFLIGHT
    + "return settle_inflight(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])\n"
)

# fill_work(before, after, seq) and fill_outcome(prefix, final, seq): WorkTemplate.fill and
# OutcomeTemplate.fill (gateway.store.records), byte for byte. Redis's Lua numbers are
# doubles, whose integers are exact up to 2^53, far beyond any seq or length here: the
# varint is plain arithmetic, and %d prints the seq in full (tostring could use an exponent).
_FILL = (
    f"local MESSAGE_TAG, SEQ_TAG = string.char({MESSAGE_TAG[0]}), string.char({SEQ_TAG[0]})\n"
    + (
        """
local function varint(n)
  local out = {}
  while n >= 128 do
    out[#out + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  out[#out + 1] = string.char(n)
  return table.concat(out)
end
local function fill_work(before, after, seq)
  return before .. string.format('%d', seq) .. after
end
local function fill_outcome(prefix, final, seq)
  local tail = SEQ_TAG .. varint(seq)
  return prefix .. MESSAGE_TAG .. varint(#final + #tail) .. final .. tail
end
"""
    )
)

# Store.admit. KEYS: dedup hash, entity counter, event stream, seq counter, notice channel,
# in-flight hash, in-flight index. ARGV: has a key (1/0), body_hash, now_s, expires_at_s,
# hold ttl_ms, entity seq (0: not ordered), event body, replica id, user, in-flight id,
# message_id, backend, work before, work after, lease until_s.
# Returns {dedup status, outcome, entity verdict, expected, seq}: false for a step not
# taken, seq 0 when the message was not taken in. A GAP drops the key it held.
ADMIT = (
    _REMEMBER
    + _ENTITY_SEQ
    + _APPEND_EVENT
    + _TRACK_INFLIGHT
    + _FILL
    + """
local dedup = {false, false}
if ARGV[1] == '1' then
  dedup = remember(KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
  if dedup[1] ~= 'new' then return {dedup[1], dedup[2], false, false, 0} end
end
local decision = {false, false}
if ARGV[6] ~= '0' then
  decision = entity_seq(KEYS[2], ARGV[6])
  if decision[1] == 'gap' and ARGV[1] == '1' then redis.call('DEL', KEYS[1]) end
  if decision[1] ~= 'apply' then return {dedup[1], dedup[2], decision[1], decision[2], 0} end
end
local seq = append_event(KEYS[3], KEYS[4], KEYS[5], ARGV[7], ARGV[3], ARGV[8], ARGV[9])
local body = fill_work(ARGV[13], ARGV[14], seq)
track_inflight(KEYS[6], KEYS[7], ARGV[10], ARGV[11], ARGV[12], body, ARGV[15])
return {dedup[1], dedup[2], decision[1], decision[2], seq}
"""
)

# Store.complete. KEYS: event stream, seq counter, notice channel, dedup hash, in-flight
# hash, in-flight index. ARGV: event body, now_s, replica id, user, has an outcome (1/0),
# outcome prefix, final reply, expires_at_s, ttl_ms, in-flight id ('' for none).
# Returns the seq of the final reply.
COMPLETE = (
    _APPEND_EVENT
    + _RECORD_OUTCOME
    + _SETTLE_INFLIGHT
    + _FILL
    + """
local seq = append_event(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
if ARGV[5] == '1' then
  record_outcome(KEYS[4], fill_outcome(ARGV[6], ARGV[7], seq), ARGV[8], ARGV[9])
end
if ARGV[10] ~= '' then settle_inflight(KEYS[5], KEYS[6], false, ARGV[10], '0', ARGV[2]) end
return seq
"""
)
