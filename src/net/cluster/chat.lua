-- ARGV: room, message (JSON), most messages kept, most bytes kept. Keeps the message in the
-- room's history and sends it to every node of the room, the sender's too.
local room, message = ARGV[1], ARGV[2]
local max_messages, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local members = snapshot(room)
if #members == 0 then return 'gone' end
local key = chat_key(room)
redis.call('RPUSH', key, message)
redis.call('LTRIM', key, -max_messages, -1)
local kept = redis.call('LRANGE', key, 0, -1)
local bytes = 0
for _, m in ipairs(kept) do bytes = bytes + #m end
local i = 1
while bytes > max_bytes and i < #kept do
  bytes = bytes - #kept[i]
  redis.call('LPOP', key)
  i = i + 1
end
publish_to_nodes(members, nil,
  '{"type":"chat","room":' .. cjson.encode(room) .. ',"message":' .. message .. '}')
return 'ok'
