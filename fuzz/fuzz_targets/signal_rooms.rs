//! Arbitrary text frames from several WebSocket connections into the room logic: no panic,
//! and no message ever addressed to a connection that is not open.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rendez::signal::{Rooms, RoomsConfig};

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let config = RoomsConfig {
        room_size: 3,
        token_secret: data.first().filter(|b| *b & 1 == 1).map(|_| "k".to_owned()),
        ..RoomsConfig::default()
    };
    let mut rooms = Rooms::new(config, rendez::random::Rng::from_seed(1));
    let mut open = [false; 4];
    for (i, chunk) in data.split(|b| *b == 0).enumerate() {
        let conn = (i % 4) as u64;
        if !open[conn as usize] {
            rooms.connect(
                now,
                conn,
                "192.0.2.1".parse().unwrap(),
                serde_json::json!([]),
            );
            open[conn as usize] = true;
        }
        let out = match chunk.first() {
            Some(b'!') => {
                open[conn as usize] = false;
                rooms.disconnect(conn)
            }
            Some(b'~') => {
                now += Duration::from_millis(700);
                Vec::new()
            }
            _ => rooms.handle_text(now, 1_000, conn, &String::from_utf8_lossy(chunk)),
        };
        for message in out {
            assert!(open[message.to as usize], "message to a closed connection");
        }
    }
});
