-- ARGV: room, message (JSON), most messages kept, most bytes kept. Keeps the message in the
-- room's history (dropping the oldest beyond the bounds, with a running byte count, so the
-- cost does not grow with the history) and sends it to every node of the room, the
-- sender's too.
local room, message = ARGV[1], ARGV[2]
local max_messages, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local members = snapshot(room)
if #members == 0 then return 'gone' end
local key, bytes_key = chat_key(room), chat_bytes_key(room)
local count = redis.call('RPUSH', key, message)
local bytes = redis.call('INCRBY', bytes_key, #message)
while count > 1 and (count > max_messages or bytes > max_bytes) do
  bytes = redis.call('DECRBY', bytes_key, #redis.call('LPOP', key))
  count = count - 1
end
publish_to_nodes(members, nil,
  '{"type":"chat","room":' .. cjson.encode(room) .. ',"message":' .. message .. '}')
return 'ok'
