-- The room store shared by the nodes of a fleet; every script starts with this file.
--
-- Keys (all under "rendez:"):
--   room:<room>          hash  participant id -> {"name","node","seq"} (seq: joining order)
--   chat:<room>          list  the room's recent chat messages (JSON), oldest first
--   chat-bytes:<room>    the bytes in that list, kept as messages come and go
--   node:<node>:members  hash  participant id -> room, for a node's participants
--   alive:<node>         string with a TTL: the node's presence, renewed every heartbeat
--   participants         hash  participant id -> room, over the whole fleet (ids are unique)
--   nodes                set   every node that registered
--   seq                  counter for joining order
-- Channel to:<node> carries, in the order the scripts ran, every event for that node.

local P = 'rendez:'

local function room_key(room) return P .. 'room:' .. room end
local function chat_key(room) return P .. 'chat:' .. room end
local function chat_bytes_key(room) return P .. 'chat-bytes:' .. room end
local function members_key(node) return P .. 'node:' .. node .. ':members' end
local function alive_key(node) return P .. 'alive:' .. node end
local function channel(node) return P .. 'to:' .. node end

-- The room's participants in joining order: {id, name, node} each.
local function snapshot(room)
  local flat = redis.call('HGETALL', room_key(room))
  local list = {}
  for i = 1, #flat, 2 do
    local entry = cjson.decode(flat[i + 1])
    list[#list + 1] = {id = flat[i], name = entry.name, node = entry.node, seq = entry.seq}
  end
  table.sort(list, function(a, b) return a.seq < b.seq end)
  for _, member in ipairs(list) do member.seq = nil end
  return list
end

-- Sends text to every node with a participant in members, but skip.
local function publish_to_nodes(members, skip, text)
  local sent = {}
  for _, member in ipairs(members) do
    local node = member.node
    if node ~= skip and not sent[node] then
      sent[node] = true
      redis.call('PUBLISH', channel(node), text)
    end
  end
end

-- Adds a participant (the caller checked the size) and tells every node of the room, the
-- joining node last and with the chat history (its participant's welcome).
local function add_member(room, id, name, node)
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('HSET', room_key(room), id, cjson.encode({name = name, node = node, seq = seq}))
  redis.call('HSET', members_key(node), id, room)
  redis.call('HSET', P .. 'participants', id, room)
  local members = snapshot(room)
  local event = cjson.encode({
    type = 'joined', room = room, id = id, name = name, node = node, members = members,
  })
  publish_to_nodes(members, node, event)
  local history = redis.call('LRANGE', chat_key(room), 0, -1)
  redis.call('PUBLISH', channel(node),
    string.sub(event, 1, -2) .. ',"chat":[' .. table.concat(history, ',') .. ']}')
end

-- Removes a participant if it is there, tells the nodes of those who stay (but skip), and
-- forgets an emptied room with its chat.
local function remove_member(room, id, skip)
  local raw = redis.call('HGET', room_key(room), id)
  if not raw then return end
  redis.call('HDEL', room_key(room), id)
  redis.call('HDEL', members_key(cjson.decode(raw).node), id)
  redis.call('HDEL', P .. 'participants', id)
  local members = snapshot(room)
  if #members == 0 then
    redis.call('DEL', chat_key(room), chat_bytes_key(room))
    return
  end
  publish_to_nodes(members, skip, cjson.encode({type = 'left', room = room, id = id}))
end

-- Removes every participant of node, telling the others, and forgets the node.
local function remove_node(node)
  local flat = redis.call('HGETALL', members_key(node))
  for i = 1, #flat, 2 do remove_member(flat[i + 1], flat[i], node) end
  redis.call('DEL', members_key(node), alive_key(node))
  redis.call('SREM', P .. 'nodes', node)
  return #flat / 2
end
