//! Browser tests: headless Chromium calls through rendez, first as two bare
//! RTCPeerConnections relayed over each TURN transport, then as three people on rendez's own
//! call page (see "The call page" below), as two people behind a firewall that lets only
//! TCP 443 through (see "Behind a 443-only firewall"), and last as two people in one room on
//! two nodes of a fleet (see "Rooms across nodes").
//!
//! Each transport is its own test (`browser_relay_udp`, `browser_relay_tcp`,
//! `browser_relay_tls`), and `browser_relay_tls_refuses_untrusted_certificate` shows that
//! the TLS test's trust setup is load-bearing. Each one:
//!
//! 1. creates a network namespace `rendez-br-<pid>-<test>` holding `lo` and a veth
//!    pair with 10.99.0.1/24 — every packet of the test stays inside it — and waits until
//!    it is in its final state, which nothing changes while the browser runs (see "Nothing
//!    changes while Chromium runs" below);
//! 2. for TLS, makes a test CA and a certificate for `turn.rendez.test` (SAN also
//!    10.99.0.1) with rcgen and adds the CA to a fresh NSS database that only this test's
//!    Chromium reads (see "Trusting the certificate" below);
//! 3. starts the real `rendez` binary in the namespace (`ip netns exec … serve --config`);
//! 4. mints a TURN REST credential with [`rendez::credential::mint`];
//! 5. runs `tests/browser/relay_call.mjs` under node in the namespace: it waits (bounded)
//!    until the server answers, serves a page on 127.0.0.1, starts Debian's
//!    `/usr/bin/chromium` through playwright-core (never a downloaded browser), connects two
//!    peer connections with `iceTransportPolicy: "relay"` and rendez as their only ICE
//!    server, sends a data-channel message each way and the fake camera's video one way,
//!    and prints what `getStats()` says as one JSON line;
//! 6. asserts that on both sides the selected candidate pair is relay–relay, that the
//!    local candidate was allocated over the transport under test (`relayProtocol` "udp",
//!    "tcp" or "tls") with a relayed address that rendez handed out (10.99.0.1, inside
//!    `relay-ports`), that both messages arrived, and that video frames were decoded.
//!
//! # Why a network namespace with a veth address, not plain loopback
//!
//! Chromium's WebRTC network enumeration ignores loopback interfaces. With rendez on
//! 127.0.0.1 and no other interface, Chromium gathers no candidate at all and never even
//! sends an Allocate (tried: the call times out, the server sees no request). The switch
//! `--allow-loopback-in-peer-connection` makes that work, but it is a test-only mode that
//! changes how the browser picks networks, and a loopback relay would need rendez told to
//! allow 127.0.0.0/8 as peers — switching off the most important part of its default peer
//! policy. Instead the test gives the namespace an ordinary, non-loopback interface
//! (10.99.0.1 on a veth pair whose both ends stay in the namespace; a `dummy` link would do
//! too, but that driver is not in every kernel — this machine's lacks it). Chromium then gathers on 10.99.0.1 exactly as on a LAN with no
//! special network flag, the relayed addresses are 10.99.0.1:40000-40199, and rendez is
//! told to allow peers in 10.99.0.0/24 only — the documented way an operator opens a private
//! range — while loopback stays refused. Only the page itself comes from 127.0.0.1, because
//! that is a secure context where `getUserMedia` works; no media touches loopback except
//! the kernel's own local delivery of packets addressed to 10.99.0.1.
//!
//! The namespace also means fixed ports (3478, 5349) cannot collide with anything on the
//! host, and nothing the browser tries can leave the machine: the namespace has no routes
//! but loopback and 10.99.0.0/24.
//!
//! # Nothing changes while Chromium runs
//!
//! Chromium watches the links and addresses of its network namespace over netlink, and any
//! change there (an address that appears, goes or changes its flags, a link that goes up or
//! down) counts as a network change: it aborts connections still being set up with
//! `net::ERR_NETWORK_CHANGED` (tried: an address added during a page's TLS handshake fails the
//! load so every time). A veth's IPv6 link-local address is such a change: the kernel adds it,
//! tentative, when the link comes up, and announces it only when duplicate address detection
//! ends 1-2 s later — just when Chromium has started and loads its first page (in a run where
//! that load failed with ERR_NETWORK_CHANGED, the announcement came 0.7 s after Chromium
//! started, and rendez logged the page's TLS handshake aborted 23 ms after it). So the veths
//! get no kernel-made addresses (`addrgenmode none`; the test uses IPv4 only), the test waits
//! until every link is up with its carrier and operstate UP (which the kernel may report a
//! second late) and no address is tentative, and only then starts rendez and the browser. From
//! then on `ip monitor link address` watches the namespace (`netlink.log`), and any event fails
//! the test with the event named. Changes elsewhere cannot reach Chromium: it listens only to
//! its own namespace (tried: a veth pair and addresses added and deleted in the host's
//! namespace during a page load change nothing), and no other test touches this one's.
//!
//! The name `turn.rendez.test` is mapped with `--host-resolver-rules`. WebRTC resolves the
//! TURN host as a fully qualified name with a trailing dot (`turn.rendez.test.`, as
//! Chromium's log shows when it fails), which a rule for `turn.rendez.test` does not match,
//! so both spellings are mapped.
//!
//! # Trusting the certificate
//!
//! Chromium opens `turns:` connections through its own network stack, with its usual
//! certificate verifier: it checks the chain and the name, and on Linux it honours trust
//! anchors that the user added to the NSS database in `$HOME/.pki/nssdb`. The test gives
//! Chromium a fresh `HOME` whose NSS database (made with `certutil` from `libnss3-tools`)
//! trusts only our test CA for TLS servers (`-t C,,`), and rendez serves a leaf signed by
//! that CA. Verification stays fully on — chain, validity, name `turn.rendez.test` —
//! unlike `--ignore-certificate-errors-spki-list`, which would tell Chromium to skip it.
//! Without the CA in that database the same call fails with ERR_CERT_AUTHORITY_INVALID,
//! which `browser_relay_tls_refuses_untrusted_certificate` checks. Nothing outside the
//! test's own directory is touched (Chromium's `HOME` is that directory's `home/`, for the
//! UDP and TCP tests too).
//!
//! # The call page
//!
//! `browser_call_three_relayed`, `browser_call_three_default_policy` and `browser_room_full`
//! test what people use: the page that rendez itself serves (`web/`), its WebSocket
//! signaling and the TURN credentials in its welcome. rendez gets the test certificate in
//! `[tls]`, so it serves the page over HTTPS at `https://turn.rendez.test:8443/` (a secure
//! origin, needed for the camera; the name is mapped to 10.99.0.1 like the TURN host, and
//! the test CA is trusted as above), with `[signal] room-size = 3`. The welcome then lists
//! `stun:`, `turn:` (UDP, TCP) and `turns:` URLs at `turn.rendez.test`, each with a
//! credential minted for that connection. `tests/browser/call_page.mjs` opens one Chromium
//! with one tab per participant (three tabs in one browser cost far less than three
//! browsers on two cores), each at `?room=…&name=…`, in turn, presses Join as a person would,
//! and reports what `window.rendez.state()` and the page show; the Rust test asserts:
//!
//! - `browser_call_three_relayed` (`&relay=1`, so the page sets `iceTransportPolicy:
//!   "relay"`): every tab shows the two others connected, relayed, with decoded video, and
//!   the server log shows that rendez made the allocations (at least one per peer
//!   connection, six). The screenshot of the first tab's grid is saved as
//!   `target/browser-artifacts/call-grid.png`.
//! - `browser_call_three_default_policy`: the same without `&relay=1`; inside the namespace
//!   the pages may well connect directly, so only "connected with decoded video" is asserted.
//! - `browser_room_full`: with three in the room, a fourth tab shows the room-full message
//!   (`<body data-error="room-full">`) and the three others still see only each other.
//! - `browser_link_only_prefills_the_form`: a link cannot join for the visitor. A tab opened
//!   at `?room=…&name=…&autojoin=1` (with `getUserMedia` and `WebSocket` counted from before
//!   the page's own script runs) still shows the join form, filled in, two seconds later,
//!   has not joined, and has asked for neither camera nor socket; pressing Join then joins
//!   (and the counts show both calls, so the counting is not blind).
//!
//! # A meeting
//!
//! `browser_meeting_six` and `browser_meeting_tools` test what people use in a meeting
//! (issue 14), with `tests/browser/meeting.mjs`: rendez as for the call page, plus
//! `[signal] upstream-kbps = 600`, a budget small enough that the caps, not the fake camera,
//! limit the bitrate; the fake camera runs at 10 frames a second so that six tabs fit two
//! cores. meeting.mjs records every page's peer connections and sockets from before the
//! page's script runs, so bitrates, frames and encodings come from the browser itself.
//!
//! - `browser_meeting_six`: six tabs join one room, muted, and all fifteen links come up;
//!   over 5 s after the re-balance, every tab's video sent to its five peers (getStats
//!   `outbound-rtp`, each connection's rate over its own stats window, summed) stays within
//!   the 600 kbit/s budget, each video sender is capped at a fifth of it, every tab decodes
//!   frames from every peer meanwhile, and no tab sends any audio. Then five
//!   send a chat message while the first keeps its panel collapsed (it must have all five
//!   in its document, and "5 unread"), the first types one and presses Enter, and every tab
//!   shows all six, with names and times, markup kept as text; a 5000-byte message is
//!   refused beside the form and reaches no one. Screenshot of the first tab, chat open:
//!   `target/browser-artifacts/meeting-six-chat.png`. Last, one leaves, and within 5 s every
//!   other sender caps each video at a quarter of the budget (four peers now).
//! - `browser_meeting_tools`: the pre-join view after "Check camera and microphone"
//!   (preview playing, the meter moving, devices listed; `meeting-prejoin.png`); the second
//!   person joins with the microphone off, sends no audio (the other receives no packet in
//!   2 s), and is told "you are muted" when the fake
//!   microphone beeps; a screen share (Chromium's fake screen) shows at the other as a
//!   large pinned tile and goes when stopped; the speaking participant's tile is outlined,
//!   a tile is pinned and unpinned from the keyboard alone (Enter on its focused Pin button,
//!   `aria-pressed` follows) and shown full screen, and the invite link names the room and
//!   no one's name; a camera switch replaces the sent track on the
//!   same peer connection while frames keep arriving; closing the page's signaling socket
//!   makes it reconnect and rejoin under a new id, and the call comes back; last, the second
//!   tab at 390 × 844 has nothing wider than the screen (`meeting-phone.png`).
//!
//! # Behind a 443-only firewall
//!
//! `browser_call_over_443_only` is the call of a person whose network lets out only TCP 443
//! (issue 12). rendez serves the page, its signaling and TURN over TLS on one shared port,
//! 10.99.0.1:443 (the same address in `tls-listen` and `[signal] listen`), with a test
//! certificate for `meet.rendez.test`, plus TURN on UDP and TCP 3478 as usual. The browsers
//! get a network namespace of their own: the veth pair now joins two namespaces, rendez's
//! end keeps 10.99.0.1 and the browsers' end gets 10.99.0.2 (sharing one namespace, the
//! browsers would reach rendez over `lo`, where a firewall rule means nothing). In
//! rendez's namespace, an nftables ruleset ([`FIREWALL`], loaded with `nft -f`) accepts
//! from the browsers' link only TCP to port 443 and silently drops everything else, as a
//! firewall on the way would. Each relayed candidate is a rendez relay address, and the
//! path between two of them stays inside rendez's namespace, so only browser↔server
//! traffic crosses the firewall, all of it TLS on 443.
//!
//! Before any browser starts, `tests/browser/firewall_probe.mjs` shows that the firewall
//! bites, and only there: from rendez's namespace a STUN Binding over UDP 3478 is answered
//! and TCP 3478 and 443 accept; from the browsers' namespace only TCP 443 does (so the test
//! fails without the firewall). Then two tabs open `https://meet.rendez.test/` (the name
//! mapped to 10.99.0.1 like the others), join one room with `&relay=1`, and the test asserts
//! what the three-way call asserts, for two, plus: each page's selected pair has a local
//! candidate relayed over TLS (`relayProtocol` "tls", as the page's `rendez.state()`
//! reports it), and every allocation in rendez's log came over TLS. The page's welcome
//! offers `turn:` on UDP and TCP 3478 too, so the browser tries them and they fail at the
//! firewall. The page has no data channel, so relay_call.mjs then runs behind the same
//! firewall with `turns:meet.rendez.test:443?transport=tcp` as its only ICE server and
//! sends a message each way and video one way, checked as in `browser_relay_tls`.
//!
//! # Rooms across nodes
//!
//! `browser_call_across_nodes` and `browser_drain_rejoins_elsewhere` run a fleet (issue 13):
//! a real `redis-server` and two rendez nodes with the same `[auth] secrets`, certificate and
//! `[cluster] redis`, each with TURN ports, a relay range and a page port of its own. Nodes
//! of a fleet are separate hosts, and that matters here: rendez lets a client reach its own
//! host's addresses only at its own relay ports, so with both nodes on one address each would
//! refuse the other's relayed addresses as peers (tried: the call stays "connecting" and no
//! packet reaches a peer). So [`Layout::Fleet`] links two namespaces by the veth pair, as the
//! 443-only layout does but without a firewall: node A (`node-a.rendez.test`) is on 10.99.0.1
//! in rendez's namespace; node B (`node-b.rendez.test`), Redis, the browsers and the
//! balancer below are on 10.99.0.2 in the other. Each node's `[signal] turn-urls` names its
//! own TURN servers, so a page gets its node's TURN whichever name it came through.
//! call_page.mjs (with `reportCandidates`) records, from before the page's own script runs,
//! every RTCPeerConnection the page makes and every signaling socket, and reports each open
//! connection's selected candidate pair as `getStats()` gives it.
//!
//! - `browser_call_across_nodes`: Alice opens node A's page, Bob node B's, both with
//!   `&relay=1`, and they join one room. Asserted as in the three-way call (connected, relayed,
//!   decoded video both ways), plus: Alice's selected pair relays locally through node A
//!   (10.99.0.1, in A's relay range) and remotely through node B, Bob's the other way round,
//!   and each node logged allocations only in its own range.
//! - `browser_drain_rejoins_elsewhere`: Alice opens `https://meet.rendez.test:8443/`, a
//!   [`Balancer`] in the test: an L4 load balancer stand-in that sends each new TCP
//!   connection, bytes untouched (TLS goes through to the node), to the first node whose
//!   `/healthz` answers 200 (over HTTPS, trusting the test CA) — node A while it is healthy.
//!   Bob opens node B's page. Once the call is up (relayed A ⇄ B), call_page.mjs prints
//!   `{"event": "call-up"}`, and the test drains node A with SIGTERM: its `/healthz` turns 503
//!   and Alice's page gets `{"type": "reconnect"}`, reconnects to the same URL a second later
//!   (web/app.js), and the balancer sends that connection to node B. Asserted: Alice's page
//!   was told to reconnect and opened a second socket; she is back in the call under a new
//!   id, connected to Bob relayed with decoded video both ways; before the drain her
//!   pair relayed through A, after it both pages relay through B (the TURN servers of B's
//!   welcome); the balancer sent every connection before the drain to A and every one after
//!   it to B. Node A exits once its last allocation ends (or at its `drain-timeout`); the
//!   test does not wait for that.
//!
//! # Skipping
//!
//! Without `/usr/bin/chromium`, `node`, `certutil` (TLS only), `nft` (nftables; the 443-only
//! test only), `redis-server` (the fleet tests only), playwright-core (the test
//! runs `npm ci` in `tests/browser` when `node_modules` is missing) or the right to create
//! a network namespace (root), a test prints `skipped: <reason>` and passes — unless
//! `RENDEZ_REQUIRE_BROWSER=1`, as in CI, where it fails instead.
//!
//! Every wait is bounded; a `Drop` guard kills what the test started (by pid, including any
//! process still inside the namespace) and deletes the namespace even when an assertion
//! fails. The tests run one at a time (a mutex): several Chromiums at once on a two-core
//! machine would only make each of them slower. On failure the test's directory under
//! `target/tmp/` (rendez.toml, server log at debug level, Chromium log, node output) is
//! kept and its path printed; `RENDEZ_BROWSER_KEEP=1` keeps it on success too. The UDP test
//! saves a screenshot of its page to `target/browser-artifacts/udp.png`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

#[test]
fn browser_relay_udp() {
    relay_call(Transport::Udp);
}

#[test]
fn browser_relay_tcp() {
    relay_call(Transport::Tcp);
}

#[test]
fn browser_relay_tls() {
    relay_call(Transport::Tls);
}

/// The premise of `browser_relay_tls`: Chromium does verify a `turns:` server's certificate,
/// so trusting the test CA is what makes it pass, not a lax browser. Same server and
/// certificate, but the CA is left out of the NSS database: Chromium must refuse the TLS
/// connection and gather no relay candidate.
#[test]
fn browser_relay_tls_refuses_untrusted_certificate() {
    let test = "browser_relay_tls_refuses_untrusted_certificate";
    let Some((mut lab, result)) = call(test, Transport::Tls, Trust::Nothing) else {
        return;
    };
    lab.check_refused(&result);
    println!(
        "{test}: Chromium refused the untrusted certificate ({}) in {:.1} s",
        result["errors"],
        lab.started.elapsed().as_secs_f64()
    );
}

/// Three people on the served page, every stream through rendez's relay.
#[test]
fn browser_call_three_relayed() {
    three_way_call("browser_call_three_relayed", IcePolicy::Relay);
}

/// Three people on the served page with the browser's default ICE policy.
#[test]
fn browser_call_three_default_policy() {
    three_way_call("browser_call_three_default_policy", IcePolicy::All);
}

/// A link names the room and the person but never joins for them: no camera, no socket,
/// until Join is pressed.
#[test]
fn browser_link_only_prefills_the_form() {
    let test = "browser_link_only_prefills_the_form";
    let Some(mut lab) = open_lab(test, true, Layout::Together) else {
        return;
    };
    let result = lab.run_call_page(CallScenario::LinkOnly, IcePolicy::All, None);
    lab.check_link_only(&result);
    println!(
        "{test}: without a click: {}; after Join: {} ({:.1} s, node phases, ms: {})",
        result["before"]["calls"],
        result["after"]["calls"],
        lab.started.elapsed().as_secs_f64(),
        result["phases"],
    );
}

/// A fourth person is turned away from a room of three, and told so.
#[test]
fn browser_room_full() {
    let test = "browser_room_full";
    let Some(mut lab) = open_lab(test, true, Layout::Together) else {
        return;
    };
    let result = lab.run_call_page(CallScenario::RoomFull, IcePolicy::All, None);
    lab.check_room_full(&result);
    println!(
        "{test}: {EXTRA} was shown \"{}\" in {:.1} s (node phases, ms: {})",
        result["pages"][PARTICIPANTS.len()]["message"]["text"]
            .as_str()
            .unwrap_or_default(),
        lab.started.elapsed().as_secs_f64(),
        result["phases"],
    );
}

/// Two people whose network lets out only TCP 443 still get a call on the page at
/// `https://meet.rendez.test/`, relayed through `turns:` on the same port 443.
#[test]
fn browser_call_over_443_only() {
    let test = "browser_call_over_443_only";
    let Some(mut lab) = open_lab(test, true, Layout::Firewalled) else {
        return;
    };
    let secret = lab.serve_call_page(CALLERS.len());
    lab.check_firewall();
    let result = lab.join_call_page(CallScenario::Call, IcePolicy::Relay, None, &CALLERS);
    lab.check_call(&result, IcePolicy::Relay, &CALLERS);
    lab.check_relayed_over(&result, "tls");
    let allocations = lab.allocations();
    lab.check_allocations(&allocations, CALLERS.len());
    lab.check_allocations_over(&allocations, "tls");

    // The page carries video and sound but no data channel: relay_call.mjs adds one, each
    // way, between two bare peer connections behind the same firewall, relayed through the
    // same `turns:` URL as the page's.
    let url = format!("turns:{MEET_HOST}:{SHARED_PORT}?transport=tcp");
    let probe = json!({"transport": "tcp", "host": LAB_IP.to_string(), "port": SHARED_PORT});
    let data = lab.run_relay_call(&secret, &url, probe, "profile-data", None);
    lab.check(&data, &url, "tls");
    lab.check_allocations_over(&lab.allocations(), "tls");
    let frames: Vec<String> = result["pages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|page| page["state"]["peers"].as_array().into_iter().flatten())
        .map(|peer| {
            format!(
                "{} frames, {} bytes",
                peer["framesDecoded"], peer["bytesReceived"]
            )
        })
        .collect();
    println!(
        "{test}: {} pages at {} connected relayed over TLS on port {SHARED_PORT} ({}); \
         data channel both ways and {} frames decoded through {url}; {} TURN allocations, \
         all over TLS; the firewall dropped {} packets from the browsers; {:.1} s (node \
         phases, ms: page call {}, data call {})",
        CALLERS.len(),
        lab.page_url(),
        frames.join("; "),
        data["video"]["framesDecoded"],
        lab.allocations().len(),
        lab.firewall_drops(),
        lab.started.elapsed().as_secs_f64(),
        result["phases"],
        data["phases"],
    );
}

/// The namespace's own address: TURN server, relay addresses and the browser's network.
const LAB_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const LAB_PREFIX: u8 = 24;
const LAB_NET: &str = "10.99.0.0/24";
/// The veth pair in the namespace: LAB_IP is on the first end, the second has no address.
const VETH: [&str; 2] = ["rz0", "rz1"];
/// The name in the TURN URLs and in the certificate.
const TURN_HOST: &str = "turn.rendez.test";
/// [`Layout::Firewalled`]: the browsers' own address, on the second veth end in their
/// namespace, and the name rendez serves everything under on port 443.
const BROWSERS_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const MEET_HOST: &str = "meet.rendez.test";
const SHARED_PORT: u16 = 443;
const TURN_PORT: u16 = 3478;
const TURNS_PORT: u16 = 5349;
const RELAY_PORTS: (u16, u16) = (40000, 40199);
const CHROMIUM: &str = "/usr/bin/chromium";
const REQUIRE_ENV: &str = "RENDEZ_REQUIRE_BROWSER";
/// Set to keep each test's directory (logs, certificates, profile) even on success.
const KEEP_ENV: &str = "RENDEZ_BROWSER_KEEP";

/// Budget of relay_call.mjs (server readiness, browser start, call, stats, screenshot).
const CALL_BUDGET: Duration = Duration::from_secs(45);
/// Hard limit for the relay_call.mjs process; past it the test kills it and fails.
const NODE_LIMIT: Duration = Duration::from_secs(60);

/// Where rendez serves the call page (HTTPS, with the test certificate).
const PAGE_PORT: u16 = 8443;
const ROOM: &str = "standup";
/// The call page's participants, in joining order; as many as `room-size`.
const PARTICIPANTS: [&str; 3] = ["alice", "bob", "carol"];
/// The two people of `browser_call_over_443_only`.
const CALLERS: [&str; 2] = ["alice", "bob"];
/// Who finds the room full.
const EXTRA: &str = "dave";
/// Budget of call_page.mjs: three tabs joining, three connections, decoded video.
const CALL_PAGE_BUDGET: Duration = Duration::from_secs(60);
/// Hard limit for the call_page.mjs process.
const CALL_PAGE_NODE_LIMIT: Duration = Duration::from_secs(75);
/// Limit for firewall_probe.mjs: up to 15 s for the server to accept on 443, then
/// [`PROBE_TIMEOUT`] for the probes, which run at once.
const PROBE_LIMIT: Duration = Duration::from_secs(30);
/// How long one probe through the firewall waits for an answer. From rendez's own namespace
/// one comes within milliseconds; through the firewall, none may come at all.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// [`Layout::Firewalled`]: the firewall that lets the browsers reach rendez on TCP 443 and
/// nothing else. It filters what arrives in rendez's namespace over the veth from the
/// browsers' namespace (VETH[0], "rz0"), so a dropped packet vanishes without a word, as at
/// a real firewall between an office network and the internet: the browser learns nothing
/// and waits out its own timeouts (an `output` rule in the browsers' namespace would instead
/// fail their sends at once with EPERM, an easier case). Everything rendez sends back rides
/// on the browsers' own TCP connections to 443; loopback, and with it the path between two
/// relayed addresses, stays inside rendez's namespace.
const FIREWALL: &str = "\
table inet rendez_443_only {
    chain from_browsers {
        type filter hook input priority filter; policy accept;
        iifname \"rz0\" tcp dport 443 accept
        iifname \"rz0\" counter drop
    }
}
";
/// Limit for small helper commands (`ip`, `certutil`, `node --version`).
const COMMAND_LIMIT: Duration = Duration::from_secs(15);
/// Limit for the namespace to reach its final state once configured (see [`Lab::create`]);
/// it takes milliseconds, or up to a second when the kernel delays a carrier event.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// In each test's directory: what `ip monitor link address` saw in the namespace after it
/// settled. Must stay empty: see [`Lab::watch_namespace`].
const NETLINK_LOG: &str = "netlink.log";
/// Limit for `npm ci` when node_modules is missing.
const NPM_LIMIT: Duration = Duration::from_secs(300);

/// One browser at a time; see the module docs.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    fn url(self) -> String {
        match self {
            Transport::Udp => format!("turn:{TURN_HOST}:{TURN_PORT}?transport=udp"),
            Transport::Tcp => format!("turn:{TURN_HOST}:{TURN_PORT}?transport=tcp"),
            Transport::Tls => format!("turns:{TURN_HOST}:{TURNS_PORT}?transport=tcp"),
        }
    }

    /// What Chromium reports as the local relay candidate's `relayProtocol`: the transport
    /// between browser and TURN server, proof that this transport carried the call.
    fn relay_protocol(self) -> &'static str {
        self.name()
    }

    /// Where the node script checks that the server is up before starting the browser.
    fn probe(self) -> Value {
        match self {
            Transport::Udp => {
                json!({"transport": "udp", "host": LAB_IP.to_string(), "port": TURN_PORT})
            }
            Transport::Tcp => {
                json!({"transport": "tcp", "host": LAB_IP.to_string(), "port": TURN_PORT})
            }
            Transport::Tls => {
                json!({"transport": "tcp", "host": LAB_IP.to_string(), "port": TURNS_PORT})
            }
        }
    }
}

/// Where the browsers run, relative to rendez.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// rendez and the browsers in one namespace, rendez's TURN over TLS on TURNS_PORT and
    /// its page on PAGE_PORT, all named TURN_HOST.
    Together,
    /// The browsers in a namespace of their own (BROWSERS_IP), linked to rendez's by the
    /// veth pair, behind a firewall that lets only TCP 443 reach rendez; page, signaling and
    /// TURN over TLS share port 443 as MEET_HOST. See "Behind a 443-only firewall".
    Firewalled,
    /// Two hosts of a fleet, as [`Layout::Firewalled`] but without the firewall: node A in
    /// rendez's namespace (LAB_IP), node B, Redis, the balancer and the browsers in the
    /// other (BROWSERS_IP). See "Rooms across nodes".
    Fleet,
}

impl Layout {
    /// The server's name: in its certificate, the page's URL and the TURN URLs. In a fleet:
    /// the balancer's.
    fn host(self) -> &'static str {
        match self {
            Layout::Together => TURN_HOST,
            Layout::Firewalled | Layout::Fleet => MEET_HOST,
        }
    }

    /// Every name the browsers resolve, with its address; all of them are in the
    /// certificate.
    fn hosts(self) -> Vec<(&'static str, Ipv4Addr)> {
        match self {
            Layout::Together | Layout::Firewalled => vec![(self.host(), LAB_IP)],
            Layout::Fleet => FLEET
                .iter()
                .map(|node| (node.host, node.ip))
                .chain([(MEET_HOST, BALANCER_IP)])
                .collect(),
        }
    }

    fn page_port(self) -> u16 {
        match self {
            Layout::Together => PAGE_PORT,
            Layout::Firewalled => SHARED_PORT,
            Layout::Fleet => BALANCER_PORT,
        }
    }

    fn turns_port(self) -> u16 {
        match self {
            Layout::Together | Layout::Fleet => TURNS_PORT,
            Layout::Firewalled => SHARED_PORT,
        }
    }

    /// The address the browsers' packets come from.
    fn browser_ip(self) -> Ipv4Addr {
        match self {
            Layout::Together => LAB_IP,
            Layout::Firewalled | Layout::Fleet => BROWSERS_IP,
        }
    }
}

/// Whether the test CA goes into Chromium's NSS database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trust {
    TestCa,
    Nothing,
}

/// A call that must succeed, with every assertion of the module docs.
fn relay_call(transport: Transport) {
    let test = format!("browser_relay_{}", transport.name());
    let Some((mut lab, result)) = call(&test, transport, Trust::TestCa) else {
        return;
    };
    lab.check(&result, &transport.url(), transport.relay_protocol());
    println!(
        "{test}: relay-relay over {} with {} frames decoded in {:.1} s (node phases, ms: {})",
        transport.relay_protocol(),
        result["video"]["framesDecoded"],
        lab.started.elapsed().as_secs_f64(),
        result["phases"],
    );
    if let Some(path) = result["screenshot"].as_str() {
        println!("{test}: screenshot {path}");
    }
}

/// Sets up the lab, runs the call and returns its result with the lab (still alive, so
/// its processes and namespace go away only after the caller's assertions). `None` when
/// the test was skipped.
fn call(test: &str, transport: Transport, trust: Trust) -> Option<(Lab, Value)> {
    let mut lab = open_lab(test, transport == Transport::Tls, Layout::Together)?;
    let secret = fresh_secret();
    let tls_files = (transport == Transport::Tls).then(|| lab.make_certificates(trust));
    let config = lab.write_config(&secret, tls_files.as_ref(), None);
    lab.start_server(&config);

    let screenshot = (transport == Transport::Udp).then(|| artifacts_dir().join("udp.png"));
    let mut result = lab.run_relay_call(
        &secret,
        &transport.url(),
        transport.probe(),
        "profile",
        screenshot.as_deref(),
    );
    if let (Some(path), true) = (&screenshot, result["ok"] == true) {
        result["screenshot"] = json!(path);
    }
    Some((lab, result))
}

/// Takes the one-browser-at-a-time lock, checks the prerequisites and makes the namespaces
/// of `layout`; `None` (after saying why) when the test is skipped. `tls`: the test needs
/// `certutil`.
fn open_lab(test: &str, tls: bool, layout: Layout) -> Option<Lab> {
    let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(reason) = prerequisites(tls, layout) {
        skip(test, &reason);
        return None;
    }
    match Lab::create(test, serial, layout) {
        Ok(lab) => Some(lab),
        Err(reason) => {
            skip(test, &reason);
            None
        }
    }
}

/// A TURN REST secret that no other run shares.
fn fresh_secret() -> String {
    format!(
        "browser-test-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    )
}

/// Chromium's command line (the node script adds only playwright's own switches); `hosts`
/// are the servers' names, each resolved to its address.
fn chromium_args(dir: &Path, hosts: &[(&str, Ipv4Addr)]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        // No internet here: without these, background services flood connection attempts.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        // A synthetic camera (green frame, moving pacman, timer) and no permission prompt.
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
    ]
    .map(String::from)
    .to_vec();
    // WebRTC asks for "turn.rendez.test." (trailing dot); map both spellings.
    let rules: Vec<String> = hosts
        .iter()
        .map(|(host, ip)| format!("MAP {host} {ip}, MAP {host}. {ip}"))
        .collect();
    args.push(format!("--host-resolver-rules={}", rules.join(", ")));
    args.push("--enable-logging".into());
    args.push(format!("--log-file={}", dir.join("chromium.log").display()));
    args.push("--v=0".into());
    args
}

// ---------------------------------------------------------------------------------------
// The call page

/// Which candidates the pages may use: `&relay=1` on their URL, or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IcePolicy {
    Relay,
    All,
}

/// What call_page.mjs does once the participants have joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallScenario {
    /// Waits until every tab shows the others connected with decoded video.
    Call,
    /// Opens one more tab, which must be turned away.
    RoomFull,
    /// Opens one tab from a link with `autojoin=1`, which must not join until Join is
    /// pressed.
    LinkOnly,
    /// As `Call`, then prints `{"event": "call-up"}` and waits until the first participant
    /// is back in the call under a new id (see `browser_drain_rejoins_elsewhere`).
    Rejoin,
}

/// The three-way call of `browser_call_three_relayed` and `browser_call_three_default_policy`.
fn three_way_call(test: &str, policy: IcePolicy) {
    let Some(mut lab) = open_lab(test, true, Layout::Together) else {
        return;
    };
    let screenshot = (policy == IcePolicy::Relay).then(|| artifacts_dir().join("call-grid.png"));
    let result = lab.run_call_page(CallScenario::Call, policy, screenshot.as_deref());
    lab.check_call(&result, policy, &PARTICIPANTS);
    let allocations = lab.allocations();
    if policy == IcePolicy::Relay {
        lab.check_allocations(&allocations, PARTICIPANTS.len());
    }
    let links: Vec<String> = result["pages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|page| page["state"]["peers"].as_array().into_iter().flatten())
        .map(|peer| {
            let link = if peer["relayed"] == true {
                "relayed"
            } else {
                "direct"
            };
            format!("{link} {}", peer["framesDecoded"])
        })
        .collect();
    println!(
        "{test}: 3 pages, each connected to 2 peers (link and frames decoded: {}); \
         {} TURN allocations; {:.1} s (node phases, ms: {})",
        links.join(", "),
        allocations.len(),
        lab.started.elapsed().as_secs_f64(),
        result["phases"],
    );
    if let Some(path) = screenshot {
        println!("{test}: screenshot {}", path.display());
    }
}

impl Lab {
    /// Starts rendez with the call page on HTTPS (`room-size` = the participants) and runs
    /// call_page.mjs for [`PARTICIPANTS`]; returns its JSON result.
    fn run_call_page(
        &mut self,
        scenario: CallScenario,
        policy: IcePolicy,
        screenshot: Option<&Path>,
    ) -> Value {
        self.serve_call_page(PARTICIPANTS.len());
        self.join_call_page(scenario, policy, screenshot, &PARTICIPANTS)
    }

    /// Runs relay_call.mjs against the running server: two bare peer connections relayed
    /// through the TURN server at `url` alone (which answers at `probe` once up), with a
    /// credential minted from `secret`, Chromium's profile in `profile` (a fresh directory
    /// under the test's), and a screenshot of the page if asked; returns its JSON result.
    fn run_relay_call(
        &mut self,
        secret: &str,
        url: &str,
        probe: Value,
        profile: &str,
        screenshot: Option<&Path>,
    ) -> Value {
        let credential = rendez::credential::mint(
            secret,
            "browser",
            SystemTime::now() + Duration::from_secs(3600),
        );
        let args = json!({
            "iceServer": rendez::credential::ice_server_json(&[url.to_string()], &credential),
            "probe": probe,
            "chromium": CHROMIUM,
            "chromiumArgs": chromium_args(&self.dir, &self.layout.hosts()),
            "userDataDir": self.dir.join(profile),
            "home": self.dir.join("home"),
            "screenshot": screenshot,
            "timeoutMs": CALL_BUDGET.as_millis() as u64,
        });
        self.run_node("relay_call.mjs", &args, NODE_LIMIT)
    }

    /// Starts rendez with the test certificate, serving the call page on HTTPS with rooms
    /// of `room_size`; returns its TURN REST secret.
    fn serve_call_page(&mut self, room_size: usize) -> String {
        let tls = self.make_certificates(Trust::TestCa);
        let secret = fresh_secret();
        let config = self.write_config(&secret, Some(&tls), Some(room_size));
        self.start_server(&config);
        secret
    }

    /// Where the browsers open the call page: `https://HOST/`, with the port unless 443.
    fn page_url(&self) -> String {
        let host = self.layout.host();
        match self.layout.page_port() {
            443 => format!("https://{host}/"),
            port => format!("https://{host}:{port}/"),
        }
    }

    /// Runs call_page.mjs against the running server; returns its JSON result.
    fn join_call_page(
        &mut self,
        scenario: CallScenario,
        policy: IcePolicy,
        screenshot: Option<&Path>,
        participants: &[&str],
    ) -> Value {
        if let Some(path) = screenshot {
            // A stale picture must not pass for this run's.
            let _ = fs::remove_file(path);
        }
        let args = self.call_page_args(scenario, policy, screenshot, participants);
        self.run_node("call_page.mjs", &args, CALL_PAGE_NODE_LIMIT)
    }

    /// call_page.mjs's arguments for the lab's one server.
    fn call_page_args(
        &self,
        scenario: CallScenario,
        policy: IcePolicy,
        screenshot: Option<&Path>,
        participants: &[&str],
    ) -> Value {
        json!({
            "scenario": match scenario {
                CallScenario::Call => "call",
                CallScenario::RoomFull => "room-full",
                CallScenario::LinkOnly => "link-only",
                CallScenario::Rejoin => "rejoin",
            },
            "pageUrl": self.page_url(),
            "probe": {"host": LAB_IP.to_string(), "port": self.layout.page_port()},
            "room": ROOM,
            "participants": participants,
            "extra": EXTRA,
            "relay": policy == IcePolicy::Relay,
            "chromium": CHROMIUM,
            "chromiumArgs": chromium_args(&self.dir, &self.layout.hosts()),
            "userDataDir": self.dir.join("profile"),
            "home": self.dir.join("home"),
            "viewport": {"width": 1000, "height": 700},
            "screenshot": screenshot,
            "timeoutMs": CALL_PAGE_BUDGET.as_millis() as u64,
        })
    }

    /// Every tab shows all the others, by name and id, connected with decoded video (over
    /// the relay with [`IcePolicy::Relay`]), in its state and on screen.
    fn check_call(&mut self, r: &Value, policy: IcePolicy, participants: &[&str]) {
        if r["ok"] != true {
            self.fail(&format!(
                "the {}-way call did not come up: {}",
                participants.len(),
                r["error"]
            ));
        }
        let pages = self.pages(r, participants);
        let ids = self.ids_by_name(&pages);
        for (page, &name) in pages.iter().zip(participants) {
            let state = &page["state"];
            let peers = state["peers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let mut seen: Vec<(&str, &str)> = peers
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or(""),
                        p["id"].as_str().unwrap_or(""),
                    )
                })
                .collect();
            seen.sort_unstable();
            let mut expected: Vec<(&str, &str)> = participants
                .iter()
                .filter(|&&other| other != name)
                .map(|&other| (other, ids[other]))
                .collect();
            expected.sort_unstable();
            if seen != expected {
                self.fail(&format!(
                    "{name} sees peers {seen:?}, expected the others {expected:?}"
                ));
            }
            if !state["error"].is_null() || !page["bodyError"].is_null() {
                self.fail(&format!(
                    "{name}'s page shows an error: {} / {}",
                    state["error"], page["message"]
                ));
            }
            for peer in peers {
                let what = format!("{name} → {}", peer["name"]);
                if peer["connectionState"] != "connected" {
                    self.fail(&format!(
                        "{what}: connectionState {}",
                        peer["connectionState"]
                    ));
                }
                if peer["framesDecoded"].as_u64().unwrap_or(0) == 0
                    || peer["bytesReceived"].as_u64().unwrap_or(0) == 0
                {
                    self.fail(&format!(
                        "{what}: no decoded video ({} frames, {} bytes)",
                        peer["framesDecoded"], peer["bytesReceived"]
                    ));
                }
                let relayed_ok = match policy {
                    IcePolicy::Relay => peer["relayed"] == true,
                    IcePolicy::All => peer["relayed"].is_boolean(),
                };
                if !relayed_ok {
                    self.fail(&format!("{what}: relayed is {}", peer["relayed"]));
                }
            }
            self.check_tiles(page, name, policy, participants);
        }
    }

    /// On screen: the own tile first, then one tile per other participant, each playing
    /// video, the others captioned "connected · relayed" (or "· direct").
    fn check_tiles(&mut self, page: &Value, name: &str, policy: IcePolicy, participants: &[&str]) {
        let tiles = page["tiles"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let own = format!("{name} (you)");
        let captions: Vec<(&str, &str)> = tiles
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap_or(""),
                    t["link"].as_str().unwrap_or(""),
                )
            })
            .collect();
        let mut names: Vec<&str> = captions.iter().map(|&(n, _)| n).collect();
        names.sort_unstable();
        let mut expected: Vec<&str> = participants
            .iter()
            .copied()
            .filter(|&other| other != name)
            .chain([own.as_str()])
            .collect();
        expected.sort_unstable();
        if tiles.first().is_none_or(|t| t["local"] != true) || names != expected {
            self.fail(&format!(
                "{name}'s grid shows tiles {captions:?}, expected its own first, then the others"
            ));
        }
        for (tile, (tile_name, link)) in tiles.iter().zip(&captions).skip(1) {
            let link_ok = match policy {
                IcePolicy::Relay => *link == "connected · relayed",
                IcePolicy::All => ["connected · relayed", "connected · direct"].contains(link),
            };
            if !link_ok {
                self.fail(&format!("{name}'s tile for {tile_name} says {link:?}"));
            }
            if tile["videoWidth"].as_u64().unwrap_or(0) == 0 {
                self.fail(&format!("{name}'s tile for {tile_name} shows no picture"));
            }
        }
    }

    /// Every tab's every peer connection allocated its own relayed candidate over
    /// `protocol` (Chromium's `relayProtocol` of the selected pair's local candidate).
    fn check_relayed_over(&mut self, r: &Value, protocol: &str) {
        for page in r["pages"].as_array().cloned().unwrap_or_default() {
            for peer in page["state"]["peers"].as_array().into_iter().flatten() {
                if peer["relayProtocol"] != protocol {
                    self.fail(&format!(
                        "{} → {}: the selected pair's local candidate was relayed over {}, \
                         expected {protocol}",
                        page["name"], peer["name"], peer["relayProtocol"]
                    ));
                }
            }
        }
    }

    /// rendez made every allocation for a client that reached it over `transport` (the
    /// log's `transport="tls"`).
    fn check_allocations_over(&mut self, allocations: &[String], transport: &str) {
        let field = format!("transport=\"{transport}\"");
        if let Some(line) = allocations.iter().find(|line| !line.contains(&field)) {
            self.fail(&format!("an allocation not over {transport}: {line}"));
        }
    }

    /// [`Layout::Firewalled`]: the firewall bites, and only where it should. From rendez's
    /// own namespace (no firewall on that path) a STUN Binding over UDP 3478 is answered and
    /// TCP 3478 and 443 accept, which shows that rendez serves them; from the browsers'
    /// namespace only TCP 443 gets through. Without the firewall, this fails.
    fn check_firewall(&mut self) {
        let expectations = [
            ("udp", TURN_PORT, false),
            ("tcp", TURN_PORT, false),
            ("tcp", SHARED_PORT, true),
        ];
        let probes: Vec<Value> = expectations
            .iter()
            .map(|&(transport, port, _)| json!({"transport": transport, "port": port}))
            .collect();
        let args = json!({
            "host": LAB_IP.to_string(),
            "ready": {"port": SHARED_PORT},
            "probes": probes,
            "timeoutMs": PROBE_TIMEOUT.as_millis() as u64,
        });
        for (netns, side) in [
            (self.netns.clone(), "rendez's own namespace"),
            (self.browsers_netns.clone(), "the browsers' namespace"),
        ] {
            let from_browsers = netns == self.browsers_netns;
            let output = run_bounded(
                Command::new("ip")
                    .args(["netns", "exec", &netns, "node"])
                    .arg(node_project().join("firewall_probe.mjs"))
                    .arg(args.to_string())
                    .current_dir(node_project()),
                PROBE_LIMIT,
            )
            .and_then(require_success);
            let report: Value = match output {
                Ok(out) => String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .rev()
                    .find_map(|line| serde_json::from_str(line).ok())
                    .unwrap_or(Value::Null),
                Err(e) => self.fail(&format!("firewall_probe.mjs from {side}: {e}")),
            };
            if report["ok"] != true {
                self.fail(&format!(
                    "firewall_probe.mjs from {side} did not reach rendez on {SHARED_PORT}: {report}"
                ));
            }
            let results = report["results"].as_array().cloned().unwrap_or_default();
            for (&(transport, port, open), result) in expectations.iter().zip(&results) {
                let expected = open || !from_browsers;
                if result["reached"] != expected {
                    self.fail(&format!(
                        "from {side}, {transport} port {port} was {}reachable, expected \
                         {}: {result}",
                        if expected { "un" } else { "" },
                        if expected { "reachable" } else { "blocked" },
                    ));
                }
            }
            if results.len() != expectations.len() {
                self.fail(&format!("firewall_probe.mjs from {side} reported {report}"));
            }
        }
    }

    /// How many packets from the browsers the firewall has dropped so far (its counter).
    fn firewall_drops(&self) -> u64 {
        let listed = run_bounded(
            Command::new("ip").args(["netns", "exec", &self.netns, "nft", "-j", "list", "ruleset"]),
            COMMAND_LIMIT,
        )
        .and_then(require_success)
        .ok()
        .and_then(|out| serde_json::from_slice::<Value>(&out.stdout).ok())
        .unwrap_or(Value::Null);
        let mut total = 0;
        for item in listed["nftables"].as_array().into_iter().flatten() {
            for expr in item["rule"]["expr"].as_array().into_iter().flatten() {
                total += expr["counter"]["packets"].as_u64().unwrap_or(0);
            }
        }
        total
    }

    /// The fourth tab shows the room-full message and never joined; the three members
    /// still see exactly each other.
    fn check_room_full(&mut self, r: &Value) {
        if r["ok"] != true {
            self.fail(&format!(
                "the room-full scenario did not complete: {}",
                r["error"]
            ));
        }
        let everyone: Vec<&str> = PARTICIPANTS.into_iter().chain([EXTRA]).collect();
        let pages = self.pages(r, &everyone);
        let (members, extra) = pages.split_at(PARTICIPANTS.len());
        let extra = &extra[0];
        if extra["bodyError"] != "room-full" || extra["state"]["error"] != "room-full" {
            self.fail(&format!(
                "{EXTRA}: body data-error {}, state error {}, expected room-full",
                extra["bodyError"], extra["state"]["error"]
            ));
        }
        if extra["state"]["joined"] != false || extra["state"]["peers"] != json!([]) {
            self.fail(&format!("{EXTRA} got into the room: {}", extra["state"]));
        }
        let message = &extra["message"];
        if message["hidden"] != false || !message["text"].as_str().unwrap_or("").contains("full") {
            self.fail(&format!(
                "{EXTRA} is not shown the room-full message: {message}"
            ));
        }
        for (page, name) in members.iter().zip(PARTICIPANTS) {
            let mut peers: Vec<&str> = page["state"]["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| p["name"].as_str().unwrap_or(""))
                .collect();
            peers.sort_unstable();
            let mut expected: Vec<&str> = PARTICIPANTS.into_iter().filter(|&o| o != name).collect();
            expected.sort_unstable();
            if page["state"]["joined"] != true || peers != expected {
                self.fail(&format!(
                    "{name} (a member) shows joined {} with peers {peers:?}, expected {expected:?}",
                    page["state"]["joined"]
                ));
            }
        }
    }

    /// The link-only tab showed the filled-in form and had asked for neither camera nor
    /// signaling socket before the click, and joined (asking for both) after it.
    fn check_link_only(&mut self, r: &Value) {
        let before = &r["before"];
        if before.is_null() {
            self.fail(&format!(
                "the link-only scenario did not get as far as the page: {}",
                r["error"]
            ));
        }
        let name = PARTICIPANTS[0];
        if before["state"]["joined"] != false || before["state"]["room"] != Value::Null {
            self.fail(&format!("the link alone joined: {}", before["state"]));
        }
        if before["calls"] != json!({"getUserMedia": 0, "webSocket": 0}) {
            self.fail(&format!(
                "the link alone asked for camera or socket: {}",
                before["calls"]
            ));
        }
        if before["joinViewHidden"] != false || before["callViewHidden"] != true {
            self.fail(&format!(
                "the join form is not what the link shows: {before}"
            ));
        }
        if before["room"] != ROOM || before["name"] != name || before["focused"] != "join" {
            self.fail(&format!(
                "the form is not filled in from the link, Join focused: {before}"
            ));
        }
        if r["ok"] != true {
            self.fail(&format!(
                "the link-only scenario did not complete: {}",
                r["error"]
            ));
        }
        let after = &r["after"];
        let calls = &after["calls"];
        let counted = |key: &str| calls[key].as_u64().unwrap_or(0) >= 1;
        if after["state"]["joined"] != true
            || after["state"]["room"] != ROOM
            || !counted("getUserMedia")
            || !counted("webSocket")
        {
            self.fail(&format!("pressing Join did not join as counted: {after}"));
        }
    }

    /// The `pages` of a call_page.mjs result, which must be one per name of `expected`, in
    /// that order.
    fn pages(&mut self, r: &Value, expected: &[&str]) -> Vec<Value> {
        let pages = r["pages"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = pages
            .iter()
            .map(|p| p["name"].as_str().unwrap_or(""))
            .collect();
        if names != expected {
            self.fail(&format!("pages {names:?}, expected {expected:?}"));
        }
        pages
    }

    /// Each participant's id as its own page reports it (all joined, all different).
    fn ids_by_name<'a>(&mut self, pages: &'a [Value]) -> BTreeMap<&'a str, &'a str> {
        let mut ids = BTreeMap::new();
        for page in pages {
            let name = page["name"].as_str().unwrap_or("");
            let state = &page["state"];
            match state["id"].as_str() {
                Some(id) if state["joined"] == true && state["room"] == ROOM => {
                    ids.insert(name, id);
                }
                _ => self.fail(&format!("{name} has not joined {ROOM}: {state}")),
            }
        }
        let mut distinct: Vec<&str> = ids.values().copied().collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != pages.len() {
            self.fail(&format!("participants share ids: {ids:?}"));
        }
        ids
    }

    /// The server log's "allocation created" lines (one per TURN allocation), without
    /// the terminal colours that the log has even in a file.
    fn allocations(&self) -> Vec<String> {
        self.allocations_in("server.log")
    }

    /// The "allocation created" lines of the daemon log `log`.
    fn allocations_in(&self, log: &str) -> Vec<String> {
        strip_ansi(&self.read(log))
            .lines()
            .filter(|line| line.contains("allocation created"))
            .map(String::from)
            .collect()
    }

    /// With relay-only ICE among `participants` pages, each peer connection (two per pair)
    /// needs at least one allocation of its own: a client on the browsers' address, relayed
    /// on 10.99.0.1 in `relay-ports`. The lines look like `allocation created
    /// client=10.99.0.1:51931 transport="udp" user=… relayed=10.99.0.1:40122
    /// lifetime_s=600`.
    fn check_allocations(&mut self, allocations: &[String], participants: usize) {
        let connections = participants * (participants - 1);
        if allocations.len() < connections {
            self.fail(&format!(
                "rendez logged {} allocations; {connections} relay-only peer connections need \
                 at least one each",
                allocations.len()
            ));
        }
        let ports = RELAY_PORTS.0..=RELAY_PORTS.1;
        let ours = |addr: &SocketAddr| addr.ip() == IpAddr::V4(LAB_IP);
        let browsers = IpAddr::V4(self.layout.browser_ip());
        for line in allocations {
            let clients = logged_addrs(line, "client=");
            let relayed = logged_addrs(line, "relayed=");
            let relayed_here = relayed.iter().any(|a| ours(a) && ports.contains(&a.port()));
            if clients.len() != 1 || clients[0].ip() != browsers || !relayed_here {
                self.fail(&format!(
                    "an allocation that is not a browser's relayed in the namespace \
                     (client {clients:?}, relayed {relayed:?}): {line}"
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A meeting of six

/// The six people of `browser_meeting_six`, in joining order.
const SIX: [&str; 6] = ["alice", "bob", "carol", "dave", "erin", "frank"];
/// `[signal] upstream-kbps` in the meeting tests: small, so that the caps are what limits
/// the bitrate (the fake camera would send far more), and cheap for six tabs on two cores.
const MEETING_UPSTREAM_KBPS: u64 = 600;
/// How soon after a join or leave the page must have re-balanced its video caps (issue 14).
const REBALANCE_LIMIT: Duration = Duration::from_secs(5);
/// How long the outgoing bitrate is measured, once the caps have settled.
const MEASURE: Duration = Duration::from_secs(5);
/// Budget of meeting.mjs, and its hard limit.
/// Six tabs on two cores answer input slowly: a join or a typed message can take 10 s.
const MEETING_BUDGET: Duration = Duration::from_secs(210);
const MEETING_NODE_LIMIT: Duration = Duration::from_secs(230);

/// Six people on the page in one room (the size the page is made for): each one's chat
/// message reaches the five others (the first one's panel collapsed meanwhile, with an
/// unread count), and every sender's outgoing video fits `upstream-kbps` while everyone
/// keeps decoding everyone.
///
/// Everyone joins muted. Six tabs hold 15 peer connections, and with their microphones on
/// the 30 audio encoders, 30 decoders and six audio pipelines took about one of the
/// machine's two cores (per-thread CPU from /proc), which left the two cores saturated:
/// signaling frames waited 10 to 50 s inside the browser, ICE round trips read 5 s, and the
/// test failed most runs. A muted microphone is not encoded at all (the page sets its
/// sender inactive), which this test checks too; audio is tested with two and three people.
#[test]
fn browser_meeting_six() {
    let test = "browser_meeting_six";
    let Some(mut lab) = open_lab(test, true, Layout::Together) else {
        return;
    };
    let screenshot = artifacts_dir().join("meeting-six-chat.png");
    let _ = fs::remove_file(&screenshot);
    // One relay candidate per link (TURN over UDP) instead of three: six tabs keep 15 links,
    // and TCP and TLS allocations for each would double the pages' work on two cores
    // without adding to what this test checks (the relay has tests of its own).
    let turn_udp = format!("turn-urls = [\"turn:{TURN_HOST}:{TURN_PORT}?transport=udp\"]");
    lab.serve_meeting_with(SIX.len(), &[turn_udp]);
    let args = lab.meeting_args("six", &SIX, json!({"six": screenshot}), (960, 640));
    let result = lab.run_node("meeting.mjs", &args, MEETING_NODE_LIMIT);
    if result["ok"] != true {
        lab.fail(&format!(
            "the six-person meeting failed: {}",
            result["error"]
        ));
    }
    lab.check_chat(&result["seen"]);
    let rates = lab.check_bitrates(&result["seen"]["media"]);
    lab.check_rebalance(&result["seen"]["rebalancedMs"]);
    println!(
        "{test}: 6 pages, 15 links up and every chat message at all six; outgoing video, \
         kbit/s (budget {MEETING_UPSTREAM_KBPS}): {}; re-balanced for four peers (ms per \
         page after one left): {}; {:.1} s (node phases, ms: {}); screenshot {}",
        rates.join(", "),
        result["seen"]["rebalancedMs"],
        lab.started.elapsed().as_secs_f64(),
        result["phases"],
        screenshot.display(),
    );
}

/// Two people and the tools around a call: the pre-join preview and meter, joining muted
/// (and the hint when speaking so), screen sharing and its end, a camera switch without a
/// new connection, a dropped signaling socket, and a phone-sized layout.
#[test]
fn browser_meeting_tools() {
    let test = "browser_meeting_tools";
    let Some(mut lab) = open_lab(test, true, Layout::Together) else {
        return;
    };
    let shots = json!({
        "prejoin": artifacts_dir().join("meeting-prejoin.png"),
        "phone": artifacts_dir().join("meeting-phone.png"),
    });
    for path in shots.as_object().into_iter().flat_map(|o| o.values()) {
        let _ = fs::remove_file(path.as_str().unwrap_or_default());
    }
    lab.serve_meeting(CALLERS.len());
    let args = lab.meeting_args("tools", &CALLERS, shots.clone(), (1000, 700));
    let result = lab.run_node("meeting.mjs", &args, MEETING_NODE_LIMIT);
    if result["ok"] != true {
        lab.fail(&format!(
            "the meeting tools scenario failed: {}",
            result["error"]
        ));
    }
    lab.check_tools(&result["seen"]);
    println!(
        "{test}: preview {} px wide, loudest level {}; screen shown and gone; camera \
         {} → {} on the same connection; rejoined as {}; phone layout {} px; {:.1} s \
         (node phases, ms: {}); screenshots {}",
        result["seen"]["preview"]["videoWidth"],
        result["seen"]["preview"]["loudest"],
        result["seen"]["deviceSwitch"]["trackBefore"],
        result["seen"]["deviceSwitch"]["trackAfter"],
        result["seen"]["reconnect"]["idAfter"],
        result["seen"]["phone"]["scrollWidth"],
        lab.started.elapsed().as_secs_f64(),
        result["phases"],
        shots,
    );
}

/// A room that needs an invitation: the token travels in the invite link, a page without
/// one is refused with a clear message, a link whose first ICE candidates were lost comes
/// up through the page's own ICE restart, the chosen speaker plays every incoming tile, a
/// browser that refuses camera and microphone says so and still shows the others, and a page
/// whose server went away says that it cannot be reached.
#[test]
fn browser_meeting_entry() {
    let test = "browser_meeting_entry";
    let Some(mut lab) = open_lab(test, true, Layout::Together) else {
        return;
    };
    let secret = fresh_secret();
    let people = ["alice", "carol", "bob"];
    lab.serve_meeting_with(people.len(), &[format!("token-secret = \"{secret}\"")]);
    let token = lab.mint_token(&secret, ROOM);
    let mut args = lab.meeting_args("entry", &people, json!({}), (1000, 700));
    args["token"] = json!(token);
    // Shorter than the page's 15 s before it restarts a link that is not up.
    args["loseCandidatesMs"] = json!(8000);
    args["deniedUserDataDir"] = json!(lab.dir.join("profile-denied"));
    args["deniedChromiumArgs"] = json!(denying_chromium_args(&lab.dir, &lab.layout.hosts()));
    let result =
        lab.run_node_with_events("meeting.mjs", &args, MEETING_NODE_LIMIT, |lab, event| {
            if event["event"] == "page-loaded" {
                lab.kill_server();
            }
        });
    if result["ok"] != true {
        lab.fail(&format!("the entry scenario failed: {}", result["error"]));
    }
    let seen = &result["seen"];
    let invite = seen["invite"].as_str().unwrap_or_default();
    let carries_token = invite.contains(&format!("token={token}"));
    if !carries_token || invite.contains("name=") || !invite.contains(&format!("room={ROOM}")) {
        lab.fail(&format!(
            "alice's invite link does not carry room and token: {invite}"
        ));
    }
    let refused = &seen["unauthorized"];
    if refused["hidden"] != false
        || !refused["text"]
            .as_str()
            .is_some_and(|t| t.contains("invitation"))
        || seen["malloryJoined"] != false
    {
        lab.fail(&format!(
            "mallory, without a token, was not told so: {refused}"
        ));
    }
    let lost = &seen["lostCandidates"];
    if lost["dropped"].as_u64().unwrap_or(0) == 0 || lost["restarts"].as_u64().unwrap_or(0) == 0 {
        lab.fail(&format!(
            "the link whose candidates were lost did not come up through an ICE restart: {lost}"
        ));
    }
    let unreachable = &seen["unreachable"];
    if unreachable["hidden"] != false
        || !unreachable["text"]
            .as_str()
            .is_some_and(|t| t.contains("Next try in"))
    {
        lab.fail(&format!(
            "dora was not told the server is unreachable: {unreachable}"
        ));
    }
    let denied = &seen["denied"];
    if denied["hidden"] != false
        || !denied["text"]
            .as_str()
            .is_some_and(|t| t.contains("denied"))
    {
        lab.fail(&format!(
            "bob was not told his camera was refused: {denied}"
        ));
    }
    println!(
        "{test}: invite {invite}; without a token: {:?}; candidates lost: {} (link up after \
         {} ICE restart(s)); camera refused: {:?}; still sees {} peer(s); speaker {} of {}; \
         server gone: {:?}; {:.1} s (node phases, ms: {})",
        refused["text"],
        lost["dropped"],
        lost["restarts"],
        denied["text"],
        seen["deniedState"]["peers"].as_array().map_or(0, Vec::len),
        seen["speaker"]["chosen"],
        seen["speaker"]["speakers"],
        unreachable["text"],
        lab.started.elapsed().as_secs_f64(),
        result["phases"],
    );
}

impl Lab {
    /// Starts rendez for a meeting: the call page on HTTPS, rooms of `room_size`, and the
    /// small video budget [`MEETING_UPSTREAM_KBPS`].
    fn serve_meeting(&mut self, room_size: usize) {
        self.serve_meeting_with(room_size, &[]);
    }

    /// [`serve_meeting`](Self::serve_meeting) with more `[signal]` keys (`key = value` lines).
    fn serve_meeting_with(&mut self, room_size: usize, signal_keys: &[String]) {
        let tls = self.make_certificates(Trust::TestCa);
        let config = self.write_config(&fresh_secret(), Some(&tls), Some(room_size));
        // `[signal]` is the last table of the file, so this key lands in it.
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&config)
            .expect("open rendez.toml");
        writeln!(file, "upstream-kbps = {MEETING_UPSTREAM_KBPS}").expect("write rendez.toml");
        for line in signal_keys {
            writeln!(file, "{line}").expect("write rendez.toml");
        }
        self.start_server(&config);
    }

    /// Kills the lab's one server at once (SIGKILL), as a crash or a lost host would.
    fn kill_server(&mut self) {
        let Some(daemon) = self.daemons.iter_mut().find(|d| d.log == "server.log") else {
            self.fail("the server is not running");
        };
        daemon.stopping = true;
        if let Err(e) = daemon.child.kill() {
            self.fail(&format!("cannot kill the server: {e}"));
        }
    }

    /// A room token from `rendez token`, as a backend would mint it.
    fn mint_token(&mut self, secret: &str, room: &str) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_rendez"))
            .args(["token", "--room", room, "--ttl", "10m"])
            .env("RENDEZ_TOKEN_SECRET", secret)
            .output()
            .expect("run rendez token");
        let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !output.status.success() || token.is_empty() {
            self.fail(&format!(
                "rendez token failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        token
    }

    fn meeting_args(
        &self,
        scenario: &str,
        participants: &[&str],
        screenshots: Value,
        (width, height): (u32, u32),
    ) -> Value {
        // More than two tabs get the cheap camera; two keep Chromium's own (their screenshots
        // show a picture, not noise).
        let camera = (participants.len() > CALLERS.len()).then(|| {
            let path = self.dir.join("camera.y4m");
            write_noise_camera(&path);
            path
        });
        json!({
            "scenario": scenario,
            "pageUrl": self.page_url(),
            "probe": {"host": LAB_IP.to_string(), "port": self.layout.page_port()},
            "room": ROOM,
            "participants": participants,
            "chromium": CHROMIUM,
            "chromiumArgs": meeting_chromium_args(&self.dir, &self.layout.hosts(), camera.as_deref()),
            "userDataDir": self.dir.join("profile"),
            "home": self.dir.join("home"),
            "viewport": {"width": width, "height": height},
            "measureMs": MEASURE.as_millis() as u64,
            "upstreamKbps": MEETING_UPSTREAM_KBPS,
            "screenshots": screenshots,
            "timeoutMs": MEETING_BUDGET.as_millis() as u64,
        })
    }

    /// After one of six left, every one of the five others capped each of its video senders
    /// at a quarter of the budget (less the page's headroom) within 5 s of learning it (each
    /// page's own clock).
    fn check_rebalance(&mut self, times: &Value) {
        let times: Vec<Option<u64>> = times
            .as_array()
            .into_iter()
            .flatten()
            .map(Value::as_u64)
            .collect();
        let in_time =
            |t: &Option<u64>| t.is_some_and(|ms| ms <= REBALANCE_LIMIT.as_millis() as u64);
        if times.len() != SIX.len() - 1 || !times.iter().all(in_time) {
            self.fail(&format!(
                "re-balance after one left (ms per remaining page, null: never): {times:?}, \
                 limit {REBALANCE_LIMIT:?}"
            ));
        }
    }

    /// Every page shows all six messages, each once, as text (markup stays characters),
    /// with name and time; the first page, its panel collapsed, had the five others'
    /// messages in its document and an unread count of five; a message too long for the
    /// server was refused beside the form and reached no one.
    fn check_chat(&mut self, seen: &Value) {
        let expected: Vec<(String, String)> = SIX
            .iter()
            .map(|name| (name.to_string(), chat_text(name)))
            .collect();
        for (page, name) in seen["chats"].as_array().into_iter().flatten().zip(SIX) {
            let mut shown: Vec<(String, String)> = page["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or("").to_string(),
                        m["text"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            shown.sort();
            let mut want = expected.clone();
            want.sort();
            if shown != want {
                self.fail(&format!("{name}'s chat shows {shown:?}, expected {want:?}"));
            }
            let timed = page["messages"].as_array().into_iter().flatten().all(|m| {
                m["time"]
                    .as_str()
                    .is_some_and(|t| t.chars().any(|c| c.is_ascii_digit()))
            });
            if page["elementsInTexts"] != 0 || !timed {
                self.fail(&format!(
                    "{name}'s chat turned text into markup or shows no times: {page}"
                ));
            }
        }
        // One order for everyone: the server's.
        let orders: Vec<Vec<&str>> = seen["chats"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|page| {
                page["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["name"].as_str())
                    .collect()
            })
            .collect();
        if orders.windows(2).any(|pair| pair[0] != pair[1]) {
            self.fail(&format!(
                "the pages show the chat in different orders: {orders:?}"
            ));
        }
        if seen["chats"].as_array().map_or(0, Vec::len) != SIX.len() {
            self.fail(&format!("chat views of {} pages", seen["chats"]));
        }
        let collapsed = &seen["collapsed"];
        let others: Vec<&str> = collapsed["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["name"].as_str())
            .collect();
        if collapsed["panelHidden"] != true
            || collapsed["badge"] != "5"
            || collapsed["toggleLabel"] != "Chat, 5 unread"
            || others.len() != 5
            || others.contains(&SIX[0])
        {
            self.fail(&format!(
                "with its panel collapsed, {}'s page showed {collapsed}",
                SIX[0]
            ));
        }
        if !seen["chatError"]
            .as_str()
            .is_some_and(|t| t.contains("4096"))
        {
            self.fail(&format!(
                "a too-long message was not refused beside the form: {}",
                seen["chatError"]
            ));
        }
        if seen["finalChats"] != json!([6, 6, 6, 6, 6, 6]) {
            self.fail(&format!(
                "the refused message reached someone: chat lengths {}",
                seen["finalChats"]
            ));
        }
    }

    /// For every page: five open connections, each video sender capped at its share of the
    /// budget, the video sent to all five together within the budget over the measured
    /// time, and frames decoded from every peer during it. Returns each page's rate.
    fn check_bitrates(&mut self, media: &Value) -> Vec<String> {
        let pages = media.as_array().cloned().unwrap_or_default();
        if pages.len() != SIX.len() {
            self.fail(&format!("bitrates of {} pages: {media}", pages.len()));
        }
        let share = MEETING_UPSTREAM_KBPS * 1000 / (SIX.len() as u64 - 1);
        let mut rates = Vec::new();
        for page in &pages {
            let name = page["name"].as_str().unwrap_or("?").to_string();
            let before = page["before"].as_array().cloned().unwrap_or_default();
            let after = page["after"].as_array().cloned().unwrap_or_default();
            if before.len() != SIX.len() - 1 || after.len() != before.len() {
                self.fail(&format!("{name} has not five connections: {page}"));
            }
            // Each connection's rate over its own window (the browser's stats clock): a
            // loaded page reads its five connections' figures at different moments.
            let mut kbps = 0.0;
            for (b, a) in before.iter().zip(&after) {
                if a["connectionState"] != "connected" {
                    self.fail(&format!("{name}: a connection is {}", a["connectionState"]));
                }
                let caps = a["caps"].as_array().cloned().unwrap_or_default();
                let capped = !caps.is_empty()
                    && caps
                        .iter()
                        .all(|c| c["maxBitrate"].as_u64().is_some_and(|m| m <= share));
                if !capped {
                    self.fail(&format!(
                        "{name}: a video sender is not capped at its share ({share} bit/s): {caps:?}"
                    ));
                }
                let grew = |key: &str| {
                    a[key]
                        .as_u64()
                        .unwrap_or(0)
                        .saturating_sub(b[key].as_u64().unwrap_or(0))
                };
                if grew("framesDecoded") == 0 {
                    self.fail(&format!(
                        "{name} decoded no frame from a peer while measuring: {b} → {a}"
                    ));
                }
                let seconds = (a["statsAt"].as_f64().unwrap_or(0.0)
                    - b["statsAt"].as_f64().unwrap_or(0.0))
                    / 1000.0;
                if seconds < MEASURE.as_secs_f64() * 0.8 {
                    self.fail(&format!(
                        "{name}: a connection was measured over {seconds} s only: {b} → {a}"
                    ));
                }
                let audio_active = a["audioActive"].as_array().cloned().unwrap_or_default();
                if grew("audioBytesSent") > 0
                    || audio_active.is_empty()
                    || audio_active.iter().any(|active| active != false)
                {
                    self.fail(&format!(
                        "{name} joined muted yet sent audio while measuring: {b} → {a}"
                    ));
                }
                kbps += grew("videoBytesSent") as f64 * 8.0 / seconds / 1000.0;
            }
            if kbps > MEETING_UPSTREAM_KBPS as f64 || kbps == 0.0 {
                self.fail(&format!(
                    "{name} sent {kbps:.0} kbit/s of video to its five peers, budget \
                     {MEETING_UPSTREAM_KBPS}: {page}"
                ));
            }
            rates.push(format!("{name} {kbps:.0}"));
        }
        rates
    }

    /// What `browser_meeting_tools` saw, step by step (see its docs).
    fn check_tools(&mut self, seen: &Value) {
        let preview = &seen["preview"];
        if preview["videoWidth"].as_u64().unwrap_or(0) == 0
            || preview["loudest"].as_f64().unwrap_or(0.0) < 0.2
            || preview["cameras"].as_array().is_none_or(Vec::is_empty)
            || preview["microphones"].as_array().is_none_or(Vec::is_empty)
        {
            self.fail(&format!("the pre-join preview showed {preview}"));
        }
        let muted = seen["bobMuted"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["kind"] == "audio" && t["enabled"] == false);
        if !muted || seen["mutedHint"] != true {
            self.fail(&format!(
                "bob did not join muted, or was not told: {}",
                seen["bobMuted"]
            ));
        }
        let camera_off = seen["bobMuted"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["kind"] == "video" && t["enabled"] == false);
        let camera_on = &seen["bobCameraOn"];
        if !camera_off
            || seen["bobCameraOffTile"] != true
            || camera_on["tileOff"] != false
            || camera_on["button"] != "Turn camera off"
        {
            self.fail(&format!(
                "bob did not join with his camera off and turn it on: joined with {}, then {}",
                seen["bobMuted"], camera_on
            ));
        }
        let audio = |key: &str| seen[key]["packets"].as_u64().unwrap_or(0);
        if audio("bobAudioMuted") != 0 || audio("bobAudioUnmuted") == 0 {
            self.fail(&format!(
                "bob's microphone: muted it sent {}, unmuted {} (audio packets alice received)",
                seen["bobAudioMuted"], seen["bobAudioUnmuted"]
            ));
        }
        let tiles = |view: &Value| view["tiles"].as_array().cloned().unwrap_or_default();
        let sharing = tiles(&seen["sharing"]);
        let screen = sharing.iter().find(|t| t["screen"] == true);
        if !screen.is_some_and(|t| t["pinned"] == true && t["videoWidth"].as_u64() > Some(0))
            || sharing.len() != 3
        {
            self.fail(&format!(
                "alice's screen is not a large tile at bob's: {sharing:?}"
            ));
        }
        let after = tiles(&seen["afterSharing"]);
        if after.len() != 2
            || after
                .iter()
                .any(|t| t["screen"] == true || t["pinned"] == true)
        {
            self.fail(&format!(
                "bob's layout did not return to the cameras: {after:?}"
            ));
        }
        let switch = &seen["deviceSwitch"];
        let sent: Vec<&str> = switch["sentTracks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if switch["trackBefore"] == switch["trackAfter"]
            || !sent.contains(&switch["trackAfter"].as_str().unwrap_or("-"))
            || sent.contains(&switch["trackBefore"].as_str().unwrap_or("-"))
            || switch["peerConnectionsBefore"] != switch["peerConnectionsAfter"]
        {
            self.fail(&format!(
                "the camera switch did not replace the track on the same connection: {switch}"
            ));
        }
        let reconnect = &seen["reconnect"];
        if reconnect["idBefore"] == reconnect["idAfter"]
            || reconnect["sockets"].as_u64().unwrap_or(0) < 2
        {
            self.fail(&format!("alice did not reconnect: {reconnect}"));
        }
        let phone = &seen["phone"];
        if phone["scrollWidth"].as_u64() > phone["innerWidth"].as_u64()
            || phone["controlsInside"] != true
            || phone["gridWidth"].as_f64().unwrap_or(0.0) < 200.0
        {
            self.fail(&format!("the phone layout does not fit: {phone}"));
        }
    }
}

/// [`chromium_args`] with a fake camera of 10 frames a second instead of 30: six tabs in
/// one browser encode 30 streams and decode 30 on two cores, and a third of the frames is what
/// keeps that from starving the pages themselves (clicks took over 10 s at 30). With
/// `camera`, the camera plays that file instead of drawing its own pictures.
fn meeting_chromium_args(
    dir: &Path,
    hosts: &[(&str, Ipv4Addr)],
    camera: Option<&Path>,
) -> Vec<String> {
    let mut args: Vec<String> = chromium_args(dir, hosts)
        .into_iter()
        .map(|arg| {
            if arg == "--use-fake-device-for-media-stream" {
                format!("{arg}=fps=10")
            } else {
                arg
            }
        })
        .collect();
    if let Some(camera) = camera {
        args.push(format!(
            "--use-file-for-fake-video-capture={}",
            camera.display()
        ));
    }
    args
}

/// [`meeting_chromium_args`] for a browser whose permission prompts all answer no: what a
/// person who refuses camera and microphone sees.
fn denying_chromium_args(dir: &Path, hosts: &[(&str, Ipv4Addr)]) -> Vec<String> {
    let mut args: Vec<String> = meeting_chromium_args(dir, hosts, None)
        .into_iter()
        .filter(|arg| arg != "--use-fake-ui-for-media-stream")
        .collect();
    args.push("--deny-permission-prompts".into());
    args
}

/// Writes a small camera for six tabs on two cores: 320 × 240 at 10 frames a second, each
/// frame fresh noise. Chromium's own fake camera draws a 640 × 480 picture per frame in every
/// tab; this one is only read. Noise is what an encoder compresses worst, so the page's
/// `maxBitrate` caps (not a picture that is cheap to send) are what keep the bitrate down.
/// The noise is faint (grey ± `NOISE_AMPLITUDE`): at full amplitude even the coarsest
/// quantizer leaves an 80 × 60 frame (a fifth of the budget scales the picture down by 4)
/// at about 1.5 KB, so ten frames a second came to 120–130 kbit/s whatever the cap
/// (measured), a floor of the test picture rather than a property of the page.
fn write_noise_camera(path: &Path) {
    const NOISE_AMPLITUDE: u8 = 32;
    const WIDTH: usize = 320;
    const HEIGHT: usize = 240;
    const FRAMES: usize = 20;
    let mut file = std::io::BufWriter::new(File::create(path).expect("create the camera file"));
    writeln!(file, "YUV4MPEG2 W{WIDTH} H{HEIGHT} F10:1 Ip A1:1 C420jpeg").expect("write y4m");
    // A fixed linear congruential sequence: the same file in every run.
    let mut state: u32 = 0x2545_f491;
    let mut next = || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 24) as u8
    };
    let plane = WIDTH * HEIGHT;
    for _ in 0..FRAMES {
        file.write_all(b"FRAME\n").expect("write y4m");
        let luma: Vec<u8> = (0..plane)
            .map(|_| 128 - NOISE_AMPLITUDE + next() % (2 * NOISE_AMPLITUDE + 1))
            .collect();
        file.write_all(&luma).expect("write y4m");
        // Grey colour planes: the noise is in brightness alone.
        file.write_all(&vec![128u8; plane / 2]).expect("write y4m");
    }
    file.flush().expect("write y4m");
}

/// What each participant of `browser_meeting_six` writes (as meeting.mjs's `chatText`):
/// markup that must stay text.
fn chat_text(name: &str) -> String {
    format!("hello from {name} <b>not bold</b> & <img src=x onerror=alert(1)>")
}

// ---------------------------------------------------------------------------------------
// Rooms across nodes

/// Two people in one room, each on the page of another node of a fleet that shares rooms
/// through Redis, each relayed through their own node's TURN.
#[test]
fn browser_call_across_nodes() {
    let test = "browser_call_across_nodes";
    let Some(mut lab) = open_fleet_lab(test) else {
        return;
    };
    lab.start_fleet();
    let [a, b] = &FLEET;
    let pages = json!({CALLERS[0]: a.page_url(), CALLERS[1]: b.page_url()});
    let result = lab.join_fleet_pages(CallScenario::Call, &pages, |_, _| {});
    lab.check_call(&result, IcePolicy::Relay, &CALLERS);
    lab.check_relayed_through(&result, CALLERS[0], a, b);
    lab.check_relayed_through(&result, CALLERS[1], b, a);
    for node in &FLEET {
        lab.check_node_allocations(node);
    }
    println!(
        "{test}: {} on {} and {} on {} connected relayed ({}); {} and {} TURN allocations; \
         {:.1} s (node phases, ms: {})",
        CALLERS[0],
        a.name,
        CALLERS[1],
        b.name,
        lab.describe_pairs(&result),
        lab.allocations_in(&a.log()).len(),
        lab.allocations_in(&b.log()).len(),
        lab.started.elapsed().as_secs_f64(),
        result["phases"],
    );
}

/// A page behind a load balancer is on node A when A drains: it is told to reconnect, does
/// so through the same URL, lands on node B and is back in the call with the other page.
#[test]
fn browser_drain_rejoins_elsewhere() {
    let test = "browser_drain_rejoins_elsewhere";
    let Some(mut lab) = open_fleet_lab(test) else {
        return;
    };
    lab.start_fleet();
    lab.start_balancer();
    let [a, b] = &FLEET;
    let balanced = lab.page_url();
    let pages = json!({CALLERS[0]: balanced, CALLERS[1]: b.page_url()});
    // How many connections the balancer had routed when the call was up and A drained.
    let mut routed_before_drain = None;
    let mut drained = None;
    let result = lab.join_fleet_pages(CallScenario::Rejoin, &pages, |lab, event| {
        if event["event"] == "call-up" && drained.is_none() {
            routed_before_drain = Some(lab.balancer_routes().len());
            lab.drain(a);
            drained = Some(Instant::now());
        }
    });
    let (Some(routed_before_drain), Some(drained)) = (routed_before_drain, drained) else {
        lab.fail(&format!(
            "the call never came up on node A: {}",
            result["error"]
        ));
    };
    let back_after = drained.elapsed();
    // Before the drain: Alice through A's TURN, Bob through B's.
    lab.check_relayed_through(&result["before"], CALLERS[0], a, b);
    lab.check_relayed_through(&result["before"], CALLERS[1], b, a);
    lab.check_call(&result, IcePolicy::Relay, &CALLERS);
    lab.check_rejoined(&result);
    lab.check_routes(routed_before_drain, a, b);
    // After it: both through B's, the TURN servers of B's welcome.
    lab.check_relayed_through(&result, CALLERS[0], b, b);
    lab.check_relayed_through(&result, CALLERS[1], b, b);
    println!(
        "{test}: {} moved from {} to {} through {balanced} and is back in the call ({}); \
         balancer routes {:?}; the node script saw the call again {:.1} s after SIGTERM; \
         {:.1} s (node phases, ms: {})",
        CALLERS[0],
        a.name,
        b.name,
        lab.describe_pairs(&result),
        lab.balancer_routes(),
        back_after.as_secs_f64(),
        lab.started.elapsed().as_secs_f64(),
        result["phases"],
    );
}

/// One rendez of the fleet: a host (name and address) of its own, and its own TURN ports,
/// relay range and page port. The nodes share the TURN secret, the certificate and Redis.
struct FleetNode {
    name: &'static str,
    host: &'static str,
    ip: Ipv4Addr,
    turn_port: u16,
    turns_port: u16,
    page_port: u16,
    relay_ports: (u16, u16),
}

const FLEET: [FleetNode; 2] = [
    FleetNode {
        name: "node-a",
        host: "node-a.rendez.test",
        ip: LAB_IP,
        turn_port: 3478,
        turns_port: 5349,
        page_port: 8444,
        relay_ports: (40000, 40099),
    },
    FleetNode {
        name: "node-b",
        host: "node-b.rendez.test",
        ip: BROWSERS_IP,
        turn_port: 3479,
        turns_port: 5350,
        page_port: 8445,
        relay_ports: (40100, 40199),
    },
];
/// The fleet's redis-server, on the browsers' host (node B's), which node A reaches over
/// the veth.
const REDIS_ADDR: (Ipv4Addr, u16) = (BROWSERS_IP, 6379);
/// Where `browser_drain_rejoins_elsewhere`'s [`Balancer`] takes the page's connections, at
/// MEET_HOST: on the browsers' host.
const BALANCER_IP: Ipv4Addr = BROWSERS_IP;
const BALANCER_PORT: u16 = 8443;
/// How long the nodes may take to answer `/healthz` 200 (started and connected to Redis).
const FLEET_READY_LIMIT: Duration = Duration::from_secs(20);
/// Budget of call_page.mjs's "rejoin": the call, the drain, the reconnect, the call again.
const REJOIN_BUDGET: Duration = Duration::from_secs(90);
const REJOIN_NODE_LIMIT: Duration = Duration::from_secs(105);
/// A health check's limit for connecting, and for each read or write.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

impl FleetNode {
    fn log(&self) -> String {
        format!("{}.log", self.name)
    }

    fn page_url(&self) -> String {
        format!("https://{}:{}/", self.host, self.page_port)
    }

    fn page_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.page_port))
    }

    /// Whether `addr` is one of this node's relayed addresses.
    fn relays_at(&self, addr: &SocketAddr) -> bool {
        addr.ip() == IpAddr::V4(self.ip)
            && (self.relay_ports.0..=self.relay_ports.1).contains(&addr.port())
    }

    /// Whether a candidate as getStats() reports it is relayed by this node.
    fn relayed(&self, candidate: &Value) -> bool {
        let addr = format!(
            "{}:{}",
            candidate["address"].as_str().unwrap_or(""),
            candidate["port"]
        );
        candidate["candidateType"] == "relay" && addr.parse().is_ok_and(|a| self.relays_at(&a))
    }
}

/// [`open_lab`] for a fleet, which also needs redis-server.
fn open_fleet_lab(test: &str) -> Option<Lab> {
    if let Err(e) = run_bounded(Command::new("redis-server").arg("--version"), COMMAND_LIMIT)
        .and_then(require_success)
    {
        skip(
            test,
            &format!("redis-server is not runnable (apt-get install redis-server): {e}"),
        );
        return None;
    }
    open_lab(test, true, Layout::Fleet)
}

impl Lab {
    /// Starts the fleet: redis-server, then every node of [`FLEET`] on its host with the
    /// test certificate and one TURN secret, and waits until each answers `/healthz` 200,
    /// which it does once it reaches Redis.
    fn start_fleet(&mut self) {
        let (redis_ip, redis_port) = REDIS_ADDR;
        let mut redis = Command::new("redis-server");
        redis
            .args([
                "--bind",
                &redis_ip.to_string(),
                "--port",
                &redis_port.to_string(),
            ])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir);
        let browsers_netns = self.browsers_netns.clone();
        self.start_daemon(&browsers_netns, redis, "redis.log");
        let tls = self.make_certificates(Trust::TestCa);
        let secret = fresh_secret();
        for node in &FLEET {
            let config = self.write_node_config(node, &secret, &tls);
            let netns = self.netns_of(node);
            self.start_rendez_in(&netns, &config, &node.log());
        }
        let health = HealthCheck::new(&self.dir.join("ca.pem"));
        let nodes = FLEET.map(|node| (node.page_addr(), node.host));
        let statuses = in_namespace(&self.browsers_netns, move || {
            let deadline = Instant::now() + FLEET_READY_LIMIT;
            loop {
                let statuses = nodes.map(|(addr, host)| health.status(addr, host));
                if statuses.iter().all(|&s| s == 200) || Instant::now() >= deadline {
                    return statuses;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        if statuses.iter().any(|&s| s != 200) {
            self.fail(&format!(
                "the nodes' /healthz answered {statuses:?} (0: no answer) after \
                 {FLEET_READY_LIMIT:?}, expected 200 from each"
            ));
        }
    }

    /// The namespace that is `node`'s host.
    fn netns_of(&self, node: &FleetNode) -> String {
        if node.ip == LAB_IP {
            self.netns.clone()
        } else {
            self.browsers_netns.clone()
        }
    }

    /// One node's configuration: its own address, TURN ports, relay range and page, and
    /// the TURN URLs of its welcome at its own name (a page that reached it through the
    /// balancer must still get this node's TURN servers); the shared secret, certificate
    /// and Redis.
    fn write_node_config(&self, node: &FleetNode, secret: &str, tls: &TlsFiles) -> PathBuf {
        let (redis_ip, redis_port) = REDIS_ADDR;
        let text = format!(
            "realm = \"rendez.test\"\n\
             listen = [\"{ip}:{turn}\"]\n\
             tls-listen = [\"{ip}:{turns}\"]\n\
             relay-ip = \"{ip}\"\n\
             relay-ports = \"{first}-{last}\"\n\
             log-level = \"rendez=debug\"\n\n\
             [auth]\nsecrets = [\"{secret}\"]\n\n\
             # The other node's relayed addresses are in the lab's private range.\n\
             [peers]\nallow = [\"{LAB_NET}\"]\n\n\
             [tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
             [signal]\nlisten = \"{ip}:{page}\"\nroom-size = {size}\n\
             turn-urls = [\"turn:{host}:{turn}?transport=udp\", \"turn:{host}:{turn}?transport=tcp\", \
             \"turns:{host}:{turns}?transport=tcp\"]\n\n\
             [cluster]\nredis = \"redis://{redis_ip}:{redis_port}/0\"\n",
            ip = node.ip,
            host = node.host,
            turn = node.turn_port,
            turns = node.turns_port,
            first = node.relay_ports.0,
            last = node.relay_ports.1,
            cert = tls.cert.display(),
            key = tls.key.display(),
            page = node.page_port,
            size = CALLERS.len(),
        );
        let path = self.dir.join(format!("{}.toml", node.name));
        fs::write(&path, text).expect("write a node's config");
        path
    }

    /// Runs call_page.mjs for [`CALLERS`], each at their URL in `pages`, relay-only, with
    /// candidates and signaling reported; `on_event` as in [`Lab::run_node_with_events`].
    fn join_fleet_pages(
        &mut self,
        scenario: CallScenario,
        pages: &Value,
        on_event: impl FnMut(&mut Lab, &Value),
    ) -> Value {
        let mut args = self.call_page_args(scenario, IcePolicy::Relay, None, &CALLERS);
        args["pageUrls"] = pages.clone();
        args["reportCandidates"] = json!(true);
        // Every node answers /healthz by now; node B's page is one that must be up.
        args["probe"] = json!({"host": FLEET[1].ip.to_string(), "port": FLEET[1].page_port});
        let limit = if scenario == CallScenario::Rejoin {
            args["timeoutMs"] = json!(REJOIN_BUDGET.as_millis() as u64);
            REJOIN_NODE_LIMIT
        } else {
            CALL_PAGE_NODE_LIMIT
        };
        self.run_node_with_events("call_page.mjs", &args, limit, on_event)
    }

    /// `name`'s page (in `r`'s `pages`) relays through `own`'s TURN: each of its open peer
    /// connections has a selected pair whose local candidate `own` relays and whose remote
    /// candidate `peer` relays.
    fn check_relayed_through(&mut self, r: &Value, name: &str, own: &FleetNode, peer: &FleetNode) {
        let page = r["pages"]
            .as_array()
            .and_then(|pages| pages.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or(Value::Null);
        let pairs = page["selectedPairs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if pairs.is_empty() {
            self.fail(&format!(
                "{name}'s page reported no open peer connection: {page}"
            ));
        }
        for pair in &pairs {
            if !own.relayed(&pair["local"]) || !peer.relayed(&pair["remote"]) {
                self.fail(&format!(
                    "{name}'s selected pair is not relayed by {} (local, relay ports {:?}) \
                     and {} (remote, {:?}): {pair}",
                    own.name, own.relay_ports, peer.name, peer.relay_ports
                ));
            }
        }
    }

    /// `node` made allocations, each for a browser and relayed in its own range.
    fn check_node_allocations(&mut self, node: &FleetNode) {
        let allocations = self.allocations_in(&node.log());
        if allocations.is_empty() {
            self.fail(&format!("{} logged no allocation", node.name));
        }
        for line in allocations {
            let clients = logged_addrs(&line, "client=");
            let relayed = logged_addrs(&line, "relayed=");
            let browsers = clients.iter().all(|c| c.ip() == IpAddr::V4(BROWSERS_IP));
            if clients.is_empty() || !browsers || !relayed.iter().any(|a| node.relays_at(a)) {
                self.fail(&format!(
                    "{} made an allocation not relayed in its range {:?}: {line}",
                    node.name, node.relay_ports
                ));
            }
        }
    }

    /// The first caller came back under a new id, after a "reconnect" from the server on a
    /// second signaling socket.
    fn check_rejoined(&mut self, r: &Value) {
        let name = CALLERS[0];
        let id_in = |pages: &Value| {
            pages["pages"]
                .as_array()
                .and_then(|pages| pages.iter().find(|p| p["name"] == name))
                .map(|page| (page["state"]["id"].clone(), page["signaling"].clone()))
                .unwrap_or_default()
        };
        let (before, _) = id_in(&r["before"]);
        let (after, signaling) = id_in(r);
        if before.is_null() || after.is_null() || before == after {
            self.fail(&format!(
                "{name} did not rejoin under a new id: {before} → {after}"
            ));
        }
        let count = |key: &str| signaling[key].as_u64().unwrap_or(0);
        if count("reconnects") < 1 || count("sockets") < 2 {
            self.fail(&format!(
                "{name}'s page was not told to reconnect, or did not open a second socket: \
                 {signaling}"
            ));
        }
    }

    /// The balancer sent every connection before the drain to `drained`, and at least one,
    /// every one, after it to `other`.
    fn check_routes(&mut self, routed_before_drain: usize, drained: &FleetNode, other: &FleetNode) {
        let routes = self.balancer_routes();
        let (before, after) = routes.split_at(routed_before_drain.min(routes.len()));
        let all_to = |routes: &[Option<u16>], node: &FleetNode| {
            !routes.is_empty() && routes.iter().all(|&r| r == Some(node.page_port))
        };
        if !all_to(before, drained) || !all_to(after, other) {
            self.fail(&format!(
                "the balancer routed {before:?} before the drain (expected {} only) and \
                 {after:?} after it (expected {} only)",
                drained.page_port, other.page_port
            ));
        }
    }

    /// Per page, where its open peer connections' selected pairs relay: "name: local ⇄ remote".
    fn describe_pairs(&self, r: &Value) -> String {
        let mut out = Vec::new();
        for page in r["pages"].as_array().into_iter().flatten() {
            for pair in page["selectedPairs"].as_array().into_iter().flatten() {
                let (local, remote) = (&pair["local"], &pair["remote"]);
                out.push(format!(
                    "{}: {}:{} over {} ⇄ {}:{}",
                    page["name"].as_str().unwrap_or("?"),
                    local["address"].as_str().unwrap_or("?"),
                    local["port"],
                    local["relayProtocol"].as_str().unwrap_or("?"),
                    remote["address"].as_str().unwrap_or("?"),
                    remote["port"],
                ));
            }
        }
        out.join("; ")
    }

    /// Drains `node` as `systemctl stop` would: SIGTERM. Its exit is then expected.
    fn drain(&mut self, node: &FleetNode) {
        let log = node.log();
        let Some(daemon) = self.daemons.iter_mut().find(|d| d.log == log) else {
            self.fail(&format!("{} is not running", node.name));
        };
        daemon.stopping = true;
        let pid = daemon.child.id().to_string();
        if let Err(e) = run_bounded(Command::new("kill").args(["-TERM", &pid]), COMMAND_LIMIT)
            .and_then(require_success)
        {
            self.fail(&format!("cannot SIGTERM {}: {e}", node.name));
        }
    }

    /// Starts the [`Balancer`] on BALANCER_IP:BALANCER_PORT in front of the nodes' pages,
    /// in [`FLEET`]'s order.
    fn start_balancer(&mut self) {
        let health = HealthCheck::new(&self.dir.join("ca.pem"));
        let listen = SocketAddr::from((BALANCER_IP, BALANCER_PORT));
        let backends = FLEET.map(|node| (node.page_addr(), node.host)).to_vec();
        match Balancer::start(&self.browsers_netns, listen, backends, health) {
            Ok(balancer) => self.balancer = Some(balancer),
            Err(e) => self.fail(&format!("cannot start the balancer: {e}")),
        }
    }

    /// The page port the balancer sent each connection to, in order (`None`: no backend
    /// was healthy, and the connection was closed).
    fn balancer_routes(&self) -> Vec<Option<u16>> {
        self.balancer
            .as_ref()
            .map(|b| {
                b.routes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            })
            .unwrap_or_default()
    }
}

/// Runs `f` on a thread of its own in the network namespace `netns`: the sockets it opens,
/// and the threads it spawns, are in that namespace.
fn in_namespace<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    thread::spawn(move || {
        enter_namespace(&path);
        f()
    })
    .join()
    .expect("a thread in the namespace panicked")
}

/// Moves the calling thread (alone) into the network namespace that `ip netns` keeps at
/// `path`.
fn enter_namespace(path: &str) {
    use std::os::fd::AsRawFd;
    let file = File::open(path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    // SAFETY: setns with CLONE_NEWNET on a namespace file changes only this thread's
    // network namespace; the file stays open for the call.
    let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        entered,
        0,
        "setns({path}): {}",
        std::io::Error::last_os_error()
    );
}

/// `GET /healthz` over HTTPS, trusting only the test CA (the nodes serve their pages with
/// the test certificate), as a load balancer checks its backends.
#[derive(Clone)]
struct HealthCheck {
    tls: std::sync::Arc<rustls::ClientConfig>,
}

impl HealthCheck {
    fn new(ca_pem: &Path) -> Self {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_file(ca_pem).expect("read the test CA");
        roots.add(ca).expect("trust the test CA");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            tls: std::sync::Arc::new(tls),
        }
    }

    /// The status `addr`, a page served as `host`, answers; 0 when it does not (refused,
    /// TLS failed, timed out).
    fn status(&self, addr: SocketAddr, host: &'static str) -> u16 {
        let Ok(tcp) = std::net::TcpStream::connect_timeout(&addr, HEALTH_TIMEOUT) else {
            return 0;
        };
        let _ = tcp.set_read_timeout(Some(HEALTH_TIMEOUT));
        let _ = tcp.set_write_timeout(Some(HEALTH_TIMEOUT));
        let name = rustls::pki_types::ServerName::try_from(host).expect("a DNS name");
        let Ok(tls) = rustls::ClientConnection::new(self.tls.clone(), name) else {
            return 0;
        };
        let mut stream = rustls::StreamOwned::new(tls, tcp);
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return 0;
        }
        // The status line is all it needs; a close without close_notify ends the read with
        // an error after the bytes that came.
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply)
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }
}

/// A stand-in for an L4 load balancer in front of the fleet's pages: it accepts TCP
/// connections on one address in the lab's namespace and sends each, bytes untouched (TLS
/// goes through to the node), to the first backend whose `/healthz` answers 200 at that
/// moment, as a balancer with health checks does. Dropping it stops it and closes every
/// connection it carries.
struct Balancer {
    /// The backend port of each accepted connection, in order (`None`: none was healthy).
    routes: std::sync::Arc<Mutex<Vec<Option<u16>>>>,
    /// Both ends of every connection it carries, shut down when it stops.
    streams: std::sync::Arc<Mutex<Vec<std::net::TcpStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Balancer {
    fn start(
        netns: &str,
        listen: SocketAddr,
        backends: Vec<(SocketAddr, &'static str)>,
        health: HealthCheck,
    ) -> Result<Balancer, String> {
        let balancer = Balancer {
            routes: Default::default(),
            streams: Default::default(),
            stop: Default::default(),
            acceptor: None,
        };
        let (routes, streams, stop) = (
            balancer.routes.clone(),
            balancer.streams.clone(),
            balancer.stop.clone(),
        );
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{netns}");
        let acceptor = thread::spawn(move || {
            enter_namespace(&path);
            let listener = match std::net::TcpListener::bind(listen)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
            {
                Ok(listener) => listener,
                Err(e) => {
                    let _ = bound_tx.send(Err(format!("bind {listen}: {e}")));
                    return;
                }
            };
            let _ = bound_tx.send(Ok(()));
            // Polls, so that it ends soon after `stop` is set.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        // Threads spawned here are in the namespace too, for the backends.
                        let (routes, streams) = (routes.clone(), streams.clone());
                        let (backends, health) = (backends.clone(), health.clone());
                        thread::spawn(move || {
                            Balancer::carry(client, &backends, &health, &routes, &streams)
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let mut balancer = balancer;
        balancer.acceptor = Some(acceptor);
        match bound_rx.recv_timeout(COMMAND_LIMIT) {
            Ok(Ok(())) => Ok(balancer),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "no answer from its thread within {COMMAND_LIMIT:?}"
            )),
        }
    }

    /// Picks `client`'s backend and copies bytes both ways until either side closes.
    fn carry(
        client: std::net::TcpStream,
        backends: &[(SocketAddr, &'static str)],
        health: &HealthCheck,
        routes: &Mutex<Vec<Option<u16>>>,
        streams: &Mutex<Vec<std::net::TcpStream>>,
    ) {
        let healthy = backends
            .iter()
            .find(|&&(addr, host)| health.status(addr, host) == 200)
            .map(|&(addr, _)| addr);
        routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(healthy.map(|addr| addr.port()));
        let Some(backend) = healthy
            .and_then(|addr| std::net::TcpStream::connect_timeout(&addr, HEALTH_TIMEOUT).ok())
        else {
            return;
        };
        let _ = client.set_nonblocking(false);
        let (Ok(client_reader), Ok(backend_reader)) = (client.try_clone(), backend.try_clone())
        else {
            return;
        };
        {
            let mut carried = streams.lock().unwrap_or_else(PoisonError::into_inner);
            for stream in [&client, &backend] {
                if let Ok(clone) = stream.try_clone() {
                    carried.push(clone);
                }
            }
        }
        let upstream = thread::spawn(move || pipe(client_reader, backend));
        pipe(backend_reader, client);
        let _ = upstream.join();
    }
}

/// Copies `from` to `to` until `from` ends or either fails, then ends `to`'s writing side.
fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for stream in self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Prerequisites and skipping

fn require_browser() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

fn skip(test: &str, reason: &str) {
    if require_browser() {
        panic!("{test}: {REQUIRE_ENV}=1 but the browser test cannot run: {reason}");
    }
    // Straight to stderr, past the test harness's capture, so a skip is never silent.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped: {reason} (set {REQUIRE_ENV}=1 to make this an error)"
    );
}

fn node_project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn artifacts_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|target| target.join("browser-artifacts"))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts"));
    fs::create_dir_all(&dir).expect("create target/browser-artifacts");
    dir
}

/// Everything but the namespace, which [`Lab::create`] checks by making one. `tls`: the
/// test makes a certificate and an NSS database, so it needs `certutil`; a
/// [`Layout::Firewalled`] lab needs `nft`.
fn prerequisites(tls: bool, layout: Layout) -> Result<(), String> {
    if !Path::new(CHROMIUM).exists() {
        return Err(format!(
            "{CHROMIUM} not found (Debian: apt-get install chromium)"
        ));
    }
    run_bounded(Command::new("node").arg("--version"), COMMAND_LIMIT)
        .and_then(require_success)
        .map_err(|e| format!("node is not runnable: {e}"))?;
    run_bounded(Command::new("ip").arg("-V"), COMMAND_LIMIT)
        .and_then(require_success)
        .map_err(|e| format!("`ip` (iproute2) is not runnable: {e}"))?;
    run_bounded(Command::new("kill").arg("-l"), COMMAND_LIMIT)
        .and_then(require_success)
        .map_err(|e| format!("`kill` (procps) is not runnable: {e}"))?;
    if tls {
        run_bounded(Command::new("certutil").arg("-H"), COMMAND_LIMIT).map_err(|e| {
            format!("certutil is not runnable (apt-get install libnss3-tools): {e}")
        })?;
    }
    if layout == Layout::Firewalled {
        run_bounded(Command::new("nft").arg("--version"), COMMAND_LIMIT)
            .and_then(require_success)
            .map_err(|e| format!("nft is not runnable (apt-get install nftables): {e}"))?;
    }
    let project = node_project();
    if !project
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        run_bounded(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&project),
            NPM_LIMIT,
        )
        .and_then(require_success)
        .map_err(|e| format!("`npm ci` in {} failed: {e}", project.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The lab: namespace, directory, processes, and their cleanup

struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// A network namespace, a directory and the processes started in it. Dropping it kills
/// the processes and deletes the namespace; the directory goes too unless the test failed.
struct Lab {
    layout: Layout,
    /// rendez's namespace.
    netns: String,
    /// Where node and Chromium run: `netns` itself, or with [`Layout::Firewalled`] a
    /// namespace of their own.
    browsers_netns: String,
    dir: PathBuf,
    /// When the test got its turn (the serial lock), for the timings it prints.
    started: Instant,
    /// The namespaces created so far, deleted on drop.
    namespaces_made: Vec<String>,
    /// `ip monitor` in the namespace, from the moment it settled; see [`Lab::watch_namespace`].
    monitor: Option<Child>,
    /// rendez (one, or a fleet's nodes) and the fleet's redis-server, in starting order.
    daemons: Vec<Daemon>,
    /// [`Lab::start_balancer`]: the fleet's load balancer stand-in.
    balancer: Option<Balancer>,
    node: Option<Child>,
    _serial: MutexGuard<'static, ()>,
}

/// A long-running process of the lab, writing to `log` in the test's directory.
struct Daemon {
    log: String,
    child: Child,
    /// Set when the test itself ended it (a drain): its exit is then no failure.
    stopping: bool,
}

impl Lab {
    /// `serial` is held until the lab is dropped, after its cleanup.
    fn create(test: &str, serial: MutexGuard<'static, ()>, layout: Layout) -> Result<Lab, String> {
        let short = test.trim_start_matches("browser_").replace('_', "-");
        let id = format!("{}-{short}", std::process::id());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("browser-{id}"));
        let _ = fs::remove_dir_all(&dir);
        for sub in ["profile", "home"] {
            fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let netns = format!("rendez-br-{id}");
        let browsers_netns = match layout {
            Layout::Together => netns.clone(),
            Layout::Firewalled | Layout::Fleet => format!("rendez-brc-{id}"),
        };
        let mut lab = Lab {
            layout,
            netns,
            browsers_netns,
            dir,
            started: Instant::now(),
            namespaces_made: Vec::new(),
            monitor: None,
            daemons: Vec::new(),
            balancer: None,
            node: None,
            _serial: serial,
        };
        for netns in [lab.netns.clone(), lab.browsers_netns.clone()] {
            if !lab.namespaces_made.contains(&netns) {
                lab.add_namespace(&netns)?;
            }
        }

        // The whole configuration, before anything runs in the namespaces. Both veth ends
        // get `addrgenmode none`: otherwise the kernel gives each an IPv6 link-local address
        // when it comes up and announces it over netlink only once duplicate address
        // detection ends, 1-2 s later — while Chromium starts, which takes that as a
        // network change (see "Nothing changes while Chromium runs" in the module docs).
        let addr = format!("{LAB_IP}/{LAB_PREFIX}");
        let browsers_addr = format!("{BROWSERS_IP}/{LAB_PREFIX}");
        let [veth, peer] = VETH;
        let (server, browsers) = (lab.netns.as_str(), lab.browsers_netns.as_str());
        let mut steps: Vec<(&str, Vec<&str>)> = vec![
            (server, vec!["link", "set", "lo", "up"]),
            (
                server,
                vec!["link", "add", veth, "type", "veth", "peer", "name", peer],
            ),
            (server, vec!["link", "set", veth, "addrgenmode", "none"]),
            (server, vec!["link", "set", peer, "addrgenmode", "none"]),
            (server, vec!["addr", "add", &addr, "dev", veth]),
            (server, vec!["link", "set", veth, "up"]),
        ];
        if layout != Layout::Together {
            // The peer end moves to the browsers' namespace and takes their address there.
            // The move resets its IPv6 settings to that namespace's defaults, so
            // `addrgenmode none` again.
            steps.extend([
                (server, vec!["link", "set", peer, "netns", browsers]),
                (browsers, vec!["link", "set", peer, "addrgenmode", "none"]),
                (browsers, vec!["link", "set", "lo", "up"]),
                (browsers, vec!["addr", "add", &browsers_addr, "dev", peer]),
            ]);
        }
        steps.push((browsers, vec!["link", "set", peer, "up"]));
        for (netns, step) in steps {
            run_bounded(
                Command::new("ip").args(["-n", netns]).args(&step),
                COMMAND_LIMIT,
            )
            .and_then(require_success)
            .map_err(|e| format!("cannot set up the namespace (`ip {}`): {e}", step.join(" ")))?;
        }
        if layout == Layout::Firewalled {
            lab.install_firewall()?;
        }
        for netns in lab.namespaces_made.clone() {
            lab.wait_until_settled(&netns)?;
        }
        lab.watch_namespace()?;
        Ok(lab)
    }

    /// Creates the network namespace `netns`, to be deleted on drop.
    fn add_namespace(&mut self, netns: &str) -> Result<(), String> {
        // A leftover from a killed earlier run of this very pid is impossible in practice,
        // but `ip netns add` would fail on it; delete quietly first.
        let _ = run_bounded(
            Command::new("ip").args(["netns", "del", netns]),
            COMMAND_LIMIT,
        );
        run_bounded(
            Command::new("ip").args(["netns", "add", netns]),
            COMMAND_LIMIT,
        )
        .and_then(require_success)
        .map_err(|e| {
            format!("cannot create a network namespace (needs root or CAP_SYS_ADMIN): {e}")
        })?;
        self.namespaces_made.push(netns.to_string());
        Ok(())
    }

    /// [`Layout::Firewalled`]: the 443-only firewall, [`FIREWALL`], loaded into rendez's
    /// namespace with `nft -f` (the ruleset is kept as `firewall.nft` in the test's
    /// directory).
    fn install_firewall(&self) -> Result<(), String> {
        let path = self.dir.join("firewall.nft");
        fs::write(&path, FIREWALL).map_err(|e| format!("cannot write firewall.nft: {e}"))?;
        run_bounded(
            Command::new("ip")
                .args(["netns", "exec", &self.netns, "nft", "-f"])
                .arg(&path),
            COMMAND_LIMIT,
        )
        .and_then(require_success)
        .map_err(|e| format!("cannot load the firewall (`nft -f firewall.nft`): {e}"))?;
        Ok(())
    }

    /// The links `netns` must end up with besides `lo`, each with its only address (or
    /// none); see [`unsettled`].
    fn expected_links(&self, netns: &str) -> Vec<(&'static str, Option<String>)> {
        let [veth, peer] = VETH;
        let server = (veth, Some(format!("{LAB_IP}/{LAB_PREFIX}")));
        match self.layout {
            Layout::Together => vec![server, (peer, None)],
            Layout::Firewalled | Layout::Fleet if netns == self.netns => vec![server],
            Layout::Firewalled | Layout::Fleet => {
                vec![(peer, Some(format!("{BROWSERS_IP}/{LAB_PREFIX}")))]
            }
        }
    }

    /// Waits (bounded) until the namespace is in its final state, as [`unsettled`] defines
    /// it, so that nothing in it changes once rendez and Chromium run.
    fn wait_until_settled(&self, netns: &str) -> Result<(), String> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        let expected = self.expected_links(netns);
        loop {
            let output = run_bounded(
                Command::new("ip").args(["-n", netns, "-j", "addr", "show"]),
                COMMAND_LIMIT,
            )
            .and_then(require_success)
            .map_err(|e| format!("cannot read the namespace's links (`ip -j addr show`): {e}"))?;
            let links: Value = serde_json::from_slice(&output.stdout)
                .map_err(|e| format!("`ip -j addr show` printed no JSON: {e}"))?;
            match unsettled(&links, &expected) {
                None => return Ok(()),
                Some(why) if Instant::now() >= deadline => {
                    return Err(format!(
                        "the namespace {netns} did not settle within {SETTLE_LIMIT:?}: {why}"
                    ))
                }
                Some(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Starts `ip monitor link address` in the settled namespace of the browsers — the
    /// netlink groups that Chromium's address tracker listens to — writing to
    /// [`NETLINK_LOG`], and returns once
    /// it is subscribed, so that every later change is on record: [`Lab::run_node`] fails
    /// the test if there is any, naming it.
    fn watch_namespace(&mut self) -> Result<(), String> {
        let path = self.dir.join(NETLINK_LOG);
        let log = File::create(&path).map_err(|e| format!("cannot create {NETLINK_LOG}: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot clone {NETLINK_LOG}: {e}"))?;
        let monitor = Command::new("ip")
            .args([
                "-n",
                &self.browsers_netns,
                "-ts",
                "monitor",
                "link",
                "address",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start `ip monitor`: {e}"))?;
        let pid = monitor.id().to_string();
        self.monitor = Some(monitor);
        // Subscribed once its route socket (family 0) with a non-zero group mask shows in
        // its own namespace's /proc/net/netlink, where the port id is its pid.
        let table = format!("/proc/{pid}/net/netlink");
        let deadline = Instant::now() + COMMAND_LIMIT;
        loop {
            let subscribed = fs::read_to_string(&table).is_ok_and(|text| {
                text.lines().any(|line| {
                    let cols: Vec<&str> = line.split_whitespace().collect();
                    cols.len() > 3 && cols[1] == "0" && cols[2] == pid && cols[3] != "00000000"
                })
            });
            if subscribed {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.monitor.as_mut().map(Child::try_wait) {
                let said = fs::read_to_string(&path).unwrap_or_default();
                return Err(format!("`ip monitor` exited ({status}): {}", said.trim()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "`ip monitor` did not subscribe within {COMMAND_LIMIT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A test CA and a leaf for the layout's hosts (names and addresses) signed by it; with
    /// [`Trust::TestCa`] the CA goes into the fresh NSS database under the HOME that
    /// Chromium gets (with [`Trust::Nothing`] that database stays empty).
    fn make_certificates(&self, trust: Trust) -> TlsFiles {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        // Validity around today (a year back, a year ahead); rcgen's default is centuries.
        let year = 1970
            + (SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs()
                / 31_556_952) as i32;
        let (not_before, not_after) = (
            rcgen::date_time_ymd(year - 1, 1, 1),
            rcgen::date_time_ymd(year + 1, 12, 31),
        );

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name
            .push(DnType::CommonName, "rendez browser-test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = not_before;
        ca.not_after = not_after;
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");

        let leaf_key = KeyPair::generate().expect("leaf key");
        let host = self.layout.host();
        let hosts = self.layout.hosts();
        let names: Vec<String> = hosts.iter().map(|(name, _)| name.to_string()).collect();
        let mut leaf = CertificateParams::new(names).expect("leaf params");
        let mut ips: Vec<Ipv4Addr> = hosts.iter().map(|&(_, ip)| ip).collect();
        ips.sort_unstable();
        ips.dedup();
        for ip in ips {
            leaf.subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(ip)));
        }
        leaf.distinguished_name.push(DnType::CommonName, host);
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.not_before = not_before;
        leaf.not_after = not_after;
        let leaf_cert = leaf
            .signed_by(&leaf_key, &Issuer::from_params(&ca, &ca_key))
            .expect("sign the leaf");

        let files = TlsFiles {
            cert: self.dir.join("cert.pem"),
            key: self.dir.join("key.pem"),
        };
        let ca_pem = self.dir.join("ca.pem");
        // The full chain, as an operator's fullchain.pem would be.
        fs::write(&files.cert, leaf_cert.pem() + &ca_cert.pem()).expect("write cert.pem");
        fs::write(&files.key, leaf_key.serialize_pem()).expect("write key.pem");
        fs::write(&ca_pem, ca_cert.pem()).expect("write ca.pem");

        let nssdb = self.dir.join("home/.pki/nssdb");
        fs::create_dir_all(&nssdb).expect("create nssdb dir");
        let db = format!("sql:{}", nssdb.display());
        run_bounded(
            Command::new("certutil").args(["-N", "-d", &db, "--empty-password"]),
            COMMAND_LIMIT,
        )
        .and_then(require_success)
        .expect("certutil -N (create the NSS database)");
        if trust == Trust::Nothing {
            return files;
        }
        run_bounded(
            Command::new("certutil")
                .args([
                    "-A",
                    "-d",
                    &db,
                    "-n",
                    "rendez browser-test CA",
                    "-t",
                    "C,,",
                    "-i",
                ])
                .arg(&ca_pem),
            COMMAND_LIMIT,
        )
        .and_then(require_success)
        .expect("certutil -A (trust the test CA)");
        files
    }

    /// `tls`: TURN over TLS on the layout's `turns_port`. `room_size`: also serve the call
    /// page on the layout's `page_port` (HTTPS: pass `tls`) with rooms of that size. Without
    /// it, the page stays at its default address, unused. With [`Layout::Firewalled`] both
    /// ports are 443: one address in `tls-listen` and `[signal] listen`, which rendez binds
    /// once and shares.
    fn write_config(
        &self,
        secret: &str,
        tls: Option<&TlsFiles>,
        room_size: Option<usize>,
    ) -> PathBuf {
        let mut text = format!(
            "realm = \"rendez.test\"\n\
             listen = [\"{LAB_IP}:{TURN_PORT}\"]\n\
             relay-ip = \"{LAB_IP}\"\n\
             relay-ports = \"{}-{}\"\n\
             log-level = \"rendez=debug\"\n",
            RELAY_PORTS.0, RELAY_PORTS.1
        );
        if tls.is_some() {
            let port = self.layout.turns_port();
            text += &format!("tls-listen = [\"{LAB_IP}:{port}\"]\n");
        }
        text += &format!(
            "\n[auth]\nsecrets = [\"{secret}\"]\n\n\
             # The peers' relayed addresses are in the namespace's private range.\n\
             [peers]\nallow = [\"{LAB_NET}\"]\n"
        );
        if let Some(tls) = tls {
            text += &format!(
                "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                tls.cert.display(),
                tls.key.display()
            );
        }
        if let Some(room_size) = room_size {
            let port = self.layout.page_port();
            text += &format!("\n[signal]\nlisten = \"{LAB_IP}:{port}\"\nroom-size = {room_size}\n");
        }
        let path = self.dir.join("rendez.toml");
        fs::write(&path, text).expect("write rendez.toml");
        path
    }

    fn start_server(&mut self, config: &Path) {
        self.start_rendez(config, "server.log");
    }

    /// Starts rendez in the namespace with `config`, logging to `log`.
    fn start_rendez(&mut self, config: &Path, log: &str) {
        let netns = self.netns.clone();
        self.start_rendez_in(&netns, config, log);
    }

    /// Starts rendez in `netns` with `config`, logging to `log`.
    fn start_rendez_in(&mut self, netns: &str, config: &Path, log: &str) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rendez"));
        command.arg("serve").arg("--config").arg(config);
        self.start_daemon(netns, command, log);
    }

    /// Starts `command` in `netns` as one of the lab's daemons, its stdout and stderr to
    /// `log`. `ip netns exec` execs the command, so the child's pid is the program's own.
    fn start_daemon(&mut self, netns: &str, command: Command, log: &str) {
        let file = File::create(self.dir.join(log)).expect("create a daemon's log");
        let file2 = file.try_clone().expect("clone a daemon's log");
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", netns])
            .arg(command.get_program())
            .args(command.get_args());
        // Only the config file speaks: RENDEZ_* variables would override its keys.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RENDEZ_") {
                wrapped.env_remove(key);
            }
        }
        let child = wrapped
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.get_program()));
        self.daemons.push(Daemon {
            log: log.to_string(),
            child,
            stopping: false,
        });
    }

    /// The first daemon that exited although the test did not end it: its log and status.
    fn daemon_gone(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.daemons
            .iter_mut()
            .find_map(|daemon| match daemon.child.try_wait() {
                Ok(Some(status)) if !daemon.stopping => Some((daemon.log.clone(), status)),
                _ => None,
            })
    }

    /// Runs `script` from tests/browser under node in the namespace, killed past `limit`,
    /// and returns its JSON line.
    fn run_node(&mut self, script: &str, args: &Value, limit: Duration) -> Value {
        self.run_node_with_events(script, args, limit, |_, _| {})
    }

    /// [`Lab::run_node`], calling `on_event` (while node goes on) with each line of the form
    /// `{"event": …}` that the script prints before its result.
    fn run_node_with_events(
        &mut self,
        script: &str,
        args: &Value,
        limit: Duration,
        mut on_event: impl FnMut(&mut Lab, &Value),
    ) -> Value {
        let stdout_path = self.dir.join("node.out");
        let stderr_path = self.dir.join("node.err");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.browsers_netns, "node"])
            .arg(node_project().join(script))
            .arg(args.to_string())
            .current_dir(node_project())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).expect("create node.out"))
            .stderr(File::create(&stderr_path).expect("create node.err"))
            .spawn()
            .expect("start node");
        self.node = Some(child);

        let deadline = Instant::now() + limit;
        let mut events_seen = 0;
        let status = loop {
            let node = self.node.as_mut().expect("node child");
            match node.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
                Ok(None) | Err(_) => break None,
            }
            // A server that died (a config it rejects, say) fails the test now, not when
            // node's readiness probe gives up.
            if let Some((log, status)) = self.daemon_gone() {
                self.stop_node();
                self.fail(&format!(
                    "a daemon of the lab ({log}) exited ({status}) while the call was being set up"
                ));
            }
            let events: Vec<Value> = fs::read_to_string(&stdout_path)
                .unwrap_or_default()
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter(|value| !value["event"].is_null())
                .collect();
            for event in events.iter().skip(events_seen) {
                on_event(self, event);
            }
            events_seen = events_seen.max(events.len());
        };
        let Some(status) = status else {
            self.stop_node();
            self.fail(&format!(
                "node {script} did not finish within {} s; killed it",
                limit.as_secs()
            ));
        };
        self.node = None;
        if !self.read(NETLINK_LOG).trim().is_empty() {
            self.fail(
                "the namespace's links or addresses changed while the browser ran (Chromium \
                 aborts pending connections with ERR_NETWORK_CHANGED on such a change)",
            );
        }

        let stdout = fs::read_to_string(&stdout_path).unwrap_or_default();
        let result = stdout
            .lines()
            .rev()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|value| value.is_object() && value["event"].is_null());
        match result {
            Some(value) => value,
            None => self.fail(&format!(
                "node exited with {status} without a JSON result\nstdout:\n{stdout}"
            )),
        }
    }

    /// The assertions on a relay_call.mjs result, each with everything needed to understand
    /// a failure: both peers relayed by rendez through the TURN server at `url`, reached
    /// over `relay_protocol`.
    fn check(&mut self, r: &Value, url: &str, relay_protocol: &str) {
        if r["ok"] != true {
            self.fail(&format!("the call did not complete: {}", r["error"]));
        }
        if r["messageAtB"] != "ping from a through rendez"
            || r["messageAtA"] != "pong from b through rendez"
        {
            self.fail("data-channel messages did not arrive intact");
        }
        for side in ["a", "b"] {
            let pair = &r[side]["selected"];
            if pair.is_null() {
                self.fail(&format!("peer {side} has no selected candidate pair"));
            }
            for end in ["local", "remote"] {
                let candidate = &pair[end];
                if candidate["candidateType"] != "relay" {
                    self.fail(&format!(
                        "peer {side}: selected {end} candidate is {}, not relay",
                        candidate["candidateType"]
                    ));
                }
                let port = candidate["port"].as_u64().unwrap_or(0);
                if candidate["address"] != LAB_IP.to_string()
                    || !(u64::from(RELAY_PORTS.0)..=u64::from(RELAY_PORTS.1)).contains(&port)
                {
                    self.fail(&format!(
                        "peer {side}: selected {end} candidate {}:{port} is not a rendez relay address",
                        candidate["address"]
                    ));
                }
            }
            let local = &pair["local"];
            if local["relayProtocol"] != relay_protocol {
                self.fail(&format!(
                    "peer {side}: relay allocated over {}, expected {relay_protocol}",
                    local["relayProtocol"],
                ));
            }
            if local["url"] != url {
                self.fail(&format!(
                    "peer {side}: relay candidate from {}",
                    local["url"]
                ));
            }
        }
        if r["video"]["framesDecoded"].as_u64().unwrap_or(0) == 0 {
            self.fail("no video frame was decoded at the receiving peer");
        }
    }

    /// The call must fail because Chromium refused the certificate: no relay candidate on
    /// either side, and an ICE candidate error for our `turns:` URL on each.
    fn check_refused(&mut self, r: &Value) {
        if r["ok"] != false {
            self.fail("Chromium connected although the test CA is not trusted");
        }
        for side in ["a", "b"] {
            if r["candidates"][side]
                .as_array()
                .is_none_or(|c| !c.is_empty())
            {
                self.fail(&format!(
                    "peer {side} gathered a candidate without a trusted certificate"
                ));
            }
            let refused = r["errors"].as_array().is_some_and(|errors| {
                errors.iter().any(|e| {
                    e["pc"] == side && e["url"] == Transport::Tls.url() && e["errorCode"] == 701
                })
            });
            if !refused {
                self.fail(&format!(
                    "peer {side} reported no error for {}",
                    Transport::Tls.url()
                ));
            }
        }
        // And for the right reason: Chromium's TLS client logs the net error of a failed
        // handshake; -202 is ERR_CERT_AUTHORITY_INVALID (not a name or protocol problem).
        let log = self.read("chromium.log");
        if !log.contains("net_error -202") {
            self.fail("Chromium's log shows no ERR_CERT_AUTHORITY_INVALID (net_error -202)");
        }
    }

    /// Panics with the context of a failure: node's result, the server log, Chromium's log
    /// and any change in the namespace after it settled.
    fn fail(&mut self, what: &str) -> ! {
        let server_exit = match self.daemon_gone() {
            Some((log, status)) => format!("\n({log}: not running any more: {status})"),
            None => String::new(),
        };
        let chromium_log: String = self
            .read("chromium.log")
            .lines()
            .filter(|l| !l.contains("dbus"))
            .collect::<Vec<_>>()
            .join("\n");
        let netlink = self.read(NETLINK_LOG);
        let netlink = if netlink.trim().is_empty() {
            String::new()
        } else {
            format!("--- links and addresses changed after the namespace settled:\n{netlink}\n")
        };
        // Each daemon's log: the one server's, or a fleet's nodes and Redis.
        let lines = if self.daemons.len() > 1 { 30 } else { 60 };
        let daemons: String = self
            .daemons
            .iter()
            .map(|d| {
                format!(
                    "--- {} (tail):\n{}\n",
                    d.log,
                    tail(&self.read(&d.log), lines)
                )
            })
            .collect();
        panic!(
            "{what}{server_exit}\n\n--- node result ({dir}/node.out):\n{out}\n--- node stderr:\n{err}\n\
             {daemons}--- chromium log (tail, dbus noise removed):\n{chromium}\n\
             {netlink}--- kept for inspection: {dir}",
            out = self.read("node.out"),
            err = tail(&self.read("node.err"), 40),
            chromium = tail(&chromium_log, 40),
            dir = self.dir.display(),
        );
    }

    /// A file of the test's directory, empty when it is missing.
    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn stop_node(&mut self) {
        if let Some(mut node) = self.node.take() {
            // SIGTERM first: playwright then closes Chromium itself.
            let _ = run_bounded(
                Command::new("kill").args(["-TERM", &node.id().to_string()]),
                COMMAND_LIMIT,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(node.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(100));
            }
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_node();
        self.balancer = None;
        let daemons = self.daemons.drain(..).map(|daemon| daemon.child);
        for mut child in daemons.chain(self.monitor.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for netns in &self.namespaces_made {
            // Anything still inside the namespace was started by this test (a Chromium
            // whose node parent died, say): end it by pid, then delete the namespace.
            if let Ok(out) = run_bounded(
                Command::new("ip").args(["netns", "pids", netns]),
                COMMAND_LIMIT,
            ) {
                let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect();
                if !pids.is_empty() {
                    let _ =
                        run_bounded(Command::new("kill").arg("-KILL").args(&pids), COMMAND_LIMIT);
                    thread::sleep(Duration::from_millis(200));
                }
            }
            let _ = run_bounded(
                Command::new("ip").args(["netns", "del", netns]),
                COMMAND_LIMIT,
            );
        }
        if !thread::panicking() && std::env::var_os(KEEP_ENV).is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Why the namespace, as `ip -j addr show` lists it, is not yet in its final state; `None`
/// once it is: exactly `lo` and the `expected` veth ends, each up with its carrier
/// (`LOWER_UP`), the veths also with operstate UP (Chromium's "running", which the kernel may
/// report up to a second after the carrier), no address tentative (still in duplicate
/// address detection, whose end is announced as a change), and on each veth exactly its
/// expected address, if any.
fn unsettled(links: &Value, expected: &[(&str, Option<String>)]) -> Option<String> {
    let mut names = Vec::new();
    for link in links.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let name = link["ifname"].as_str().unwrap_or("?");
        names.push(name);
        let flags = &link["flags"];
        let flag = |f: &str| {
            flags
                .as_array()
                .is_some_and(|all| all.iter().any(|x| x == f))
        };
        if !flag("UP") || !flag("LOWER_UP") {
            return Some(format!("{name} is not up with a carrier: flags {flags}"));
        }
        if name != "lo" && link["operstate"] != "UP" {
            return Some(format!("{name} has operstate {}", link["operstate"]));
        }
        let mut addrs = Vec::new();
        for addr in link["addr_info"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let local = addr["local"].as_str().unwrap_or("?");
            if ["tentative", "optimistic", "dadfailed"]
                .iter()
                .any(|f| addr[*f] == true)
            {
                return Some(format!("{name}: {local} is still tentative: {addr}"));
            }
            addrs.push(format!("{local}/{}", addr["prefixlen"]));
        }
        let wanted: Vec<String> = match expected.iter().find(|(veth, _)| *veth == name) {
            Some((_, addr)) => addr.iter().cloned().collect(),
            None => addrs.clone(),
        };
        if addrs != wanted {
            return Some(format!(
                "{name} has addresses {addrs:?}, expected {wanted:?}"
            ));
        }
    }
    names.sort_unstable();
    let mut wanted: Vec<&str> = expected.iter().map(|&(veth, _)| veth).collect();
    wanted.push("lo");
    wanted.sort_unstable();
    (names != wanted).then(|| format!("links {names:?}, expected {wanted:?}"))
}

// ---------------------------------------------------------------------------------------
// Small helpers

/// Runs a command to completion within `limit`, killing it past that.
fn run_bounded(command: &mut Command, limit: Duration) -> Result<Output, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{command:?} did not finish within {limit:?}"));
            }
        }
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

fn require_success(output: Output) -> Result<Output, String> {
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "{}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        ))
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Removes terminal colour sequences (ESC `[` … letter).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The socket addresses written right after each `key` in a log line.
fn logged_addrs(line: &str, key: &str) -> Vec<SocketAddr> {
    line.match_indices(key)
        .filter_map(|(at, _)| {
            let rest = &line[at + key.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c)))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
        .collect()
}
