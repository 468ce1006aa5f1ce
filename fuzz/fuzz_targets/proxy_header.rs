//! Any bytes as the start of a connection from a trusted load balancer: reading the PROXY
//! header must end (it is bounded), never consume a byte past the header, and agree with
//! parsing exactly the bytes it consumed.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rendez::net::proxy_protocol::{parse, read_header};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    let read = runtime().block_on(read_header(&mut stream));
    let consumed = data.len() - stream.len();
    if let Ok(origin) = read {
        let parsed = parse(&data[..consumed]).expect("what was read parses alone");
        assert_eq!(parsed, origin);
    }
    assert!(
        consumed <= 64 * 1024 + 16,
        "never more than the largest header"
    );
});
