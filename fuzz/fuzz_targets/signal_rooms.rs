//! Sequences of WebSocket events from four connections into the room logic, one per line:
//! the first byte of a line says which connection (`byte & 3`) and what happens
//! (`byte >> 2 & 3`): 0 a text frame (the rest of the line, where `$0`–`$3` stand for the
//! participant ids the server gave connections 0–3, so relaying between members is reached),
//! 1 the connection closes, 2 time passes (`byte >> 4` × 150 ms), 3 the connection opens
//! anew from address `byte >> 4 & 3` (two of them in one IPv6 /64), or, when `byte >> 4` is
//! 15, the server drains. A text on a closed connection opens it first.
//!
//! When the first line is `cluster`, the rooms are a fleet node's ([`Rooms::clustered`]):
//! its commands are answered as a store would (an `Admit` with a `Joined` that also lists
//! a participant of another node), and with `byte >> 2 & 3` = 3, `byte >> 4` = 14 makes the
//! rest of the line a store event (JSON, `$0`–`$3` replaced) and 13 takes the store away
//! or brings it back (then asks for a sync).
//!
//! No panic; messages go only to open connections; a node alone never holds more than the
//! room size in a room.
#![no_main]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rendez::signal::{
    ClusterCommand, ClusterEvent, ClusterPeer, Rooms, RoomsConfig, ServerMessage,
};

const CONNECTIONS: usize = 4;
const ROOM_SIZE: usize = 3;
const ADDRESSES: [&str; 4] = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"];
/// This node and another one of the fleet, in clustered runs.
const NODE: &str = "node-here";
const OTHER_NODE: &str = "node-there";

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let config = RoomsConfig {
        room_size: ROOM_SIZE,
        rooms_per_ip: 2,
        messages_per_second: 5,
        max_message_bytes: 2048,
        max_chat_bytes: 256,
        upstream_kbps: 2500,
        token_secret: None,
    };
    let rng = rendez::random::Rng::from_seed(1);
    let (mut rooms, data, clustered) = match data.strip_prefix(b"cluster\n") {
        Some(rest) => (Rooms::clustered(config, rng, NODE.into()), rest, true),
        None => (Rooms::new(config, rng), data, false),
    };
    let mut store_up = false;
    if clustered {
        rooms.cluster_connected();
        store_up = true;
    }
    let mut open = [false; CONNECTIONS];
    let mut ids: [Option<String>; CONNECTIONS] = Default::default();
    let mut joined_rooms = Vec::new();

    for line in data.split(|b| *b == b'\n') {
        let Some((&control, rest)) = line.split_first() else {
            continue;
        };
        let conn = usize::from(control & 3);
        let argument = control >> 4;
        let mut out = match (control >> 2) & 3 {
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
            _ if clustered && argument == 14 => {
                let text = with_ids(&String::from_utf8_lossy(rest), &ids);
                match serde_json::from_str::<ClusterEvent>(&text) {
                    Ok(event) => rooms.handle_event(event),
                    Err(_) => Vec::new(),
                }
            }
            _ if clustered && argument == 13 => {
                store_up = !store_up;
                if store_up {
                    rooms.cluster_connected();
                    rooms.sync_due();
                    Vec::new()
                } else {
                    rooms.cluster_lost()
                }
            }
            _ => {
                let out = rooms.disconnect(conn as u64);
                ids[conn] = None;
                rooms.connect(now, conn as u64, address(argument), serde_json::json!([]));
                open[conn] = true;
                out
            }
        };
        // The store's answers: every join is admitted beside a participant elsewhere.
        while let Some(command) = rooms.poll_command() {
            assert!(store_up, "a command while the store is away: {command:?}");
            if let ClusterCommand::Admit { room, id, name, .. } = command {
                let me = ClusterPeer {
                    id: id.clone(),
                    name: name.clone(),
                    node: NODE.into(),
                };
                let elsewhere = ClusterPeer {
                    id: "elsewhere".into(),
                    name: "E".into(),
                    node: OTHER_NODE.into(),
                };
                out.extend(rooms.handle_event(ClusterEvent::Joined {
                    room,
                    id,
                    name,
                    node: NODE.into(),
                    members: vec![elsewhere, me],
                    chat: Vec::new(),
                }));
            }
        }
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
        if !clustered {
            for room in &joined_rooms {
                assert!(
                    rooms.room_len(room) <= ROOM_SIZE,
                    "room {room:?} over its size"
                );
            }
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
