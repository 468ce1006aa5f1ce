//! Sequences of WebSocket events from four connections into the room logic, one per line:
//! the first byte of a line says which connection (`byte & 3`) and what happens
//! (`byte >> 2 & 3`): 0 a text frame (the rest of the line, where `$0`–`$3` stand for the
//! participant ids the server gave connections 0–3, so relaying between members is reached),
//! 1 the connection closes, 2 time passes (`byte >> 4` × 150 ms), 3 the connection opens
//! anew from address `byte >> 4 & 3` (two of them in one IPv6 /64), or, when `byte >> 4` is
//! 15, the server drains. A text on a closed connection opens it first.
//!
//! No panic; messages go only to open connections; a room never holds more than its size.
#![no_main]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rendez::signal::{Rooms, RoomsConfig, ServerMessage};

const CONNECTIONS: usize = 4;
const ROOM_SIZE: usize = 3;
const ADDRESSES: [&str; 4] = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"];

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let config = RoomsConfig {
        room_size: ROOM_SIZE,
        rooms_per_ip: 2,
        messages_per_second: 5,
        max_message_bytes: 2048,
        max_chat_bytes: 256,
        token_secret: None,
    };
    let mut rooms = Rooms::new(config, rendez::random::Rng::from_seed(1));
    let mut open = [false; CONNECTIONS];
    let mut ids: [Option<String>; CONNECTIONS] = Default::default();
    let mut joined_rooms = Vec::new();

    for line in data.split(|b| *b == b'\n') {
        let Some((&control, rest)) = line.split_first() else {
            continue;
        };
        let conn = usize::from(control & 3);
        let argument = control >> 4;
        let out = match (control >> 2) & 3 {
            0 => {
                if !open[conn] {
                    rooms.connect(now, conn as u64, address(conn as u8), serde_json::json!([]));
                    open[conn] = true;
                }
                let text = with_ids(&String::from_utf8_lossy(rest), &ids);
                if let Ok(rendez::signal::ClientMessage::Join { room, .. }) =
                    serde_json::from_str(&text)
                {
                    joined_rooms.push(room);
                }
                rooms.handle_text(now, 1_000_000, conn as u64, &text)
            }
            1 => {
                open[conn] = false;
                ids[conn] = None;
                rooms.disconnect(conn as u64)
            }
            2 => {
                now += Duration::from_millis(150 * u64::from(argument));
                Vec::new()
            }
            _ if argument == 15 => rooms.drain(),
            _ => {
                let out = rooms.disconnect(conn as u64);
                ids[conn] = None;
                rooms.connect(now, conn as u64, address(argument), serde_json::json!([]));
                open[conn] = true;
                out
            }
        };
        for message in out {
            let to = message.to as usize;
            assert!(
                to < CONNECTIONS && open[to],
                "message to a closed connection"
            );
            if let ServerMessage::Welcome { id, .. } = message.message {
                ids[to] = Some(id);
            }
        }
        let figures = rooms.figures();
        assert_eq!(figures.connections, open.iter().filter(|o| **o).count());
        assert!(figures.participants <= figures.connections);
        for room in &joined_rooms {
            assert!(
                rooms.room_len(room) <= ROOM_SIZE,
                "room {room:?} over its size"
            );
        }
    }
});

fn address(index: u8) -> IpAddr {
    ADDRESSES[usize::from(index) % ADDRESSES.len()]
        .parse()
        .unwrap()
}

/// `text` with `$0`–`$3` replaced by the participant ids connections 0–3 hold.
fn with_ids(text: &str, ids: &[Option<String>; CONNECTIONS]) -> String {
    let mut text = text.to_owned();
    for (i, id) in ids.iter().enumerate() {
        if let Some(id) = id {
            text = text.replace(&format!("${i}"), id);
        }
    }
    text
}
