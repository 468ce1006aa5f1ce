-- ARGV: room, node. Sends the node the room as it is now, in the order of its events.
redis.call('PUBLISH', channel(ARGV[2]),
  cjson.encode({type = 'sync', room = ARGV[1], members = snapshot(ARGV[1])}))
return 'ok'
