//! The committed fuzz seeds (`fuzz/seeds/`, written by `cargo run --example fuzz_seeds`)
//! still say what they are meant to: a change of a wire or config format that leaves them
//! stale fails here, not silently as a fuzz run that starts from nothing.

use std::path::PathBuf;

use rendez::stun::{stream_frame, ChannelData, Frame, Message};

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds for {target}");
    seeds
}

#[test]
fn stun_seeds_parse() {
    for (name, bytes) in seeds("stun_message") {
        assert!(Message::parse(&bytes).is_ok(), "{name} does not parse");
    }
}

#[test]
fn channel_data_seeds_parse() {
    for (name, bytes) in seeds("channel_data") {
        assert!(
            ChannelData::parse(&bytes).is_some(),
            "{name} does not parse"
        );
    }
}

#[test]
fn stream_seeds_are_whole_frames() {
    for (name, bytes) in seeds("stream_frames") {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let Frame::Complete(len) = stream_frame(rest) else {
                panic!("{name}: {} bytes left that are not a frame", rest.len());
            };
            rest = &rest[len..];
        }
    }
}

#[test]
fn config_seeds_load() {
    for (name, bytes) in seeds("config") {
        let text = String::from_utf8(bytes).unwrap();
        if let Err(e) = rendez::Config::from_toml(&text) {
            panic!("{name}: {e}");
        }
    }
}

/// Every turn_core seed is a whole sequence of records (`tag wait len bytes`, see
/// fuzz/fuzz_targets/turn_core.rs) and its client records are STUN or ChannelData.
#[test]
fn turn_core_seeds_are_whole_records() {
    for (name, bytes) in seeds("turn_core") {
        let mut rest = &bytes[..];
        while let [tag, _wait, hi, lo, tail @ ..] = rest {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            assert!(len <= tail.len(), "{name}: a record cut short");
            let (record, next) = tail.split_at(len);
            if tag & 7 <= 1 {
                assert!(
                    Message::parse(record).is_ok() || ChannelData::parse(record).is_some(),
                    "{name}: a client record that is neither STUN nor ChannelData"
                );
            }
            rest = next;
        }
        assert!(rest.is_empty(), "{name}: trailing bytes");
    }
}
