//! Sans-IO scenarios: drive `turn::Server` with chosen inputs at chosen times and check the
//! exact outputs. No sockets, no sleeping: an hour passes in one line.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rendez::random::Rng;
use rendez::stun::{
    decode_xor_address, stream_frame, userhash, AttrType, ChannelData, Class, ErrorCode, Frame,
    IntegrityAlgorithm, LongTermKey, Message, MessageBuilder, Method, PasswordAlgorithm,
    TransactionId,
};
use rendez::turn::{
    Alternate, ChallengeLimiter, ChannelNumbers, ConnectionId, DropReason, FastPathChange,
    FastPathEntry, FiveTuple, PeerAddr, PeerPolicy, PortClaims, QuotaExceeded, QuotaLimits, Quotas,
    Rejection, RelayAddr, RelayAddress, RelayBind, Reservations, Server, ServerConfig,
    TcpRelayLimits, Traffic, Transport, UserSecret, CONNECTION_BIND_TIMEOUT, CONNECT_TIMEOUT,
    RESERVATION_LIFETIME,
};

mod harness;
use harness::{Event, RecordingIo};

const REALM: &str = "rendez.test";
const SECRET: &str = "rotating-secret-2";
/// Wall-clock time at the start of every scenario (unix seconds).
const UNIX_START: u64 = 1_800_000_000;

// ---------------------------------------------------------------- operations: drain, quotas, limits

#[test]
fn draining_refuses_new_allocations_with_486_and_keeps_existing_ones() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    alice.permit(&mut h, PEER);
    h.server.start_draining();
    let mut late = Client::alice(client_at(7100));
    let refused = late.call(&mut h, Method::ALLOCATE, &[udp()]);
    assert_eq!(refused.error_code(), Some(486));
    assert!(
        refused.verifies(&late.key()),
        "answered after authentication"
    );
    let send = as_indication(build(Method::SEND, &[peer(PEER), data(b"on")], None, false));
    assert!(
        h.client_to_peer(CLIENT, &send).is_some(),
        "existing allocations relay on"
    );
    let refresh = alice.call(&mut h, Method::REFRESH, &[lifetime(600)]);
    assert_eq!(refresh.class(), Class::Success, "and may be refreshed");
    assert_eq!(h.server.stats().refused_draining, 1);
}

#[test]
fn draining_with_alternates_answers_300_with_an_alternate_of_the_clients_family() {
    let v6: SocketAddr = "[2001:db8::8]:3478".parse().unwrap();
    let v4: SocketAddr = "203.0.113.8:3478".parse().unwrap();
    let mut h =
        Harness::with_config(|c| c.alternate_servers = vec![Alternate::at(v6), Alternate::at(v4)]);
    h.server.start_draining();
    let mut alice = Client::alice(CLIENT);
    let response = alice.call(&mut h, Method::ALLOCATE, &[udp()]);
    assert_eq!(response.error_code(), Some(300));
    let value = response.attr(AttrType::ALTERNATE_SERVER).unwrap();
    // A plain (not XORed) address: family 1, port, IPv4.
    assert_eq!(value, [0, 1, 0x0d, 0x96, 203, 0, 113, 8]);
    assert!(
        response.verifies(&alice.key()),
        "answered after authentication"
    );
}

const ALTERNATE_A: &str = "203.0.113.21:3478";
const ALTERNATE_B: &str = "203.0.113.22:3479";

/// Two alternates given by address, A then B.
fn two_alternates(config: &mut ServerConfig) {
    config.alternate_servers = [ALTERNATE_A, ALTERNATE_B]
        .map(|a| Alternate::at(a.parse().unwrap()))
        .into();
}

#[test]
fn a_full_server_sends_allocations_to_its_alternates_in_turn() {
    let mut h = Harness::with_config(|c| {
        two_alternates(c);
        c.quotas = Quotas::new(QuotaLimits {
            total: 1,
            ..QuotaLimits::default()
        });
    });
    Client::alice(client_at(7301)).allocate(&mut h);
    let mut named = Vec::new();
    for port in 7302..7305 {
        let mut client = Client::alice(client_at(port));
        let response = client.call(&mut h, Method::ALLOCATE, &[udp()]);
        assert_eq!(response.error_code(), Some(300));
        assert!(
            response.verifies(&client.key()),
            "answered after authentication"
        );
        named.extend(alternate_servers(&response));
    }
    let [a, b] = [ALTERNATE_A, ALTERNATE_B].map(|a| a.parse::<SocketAddr>().unwrap());
    assert_eq!(named, [a, b, a], "in turn, one per response");
    assert_eq!(h.server.stats().redirected_full, 3);
    assert_eq!(h.server.stats().quota_refusals(QuotaExceeded::Total), 0);
}

#[test]
fn a_full_server_without_alternates_still_answers_486() {
    let mut h = Harness::with_config(|c| {
        c.quotas = Quotas::new(QuotaLimits {
            total: 1,
            ..QuotaLimits::default()
        })
    });
    Client::alice(client_at(7311)).allocate(&mut h);
    let refused = Client::alice(client_at(7312)).allocate_response(&mut h);
    assert_eq!(refused.error_code(), Some(486));
    assert_eq!(h.server.stats().quota_refusals(QuotaExceeded::Total), 1);
    assert_eq!(h.server.stats().redirected_full, 0);
}

#[test]
fn exhausted_relay_ports_with_alternates_are_300() {
    let mut h = Harness::with_config(|c| {
        two_alternates(c);
        c.relay_ports = 50000..=50001;
    });
    for port in [7321, 7322] {
        Client::alice(client_at(port)).allocate(&mut h);
    }
    let response = Client::alice(client_at(7323)).allocate_response(&mut h);
    assert_eq!(response.error_code(), Some(300));
    assert_eq!(
        alternate_servers(&response),
        [ALTERNATE_A.parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(h.server.stats().redirected_full, 1);
}

#[test]
fn quotas_of_a_user_or_an_address_answer_486_even_with_alternates() {
    let mut h = Harness::with_config(|c| {
        two_alternates(c);
        c.quotas = Quotas::new(QuotaLimits {
            per_user: 1,
            per_address: 2,
            total: 100,
        });
    });
    Client::alice(client_at(7331)).allocate(&mut h);
    let user = Client::alice(client_at(7332)).allocate_response(&mut h);
    assert_eq!(user.error_code(), Some(486), "alice's second");
    Client::rest(client_at(7333), "bob", UNIX_START + 600).allocate(&mut h);
    let address =
        Client::rest(client_at(7334), "carol", UNIX_START + 600).allocate_response(&mut h);
    assert_eq!(address.error_code(), Some(486), "a third from one address");
    assert_eq!(h.server.stats().redirected_full, 0);
}

#[test]
fn tls_clients_are_told_the_name_of_an_alternate_given_by_name() {
    let named = Alternate {
        addresses: vec![
            "203.0.113.31:5349".parse().unwrap(),
            "[2001:db8::31]:5349".parse().unwrap(),
        ],
        domain: Some("turn2.example.com".into()),
    };
    let by_address = Alternate::at("203.0.113.32:5349".parse().unwrap());
    let mut h = Harness::with_config(|c| c.alternate_servers = vec![named, by_address]);
    h.server.start_draining();
    let over_tls = |port| FiveTuple {
        transport: Transport::Tls,
        ..client_at(port)
    };
    let first = Client::alice(over_tls(7341)).allocate_response(&mut h);
    assert_eq!(first.error_code(), Some(300));
    assert_eq!(
        alternate_servers(&first),
        [
            "203.0.113.31:5349".parse::<SocketAddr>().unwrap(),
            "[2001:db8::31]:5349".parse().unwrap()
        ],
        "the client's family first, then the other one of the same server"
    );
    assert_eq!(
        first.attr(AttrType::ALTERNATE_DOMAIN).as_deref(),
        Some(&b"turn2.example.com"[..])
    );
    // An alternate given by address has no name: the client checks the name it used here.
    let second = Client::alice(over_tls(7342)).allocate_response(&mut h);
    assert_eq!(second.error_code(), Some(300));
    assert_eq!(second.attr(AttrType::ALTERNATE_DOMAIN), None);
    // Without TLS there is no certificate to check, so no name.
    let plain = Client::alice(client_at(7343)).allocate_response(&mut h);
    assert_eq!(
        alternate_servers(&plain)[0],
        "203.0.113.31:5349".parse().unwrap()
    );
    assert_eq!(plain.attr(AttrType::ALTERNATE_DOMAIN), None);
}

/// Every ALTERNATE-SERVER of a response, in order, decoded here (a plain address, RFC 8489
/// §14.1) independently of the server's encoder.
fn alternate_servers(response: &Response) -> Vec<SocketAddr> {
    let m = response.message();
    m.attributes(AttrType::ALTERNATE_SERVER)
        .map(|value| {
            let port = u16::from_be_bytes([value[2], value[3]]);
            match value[1] {
                1 => SocketAddr::from((<[u8; 4]>::try_from(&value[4..8]).unwrap(), port)),
                2 => SocketAddr::from((<[u8; 16]>::try_from(&value[4..20]).unwrap(), port)),
                family => panic!("address family {family}"),
            }
        })
        .collect()
}

#[test]
fn quotas_are_shared_between_shards_and_give_486() {
    let quotas = Quotas::new(QuotaLimits {
        per_user: 2,
        per_address: 3,
        total: 100,
    });
    // Two shards (as two UDP workers would be) sharing one set of quotas.
    let mut one = Harness::with_config(|c| c.quotas = quotas.clone());
    let mut two = Harness::with_config(|c| c.quotas = quotas.clone());
    Client::alice(client_at(7201)).allocate(&mut one);
    Client::alice(client_at(7202)).allocate(&mut two);
    let third = Client::alice(client_at(7203)).call(&mut two, Method::ALLOCATE, &[udp()]);
    assert_eq!(
        third.error_code(),
        Some(486),
        "alice's third, on another shard"
    );
    assert_eq!(two.server.stats().quota_refusals(QuotaExceeded::User), 1);
    // Bob is another user, but from the same address: the address quota (3) still has room
    // for one.
    let mut bob = Client::rest(client_at(7204), "bob", UNIX_START + 600);
    assert_eq!(bob.allocate_response(&mut one).class(), Class::Success);
    let mut carol = Client::rest(client_at(7205), "carol", UNIX_START + 600);
    let refused = carol.allocate_response(&mut one);
    assert_eq!(refused.error_code(), Some(486));
    assert_eq!(one.server.stats().quota_refusals(QuotaExceeded::Address), 1);
    // When one of alice's allocations ends, she may have another.
    let mut alice = Client::alice(client_at(7201));
    alice.call(&mut one, Method::REFRESH, &[lifetime(0)]);
    let again = Client::alice(client_at(7206)).call(&mut two, Method::ALLOCATE, &[udp()]);
    assert_eq!(again.class(), Class::Success);
}

#[test]
fn bandwidth_per_allocation_drops_the_excess_each_way() {
    // 1000 B/s with a one-second burst: ten 100-byte packets, then nothing until time passes.
    let mut h = Harness::with_config(|c| c.bandwidth_per_allocation = 1000);
    let mut alice = Client::alice(CLIENT);
    let relayed = alice.allocate(&mut h);
    alice.permit(&mut h, PEER);
    let send = as_indication(build(
        Method::SEND,
        &[peer(PEER), data(&[7; 100])],
        None,
        false,
    ));
    let sent = (0..15)
        .filter(|_| h.client_to_peer(CLIENT, &send).is_some())
        .count();
    assert_eq!(sent, 10);
    let back = (0..15)
        .filter(|_| h.peer_to_client(relayed, PEER, &[8; 100]).is_some())
        .count();
    assert_eq!(back, 10, "each direction has its own bucket");
    assert_eq!(h.server.stats().dropped(DropReason::OverBandwidth), 10);
    h.now += Duration::from_millis(500);
    let later = (0..15)
        .filter(|_| h.client_to_peer(CLIENT, &send).is_some())
        .count();
    assert_eq!(later, 5, "half a second refills half the bucket");
}

#[test]
fn challenges_beyond_the_limit_per_source_are_dropped_over_udp_only() {
    let limiter = ChallengeLimiter::new(3, 11);
    let mut h = Harness::with_config(|c| c.challenge_limit = Some(limiter));
    let request = build(Method::ALLOCATE, &[udp()], None, false);
    let answered = (0..10u16)
        .filter(|i| {
            h.server
                .handle_client_packet(h.now, client_at(7300 + i), &request);
            !h.pump().is_empty()
        })
        .count();
    assert_eq!(answered, 3, "one source address, any port");
    assert_eq!(h.server.stats().dropped(DropReason::UnauthorizedRate), 7);
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..client_at(7400)
    };
    assert_eq!(
        h.request(tcp, &request).error_code(),
        Some(401),
        "streams are not limited"
    );
    h.now += Duration::from_secs(1);
    assert_eq!(
        h.request(client_at(7301), &request).error_code(),
        Some(401),
        "next second"
    );
}

// ---------------------------------------------------------------- hostile input: constant work, no reflection

#[test]
fn allocate_without_transport_is_400_before_any_challenge() {
    let mut h = Harness::new();
    let response = h.request(CLIENT, &build(Method::ALLOCATE, &[], None, false));
    assert_eq!(response.error_code(), Some(400));
    assert!(
        response.attr(AttrType::NONCE).is_none(),
        "no challenge: nothing to gain"
    );
}

#[test]
fn binding_floods_from_one_udp_source_are_limited() {
    let limiter = ChallengeLimiter::new(5, 3);
    let mut h = Harness::with_config(|c| c.binding_limit = Some(limiter));
    let binding = build(Method::BINDING, &[], None, false);
    let answered = (0..20u16)
        .filter(|i| {
            h.server
                .handle_client_packet(h.now, client_at(7500 + i), &binding);
            !h.pump().is_empty()
        })
        .count();
    assert_eq!(answered, 5);
    assert_eq!(h.server.stats().dropped(DropReason::BindingRate), 15);
}

#[test]
fn create_permission_over_the_cap_is_refused_before_any_policy_work() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    // Far more addresses than an allocation may hold, all of them denied by the policy:
    // the answer is the cap's 508, not the policy's 403.
    let denied: Vec<Attr> = (0..500u32)
        .map(|i| {
            peer(SocketAddr::from((
                std::net::Ipv4Addr::from(0x0a00_0000 + i),
                9,
            )))
        })
        .collect();
    let response = alice.call(&mut h, Method::CREATE_PERMISSION, &denied);
    assert_eq!(response.error_code(), Some(508));
}

#[test]
fn send_indication_with_unknown_required_attribute_is_discarded() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    alice.permit(&mut h, PEER);
    let unknown = Attr::Raw(AttrType(0x7ff0), vec![1, 2, 3, 4]);
    let send = as_indication(build(
        Method::SEND,
        &[peer(PEER), data(b"x"), unknown],
        None,
        false,
    ));
    assert!(h.client_to_peer(CLIENT, &send).is_none());
    assert_eq!(h.server.stats().dropped(DropReason::UnknownAttribute), 1);
    let optional = Attr::Raw(AttrType(0xfff0), vec![1, 2, 3, 4]);
    let send = as_indication(build(
        Method::SEND,
        &[peer(PEER), data(b"x"), optional],
        None,
        false,
    ));
    assert!(
        h.client_to_peer(CLIENT, &send).is_some(),
        "optional ones are ignored"
    );
}

#[test]
fn rest_credentials_expiring_too_far_ahead_are_refused() {
    let mut h = Harness::with_config(|c| c.max_credential_ttl = Duration::from_secs(7 * 86_400));
    let mut week = Client::rest(client_at(7600), "bob", UNIX_START + 7 * 86_400 - 60);
    assert_eq!(week.allocate_response(&mut h).class(), Class::Success);
    let mut forever = Client::rest(client_at(7601), "bob", UNIX_START + 400 * 86_400);
    assert_eq!(forever.allocate_response(&mut h).error_code(), Some(401));
    assert_eq!(h.server.stats().auth_failures(Rejection::TooFarAhead), 1);
}

// ---------------------------------------------------------------- Binding

#[test]
fn binding_answers_with_xor_mapped_address_without_auth() {
    let mut h = Harness::new();
    let response = h.request(CLIENT, &build(Method::BINDING, &[], None, false));
    assert_eq!(response.class(), Class::Success);
    assert_eq!(
        response.xor(AttrType::XOR_MAPPED_ADDRESS),
        Some(CLIENT.client)
    );
    assert!(!response.message().has_fingerprint());

    let response = h.request(CLIENT, &build(Method::BINDING, &[], None, true));
    assert!(
        response.message().has_fingerprint(),
        "FINGERPRINT mirrors the request"
    );
}

// ---------------------------------------------------------------- Allocate

#[test]
fn allocate_challenges_then_succeeds_with_relay_lifetime_and_integrity() {
    let mut h = Harness::new();
    let challenge = h.request(CLIENT, &build(Method::ALLOCATE, &[udp()], None, false));
    assert_eq!(challenge.error_code(), Some(401));
    assert_eq!(
        challenge.attr(AttrType::REALM),
        Some(REALM.as_bytes().to_vec())
    );
    assert!(challenge.attr(AttrType::NONCE).is_some());
    assert!(!challenge.message().has_integrity(), "no key is known yet");

    let mut alice = Client::alice(CLIENT);
    let response = alice.call(&mut h, Method::ALLOCATE, &[udp()]);
    assert_eq!(response.class(), Class::Success);
    let relayed = response.xor(AttrType::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(
        relayed.ip(),
        PUBLIC_RELAY_IP.parse::<std::net::IpAddr>().unwrap()
    );
    assert!((50000..=50099).contains(&relayed.port()));
    assert_eq!(response.u32(AttrType::LIFETIME), Some(600));
    assert_eq!(
        response.xor(AttrType::XOR_MAPPED_ADDRESS),
        Some(CLIENT.client)
    );
    assert!(response.verifies(&alice.key()));
    assert_eq!(
        h.bound,
        vec![SocketAddr::new(
            RELAY_BIND_IP.parse().unwrap(),
            relayed.port()
        )]
    );
}

#[test]
fn allocate_lifetime_is_clamped_to_default_and_maximum() {
    for (requested, granted) in [(30, 600), (1200, 1200), (999_999, 3600)] {
        let mut h = Harness::new();
        let mut alice = Client::alice(CLIENT);
        let response = alice.call(&mut h, Method::ALLOCATE, &[udp(), lifetime(requested)]);
        assert_eq!(response.u32(AttrType::LIFETIME), Some(granted));
    }
}

#[test]
fn second_allocate_on_same_five_tuple_is_437_but_retransmission_is_answered_again() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    let tid = TransactionId([42; 12]);
    let first = alice.call_with_tid(&mut h, Method::ALLOCATE, &[udp()], tid);
    assert_eq!(first.class(), Class::Success);
    let again = alice.call_with_tid(&mut h, Method::ALLOCATE, &[udp()], tid);
    assert_eq!(
        again.bytes, first.bytes,
        "retransmission gets the same response"
    );
    let other = alice.call(&mut h, Method::ALLOCATE, &[udp()]);
    assert_eq!(other.error_code(), Some(437));
    assert_eq!(h.bound.len(), 1);
}

#[test]
fn allocate_without_transport_is_400_and_an_unknown_transport_is_442() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    assert_eq!(
        alice.call(&mut h, Method::ALLOCATE, &[]).error_code(),
        Some(400)
    );
    // SCTP: neither UDP nor TCP (TCP over UDP is in tests/scenarios_tcp.rs).
    let sctp = Attr::Raw(AttrType::REQUESTED_TRANSPORT, vec![132, 0, 0, 0]);
    let response = alice.call(&mut h, Method::ALLOCATE, &[sctp]);
    assert_eq!(response.error_code(), Some(442));
    assert!(
        response.verifies(&alice.key()),
        "errors after auth carry integrity"
    );
}

#[test]
fn allocate_for_a_family_without_relay_is_440() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    let v6 = Attr::Raw(AttrType::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]);
    assert_eq!(
        alice
            .call(&mut h, Method::ALLOCATE, &[udp(), v6])
            .error_code(),
        Some(440)
    );
    let bogus = Attr::Raw(AttrType::REQUESTED_ADDRESS_FAMILY, vec![9, 0, 0, 0]);
    assert_eq!(
        alice
            .call(&mut h, Method::ALLOCATE, &[udp(), bogus])
            .error_code(),
        Some(440)
    );
}

#[test]
fn exhausted_relay_range_is_508() {
    let mut h = Harness::with_config(|c| c.relay_ports = 50000..=50001);
    for port in [5001, 5002] {
        let mut client = Client::alice(client_at(port));
        assert_eq!(
            client.call(&mut h, Method::ALLOCATE, &[udp()]).class(),
            Class::Success
        );
    }
    let mut third = Client::alice(client_at(5003));
    assert_eq!(
        third.call(&mut h, Method::ALLOCATE, &[udp()]).error_code(),
        Some(508)
    );
}

#[test]
fn port_taken_by_another_program_is_retried_then_508() {
    let mut h = Harness::new();
    h.io.fail_next_binds(3);
    let mut alice = Client::alice(CLIENT);
    assert_eq!(
        alice.call(&mut h, Method::ALLOCATE, &[udp()]).class(),
        Class::Success
    );
    assert_eq!(h.bound.len(), 1);

    let mut h = Harness::new();
    h.io.fail_next_binds(100);
    let mut alice = Client::alice(CLIENT);
    assert_eq!(
        alice.call(&mut h, Method::ALLOCATE, &[udp()]).error_code(),
        Some(508)
    );
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn even_port_without_r_gets_an_even_port_and_no_token() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    for flags in [vec![0], vec![0x7F, 0, 0, 0], vec![]] {
        let response = alice.call(&mut h, Method::ALLOCATE, &[udp(), even_port(flags)]);
        assert_eq!(response.class(), Class::Success);
        assert_eq!(relayed_port(&response) % 2, 0);
        assert_eq!(response.attr(AttrType::RESERVATION_TOKEN), None);
        alice.call(&mut h, Method::REFRESH, &[lifetime(0)]);
    }
}

// ---------------------------------------------------------------- EVEN-PORT reservations

#[test]
fn even_port_with_r_reserves_the_next_port_for_its_token_once() {
    let mut h = Harness::new();
    let mut rtp = Client::alice(CLIENT);
    let response = rtp.call(&mut h, Method::ALLOCATE, &[udp(), reserve_pair()]);
    assert_eq!(response.class(), Class::Success);
    assert!(response.verifies(&rtp.key()));
    let port = relayed_port(&response);
    assert_eq!(port % 2, 0, "an even port");
    let token = response.attr(AttrType::RESERVATION_TOKEN).expect("a token");
    assert_eq!(token.len(), 8);
    assert_eq!(
        h.bound,
        [bound_at(port)],
        "the reserved port is not bound yet"
    );

    // The RTCP allocation comes from the client's next port with the token.
    let mut rtcp = Client::alice(client_at(5001));
    let redeemed = rtcp.call(&mut h, Method::ALLOCATE, &[udp(), reservation(&token)]);
    assert_eq!(redeemed.class(), Class::Success);
    assert_eq!(
        relayed_port(&redeemed),
        port + 1,
        "exactly the reserved port"
    );
    assert_eq!(redeemed.attr(AttrType::RESERVATION_TOKEN), None);
    assert_eq!(h.bound, [bound_at(port), bound_at(port + 1)]);

    // A token is good once.
    let mut third = Client::alice(client_at(5002));
    let again = third.call(&mut h, Method::ALLOCATE, &[udp(), reservation(&token)]);
    assert_eq!(again.error_code(), Some(508));
    // A retransmitted R=1 Allocate gets the same answer, token and all.
    let first_tid = TransactionId([1; 12]);
    let resent = rtp.call_with_tid(
        &mut h,
        Method::ALLOCATE,
        &[udp(), reserve_pair()],
        first_tid,
    );
    assert_eq!(resent.bytes, response.bytes);
    assert_eq!(h.server.allocation_count(), 2);
}

#[test]
fn a_reservation_lasts_30_seconds_then_its_port_and_token_are_gone() {
    // Two relay ports: the pair takes both, so a plain Allocate shows when the reserved one
    // comes back.
    let mut h = Harness::with_config(|c| c.relay_ports = 50000..=50001);
    let mut rtp = Client::alice(CLIENT);
    let response = rtp.call(&mut h, Method::ALLOCATE, &[udp(), reserve_pair()]);
    assert_eq!(relayed_port(&response), 50000);
    let token = response.attr(AttrType::RESERVATION_TOKEN).unwrap();
    let mut other = Client::alice(client_at(5001));
    assert_eq!(
        other.allocate_response(&mut h).error_code(),
        Some(508),
        "50001 is held for the token"
    );
    assert!(h.server.poll_timeout() <= Some(h.now + RESERVATION_LIFETIME));
    h.advance(RESERVATION_LIFETIME);
    let late = Client::alice(client_at(5002)).call(
        &mut h,
        Method::ALLOCATE,
        &[udp(), reservation(&token)],
    );
    assert_eq!(late.error_code(), Some(508), "expired");
    assert_eq!(relayed_port(&other.allocate_response(&mut h)), 50001);
}

#[test]
fn a_token_redeemed_just_before_expiry_still_gets_its_port() {
    let mut h = Harness::new();
    let mut rtp = Client::alice(CLIENT);
    let response = rtp.call(&mut h, Method::ALLOCATE, &[udp(), reserve_pair()]);
    let token = response.attr(AttrType::RESERVATION_TOKEN).unwrap();
    h.advance(RESERVATION_LIFETIME - Duration::from_secs(1));
    let mut rtcp = Client::alice(client_at(5001));
    let redeemed = rtcp.call(&mut h, Method::ALLOCATE, &[udp(), reservation(&token)]);
    assert_eq!(relayed_port(&redeemed), relayed_port(&response) + 1);
    // Its expiry timer fires later and must leave the redeemed port alone.
    h.advance(Duration::from_secs(2));
    assert!(h.released.is_empty());
    let frame = as_indication(build(Method::SEND, &[peer(PEER), data(b"x")], None, false));
    rtcp.permit(&mut h, PEER);
    assert!(h.client_to_peer(client_at(5001), &frame).is_some());
}

#[test]
fn a_token_with_even_port_or_a_family_is_400_and_a_bad_one_508() {
    let mut h = Harness::new();
    let mut rtp = Client::alice(CLIENT);
    let response = rtp.call(&mut h, Method::ALLOCATE, &[udp(), reserve_pair()]);
    let token = response.attr(AttrType::RESERVATION_TOKEN).unwrap();
    let mut rtcp = Client::alice(client_at(5001));
    let family = Attr::Raw(AttrType::REQUESTED_ADDRESS_FAMILY, vec![1, 0, 0, 0]);
    let additional = Attr::Raw(AttrType::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0]);
    for extra in [even_port(vec![0]), reserve_pair(), family, additional] {
        let refused = rtcp.call(
            &mut h,
            Method::ALLOCATE,
            &[udp(), reservation(&token), extra],
        );
        assert_eq!(refused.error_code(), Some(400));
    }
    let short = rtcp.call(&mut h, Method::ALLOCATE, &[udp(), reservation(&token[..4])]);
    assert_eq!(short.error_code(), Some(400), "a token is 8 bytes");
    let unknown = rtcp.call(&mut h, Method::ALLOCATE, &[udp(), reservation(&[1; 8])]);
    assert_eq!(unknown.error_code(), Some(508));
    // None of that used the token up.
    let redeemed = rtcp.call(&mut h, Method::ALLOCATE, &[udp(), reservation(&token)]);
    assert_eq!(redeemed.class(), Class::Success);
}

#[test]
fn only_the_user_who_reserved_may_redeem() {
    let mut h = Harness::new();
    let mut rtp = Client::alice(CLIENT);
    let response = rtp.call(&mut h, Method::ALLOCATE, &[udp(), reserve_pair()]);
    let token = response.attr(AttrType::RESERVATION_TOKEN).unwrap();
    let mut bob = Client::rest(client_at(5001), "bob", UNIX_START + 600);
    let refused = bob.call(&mut h, Method::ALLOCATE, &[udp(), reservation(&token)]);
    assert_eq!(refused.error_code(), Some(508));
    let mut rtcp = Client::alice(client_at(5002));
    let redeemed = rtcp.call(&mut h, Method::ALLOCATE, &[udp(), reservation(&token)]);
    assert_eq!(redeemed.class(), Class::Success, "still there for alice");
}

#[test]
fn reservations_count_against_the_quotas_until_used_or_expired() {
    let quotas = Quotas::new(QuotaLimits {
        per_user: 3,
        ..QuotaLimits::default()
    });
    let mut h = Harness::with_config(|c| c.quotas = quotas.clone());
    let mut rtp = Client::alice(CLIENT);
    let response = rtp.call(&mut h, Method::ALLOCATE, &[udp(), reserve_pair()]);
    let token = response.attr(AttrType::RESERVATION_TOKEN).unwrap();
    assert_eq!(quotas.total(), 2, "the allocation and its reservation");
    // A second pair would need two more: refused, and nothing kept.
    let mut second = Client::alice(client_at(5001));
    let refused = second.call(&mut h, Method::ALLOCATE, &[udp(), reserve_pair()]);
    assert_eq!(refused.error_code(), Some(486));
    assert_eq!(h.server.stats().quota_refusals(QuotaExceeded::User), 1);
    assert_eq!(quotas.total(), 2);
    assert_eq!(h.server.allocation_count(), 1);
    // Redeeming takes no new claim: the reservation's passes to the allocation.
    let mut rtcp = Client::alice(client_at(5002));
    rtcp.call(&mut h, Method::ALLOCATE, &[udp(), reservation(&token)]);
    assert_eq!(quotas.total(), 2);
    assert_eq!(second.allocate_response(&mut h).class(), Class::Success);
    assert_eq!(quotas.total(), 3);
    let full = Client::alice(client_at(5003)).allocate_response(&mut h);
    assert_eq!(full.error_code(), Some(486));

    // An unused reservation gives its claim back when it expires.
    for client in [&mut rtp, &mut rtcp, &mut second] {
        client.call(&mut h, Method::REFRESH, &[lifetime(0)]);
    }
    assert_eq!(quotas.total(), 0);
    let mut again = Client::alice(client_at(5004));
    again.call(&mut h, Method::ALLOCATE, &[udp(), reserve_pair()]);
    assert_eq!(quotas.total(), 2);
    h.advance(RESERVATION_LIFETIME);
    assert_eq!(quotas.total(), 1);
}

#[test]
fn a_reservation_made_on_one_shard_is_redeemed_on_another() {
    // Two shards as two UDP workers are: each searches its own slice of the relay ports,
    // and they share the quotas, the port claims and the reservations.
    let quotas = Quotas::default();
    let claims = PortClaims::default();
    let reservations = Reservations::default();
    let shard = |slice: std::ops::RangeInclusive<u16>| {
        let (quotas, claims, reservations) = (quotas.clone(), claims.clone(), reservations.clone());
        Harness::with_config(move |c| {
            c.relay_ports = slice;
            c.server_relay_ports = 50000..=50003;
            c.quotas = quotas;
            c.port_claims = claims;
            c.reservations = reservations;
        })
    };
    let mut one = shard(50000..=50001);
    let mut two = shard(50002..=50003);
    let mut rtp = Client::alice(CLIENT);
    let response = rtp.call(&mut one, Method::ALLOCATE, &[udp(), reserve_pair()]);
    assert_eq!(relayed_port(&response), 50000);
    let token = response.attr(AttrType::RESERVATION_TOKEN).unwrap();
    assert_eq!(reservations.len(), 1);

    // The RTCP Allocate reaches the other shard, which binds the port and owns it now.
    let mut rtcp = Client::alice(client_at(5001));
    let redeemed = rtcp.call(&mut two, Method::ALLOCATE, &[udp(), reservation(&token)]);
    assert_eq!(relayed_port(&redeemed), 50001);
    assert_eq!(two.bound, [bound_at(50001)]);
    assert!(reservations.is_empty());
    let answer = two.peer_to_client(
        redeemed.xor(AttrType::XOR_RELAYED_ADDRESS).unwrap(),
        PEER,
        b"x",
    );
    assert_eq!(answer, None, "no permission yet, but the relay is two's");
    assert_eq!(two.server.stats().dropped(DropReason::NoPermission), 1);

    // The first shard's expiry timer finds nothing to release.
    one.advance(RESERVATION_LIFETIME);
    assert_eq!(
        Client::alice(client_at(5002))
            .allocate_response(&mut one)
            .error_code(),
        Some(508),
        "50000 and 50001 are both still taken"
    );
    // When the allocation on the second shard ends, the port is free for the first again.
    rtcp.call(&mut two, Method::REFRESH, &[lifetime(0)]);
    assert_eq!(two.released, [bound_at(50001)]);
    let reused = Client::alice(client_at(5003)).allocate_response(&mut one);
    assert_eq!(relayed_port(&reused), 50001);
}

#[test]
fn a_reserved_port_taken_by_another_program_is_508_without_a_retry() {
    let mut h = Harness::new();
    let mut rtp = Client::alice(CLIENT);
    let response = rtp.call(&mut h, Method::ALLOCATE, &[udp(), reserve_pair()]);
    let token = response.attr(AttrType::RESERVATION_TOKEN).unwrap();
    h.io.fail_next_binds(1);
    let mut rtcp = Client::alice(client_at(5001));
    let refused = rtcp.call(&mut h, Method::ALLOCATE, &[udp(), reservation(&token)]);
    assert_eq!(refused.error_code(), Some(508));
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn a_pair_whose_even_port_is_taken_moves_to_another_pair() {
    let mut h = Harness::with_config(|c| c.relay_ports = 50000..=50003);
    h.io.fail_next_binds(1);
    let mut rtp = Client::alice(CLIENT);
    let response = rtp.call(&mut h, Method::ALLOCATE, &[udp(), reserve_pair()]);
    let port = relayed_port(&response);
    assert_eq!(h.bound, [bound_at(port)]);
    // The failed pair was given back whole: with the new pair held, the other two ports
    // are free again, and only they are.
    let mut others: Vec<u16> = (0..2)
        .map(|i| relayed_port(&Client::alice(client_at(5001 + i)).allocate_response(&mut h)))
        .collect();
    others.sort();
    let failed = if port == 50000 { 50002 } else { 50000 };
    assert_eq!(others, [failed, failed + 1]);
}

// ---------------------------------------------------------------- DONT-FRAGMENT

#[test]
fn dont_fragment_in_allocate_opens_the_relay_socket_without_fragmentation() {
    let mut h = Harness::new();
    let mut plain = Client::alice(client_at(5001));
    plain.allocate(&mut h);
    let mut alice = Client::alice(CLIENT);
    let dont_fragment = Attr::Raw(AttrType::DONT_FRAGMENT, vec![]);
    let response = alice.call(&mut h, Method::ALLOCATE, &[udp(), dont_fragment]);
    assert_eq!(response.class(), Class::Success, "honoured, not refused");
    let port = relayed_port(&response);
    assert_eq!(
        h.io.dont_fragment,
        [bound_at(port)],
        "only that allocation's socket"
    );
    // Also when the first port is taken and another is tried.
    h.io.fail_next_binds(1);
    let mut retried = Client::alice(client_at(5002));
    let dont_fragment = Attr::Raw(AttrType::DONT_FRAGMENT, vec![]);
    let response = retried.call(&mut h, Method::ALLOCATE, &[udp(), dont_fragment]);
    let port = relayed_port(&response);
    assert_eq!(h.io.dont_fragment.len(), 3);
    assert_eq!(h.io.dont_fragment[2], bound_at(port));
}

#[test]
fn a_send_indication_with_dont_fragment_asks_for_df_on_that_datagram() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    alice.permit(&mut h, PEER);
    let dont_fragment = Attr::Raw(AttrType::DONT_FRAGMENT, vec![]);
    let with = as_indication(build(
        Method::SEND,
        &[peer(PEER), data(b"df"), dont_fragment],
        None,
        false,
    ));
    let without = as_indication(build(
        Method::SEND,
        &[peer(PEER), data(b"any")],
        None,
        false,
    ));
    let df = |h: &mut Harness, bytes: &[u8]| {
        h.server
            .handle_client_packet(h.now, CLIENT, bytes)
            .map(|to_peer| to_peer.dont_fragment)
    };
    assert_eq!(df(&mut h, &with), Some(true));
    assert_eq!(df(&mut h, &without), Some(false));
    assert!(
        h.io.dont_fragment.is_empty(),
        "the socket itself is left as it was"
    );
}

// ---------------------------------------------------------------- channel numbers

#[test]
fn rfc_5766_channel_numbers_are_accepted_by_default() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    let relayed = alice.allocate(&mut h);
    let response = alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x7FFF), peer(PEER)]);
    assert_eq!(response.class(), Class::Success);
    let mut frame = ChannelData::header(0x7FFF, 3).to_vec();
    frame.extend_from_slice(b"abc");
    assert_eq!(
        h.client_to_peer(CLIENT, &frame),
        Some((h.bound[0], PEER, b"abc".to_vec()))
    );
    let (_, bytes) = h.peer_to_client(relayed, PEER, b"xyz").unwrap();
    assert_eq!(bytes, [0x7F, 0xFF, 0x00, 0x03, b'x', b'y', b'z']);
    let other: SocketAddr = "198.51.100.9:1".parse().unwrap();
    let mid = alice.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[channel(0x5000), peer(other)],
    );
    assert_eq!(mid.class(), Class::Success);
}

#[test]
fn strict_rfc_8656_channel_numbers_refuse_the_old_range() {
    let mut h = Harness::with_config(|c| c.channel_numbers = ChannelNumbers::Rfc8656);
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    for bad in [0x5000, 0x7FFF] {
        let response = alice.call(&mut h, Method::CHANNEL_BIND, &[channel(bad), peer(PEER)]);
        assert_eq!(response.error_code(), Some(400), "{bad:#x}");
    }
    let ok = alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x4FFF), peer(PEER)]);
    assert_eq!(ok.class(), Class::Success);
    // ChannelData on a number that cannot be bound is an unbound channel: dropped.
    let mut frame = ChannelData::header(0x5000, 2).to_vec();
    frame.extend_from_slice(b"hi");
    assert_eq!(h.client_to_peer(CLIENT, &frame), None);
    assert_eq!(h.server.stats().dropped(DropReason::UnboundChannel), 1);
}

// ---------------------------------------------------------------- address families

fn dual_stack(c: &mut ServerConfig) {
    c.relays.push(RelayAddress {
        bind: "2001:db8:1::10".parse().unwrap(),
        public: "2001:db8:1::10".parse().unwrap(),
    });
    c.peers = PeerPolicy::new(
        vec![
            "198.51.100.0/24".parse().unwrap(),
            "2001:db8:5::/48".parse().unwrap(),
        ],
        vec![],
    );
}

const PEER_V6: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 5, 0, 0, 0, 0, 7)),
    4000,
);

fn family(code: u8) -> Attr {
    Attr::Raw(AttrType::REQUESTED_ADDRESS_FAMILY, vec![code, 0, 0, 0])
}

fn additional_family(code: u8) -> Attr {
    Attr::Raw(AttrType::ADDITIONAL_ADDRESS_FAMILY, vec![code, 0, 0, 0])
}

#[test]
fn requested_address_family_ipv6_gets_an_ipv6_relay() {
    let mut h = Harness::with_config(dual_stack);
    let mut alice = Client::alice(CLIENT);
    let response = alice.call(&mut h, Method::ALLOCATE, &[udp(), family(2)]);
    let relayed = response.xors(AttrType::XOR_RELAYED_ADDRESS);
    assert_eq!(relayed.len(), 1);
    assert!(relayed[0].is_ipv6());
    // An IPv4 peer does not fit an IPv6 relay.
    let response = alice.call(&mut h, Method::CREATE_PERMISSION, &[peer(PEER)]);
    assert_eq!(response.error_code(), Some(443));
    alice.permit(&mut h, PEER_V6);
    let bound = SocketAddr::new("2001:db8:1::10".parse().unwrap(), relayed[0].port());
    let to_client = h
        .server
        .handle_peer_packet(h.now, RelayAddr(bound), PeerAddr(PEER_V6), b"v6");
    assert!(to_client.is_some());
}

#[test]
fn additional_address_family_gives_a_dual_allocation() {
    let mut h = Harness::with_config(dual_stack);
    let mut alice = Client::alice(CLIENT);
    let response = alice.call(&mut h, Method::ALLOCATE, &[udp(), additional_family(2)]);
    assert_eq!(response.class(), Class::Success);
    let relayed = response.xors(AttrType::XOR_RELAYED_ADDRESS);
    assert_eq!(relayed.len(), 2);
    assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6(), "{relayed:?}");
    assert_eq!(h.bound.len(), 2);
    // Peers of both families work, each through the relay of its family.
    alice.permit(&mut h, PEER);
    alice.permit(&mut h, PEER_V6);
    let send_v4 = as_indication(build(Method::SEND, &[peer(PEER), data(b"4")], None, false));
    let send_v6 = as_indication(build(
        Method::SEND,
        &[peer(PEER_V6), data(b"6")],
        None,
        false,
    ));
    assert_eq!(h.client_to_peer(CLIENT, &send_v4).unwrap().0, h.bound[0]);
    assert_eq!(h.client_to_peer(CLIENT, &send_v6).unwrap().0, h.bound[1]);
    // Deleting the allocation releases both sockets.
    alice.call(&mut h, Method::REFRESH, &[lifetime(0)]);
    assert_eq!(h.released.len(), 2);
}

#[test]
fn additional_family_without_ipv6_relay_answers_address_error_code() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    let response = alice.call(&mut h, Method::ALLOCATE, &[udp(), additional_family(2)]);
    assert_eq!(response.class(), Class::Success);
    assert_eq!(response.xors(AttrType::XOR_RELAYED_ADDRESS).len(), 1);
    let error = response.attr(AttrType::ADDRESS_ERROR_CODE).unwrap();
    assert_eq!(error[0], 2, "the IPv6 family");
    assert_eq!(ErrorCode::decode_code(&error), Some(440));
}

#[test]
fn refresh_zero_for_one_family_keeps_the_other_relay_of_a_dual_allocation() {
    let mut h = Harness::with_config(dual_stack);
    let mut alice = Client::alice(CLIENT);
    alice.call(&mut h, Method::ALLOCATE, &[udp(), additional_family(2)]);
    alice.permit(&mut h, PEER);
    alice.permit(&mut h, PEER_V6);
    let response = alice.call(&mut h, Method::REFRESH, &[family(2), lifetime(0)]);
    assert_eq!(response.class(), Class::Success);
    assert_eq!(
        h.released,
        vec![h.bound[1]],
        "only the IPv6 relay is released"
    );
    assert_eq!(h.server.allocation_count(), 1);
    let send_v4 = as_indication(build(Method::SEND, &[peer(PEER), data(b"4")], None, false));
    let send_v6 = as_indication(build(
        Method::SEND,
        &[peer(PEER_V6), data(b"6")],
        None,
        false,
    ));
    assert!(h.client_to_peer(CLIENT, &send_v4).is_some());
    assert!(h.client_to_peer(CLIENT, &send_v6).is_none());
    let response = alice.call(&mut h, Method::REFRESH, &[family(2)]);
    assert_eq!(response.error_code(), Some(443), "the IPv6 relay is gone");
}

#[test]
fn malformed_family_combinations_are_400() {
    let mut h = Harness::with_config(dual_stack);
    let mut alice = Client::alice(CLIENT);
    let both = [udp(), family(1), additional_family(2)];
    assert_eq!(
        alice.call(&mut h, Method::ALLOCATE, &both).error_code(),
        Some(400)
    );
    let v4_additional = [udp(), additional_family(1)];
    assert_eq!(
        alice
            .call(&mut h, Method::ALLOCATE, &v4_additional)
            .error_code(),
        Some(400)
    );
}

#[test]
fn default_family_is_configurable() {
    use rendez::turn::DefaultFamily;
    let v6_client = FiveTuple {
        client: "[2001:db8:9::1]:5000".parse().unwrap(),
        server: "[2001:db8:1::10]:3478".parse().unwrap(),
        ..CLIENT
    };
    for (default, client, want_v6) in [
        (DefaultFamily::Ipv4, v6_client, false),
        (DefaultFamily::Ipv6, CLIENT, true),
        (DefaultFamily::MatchClient, v6_client, true),
        (DefaultFamily::MatchClient, CLIENT, false),
    ] {
        let mut h = Harness::with_config(|c| {
            dual_stack(c);
            c.default_family = default;
        });
        let mut alice = Client::alice(client);
        let relayed = alice.allocate(&mut h);
        assert_eq!(
            relayed.is_ipv6(),
            want_v6,
            "{default:?} for {}",
            client.client
        );
    }
}

#[test]
fn refresh_for_a_family_the_allocation_lacks_is_443() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    assert_eq!(
        alice
            .call(&mut h, Method::REFRESH, &[family(2)])
            .error_code(),
        Some(443)
    );
    assert_eq!(
        alice.call(&mut h, Method::REFRESH, &[family(1)]).class(),
        Class::Success
    );
}

#[test]
fn closing_a_stream_connection_ends_its_allocation() {
    let mut h = Harness::new();
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..CLIENT
    };
    let mut alice = Client::alice(tcp);
    alice.allocate(&mut h);
    h.server.handle_connection_closed(h.now, tcp);
    h.pump();
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.released, h.bound);
}

// ---------------------------------------------------------------- auth

#[test]
fn wrong_password_is_401_and_unknown_user_is_401() {
    let mut h = Harness::new();
    let mut mallory = Client::new(CLIENT, "alice", "guess");
    let response = mallory.call(&mut h, Method::ALLOCATE, &[udp()]);
    assert_eq!(response.error_code(), Some(401));
    assert!(response.attr(AttrType::NONCE).is_some());
    let mut nobody = Client::new(CLIENT, "nobody", "x");
    let unknown = nobody.call(&mut h, Method::ALLOCATE, &[udp()]);
    assert_eq!(
        unknown.bytes, response.bytes,
        "an unknown name is answered exactly like a wrong password"
    );
    let mut hidden = Client::new(CLIENT, "nobody", "x").sha256();
    hidden.anonymous = true;
    let wrong =
        Client::new(CLIENT, "alice", "guess")
            .sha256()
            .call(&mut h, Method::ALLOCATE, &[udp()]);
    assert_eq!(wrong.error_code(), Some(401));
    assert_eq!(
        hidden.call(&mut h, Method::ALLOCATE, &[udp()]).bytes,
        wrong.bytes
    );
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn integrity_without_username_realm_or_nonce_is_400() {
    let mut h = Harness::new();
    let key = rendez::stun::long_term_key("alice", REALM, "wonderland");
    let request = build(
        Method::ALLOCATE,
        &[udp()],
        Some(Auth {
            username: None,
            nonce: b"x",
            key: LongTermKey::md5(key),
            ..Auth::default()
        }),
        false,
    );
    assert_eq!(h.request(CLIENT, &request).error_code(), Some(400));
}

#[test]
fn stale_nonce_is_438_with_a_fresh_nonce_that_works() {
    let mut h = Harness::with_config(|c| c.nonce_lifetime = Duration::from_secs(600));
    let mut alice = Client::alice(CLIENT);
    assert_eq!(
        alice
            .call(&mut h, Method::ALLOCATE, &[udp(), lifetime(3600)])
            .class(),
        Class::Success
    );
    h.advance(Duration::from_secs(601));
    let stale = alice.call_once(
        &mut h,
        Method::REFRESH,
        &[lifetime(600)],
        TransactionId([7; 12]),
    );
    assert_eq!(stale.error_code(), Some(438));
    assert_eq!(stale.attr(AttrType::REALM), Some(REALM.as_bytes().to_vec()));
    // `call` picks up the new nonce from the 438 and retries.
    assert_eq!(
        alice
            .call(&mut h, Method::REFRESH, &[lifetime(600)])
            .class(),
        Class::Success
    );
}

#[test]
fn nonce_from_another_client_address_is_stale() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.call(&mut h, Method::ALLOCATE, &[udp()]);
    let mut thief = Client::alice(client_at(6000));
    thief.nonce = alice.nonce.clone();
    let response = thief.call_once(&mut h, Method::ALLOCATE, &[udp()], TransactionId([8; 12]));
    assert_eq!(response.error_code(), Some(438));
}

#[test]
fn rest_credentials_work_with_every_secret_until_they_expire() {
    let mut h = Harness::new();
    for (port, secret) in [(7001, "old-secret-1"), (7002, SECRET)] {
        let c = rendez::credential::mint(
            secret,
            "bob",
            std::time::UNIX_EPOCH + Duration::from_secs(UNIX_START + 60),
        );
        let mut bob = Client::new(client_at(port), &c.username, &c.password);
        assert_eq!(
            bob.call(&mut h, Method::ALLOCATE, &[udp()]).class(),
            Class::Success,
            "{secret}"
        );
    }
    let expired = rendez::credential::mint(
        SECRET,
        "bob",
        std::time::UNIX_EPOCH + Duration::from_secs(UNIX_START - 1),
    );
    let mut late = Client::new(client_at(7003), &expired.username, &expired.password);
    assert_eq!(
        late.call(&mut h, Method::ALLOCATE, &[udp()]).error_code(),
        Some(401)
    );
    let unknown = rendez::credential::mint(
        "not-configured",
        "bob",
        std::time::UNIX_EPOCH + Duration::from_secs(UNIX_START + 60),
    );
    let mut forged = Client::new(client_at(7004), &unknown.username, &unknown.password);
    assert_eq!(
        forged.call(&mut h, Method::ALLOCATE, &[udp()]).error_code(),
        Some(401)
    );
}

#[test]
fn rest_credential_expires_while_time_passes() {
    let mut h = Harness::new();
    let c = rendez::credential::mint(
        SECRET,
        "bob",
        std::time::UNIX_EPOCH + Duration::from_secs(UNIX_START + 120),
    );
    let mut bob = Client::new(CLIENT, &c.username, &c.password);
    assert_eq!(
        bob.call(&mut h, Method::ALLOCATE, &[udp()]).class(),
        Class::Success
    );
    h.advance(Duration::from_secs(121));
    assert_eq!(
        bob.call(&mut h, Method::REFRESH, &[]).error_code(),
        Some(401)
    );
}

#[test]
fn static_user_with_precomputed_key_authenticates() {
    let key = rendez::stun::long_term_key("carol", REALM, "secret-pass");
    let mut h = Harness::with_config(|c| c.users.push(("carol".into(), UserSecret::Key(key))));
    let mut carol = Client::new(CLIENT, "carol", "secret-pass");
    assert_eq!(
        carol.call(&mut h, Method::ALLOCATE, &[udp()]).class(),
        Class::Success
    );
}

#[test]
fn other_user_on_the_same_allocation_is_441() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.call(&mut h, Method::ALLOCATE, &[udp()]);
    let c = rendez::credential::mint(
        SECRET,
        "bob",
        std::time::UNIX_EPOCH + Duration::from_secs(UNIX_START + 600),
    );
    let mut bob = Client::new(CLIENT, &c.username, &c.password);
    assert_eq!(
        bob.call(&mut h, Method::REFRESH, &[]).error_code(),
        Some(441)
    );
}

#[test]
fn sha256_integrity_is_answered_with_sha256() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.algorithm = IntegrityAlgorithm::Sha256;
    let response = alice.call(&mut h, Method::ALLOCATE, &[udp()]);
    assert_eq!(response.class(), Class::Success);
    assert_eq!(
        response.message().verify_integrity(alice.key().as_bytes()),
        Some(IntegrityAlgorithm::Sha256)
    );
}

// ---------------------------------------------------------------- RFC 8489: algorithms, USERHASH

/// PASSWORD-ALGORITHMS as every challenge offers it: SHA-256 preferred, then MD5.
const OFFER: [u8; 8] = [0, 2, 0, 0, 0, 1, 0, 0];

#[test]
fn challenge_offers_sha256_and_md5_under_a_nonce_cookie() {
    let mut h = Harness::new();
    let challenge = h.request(CLIENT, &build(Method::ALLOCATE, &[udp()], None, false));
    assert_eq!(challenge.error_code(), Some(401));
    assert_eq!(
        challenge.attr(AttrType::PASSWORD_ALGORITHMS),
        Some(OFFER.to_vec())
    );
    let nonce = String::from_utf8(challenge.attr(AttrType::NONCE).unwrap()).unwrap();
    // "obMatJos2" and the feature set 0x000003: password algorithms, username anonymity.
    assert!(nonce.starts_with("obMatJos2AAAD"), "{nonce}");
}

#[test]
fn sha256_client_signs_in_and_is_answered_with_sha256_integrity_only() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT).sha256();
    let response = alice.call(&mut h, Method::ALLOCATE, &[udp()]);
    assert_eq!(response.class(), Class::Success);
    let sha256_key = LongTermKey::derive(PasswordAlgorithm::Sha256, "alice", REALM, "wonderland");
    assert_eq!(alice.key(), sha256_key);
    assert_eq!(
        response.message().verify_integrity(sha256_key.as_bytes()),
        Some(IntegrityAlgorithm::Sha256)
    );
    assert!(
        !response.verifies(&Client::alice(CLIENT).key()),
        "not the MD5 key"
    );
    let types = attribute_types(&response.bytes);
    assert!(types.contains(&AttrType::MESSAGE_INTEGRITY_SHA256.0));
    assert!(
        !types.contains(&AttrType::MESSAGE_INTEGRITY.0),
        "{types:x?}"
    );
    // The conversation goes on with the same key and attribute.
    alice.permit(&mut h, PEER);
    let refresh = alice.call(&mut h, Method::REFRESH, &[lifetime(600)]);
    assert_eq!(refresh.class(), Class::Success);
    assert!(refresh.verifies(&sha256_key));
}

#[test]
fn client_before_rfc_8489_ignores_the_offer_and_signs_in_with_md5() {
    let mut h = Harness::new();
    let mut browser = Client::alice(CLIENT);
    let response = browser.call(&mut h, Method::ALLOCATE, &[udp()]);
    assert_eq!(browser.offer, Some(OFFER.to_vec()), "it was offered");
    assert_eq!(response.class(), Class::Success);
    assert_eq!(
        response
            .message()
            .verify_integrity(browser.key().as_bytes()),
        Some(IntegrityAlgorithm::Sha1)
    );
    assert_eq!(browser.key().algorithm(), PasswordAlgorithm::Md5);
}

#[test]
fn stripped_or_altered_password_algorithms_are_refused_with_400() {
    let mut h = Harness::new();
    let md5_only = PasswordAlgorithm::encode_list(&[PasswordAlgorithm::Md5]);
    // What a man in the middle leaves of the offer in the 401, and what the client picks.
    for (port, offer, pick) in [
        (7501, None, PasswordAlgorithm::Sha256),
        (7502, Some(md5_only), PasswordAlgorithm::Md5),
        (
            7503,
            Some([&OFFER[4..], &OFFER[..4]].concat()),
            PasswordAlgorithm::Sha256,
        ),
    ] {
        let mut alice = Client::alice(client_at(port)).sha256();
        alice.password_algorithm = Some(pick);
        let challenge = h.request(alice.tuple, &build(Method::ALLOCATE, &[udp()], None, false));
        alice.nonce = challenge.attr(AttrType::NONCE);
        alice.offer = offer;
        let refused = alice.call_once(&mut h, Method::ALLOCATE, &[udp()], TransactionId([3; 12]));
        assert_eq!(refused.error_code(), Some(400), "port {port}");
        assert_eq!(
            refused.attr(AttrType::NONCE),
            None,
            "no challenge to retry with"
        );
        assert!(!refused.message().has_integrity());
    }
    let stats = h.server.stats();
    assert_eq!(stats.auth_failures(Rejection::Downgrade), 3);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn nonce_cookie_with_a_feature_bit_cleared_is_stale() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT).sha256();
    let challenge = h.request(CLIENT, &build(Method::ALLOCATE, &[udp()], None, false));
    alice.learn(&challenge);
    // The cookie now claims that no algorithms were offered ("AAAC": anonymity only).
    let nonce = String::from_utf8(alice.nonce.take().unwrap()).unwrap();
    alice.nonce = Some(
        nonce
            .replacen("obMatJos2AAAD", "obMatJos2AAAC", 1)
            .into_bytes(),
    );
    alice.offer = None;
    alice.password_algorithm = None;
    let stale = alice.call_once(&mut h, Method::ALLOCATE, &[udp()], TransactionId([4; 12]));
    assert_eq!(stale.error_code(), Some(438));
    assert_eq!(
        stale.attr(AttrType::PASSWORD_ALGORITHMS),
        Some(OFFER.to_vec())
    );
    assert!(String::from_utf8(stale.attr(AttrType::NONCE).unwrap())
        .unwrap()
        .starts_with("obMatJos2AAAD"));
}

#[test]
fn userhash_signs_in_a_static_user_without_naming_it() {
    let mut h = Harness::new();
    for (port, client) in [
        (7601, Client::alice(client_at(7601))),
        (7602, Client::alice(client_at(7602)).sha256()),
    ] {
        let mut anonymous = client;
        anonymous.anonymous = true;
        let response = anonymous.call(&mut h, Method::ALLOCATE, &[udp()]);
        assert_eq!(response.class(), Class::Success, "port {port}");
        assert!(response.verifies(&anonymous.key()));
        // The allocation is alice's: she refreshes it by name.
        let mut by_name = Client::alice(client_at(port));
        assert_eq!(
            by_name.call(&mut h, Method::REFRESH, &[]).class(),
            Class::Success
        );
    }
}

#[test]
fn userhash_cannot_name_a_rest_user_but_its_name_can() {
    // REST names are not known before a request brings them, and a hash cannot be turned
    // back into one: the server has nothing to compare a USERHASH with.
    let mut h = Harness::new();
    let mut bob = Client::rest(CLIENT, "bob", UNIX_START + 600).sha256();
    bob.anonymous = true;
    assert_eq!(
        bob.call(&mut h, Method::ALLOCATE, &[udp()]).error_code(),
        Some(401)
    );
    assert_eq!(h.server.stats().auth_failures(Rejection::UnknownUser), 1);
    bob.anonymous = false;
    let response = bob.call(&mut h, Method::ALLOCATE, &[udp()]);
    assert_eq!(
        response.class(),
        Class::Success,
        "SHA-256 with a REST credential"
    );
    assert!(response.verifies(&bob.key()));
}

#[test]
fn user_with_a_precomputed_md5_key_cannot_choose_sha256() {
    let key = rendez::stun::long_term_key("carol", REALM, "secret-pass");
    let mut h = Harness::with_config(|c| c.users.push(("carol".into(), UserSecret::Key(key))));
    let mut carol = Client::new(CLIENT, "carol", "secret-pass").sha256();
    let refused = carol.call(&mut h, Method::ALLOCATE, &[udp()]);
    assert_eq!(refused.error_code(), Some(401));
    assert_eq!(
        refused.attr(AttrType::PASSWORD_ALGORITHMS),
        Some(OFFER.to_vec())
    );
    assert_eq!(
        h.server.stats().auth_failures(Rejection::Sha256Unavailable),
        1
    );
    // MD5 from the same offer, even with MESSAGE-INTEGRITY-SHA256, works.
    carol.password_algorithm = Some(PasswordAlgorithm::Md5);
    assert_eq!(
        carol.call(&mut h, Method::ALLOCATE, &[udp()]).class(),
        Class::Success
    );
}

#[test]
fn unknown_comprehension_required_attribute_is_420_and_optional_is_ignored() {
    let mut h = Harness::new();
    let odd = || Attr::Raw(AttrType(0x7777), vec![1, 2, 3, 4]);
    // Binding needs no authentication: 420 at once.
    let response = h.request(CLIENT, &build(Method::BINDING, &[odd()], None, false));
    assert_eq!(response.error_code(), Some(420));
    assert_eq!(
        response.attr(AttrType::UNKNOWN_ATTRIBUTES),
        Some(vec![0x77, 0x77])
    );
    // TURN requests are authenticated first, so the 420 carries integrity.
    let mut alice = Client::alice(CLIENT);
    let response = alice.call(&mut h, Method::ALLOCATE, &[udp(), odd()]);
    assert_eq!(response.error_code(), Some(420));
    assert!(response.verifies(&alice.key()));
    assert_eq!(h.server.allocation_count(), 0);
    let optional = Attr::Raw(AttrType(0xC001), vec![1]);
    let response = h.request(CLIENT, &build(Method::BINDING, &[optional], None, false));
    assert_eq!(response.class(), Class::Success);
}

#[test]
fn unknown_method_is_400() {
    let mut h = Harness::new();
    let response = h.request(CLIENT, &build(Method(0x0ABC), &[], None, false));
    assert_eq!(response.error_code(), Some(400));
}

// ---------------------------------------------------------------- TCP relays (RFC 6062)

#[test]
fn tcp_allocation_needs_a_stream_and_no_datagram_attributes() {
    let mut h = Harness::new();
    // RFC 6062 §5.1: over UDP it is 400 (not 442: TCP is a transport this server relays).
    let mut over_udp = Client::alice(CLIENT);
    let response = over_udp.call(&mut h, Method::ALLOCATE, &[tcp_transport()]);
    assert_eq!(response.error_code(), Some(400));
    assert!(response.verifies(&over_udp.key()));
    let even_port = Attr::Raw(AttrType::EVEN_PORT, vec![0]);
    let dont_fragment = Attr::Raw(AttrType::DONT_FRAGMENT, vec![]);
    for (port, datagram_only) in [(6001, even_port), (6002, dont_fragment)] {
        let mut alice = Client::alice(tcp_at(port));
        let response = alice.call(&mut h, Method::ALLOCATE, &[tcp_transport(), datagram_only]);
        assert_eq!(response.error_code(), Some(400));
    }
    assert!(h.bound.is_empty() && h.tcp.is_empty());
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn tcp_allocation_listens_and_a_retry_listens_again() {
    let mut h = Harness::new();
    h.io.fail_next_binds(1);
    let mut alice = Client::alice(CONTROL);
    let response = alice.call(&mut h, Method::ALLOCATE, &[tcp_transport()]);
    assert_eq!(response.class(), Class::Success);
    let relayed = response.xor(AttrType::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(
        h.bound,
        [bound_of(relayed)],
        "the second port is listened on"
    );
    let [Event::Listen(taken, RelayBind::Unavailable)] = h.tcp[..] else {
        panic!(
            "the first port was listened on too, and nothing else: {:?}",
            h.tcp
        );
    };
    assert_ne!(taken, h.bound[0]);
}

#[test]
fn connect_answers_once_connected_with_a_connection_id() {
    let mut h = Harness::new();
    let (mut alice, relayed) = tcp_allocation(&mut h, CONTROL);
    let sent = alice.send(&mut h, Method::CONNECT, &[peer(TCP_PEER)]);
    assert!(sent.is_empty(), "answered when the connection is open");
    let [Event::Connect(id, from, to)] = h.tcp[..] else {
        panic!("expected one Connect: {:?}", h.tcp);
    };
    assert_eq!(
        (from, to),
        (bound_of(relayed), TCP_PEER),
        "from the relayed address"
    );
    h.server.handle_peer_connected(h.now, id, true);
    let response = only_response(h.pump(), CONTROL);
    assert_eq!(
        (response.class(), response.message().method()),
        (Class::Success, Method::CONNECT)
    );
    assert_eq!(response.u32(AttrType::CONNECTION_ID), Some(id.0));
    assert!(response.verifies(&alice.key()));
    assert_eq!(h.server.stats().tcp.connected, 1);
    assert_eq!(h.server.gauges().tcp_connections.pending, 1);
}

#[test]
fn connect_to_a_denied_peer_is_403_and_connects_nowhere() {
    let mut h = Harness::new();
    let (mut alice, _) = tcp_allocation(&mut h, CONTROL);
    let private: SocketAddr = "10.1.2.3:80".parse().unwrap();
    // This host's own address on a port that is not a relay port: a local service.
    let own_service: SocketAddr = format!("{RELAY_BIND_IP}:22").parse().unwrap();
    let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
    for denied in [private, own_service, mapped] {
        let response = alice.call(&mut h, Method::CONNECT, &[peer(denied)]);
        assert_eq!(response.error_code(), Some(403), "{denied}");
    }
    assert!(h.tcp.is_empty());
}

#[test]
fn connect_without_peer_is_400_and_on_a_udp_allocation_too() {
    let mut h = Harness::new();
    let (mut alice, _) = tcp_allocation(&mut h, CONTROL);
    assert_eq!(
        alice.call(&mut h, Method::CONNECT, &[]).error_code(),
        Some(400)
    );
    let mut bob = Client::alice(CLIENT);
    bob.allocate(&mut h);
    let response = bob.call(&mut h, Method::CONNECT, &[peer(TCP_PEER)]);
    assert_eq!(
        response.error_code(),
        Some(400),
        "a UDP allocation cannot Connect"
    );
    let mut nobody = Client::alice(tcp_at(6100));
    let response = nobody.call(&mut h, Method::CONNECT, &[peer(TCP_PEER)]);
    assert_eq!(response.error_code(), Some(437), "no allocation");
}

#[test]
fn second_connect_to_the_same_peer_is_446_until_the_first_ends() {
    let mut h = Harness::new();
    let (mut alice, _) = tcp_allocation(&mut h, CONTROL);
    assert!(alice
        .send(&mut h, Method::CONNECT, &[peer(TCP_PEER)])
        .is_empty());
    let connecting = alice.call(&mut h, Method::CONNECT, &[peer(TCP_PEER)]);
    assert_eq!(connecting.error_code(), Some(446), "while connecting");
    let id = connect_id(&h, 0);
    h.server.handle_peer_connected(h.now, id, true);
    h.pump();
    let pending = alice.call(&mut h, Method::CONNECT, &[peer(TCP_PEER)]);
    assert_eq!(
        pending.error_code(),
        Some(446),
        "while waiting for its bind"
    );
    let other_port = SocketAddr::new(TCP_PEER.ip(), TCP_PEER.port() + 1);
    assert!(
        alice
            .send(&mut h, Method::CONNECT, &[peer(other_port)])
            .is_empty(),
        "another port of the same host is another peer"
    );
}

#[test]
fn failed_connect_is_447_and_a_silent_one_is_447_after_30_seconds() {
    let mut h = Harness::new();
    let (mut alice, _) = tcp_allocation(&mut h, CONTROL);
    alice.send(&mut h, Method::CONNECT, &[peer(TCP_PEER)]);
    let refused = connect_id(&h, 0);
    h.server.handle_peer_connected(h.now, refused, false);
    assert_eq!(only_response(h.pump(), CONTROL).error_code(), Some(447));

    alice.send(&mut h, Method::CONNECT, &[peer(TCP_PEER)]);
    let silent = connect_id(&h, 1);
    h.now += CONNECT_TIMEOUT - Duration::from_millis(1);
    h.server.handle_timeout(h.now);
    assert!(h.pump().is_empty(), "not before 30 s");
    h.now += Duration::from_millis(1);
    h.server.handle_timeout(h.now);
    assert_eq!(only_response(h.pump(), CONTROL).error_code(), Some(447));
    assert_eq!(
        h.tcp.last(),
        Some(&Event::ClosePeer(silent)),
        "the attempt is abandoned"
    );
    // A connection that opens after all is closed at once.
    h.tcp.clear();
    h.server.handle_peer_connected(h.now, silent, true);
    assert!(h.pump().is_empty());
    assert_eq!(h.tcp, [Event::ClosePeer(silent)]);
    assert_eq!(h.server.stats().tcp.failed, 2);
}

#[test]
fn connection_bind_makes_a_new_connection_the_data_connection() {
    let mut h = Harness::new();
    let (mut alice, _) = tcp_allocation(&mut h, CONTROL);
    let id = connect(&mut h, &mut alice, TCP_PEER);
    let data = tcp_at(6200);
    let response =
        Client::alice(data).call(&mut h, Method::CONNECTION_BIND, &[connection_id(id.0)]);
    assert_eq!(response.class(), Class::Success);
    assert!(response.verifies(&alice.key()), "the same credentials");
    assert_eq!(h.tcp.last(), Some(&Event::Bridge(id, data)));
    let counts = h.server.gauges().tcp_connections;
    assert_eq!((counts.pending, counts.bound), (0, 1));
    // Bound: no timer closes it.
    h.now += Duration::from_secs(120);
    h.server.handle_timeout(h.now);
    h.pump();
    assert_eq!(h.tcp.last(), Some(&Event::Bridge(id, data)));
    // It ends with its data connection (the I/O layer saw either side close).
    h.server.handle_connection_closed(h.now, data);
    h.pump();
    assert_eq!(h.tcp.last(), Some(&Event::ClosePeer(id)));
    assert!(h.server.has_allocation(&CONTROL), "the allocation lives on");
    assert_eq!(h.server.gauges().tcp_connections.bound, 0);
}

#[test]
fn connection_bind_is_400_unless_it_names_a_pending_connection_of_the_same_user() {
    let mut h = Harness::new();
    let (mut alice, _) = tcp_allocation(&mut h, CONTROL);
    let id = connect(&mut h, &mut alice, TCP_PEER);
    let bind = |h: &mut Harness, client: &mut Client, attrs: &[Attr]| {
        client.call(h, Method::CONNECTION_BIND, attrs).error_code()
    };
    let mut data = Client::alice(tcp_at(6300));
    assert_eq!(bind(&mut h, &mut data, &[]), Some(400), "no CONNECTION-ID");
    assert_eq!(
        bind(&mut h, &mut data, &[connection_id(id.0 ^ 1)]),
        Some(400),
        "unknown id"
    );
    let mut over_udp = Client::alice(client_at(6301));
    assert_eq!(
        bind(&mut h, &mut over_udp, &[connection_id(id.0)]),
        Some(400),
        "over UDP"
    );
    assert_eq!(
        bind(&mut h, &mut alice, &[connection_id(id.0)]),
        Some(400),
        "on the control connection"
    );
    let mut mallory = Client::rest(tcp_at(6302), "mallory", UNIX_START + 600);
    assert_eq!(
        bind(&mut h, &mut mallory, &[connection_id(id.0)]),
        Some(400),
        "another user"
    );
    let mut stranger = Client::new(tcp_at(6303), "alice", "guess");
    assert_eq!(
        bind(&mut h, &mut stranger, &[connection_id(id.0)]),
        Some(401),
        "wrong password"
    );
    assert_eq!(
        bind(&mut h, &mut data, &[connection_id(id.0)]),
        None,
        "the right one binds"
    );
    let mut again = Client::alice(tcp_at(6304));
    assert_eq!(
        bind(&mut h, &mut again, &[connection_id(id.0)]),
        Some(400),
        "bound already"
    );
    assert_eq!(h.server.stats().tcp.bound, 1);
}

#[test]
fn a_data_connection_may_use_its_control_connections_nonce() {
    let mut h = Harness::new();
    let (mut alice, _) = tcp_allocation(&mut h, CONTROL);
    let id = connect(&mut h, &mut alice, TCP_PEER);
    // As coturn's client does: the nonce of the control connection, on a new connection.
    let mut data = Client::alice(tcp_at(6350));
    data.nonce = alice.nonce.clone();
    let response = data.call_once(
        &mut h,
        Method::CONNECTION_BIND,
        &[connection_id(id.0)],
        TransactionId([9; 12]),
    );
    assert_eq!(response.class(), Class::Success);
    // Anything else is bound to its own connection: a nonce sniffed from plain TCP cannot
    // be replayed from another connection, even from the same address.
    let mut replay = Client::alice(tcp_at(6351));
    replay.nonce = alice.nonce.clone();
    let response = replay.call_once(&mut h, Method::REFRESH, &[], TransactionId([9; 12]));
    assert_eq!(response.error_code(), Some(438));
    // And a ConnectionBind from another address gets no exception.
    let second = connect(
        &mut h,
        &mut alice,
        SocketAddr::new(TCP_PEER.ip(), TCP_PEER.port() + 1),
    );
    let mut elsewhere = Client::alice(FiveTuple {
        client: "192.0.2.99:6352".parse().unwrap(),
        ..CONTROL
    });
    elsewhere.nonce = alice.nonce.clone();
    let response = elsewhere.call_once(
        &mut h,
        Method::CONNECTION_BIND,
        &[connection_id(second.0)],
        TransactionId([10; 12]),
    );
    assert_eq!(response.error_code(), Some(438));
}

#[test]
fn a_connection_not_bound_within_30_seconds_is_closed() {
    let mut h = Harness::new();
    let (mut alice, _) = tcp_allocation(&mut h, CONTROL);
    let id = connect(&mut h, &mut alice, TCP_PEER);
    h.tcp.clear();
    h.advance(CONNECTION_BIND_TIMEOUT - Duration::from_millis(1));
    assert!(h.tcp.is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.tcp, [Event::ClosePeer(id)]);
    let late =
        Client::alice(tcp_at(6400)).call(&mut h, Method::CONNECTION_BIND, &[connection_id(id.0)]);
    assert_eq!(late.error_code(), Some(400));
    assert_eq!(h.server.stats().tcp.expired, 1);
    assert_eq!(
        h.server.poll_timeout(),
        Some(h.now + Duration::from_secs(600) - CONNECTION_BIND_TIMEOUT),
        "only the allocation's own deadline is left"
    );
}

#[test]
fn a_peer_connection_is_announced_only_with_a_permission() {
    let mut h = Harness::new();
    let (mut alice, relayed) = tcp_allocation(&mut h, CONTROL);
    let relay = RelayAddr(bound_of(relayed));
    assert_eq!(
        h.server
            .handle_incoming_peer(h.now, relay, PeerAddr(TCP_PEER)),
        None
    );
    assert!(h.pump().is_empty(), "closed without a word to the client");
    alice.permit(&mut h, TCP_PEER);
    let id = h
        .server
        .handle_incoming_peer(h.now, relay, PeerAddr(TCP_PEER))
        .expect("kept: the peer has a permission");
    let indication = only_response(h.pump(), CONTROL);
    let m = indication.message();
    assert_eq!(
        (m.class(), m.method()),
        (Class::Indication, Method::CONNECTION_ATTEMPT)
    );
    assert_eq!(indication.xor(AttrType::XOR_PEER_ADDRESS), Some(TCP_PEER));
    assert_eq!(indication.u32(AttrType::CONNECTION_ID), Some(id.0));
    // Nobody else's relay, and not once the permission expired.
    let elsewhere = RelayAddr(SocketAddr::new(relay.0.ip(), relay.0.port() ^ 1));
    assert_eq!(
        h.server
            .handle_incoming_peer(h.now, elsewhere, PeerAddr(TCP_PEER)),
        None
    );
    h.advance(Duration::from_secs(300));
    assert_eq!(
        h.server
            .handle_incoming_peer(h.now, relay, PeerAddr(TCP_PEER)),
        None
    );
    let stats = h.server.stats().tcp;
    assert_eq!((stats.accepted, stats.refused), (1, 3));
    // The announced one binds like a connected one.
    let data = tcp_at(6500);
    h.tcp.clear();
    // (It expired with the permission's 300 s: announce a fresh one.)
    alice.permit(&mut h, TCP_PEER);
    let fresh = h
        .server
        .handle_incoming_peer(h.now, relay, PeerAddr(TCP_PEER))
        .unwrap();
    h.pump();
    let response =
        Client::alice(data).call(&mut h, Method::CONNECTION_BIND, &[connection_id(fresh.0)]);
    assert_eq!(response.class(), Class::Success);
    assert_eq!(h.tcp.last(), Some(&Event::Bridge(fresh, data)));
    assert_ne!(id, fresh);
}

#[test]
fn every_peer_connection_ends_with_its_allocation() {
    for ending in ["refresh 0", "control connection closed", "expiry"] {
        let mut h = Harness::new();
        let (mut alice, relayed) = tcp_allocation(&mut h, CONTROL);
        let bound = connect(&mut h, &mut alice, TCP_PEER);
        let data = tcp_at(6600);
        Client::alice(data).call(&mut h, Method::CONNECTION_BIND, &[connection_id(bound.0)]);
        let pending = connect(&mut h, &mut alice, SocketAddr::new(TCP_PEER.ip(), 81));
        alice.send(
            &mut h,
            Method::CONNECT,
            &[peer(SocketAddr::new(TCP_PEER.ip(), 82))],
        );
        let connecting = connect_id(&h, 2);
        h.tcp.clear();
        match ending {
            "refresh 0" => {
                alice.call(&mut h, Method::REFRESH, &[lifetime(0)]);
            }
            "control connection closed" => {
                h.server.handle_connection_closed(h.now, CONTROL);
                h.pump();
            }
            _ => {
                h.now += Duration::from_secs(600);
                h.server.handle_timeout(h.now);
                // The Connect still waiting is not answered: its allocation is gone.
                assert!(h.pump().is_empty());
            }
        }
        let mut closed: Vec<_> = h.tcp.clone();
        closed.sort_by_key(|e| format!("{e:?}"));
        let mut expected = vec![
            Event::ClosePeer(bound),
            Event::ClosePeer(pending),
            Event::ClosePeer(connecting),
        ];
        expected.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(closed, expected, "{ending}");
        assert_eq!(h.released, [bound_of(relayed)], "{ending}");
        assert_eq!(
            h.server.gauges().tcp_connections,
            Default::default(),
            "{ending}"
        );
        // The data connection closing afterwards changes nothing.
        h.tcp.clear();
        h.server.handle_connection_closed(h.now, data);
        h.pump();
        assert!(h.tcp.is_empty(), "{ending}");
        h.server.handle_peer_connected(h.now, connecting, true);
        h.pump();
        assert_eq!(
            h.tcp,
            [Event::ClosePeer(connecting)],
            "{ending}: a late connection is closed"
        );
    }
}

#[test]
fn connections_per_allocation_and_tcp_relays_in_all_are_limited() {
    let mut h = Harness::with_config(|c| {
        c.tcp_relays = TcpRelayLimits {
            per_allocation: 2,
            total: 3,
        }
    });
    let (mut alice, relayed) = tcp_allocation(&mut h, CONTROL);
    connect(&mut h, &mut alice, SocketAddr::new(TCP_PEER.ip(), 1));
    connect(&mut h, &mut alice, SocketAddr::new(TCP_PEER.ip(), 2));
    assert_no_room_for_another_peer_connection(&mut h, &mut alice, relayed, "two open already");
    // Another allocation has room of its own, until three relays exist on the server.
    let (mut bob, _) = tcp_allocation(&mut h, tcp_at(6701));
    connect(&mut h, &mut bob, SocketAddr::new(TCP_PEER.ip(), 4));
    let fourth = bob.call(
        &mut h,
        Method::CONNECT,
        &[peer(SocketAddr::new(TCP_PEER.ip(), 5))],
    );
    assert_eq!(fourth.error_code(), Some(508), "three relays on the server");
}

/// RFC 6062 peer connections per allocation are every open one, bound or not: relaying
/// ones hold sockets and buffers as much as waiting ones do.
#[test]
fn connections_per_allocation_count_bound_ones_too() {
    let mut h = Harness::with_config(|c| {
        c.tcp_relays = TcpRelayLimits {
            per_allocation: 2,
            total: 10,
        }
    });
    let (mut alice, relayed) = tcp_allocation(&mut h, CONTROL);
    let data_connections = [tcp_at(6800), tcp_at(6801)];
    for (port, data) in [(1, data_connections[0]), (2, data_connections[1])] {
        let id = connect(&mut h, &mut alice, SocketAddr::new(TCP_PEER.ip(), port));
        let bound =
            Client::alice(data).call(&mut h, Method::CONNECTION_BIND, &[connection_id(id.0)]);
        assert_eq!(bound.class(), Class::Success);
    }
    assert_no_room_for_another_peer_connection(&mut h, &mut alice, relayed, "two relaying already");
    // One ending makes room for another.
    h.server
        .handle_connection_closed(h.now, data_connections[0]);
    h.pump();
    connect(&mut h, &mut alice, SocketAddr::new(TCP_PEER.ip(), 3));
}

#[test]
fn a_tcp_allocation_relays_no_datagrams_and_binds_no_channels() {
    let mut h = Harness::new();
    let (mut alice, _) = tcp_allocation(&mut h, CONTROL);
    alice.permit(&mut h, TCP_PEER);
    let send = as_indication(build(
        Method::SEND,
        &[peer(TCP_PEER), data(b"x")],
        None,
        false,
    ));
    assert_eq!(h.client_to_peer(CONTROL, &send), None);
    assert_eq!(h.server.stats().dropped(DropReason::TcpAllocation), 1);
    let bind = alice.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[channel(0x4000), peer(TCP_PEER)],
    );
    assert_eq!(bind.error_code(), Some(400));
}

/// A TCP control connection.
const CONTROL: FiveTuple = FiveTuple {
    transport: Transport::Tcp,
    client: SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        6000,
    ),
    server: CLIENT.server,
};
/// A TCP peer the test policy allows.
const TCP_PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 8)),
    80,
);

fn tcp_at(port: u16) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::new(CONTROL.client.ip(), port),
        ..CONTROL
    }
}

fn tcp_transport() -> Attr {
    Attr::Raw(AttrType::REQUESTED_TRANSPORT, vec![6, 0, 0, 0])
}

fn connection_id(id: u32) -> Attr {
    Attr::Raw(AttrType::CONNECTION_ID, id.to_be_bytes().to_vec())
}

/// The relay address as bound, for an advertised one.
fn bound_of(relayed: SocketAddr) -> SocketAddr {
    SocketAddr::new(RELAY_BIND_IP.parse().unwrap(), relayed.port())
}

/// The TCP allocation at `relayed` of `client` has no room for another peer connection:
/// a Connect gets 508, and a permitted peer's connection to it is refused.
fn assert_no_room_for_another_peer_connection(
    h: &mut Harness,
    client: &mut Client,
    relayed: SocketAddr,
    why: &str,
) {
    let another = client.call(
        h,
        Method::CONNECT,
        &[peer(SocketAddr::new(TCP_PEER.ip(), 3))],
    );
    assert_eq!(another.error_code(), Some(508), "{why}");
    client.permit(h, TCP_PEER);
    let relay = RelayAddr(bound_of(relayed));
    let incoming = PeerAddr(SocketAddr::new(TCP_PEER.ip(), 9));
    assert_eq!(
        h.server.handle_incoming_peer(h.now, relay, incoming),
        None,
        "{why}: a peer's connection too"
    );
}

/// Alice's TCP allocation over `control`: the client and its advertised relayed address.
fn tcp_allocation(h: &mut Harness, control: FiveTuple) -> (Client, SocketAddr) {
    let mut alice = Client::alice(control);
    let response = alice.call(h, Method::ALLOCATE, &[tcp_transport()]);
    assert_eq!(response.class(), Class::Success);
    (alice, response.xor(AttrType::XOR_RELAYED_ADDRESS).unwrap())
}

/// The connection id of the `nth` Connect the I/O layer was asked for.
fn connect_id(h: &Harness, nth: usize) -> ConnectionId {
    h.tcp
        .iter()
        .filter_map(|e| match e {
            Event::Connect(id, ..) => Some(*id),
            _ => None,
        })
        .nth(nth)
        .expect("a Connect for the I/O layer")
}

/// Connect to `to`, the I/O layer connecting at once: the new connection's id.
fn connect(h: &mut Harness, client: &mut Client, to: SocketAddr) -> ConnectionId {
    assert!(client.send(h, Method::CONNECT, &[peer(to)]).is_empty());
    let Some(&Event::Connect(id, _, peer_addr)) = h.tcp.last() else {
        panic!("expected a Connect: {:?}", h.tcp);
    };
    assert_eq!(peer_addr, to);
    h.server.handle_peer_connected(h.now, id, true);
    let response = only_response(h.pump(), client.tuple);
    assert_eq!(response.u32(AttrType::CONNECTION_ID), Some(id.0));
    id
}

/// The one message sent, which must be for `to`.
fn only_response(mut sent: Vec<(FiveTuple, Vec<u8>)>, to: FiveTuple) -> Response {
    assert_eq!(sent.len(), 1, "expected one message: {sent:?}");
    let (actual, bytes) = sent.remove(0);
    assert_eq!(actual, to);
    Response { bytes }
}

// ---------------------------------------------------------------- Refresh and expiry

#[test]
fn allocation_expires_on_time_and_releases_its_relay() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    let relayed = alice.allocate(&mut h);
    alice.permit(&mut h, PEER);
    h.advance(Duration::from_secs(299));
    assert!(h.peer_to_client(relayed, PEER, b"still here").is_some());
    alice.permit(&mut h, PEER); // lasts until t = 599
    h.advance(Duration::from_secs(299)); // t = 598
    assert!(h.peer_to_client(relayed, PEER, b"nearly the end").is_some());
    h.advance(Duration::from_secs(2)); // t = 600: the allocation is gone
    assert!(h.peer_to_client(relayed, PEER, b"too late").is_none());
    assert_eq!(h.released, vec![h.bound[0]]);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(
        alice.call(&mut h, Method::REFRESH, &[]).error_code(),
        Some(437)
    );
}

#[test]
fn refresh_extends_and_lifetime_zero_deletes() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    h.advance(Duration::from_secs(500));
    let response = alice.call(&mut h, Method::REFRESH, &[lifetime(900)]);
    assert_eq!(response.u32(AttrType::LIFETIME), Some(900));
    h.advance(Duration::from_secs(899));
    assert_eq!(h.server.allocation_count(), 1);
    let response = alice.call(&mut h, Method::REFRESH, &[lifetime(0)]);
    assert_eq!(response.class(), Class::Success);
    assert_eq!(response.u32(AttrType::LIFETIME), Some(0));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.released.len(), 1);
    assert_eq!(
        h.server.poll_timeout(),
        None,
        "a deleted allocation leaves no timer behind"
    );
    // Nothing is left to refresh.
    assert_eq!(
        alice.call(&mut h, Method::REFRESH, &[]).error_code(),
        Some(437)
    );
}

#[test]
fn refresh_to_a_shorter_lifetime_expires_on_the_new_deadline() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.call(&mut h, Method::ALLOCATE, &[udp(), lifetime(3600)]);
    let response = alice.call(&mut h, Method::REFRESH, &[lifetime(700)]);
    assert_eq!(response.u32(AttrType::LIFETIME), Some(700));
    h.advance(Duration::from_secs(699));
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(Duration::from_secs(1));
    assert_eq!(
        h.server.allocation_count(),
        0,
        "not kept until the old 3600 s deadline"
    );
    assert_eq!(h.released.len(), 1);
}

#[test]
fn refresh_below_the_default_lifetime_gets_the_default() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    let response = alice.call(&mut h, Method::REFRESH, &[lifetime(5)]);
    assert_eq!(response.u32(AttrType::LIFETIME), Some(600));
}

#[test]
fn requests_without_allocation_are_437() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    for method in [
        Method::REFRESH,
        Method::CREATE_PERMISSION,
        Method::CHANNEL_BIND,
    ] {
        let response = alice.call(&mut h, method, &[peer(PEER), channel(0x4000)]);
        assert_eq!(response.error_code(), Some(437), "{method:?}");
    }
}

// ---------------------------------------------------------------- permissions

#[test]
fn create_permission_installs_every_peer_and_expires_after_300s() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    let relayed = alice.allocate(&mut h);
    let other: SocketAddr = "198.51.100.8:9000".parse().unwrap();
    let response = alice.call(
        &mut h,
        Method::CREATE_PERMISSION,
        &[peer(PEER), peer(other)],
    );
    assert_eq!(response.class(), Class::Success);
    assert!(response.verifies(&alice.key()));
    // A permission covers the IP, any port.
    let same_ip_other_port = SocketAddr::new(PEER.ip(), 1);
    assert!(h
        .peer_to_client(relayed, same_ip_other_port, b"x")
        .is_some());
    assert!(h.peer_to_client(relayed, other, b"x").is_some());
    h.advance(Duration::from_secs(300));
    assert!(h.peer_to_client(relayed, PEER, b"x").is_none());
    assert!(h.server.stats().dropped(DropReason::NoPermission) >= 1);
}

#[test]
fn create_permission_without_peer_is_400() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    assert_eq!(
        alice
            .call(&mut h, Method::CREATE_PERMISSION, &[])
            .error_code(),
        Some(400)
    );
}

#[test]
fn denied_peer_is_403_and_no_permission_of_the_request_is_installed() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    let relayed = alice.allocate(&mut h);
    for denied in [
        "127.0.0.1:9",
        "10.0.0.1:9",
        "169.254.169.254:80",
        "192.168.1.1:9",
    ] {
        let denied: SocketAddr = denied.parse().unwrap();
        let response = alice.call(
            &mut h,
            Method::CREATE_PERMISSION,
            &[peer(PEER), peer(denied)],
        );
        assert_eq!(response.error_code(), Some(403), "{denied}");
        assert!(response.verifies(&alice.key()));
    }
    assert!(
        h.peer_to_client(relayed, PEER, b"x").is_none(),
        "all or nothing"
    );
    let response = alice.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[channel(0x4000), peer("127.0.0.1:9".parse().unwrap())],
    );
    assert_eq!(response.error_code(), Some(403));
}

#[test]
fn own_addresses_are_reachable_only_on_relay_ports() {
    // A server whose public address is an ordinary public address to the default policy.
    let public: std::net::IpAddr = "9.9.9.9".parse().unwrap();
    let mut h = Harness::with_config(|c| {
        c.relays[0].public = public;
        c.own_addresses = vec![c.relays[0].bind, public];
    });
    let mut alice = Client::alice(CLIENT);
    let relayed = alice.allocate(&mut h);
    let own_ip = relayed.ip();
    alice.permit(&mut h, SocketAddr::new(own_ip, 53));
    // Another allocation's relay port on this host: TURN-to-TURN relaying works.
    let other_relay = SocketAddr::new(own_ip, 50050);
    let send = as_indication(build(
        Method::SEND,
        &[peer(other_relay), data(b"hi")],
        None,
        false,
    ));
    assert!(h.client_to_peer(CLIENT, &send).is_some());
    // A local service on the same address (DNS here) is out of reach, both ways.
    let dns = SocketAddr::new(own_ip, 53);
    let send = as_indication(build(Method::SEND, &[peer(dns), data(b"q")], None, false));
    assert!(h.client_to_peer(CLIENT, &send).is_none());
    assert!(h.peer_to_client(relayed, dns, b"answer").is_none());
    let response = alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x4000), peer(dns)]);
    assert_eq!(response.error_code(), Some(403));
}

#[test]
fn operator_can_allow_loopback_peers() {
    let mut h = Harness::with_config(|c| {
        c.peers = PeerPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], vec![]);
    });
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    let loopback: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert_eq!(
        alice
            .call(&mut h, Method::CREATE_PERMISSION, &[peer(loopback)])
            .class(),
        Class::Success
    );
    // Loopback is this host: a range that merely contains it does not open its services.
    let send = as_indication(build(
        Method::SEND,
        &[peer(loopback), data(b"q")],
        None,
        false,
    ));
    assert!(h.client_to_peer(CLIENT, &send).is_none());
}

#[test]
fn only_an_exact_allow_opens_an_own_address_and_every_spelling_is_checked() {
    let own_ip: std::net::IpAddr = RELAY_BIND_IP.parse().unwrap();
    let nat64: SocketAddr = "[64:ff9b::c000:20a]:53".parse().unwrap(); // 192.0.2.10
    let broad = "192.0.2.0/24".parse().unwrap();
    let mut h = Harness::with_config(|c| c.peers = PeerPolicy::new(vec![broad], vec![]));
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    let dns = SocketAddr::new(own_ip, 53);
    alice.permit(&mut h, dns);
    let send = as_indication(build(Method::SEND, &[peer(dns), data(b"q")], None, false));
    assert!(
        h.client_to_peer(CLIENT, &send).is_none(),
        "own address, /24 allow"
    );
    let exact = format!("{own_ip}/32").parse().unwrap();
    let mut h = Harness::with_config(|c| c.peers = PeerPolicy::new(vec![broad, exact], vec![]));
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    alice.permit(&mut h, dns);
    assert!(h.client_to_peer(CLIENT, &send).is_some(), "named exactly");
    // The NAT64 spelling of an own address is that address; the harness relay has no IPv6
    // relay, so its ChannelBind is refused before policy (443), but the own-address rule
    // alone must refuse it where it applies.
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    let response = alice.call(&mut h, Method::CREATE_PERMISSION, &[peer(nat64)]);
    assert_ne!(response.class(), Class::Success);
}

#[test]
fn peer_of_the_other_family_is_443() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    let v6: SocketAddr = "[2606:4700::1111]:443".parse().unwrap();
    assert_eq!(
        alice
            .call(&mut h, Method::CREATE_PERMISSION, &[peer(v6)])
            .error_code(),
        Some(443)
    );
}

// ---------------------------------------------------------------- data

#[test]
fn send_indication_needs_a_permission_and_data_indication_comes_back() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    let relayed = alice.allocate(&mut h);
    let send = build(Method::SEND, &[peer(PEER), data(b"hello")], None, false);
    let send = as_indication(send);
    assert_eq!(h.client_to_peer(CLIENT, &send), None, "no permission yet");
    alice.permit(&mut h, PEER);
    let forwarded = h.client_to_peer(CLIENT, &send).unwrap();
    assert_eq!(forwarded, (h.bound[0], PEER, b"hello".to_vec()));

    let (to, bytes) = h.peer_to_client(relayed, PEER, b"world").unwrap();
    assert_eq!(to, CLIENT);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Indication, Method::DATA));
    assert_eq!(
        decode_xor_address(
            m.attribute(AttrType::XOR_PEER_ADDRESS).unwrap(),
            &m.transaction_id()
        ),
        Some(PEER)
    );
    assert_eq!(m.attribute(AttrType::DATA), Some(&b"world"[..]));
}

#[test]
fn channel_bind_relays_channel_data_both_ways_until_it_expires() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    let relayed = alice.allocate(&mut h);
    let response = alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x4001), peer(PEER)]);
    assert_eq!(response.class(), Class::Success);
    assert!(response.verifies(&alice.key()));

    let mut frame = ChannelData::header(0x4001, 3).to_vec();
    frame.extend_from_slice(b"abc");
    assert_eq!(
        h.client_to_peer(CLIENT, &frame),
        Some((h.bound[0], PEER, b"abc".to_vec()))
    );

    let (to, bytes) = h.peer_to_client(relayed, PEER, b"xyz").unwrap();
    assert_eq!(to, CLIENT);
    assert_eq!(
        bytes,
        [0x40, 0x01, 0x00, 0x03, b'x', b'y', b'z'],
        "UDP ChannelData is not padded"
    );

    // ChannelBind also installed the permission; both live on while refreshed.
    h.advance(Duration::from_secs(290));
    alice.permit(&mut h, PEER);
    h.advance(Duration::from_secs(290)); // t = 580
    alice.permit(&mut h, PEER);
    alice.call(&mut h, Method::REFRESH, &[]);
    assert!(h.client_to_peer(CLIENT, &frame).is_some());
    h.advance(Duration::from_secs(20)); // t = 600: the channel is gone, the permission not
    assert_eq!(h.client_to_peer(CLIENT, &frame), None);
    let (_, bytes) = h.peer_to_client(relayed, PEER, b"late").unwrap();
    assert_eq!(
        Message::parse(&bytes).unwrap().method(),
        Method::DATA,
        "falls back to Data indications"
    );
}

#[test]
fn channel_bind_rules_are_enforced() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    let other: SocketAddr = "198.51.100.9:1".parse().unwrap();
    for bad in [0x3FFF, 0x8000, 0xFFFF] {
        let response = alice.call(&mut h, Method::CHANNEL_BIND, &[channel(bad), peer(PEER)]);
        assert_eq!(response.error_code(), Some(400), "{bad:#x}");
    }
    assert_eq!(
        alice
            .call(&mut h, Method::CHANNEL_BIND, &[channel(0x4000)])
            .error_code(),
        Some(400)
    );
    assert_eq!(
        alice
            .call(&mut h, Method::CHANNEL_BIND, &[peer(PEER)])
            .error_code(),
        Some(400)
    );
    assert_eq!(
        alice
            .call(&mut h, Method::CHANNEL_BIND, &[channel(0x4000), peer(PEER)])
            .class(),
        Class::Success
    );
    // Refreshing the same binding is fine; changing either side is not.
    assert_eq!(
        alice
            .call(&mut h, Method::CHANNEL_BIND, &[channel(0x4000), peer(PEER)])
            .class(),
        Class::Success
    );
    assert_eq!(
        alice
            .call(
                &mut h,
                Method::CHANNEL_BIND,
                &[channel(0x4000), peer(other)]
            )
            .error_code(),
        Some(400)
    );
    assert_eq!(
        alice
            .call(&mut h, Method::CHANNEL_BIND, &[channel(0x4002), peer(PEER)])
            .error_code(),
        Some(400)
    );
    // After expiry plus the 5-minute quarantine the number may be reused.
    alice.call(&mut h, Method::REFRESH, &[lifetime(3600)]);
    h.advance(Duration::from_secs(600 + 299));
    assert_eq!(
        alice
            .call(
                &mut h,
                Method::CHANNEL_BIND,
                &[channel(0x4000), peer(other)]
            )
            .error_code(),
        Some(400)
    );
    h.advance(Duration::from_secs(1));
    assert_eq!(
        alice
            .call(
                &mut h,
                Method::CHANNEL_BIND,
                &[channel(0x4000), peer(other)]
            )
            .class(),
        Class::Success
    );
}

#[test]
fn channel_data_on_unbound_channel_is_dropped_and_counted() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    let mut frame = ChannelData::header(0x4ABC, 2).to_vec();
    frame.extend_from_slice(b"hi");
    assert_eq!(h.client_to_peer(CLIENT, &frame), None);
    assert_eq!(h.server.stats().dropped(DropReason::UnboundChannel), 1);
    assert!(h.pump().is_empty(), "nothing is sent back");
}

/// Both ways, on an RFC 8656 channel number and on one only RFC 5766 allows.
#[test]
fn stream_transports_get_padded_channel_data() {
    for number in [0x4001u16, 0x6001] {
        let mut h = Harness::new();
        let tcp = FiveTuple {
            transport: Transport::Tcp,
            ..CLIENT
        };
        let mut alice = Client::alice(tcp);
        let relayed = alice.allocate(&mut h);
        alice.call(&mut h, Method::CHANNEL_BIND, &[channel(number), peer(PEER)]);
        let (_, bytes) = h.peer_to_client(relayed, PEER, b"abcde").unwrap();
        let header = ChannelData::header(number, 5);
        assert_eq!(&bytes[..4], &header);
        assert_eq!(stream_frame(&bytes), Frame::Complete(4 + 8));
        let mut frame = header.to_vec();
        frame.extend_from_slice(b"fghij\0\0\0");
        assert_eq!(
            h.client_to_peer(tcp, &frame),
            Some((h.bound[0], PEER, b"fghij".to_vec()))
        );
    }
}

// ---------------------------------------------------------------- bad input

#[test]
fn garbage_is_dropped_counted_and_never_answered() {
    let mut h = Harness::new();
    let mut huge_length = build(Method::BINDING, &[], None, false);
    huge_length[2] = 0xFF;
    huge_length[3] = 0xFC;
    let mut bad_fingerprint = build(Method::BINDING, &[], None, true);
    let last = bad_fingerprint.len() - 1;
    bad_fingerprint[last] ^= 0xFF;
    let mut attribute_overrun = build(
        Method::BINDING,
        &[Attr::Raw(AttrType::SOFTWARE, vec![1; 4])],
        None,
        false,
    );
    attribute_overrun[22] = 0x40;
    for bytes in [
        vec![],
        vec![0xFF; 100],
        vec![0x00, 0x01, 0x00],
        huge_length,
        bad_fingerprint,
        attribute_overrun,
        vec![0x40, 0x00, 0xFF, 0xFF, 1, 2, 3],
    ] {
        assert_eq!(h.server.handle_client_packet(h.now, CLIENT, &bytes), None);
    }
    assert!(h.pump().is_empty());
    assert_eq!(h.server.stats().dropped(DropReason::Malformed), 7);
    // Everyone else is still served.
    let response = h.request(CLIENT, &build(Method::BINDING, &[], None, false));
    assert_eq!(response.class(), Class::Success);
}

#[test]
fn packets_from_port_zero_are_dropped() {
    let mut h = Harness::new();
    let from = client_at(0);
    assert_eq!(
        h.server
            .handle_client_packet(h.now, from, &build(Method::BINDING, &[], None, false)),
        None
    );
    assert!(h.pump().is_empty());
    assert_eq!(h.server.stats().dropped(DropReason::InvalidSource), 1);
}

#[test]
fn peer_packets_to_unknown_relays_are_dropped() {
    let mut h = Harness::new();
    let nowhere: SocketAddr = "192.0.2.10:50050".parse().unwrap();
    assert!(h.peer_to_client(nowhere, PEER, b"x").is_none());
    assert_eq!(h.server.stats().dropped(DropReason::NoAllocation), 1);
}

// ================================================================ kernel fast path

/// Takes the fast path changes the I/O layer was asked for since the last call.
fn fast_path_changes(h: &mut Harness) -> Vec<FastPathChange> {
    let (changes, rest) = std::mem::take(&mut h.tcp)
        .into_iter()
        .partition(|e| matches!(e, Event::FastPath(_)));
    h.tcp = rest;
    changes
        .into_iter()
        .map(|e| match e {
            Event::FastPath(change) => change,
            _ => unreachable!(),
        })
        .collect()
}

fn with_fast_path() -> Harness {
    Harness::with_config(|c| c.fast_path = true)
}

fn entry_of(h: &Harness, channel: u16, peer: SocketAddr) -> FastPathEntry {
    FastPathEntry {
        client: CLIENT,
        channel,
        peer: PeerAddr(peer),
        relay: RelayAddr(h.bound[0]),
    }
}

#[test]
fn a_bound_channel_is_inserted_once_and_a_refresh_changes_nothing() {
    let mut h = with_fast_path();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    alice.permit(&mut h, PEER);
    assert_eq!(
        fast_path_changes(&mut h),
        [],
        "a permission alone is no channel"
    );
    alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x4001), peer(PEER)]);
    let entry = entry_of(&h, 0x4001, PEER);
    assert_eq!(fast_path_changes(&mut h), [FastPathChange::Insert(entry)]);
    h.advance(Duration::from_secs(200));
    alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x4001), peer(PEER)]);
    alice.permit(&mut h, PEER);
    alice.call(&mut h, Method::REFRESH, &[lifetime(600)]);
    assert_eq!(fast_path_changes(&mut h), []);
    assert_eq!(h.server.fast_path_entries(), [entry]);
}

#[test]
fn without_a_fast_path_nothing_is_announced() {
    let mut h = Harness::new();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x4001), peer(PEER)]);
    h.advance(Duration::from_secs(700));
    assert_eq!(fast_path_changes(&mut h), []);
    assert_eq!(h.server.fast_path_entries(), []);
}

#[test]
fn stream_clients_never_get_the_fast_path() {
    let mut h = with_fast_path();
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..CLIENT
    };
    let mut alice = Client::alice(tcp);
    alice.allocate(&mut h);
    alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x4001), peer(PEER)]);
    assert_eq!(fast_path_changes(&mut h), []);
}

#[test]
fn permission_expiry_removes_the_entry_at_once_and_a_new_permission_restores_it() {
    let mut h = with_fast_path();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x4001), peer(PEER)]);
    let entry = entry_of(&h, 0x4001, PEER);
    fast_path_changes(&mut h);
    h.advance(Duration::from_secs(299));
    assert_eq!(fast_path_changes(&mut h), []);
    assert!(h.server.poll_timeout() <= Some(h.now + Duration::from_secs(1)));
    h.advance(Duration::from_secs(1)); // t = 300: the permission ends, the channel not
    assert_eq!(fast_path_changes(&mut h), [FastPathChange::Remove(entry)]);
    alice.permit(&mut h, PEER);
    assert_eq!(fast_path_changes(&mut h), [FastPathChange::Insert(entry)]);
}

#[test]
fn channel_expiry_removes_the_entry_when_the_channel_ends_not_after_its_quarantine() {
    let mut h = with_fast_path();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    alice.call(&mut h, Method::REFRESH, &[lifetime(3600)]);
    alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x4001), peer(PEER)]);
    let entry = entry_of(&h, 0x4001, PEER);
    fast_path_changes(&mut h);
    for _ in 0..2 {
        h.advance(Duration::from_secs(290));
        alice.permit(&mut h, PEER);
    }
    h.advance(Duration::from_secs(19)); // t = 599
    assert_eq!(fast_path_changes(&mut h), []);
    h.advance(Duration::from_secs(1)); // t = 600
    assert_eq!(fast_path_changes(&mut h), [FastPathChange::Remove(entry)]);
    assert_eq!(h.server.eligible_fast_paths(h.now), []);
}

#[test]
fn refresh_lifetime_zero_removes_entries_before_its_response() {
    let mut h = with_fast_path();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x4001), peer(PEER)]);
    let other = SocketAddr::new(PEER.ip(), 4002);
    alice.call(
        &mut h,
        Method::CHANNEL_BIND,
        &[channel(0x4002), peer(other)],
    );
    fast_path_changes(&mut h);
    // Sent by hand, so the order of everything the core asks for is seen.
    let request = {
        let nonce = alice.nonce.clone().unwrap();
        let key = alice.key();
        let auth = Auth {
            username: Some("alice"),
            nonce: &nonce,
            key,
            ..Auth::default()
        };
        build(Method::REFRESH, &[lifetime(0)], Some(auth), false)
    };
    assert!(h
        .server
        .handle_client_packet(h.now, CLIENT, &request)
        .is_none());
    h.server.drive(h.now, &mut h.io);
    let events = h.io.take();
    let response = events
        .iter()
        .position(|e| matches!(e, Event::Transmit(..)))
        .expect("a response");
    let removals: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::FastPath(FastPathChange::Remove(_))))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(removals.len(), 2, "{events:?}");
    assert!(removals.iter().all(|&i| i < response), "{events:?}");
    assert!(h.io.fast_path.is_empty());
}

#[test]
fn allocation_expiry_removes_its_entries() {
    let mut h = with_fast_path();
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x4001), peer(PEER)]);
    let entry = entry_of(&h, 0x4001, PEER);
    fast_path_changes(&mut h);
    for _ in 0..2 {
        h.advance(Duration::from_secs(290));
        alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x4001), peer(PEER)]);
    }
    h.advance(Duration::from_secs(20)); // t = 600: the allocation's default lifetime
    assert_eq!(fast_path_changes(&mut h), [FastPathChange::Remove(entry)]);
    assert_eq!(h.server.allocation_count(), 0);
}

#[test]
fn fast_path_traffic_is_counted_and_over_the_bandwidth_limit_returns_to_the_sockets_path() {
    let mut h = Harness::with_config(|c| {
        c.fast_path = true;
        c.bandwidth_per_allocation = 10_000;
    });
    let mut alice = Client::alice(CLIENT);
    alice.allocate(&mut h);
    alice.call(&mut h, Method::CHANNEL_BIND, &[channel(0x4001), peer(PEER)]);
    let entry = entry_of(&h, 0x4001, PEER);
    fast_path_changes(&mut h);
    let within = Traffic {
        packets: 50,
        bytes: 5_000,
    };
    h.server
        .count_fast_path(h.now, entry, within, Traffic::default());
    h.pump();
    assert_eq!(fast_path_changes(&mut h), [], "half a second's worth: fine");
    assert_eq!(h.server.stats().fast_path.to_peers, within);
    assert_eq!(h.server.stats().relayed_to_peers(), 50);
    // Three seconds' worth in the next report: two seconds over the burst.
    let flood = Traffic {
        packets: 300,
        bytes: 30_000,
    };
    h.server
        .count_fast_path(h.now, entry, Traffic::default(), flood);
    h.pump();
    assert_eq!(fast_path_changes(&mut h), [FastPathChange::Remove(entry)]);
    assert_eq!(h.server.stats().fast_path.to_clients, flood);
    let mut frame = ChannelData::header(0x4001, 3).to_vec();
    frame.extend_from_slice(b"abc");
    assert_eq!(
        h.client_to_peer(CLIENT, &frame),
        Some((h.bound[0], PEER, b"abc".to_vec()))
    );
    assert_eq!(
        h.peer_to_client(relayed_of(&h), PEER, b"x"),
        None,
        "the sockets path enforces the limit now"
    );
    // Paid off (3 s charged at 10 kB/s, less the 1 s burst): back on the fast path.
    h.advance(Duration::from_millis(1_999));
    assert_eq!(fast_path_changes(&mut h), []);
    h.advance(Duration::from_millis(1));
    assert_eq!(fast_path_changes(&mut h), [FastPathChange::Insert(entry)]);
}

/// The advertised relayed address of the first relay bound.
fn relayed_of(h: &Harness) -> SocketAddr {
    SocketAddr::new(PUBLIC_RELAY_IP.parse().unwrap(), h.bound[0].port())
}

// ================================================================ harness

const CLIENT: FiveTuple = FiveTuple {
    transport: Transport::Udp,
    client: SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        5000,
    ),
    server: SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10)),
        3478,
    ),
};
const RELAY_BIND_IP: &str = "192.0.2.10";
const PUBLIC_RELAY_IP: &str = "203.0.113.10";
/// A peer in a documentation range the test config allows explicitly.
const PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7)),
    4000,
);

fn client_at(port: u16) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::new(CLIENT.client.ip(), port),
        ..CLIENT
    }
}

struct Harness {
    server: Server,
    now: Instant,
    bound: Vec<SocketAddr>,
    released: Vec<SocketAddr>,
    /// What TCP relays (RFC 6062) asked of the I/O layer, but for listening sockets
    /// (which are in `bound`).
    tcp: Vec<Event>,
    io: RecordingIo,
}

impl Harness {
    fn new() -> Self {
        Self::with_config(|_| {})
    }

    fn with_config(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let relay = RelayAddress {
            bind: RELAY_BIND_IP.parse().unwrap(),
            public: PUBLIC_RELAY_IP.parse().unwrap(),
        };
        let mut config = ServerConfig::new(REALM, relay, 50000..=50099);
        config.users = vec![("alice".into(), UserSecret::Password("wonderland".into()))];
        config.secrets = vec!["old-secret-1".into(), SECRET.into()];
        config.peers = PeerPolicy::new(vec!["198.51.100.0/24".parse().unwrap()], vec![]);
        tweak(&mut config);
        let now = Instant::now();
        Self {
            server: Server::new(config, now, UNIX_START, Rng::from_seed(7), [9; 32]),
            now,
            bound: Vec::new(),
            released: Vec::new(),
            tcp: Vec::new(),
            io: RecordingIo::default(),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.server.handle_timeout(self.now);
        let stray = self.pump();
        assert!(stray.is_empty(), "timers never send to clients: {stray:?}");
    }

    /// Plays the I/O layer: binds relays (or fails to), records releases, returns sends.
    fn pump(&mut self) -> Vec<(FiveTuple, Vec<u8>)> {
        self.server.drive(self.now, &mut self.io);
        let mut sent = Vec::new();
        for event in self.io.take() {
            match event {
                Event::Transmit(to, bytes) => sent.push((to, bytes)),
                Event::Bind(relay, RelayBind::Bound) => self.bound.push(relay),
                Event::Bind(..) => {}
                Event::Release(relay) => self.released.push(relay),
                Event::Listen(relay, RelayBind::Bound) => self.bound.push(relay),
                tcp => self.tcp.push(tcp),
            }
        }
        sent
    }

    /// Sends a request and returns the one response.
    fn request(&mut self, from: FiveTuple, bytes: &[u8]) -> Response {
        assert_eq!(
            self.server.handle_client_packet(self.now, from, bytes),
            None
        );
        let mut sent = self.pump();
        assert_eq!(sent.len(), 1, "expected exactly one response");
        let (to, bytes) = sent.remove(0);
        assert_eq!(to, from);
        Response { bytes }
    }

    fn client_to_peer(
        &mut self,
        from: FiveTuple,
        bytes: &[u8],
    ) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        let out = self.server.handle_client_packet(self.now, from, bytes);
        out.map(|p| (p.relay.0, p.peer.0, p.payload.to_vec()))
    }

    /// `relayed` is the advertised address; the core is addressed by the bound one.
    fn peer_to_client(
        &mut self,
        relayed: SocketAddr,
        peer: SocketAddr,
        payload: &[u8],
    ) -> Option<(FiveTuple, Vec<u8>)> {
        let bound = SocketAddr::new(RELAY_BIND_IP.parse().unwrap(), relayed.port());
        self.server
            .handle_peer_packet(self.now, RelayAddr(bound), PeerAddr(peer), payload)
            .map(|c| (c.client, c.bytes.to_vec()))
    }
}

/// A TURN client that does the long-term credential dance: as every browser does today
/// (MD5 key, MESSAGE-INTEGRITY), or as RFC 8489 allows (a chosen password algorithm with
/// the offer echoed, USERHASH, MESSAGE-INTEGRITY-SHA256).
struct Client {
    tuple: FiveTuple,
    username: String,
    password: String,
    nonce: Option<Vec<u8>>,
    /// PASSWORD-ALGORITHMS from the last challenge, echoed when `password_algorithm` is set.
    offer: Option<Vec<u8>>,
    algorithm: IntegrityAlgorithm,
    password_algorithm: Option<PasswordAlgorithm>,
    /// Names itself by USERHASH instead of USERNAME.
    anonymous: bool,
    next_tid: u8,
}

impl Client {
    fn new(tuple: FiveTuple, username: &str, password: &str) -> Self {
        Self {
            tuple,
            username: username.into(),
            password: password.into(),
            nonce: None,
            offer: None,
            algorithm: IntegrityAlgorithm::Sha1,
            password_algorithm: None,
            anonymous: false,
            next_tid: 0,
        }
    }

    fn alice(tuple: FiveTuple) -> Self {
        Self::new(tuple, "alice", "wonderland")
    }

    /// A TURN REST user `EXPIRY:name`, minted with the current secret.
    fn rest(tuple: FiveTuple, name: &str, expiry_unix: u64) -> Self {
        let expires = std::time::UNIX_EPOCH + Duration::from_secs(expiry_unix);
        let credential = rendez::credential::mint(SECRET, name, expires);
        Self::new(tuple, &credential.username, &credential.password)
    }

    /// This client speaking RFC 8489: SHA-256 key, MESSAGE-INTEGRITY-SHA256 only.
    fn sha256(mut self) -> Self {
        self.password_algorithm = Some(PasswordAlgorithm::Sha256);
        self.algorithm = IntegrityAlgorithm::Sha256;
        self
    }

    fn allocate_response(&mut self, h: &mut Harness) -> Response {
        self.call(h, Method::ALLOCATE, &[udp()])
    }

    fn key(&self) -> LongTermKey {
        let algorithm = self.password_algorithm.unwrap_or(PasswordAlgorithm::Md5);
        LongTermKey::derive(algorithm, &self.username, REALM, &self.password)
    }

    /// Sends an authenticated request, fetching or renewing the nonce as a client does.
    fn call(&mut self, h: &mut Harness, method: Method, attrs: &[Attr]) -> Response {
        self.next_tid += 1;
        let tid = TransactionId([self.next_tid; 12]);
        self.call_with_tid(h, method, attrs, tid)
    }

    fn call_with_tid(
        &mut self,
        h: &mut Harness,
        method: Method,
        attrs: &[Attr],
        tid: TransactionId,
    ) -> Response {
        if self.nonce.is_none() {
            let challenge = h.request(
                self.tuple,
                &build_with_tid(method, attrs, None, false, tid, self.algorithm),
            );
            if challenge.error_code() != Some(401) {
                return challenge;
            }
            self.learn(&challenge);
        }
        let response = self.call_once(h, method, attrs, tid);
        if response.error_code() == Some(438) {
            self.learn(&response);
            return self.call_once(h, method, attrs, tid);
        }
        response
    }

    /// Takes the nonce and the password algorithms from a 401 or 438.
    fn learn(&mut self, challenge: &Response) {
        self.nonce = challenge.attr(AttrType::NONCE);
        self.offer = challenge.attr(AttrType::PASSWORD_ALGORITHMS);
    }

    fn call_once(
        &mut self,
        h: &mut Harness,
        method: Method,
        attrs: &[Attr],
        tid: TransactionId,
    ) -> Response {
        let nonce = self.nonce.clone().unwrap_or_default();
        let offer = self.offer.clone().unwrap_or_default();
        let auth = Auth {
            username: (!self.anonymous).then_some(self.username.as_str()),
            userhash: self.anonymous.then(|| userhash(&self.username, REALM)),
            nonce: &nonce,
            chosen: self
                .password_algorithm
                .map(|a| (a, self.offer.is_some().then_some(offer.as_slice()))),
            key: self.key(),
        };
        h.request(
            self.tuple,
            &build_with_tid(method, attrs, Some(auth), false, tid, self.algorithm),
        )
    }

    /// Sends an authenticated request (the nonce must be known) and returns whatever the
    /// server sent, to anyone: for requests answered later, or not only to this client.
    fn send(
        &mut self,
        h: &mut Harness,
        method: Method,
        attrs: &[Attr],
    ) -> Vec<(FiveTuple, Vec<u8>)> {
        self.next_tid += 1;
        let tid = TransactionId([self.next_tid; 12]);
        let auth = Auth {
            username: Some(self.username.as_str()),
            nonce: self
                .nonce
                .as_deref()
                .expect("a nonce from an earlier request"),
            key: self.key(),
            ..Auth::default()
        };
        let bytes = build_with_tid(method, attrs, Some(auth), false, tid, self.algorithm);
        assert_eq!(
            h.server.handle_client_packet(h.now, self.tuple, &bytes),
            None
        );
        h.pump()
    }

    /// Allocates and returns the advertised relayed address.
    fn allocate(&mut self, h: &mut Harness) -> SocketAddr {
        let response = self.call(h, Method::ALLOCATE, &[udp()]);
        assert_eq!(response.class(), Class::Success);
        response.xor(AttrType::XOR_RELAYED_ADDRESS).unwrap()
    }

    fn permit(&mut self, h: &mut Harness, peer_addr: SocketAddr) {
        let response = self.call(h, Method::CREATE_PERMISSION, &[peer(peer_addr)]);
        assert_eq!(response.class(), Class::Success);
    }
}

struct Auth<'a> {
    username: Option<&'a str>,
    userhash: Option<[u8; 32]>,
    nonce: &'a [u8],
    /// PASSWORD-ALGORITHM and the PASSWORD-ALGORITHMS echoed with it, if any.
    chosen: Option<(PasswordAlgorithm, Option<&'a [u8]>)>,
    key: LongTermKey,
}

impl Default for Auth<'_> {
    fn default() -> Self {
        Self {
            username: None,
            userhash: None,
            nonce: b"",
            chosen: None,
            key: LongTermKey::md5([0; 16]),
        }
    }
}

enum Attr {
    Raw(AttrType, Vec<u8>),
    Xor(AttrType, SocketAddr),
}

fn udp() -> Attr {
    Attr::Raw(AttrType::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])
}

fn lifetime(secs: u32) -> Attr {
    Attr::Raw(AttrType::LIFETIME, secs.to_be_bytes().to_vec())
}

fn peer(addr: SocketAddr) -> Attr {
    Attr::Xor(AttrType::XOR_PEER_ADDRESS, addr)
}

fn channel(number: u16) -> Attr {
    let mut v = number.to_be_bytes().to_vec();
    v.extend_from_slice(&[0, 0]);
    Attr::Raw(AttrType::CHANNEL_NUMBER, v)
}

/// EVEN-PORT with the given flags byte(s).
fn even_port(flags: Vec<u8>) -> Attr {
    Attr::Raw(AttrType::EVEN_PORT, flags)
}

/// EVEN-PORT with the R bit: an RTP/RTCP pair.
fn reserve_pair() -> Attr {
    even_port(vec![0x80, 0, 0, 0])
}

fn reservation(token: &[u8]) -> Attr {
    Attr::Raw(AttrType::RESERVATION_TOKEN, token.to_vec())
}

/// The port of a successful Allocate's relayed address.
fn relayed_port(response: &Response) -> u16 {
    response
        .xor(AttrType::XOR_RELAYED_ADDRESS)
        .unwrap_or_else(|| panic!("no relayed address: error {:?}", response.error_code()))
        .port()
}

/// The address the relay socket for `port` is bound to.
fn bound_at(port: u16) -> SocketAddr {
    SocketAddr::new(RELAY_BIND_IP.parse().unwrap(), port)
}

fn data(bytes: &[u8]) -> Attr {
    Attr::Raw(AttrType::DATA, bytes.to_vec())
}

fn build(method: Method, attrs: &[Attr], auth: Option<Auth<'_>>, fingerprint: bool) -> Vec<u8> {
    build_with_tid(
        method,
        attrs,
        auth,
        fingerprint,
        TransactionId([0xAB; 12]),
        IntegrityAlgorithm::Sha1,
    )
}

fn build_with_tid(
    method: Method,
    attrs: &[Attr],
    auth: Option<Auth<'_>>,
    fingerprint: bool,
    tid: TransactionId,
    algorithm: IntegrityAlgorithm,
) -> Vec<u8> {
    let mut b = MessageBuilder::new(Class::Request, method, tid);
    for attr in attrs {
        match attr {
            Attr::Raw(kind, value) => b.add(*kind, value),
            Attr::Xor(kind, addr) => b.add_xor_address(*kind, *addr),
        };
    }
    if let Some(auth) = auth {
        if let Some(username) = auth.username {
            b.add(AttrType::USERNAME, username.as_bytes());
        }
        if let Some(hash) = auth.userhash {
            b.add(AttrType::USERHASH, &hash);
        }
        b.add(AttrType::REALM, REALM.as_bytes())
            .add(AttrType::NONCE, auth.nonce);
        if let Some((chosen, echoed)) = auth.chosen {
            b.add_password_algorithm(chosen);
            if let Some(echoed) = echoed {
                b.add(AttrType::PASSWORD_ALGORITHMS, echoed);
            }
        }
        b.add_integrity(algorithm, auth.key.as_bytes());
    }
    if fingerprint {
        b.add_fingerprint();
    }
    b.finish()
}

/// Turns a built request into an indication (flips the class bits of the type field).
fn as_indication(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes[1] |= 0x10;
    bytes
}

struct Response {
    bytes: Vec<u8>,
}

impl Response {
    fn message(&self) -> Message<'_> {
        Message::parse(&self.bytes).expect("server responses parse")
    }

    fn class(&self) -> Class {
        self.message().class()
    }

    fn error_code(&self) -> Option<u16> {
        let m = self.message();
        (m.class() == Class::Error)
            .then(|| ErrorCode::decode_code(m.attribute(AttrType::ERROR_CODE)?))?
    }

    fn attr(&self, kind: AttrType) -> Option<Vec<u8>> {
        self.message().attribute(kind).map(<[u8]>::to_vec)
    }

    fn u32(&self, kind: AttrType) -> Option<u32> {
        Some(u32::from_be_bytes(self.attr(kind)?.try_into().ok()?))
    }

    fn xor(&self, kind: AttrType) -> Option<SocketAddr> {
        let m = self.message();
        decode_xor_address(m.attribute(kind)?, &m.transaction_id())
    }

    fn xors(&self, kind: AttrType) -> Vec<SocketAddr> {
        let m = self.message();
        m.attributes(kind)
            .filter_map(|v| decode_xor_address(v, &m.transaction_id()))
            .collect()
    }

    fn verifies(&self, key: &LongTermKey) -> bool {
        self.message().verify_integrity(key.as_bytes()).is_some()
    }
}

/// Every attribute type in a message, also those after an integrity attribute (which
/// `Message` ignores).
fn attribute_types(bytes: &[u8]) -> Vec<u16> {
    let mut types = Vec::new();
    let mut at = 20;
    while let Some(header) = bytes.get(at..at + 4) {
        types.push(u16::from_be_bytes([header[0], header[1]]));
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        at += 4 + len.div_ceil(4) * 4;
    }
    types
}
