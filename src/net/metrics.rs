//! `GET /metrics` on `[metrics] listen`: every shard's figures in the Prometheus text
//! format (version 0.0.4).
//!
//! Labels come only from fixed sets (shard, transport, direction, method, result, reason,
//! quota), never from anything a client chooses: no user, address or room, so the number
//! of series is the same whatever arrives, and nothing private leaves through a scrape.

use std::fmt::Write;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::observe::Observer;
use super::turn_io::Figures;
use super::xdp::BindingCounter;
use crate::turn::{DropReason, QuotaExceeded, Rejection, RequestMethod, Traffic, Transport};

/// Serves `/metrics` on `listener` until `stopped` changes.
pub(crate) async fn serve(
    listener: TcpListener,
    observer: Observer,
    mut stopped: watch::Receiver<bool>,
) {
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let text = render(&observer);
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
                    .into_response()
            }
        }),
    );
    let stop = async move {
        let _ = stopped.changed().await;
    };
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(%error, "metrics server failed");
    }
}

/// The whole exposition.
pub(crate) fn render(observer: &Observer) -> String {
    let shards = observer.shards();
    let mut out = Exposition::default();
    let mut family = |name, kind, help, samples: &dyn Fn(&Figures) -> Samples| {
        out.family(name, kind, help);
        for shard in &shards {
            for (labels, value) in samples(&shard.figures) {
                let mut all = vec![("shard", shard.name.as_str())];
                all.extend(labels);
                out.sample(name, &all, value);
            }
        }
    };
    family(
        "rendez_allocations",
        "gauge",
        "Allocations now, including those waiting for their relay socket.",
        &|f| vec![(vec![], f.gauges.allocations)],
    );
    family(
        "rendez_permissions",
        "gauge",
        "Permissions held by allocations now.",
        &|f| vec![(vec![], f.gauges.permissions)],
    );
    family(
        "rendez_channels",
        "gauge",
        "Channel bindings held by allocations now.",
        &|f| vec![(vec![], f.gauges.channels)],
    );
    family(
        "rendez_relay_ports",
        "gauge",
        "Relay ports of each shard's slice of the range, in use or free.",
        &|f| {
            vec![
                (vec![("state", "in_use")], f.gauges.relay_ports_in_use),
                (vec![("state", "free")], f.gauges.relay_ports_free),
            ]
        },
    );
    family(
        "rendez_allocations_created_total",
        "counter",
        "Allocations created.",
        &|f| vec![(vec![], f.stats.allocations_created)],
    );
    family(
        "rendez_allocations_ended_total",
        "counter",
        "Allocations that ended (expired, deleted or their connection closed).",
        &|f| vec![(vec![], f.stats.allocations_ended)],
    );
    family(
        "rendez_relayed_packets_total",
        "counter",
        "Datagrams relayed, by the client's transport and the direction.",
        &|f| relayed(f, |t| t.packets),
    );
    family(
        "rendez_relayed_bytes_total",
        "counter",
        "Payload bytes relayed, by the client's transport and the direction.",
        &|f| relayed(f, |t| t.bytes),
    );
    family(
        "rendez_tcp_relays",
        "gauge",
        "Peer connections of TCP allocations (RFC 6062) now: connecting for a Connect, pending (waiting for a ConnectionBind) or bound (relaying).",
        &|f| {
            let counts = f.gauges.tcp_connections;
            vec![
                (vec![("state", "connecting")], counts.connecting),
                (vec![("state", "pending")], counts.pending),
                (vec![("state", "bound")], counts.bound),
            ]
        },
    );
    family(
        "rendez_tcp_peer_connections_total",
        "counter",
        "Peer connections of TCP allocations, by what happened: connected (Connect succeeded), failed (Connect answered 447), accepted (a peer's connection announced), refused (a peer's connection closed: no permission or a limit), bound (a relay began), expired (never bound).",
        &|f| {
            f.stats
                .tcp
                .named()
                .map(|(event, value)| (vec![("event", event)], value))
                .into()
        },
    );
    family(
        "rendez_tcp_relayed_bytes_total",
        "counter",
        "Bytes relayed by TCP relays, by direction.",
        &|f| {
            vec![
                (vec![("direction", "to_peer")], f.tcp_relayed.to_peers),
                (vec![("direction", "to_client")], f.tcp_relayed.to_clients),
            ]
        },
    );
    family(
        "rendez_requests_total",
        "counter",
        "STUN/TURN requests answered, by method and result.",
        &|f| {
            RequestMethod::ALL
                .iter()
                .flat_map(|&method| {
                    let outcomes = f.stats.requests[method as usize];
                    [("success", outcomes.success), ("error", outcomes.error)].map(
                        |(result, value)| {
                            (vec![("method", method.name()), ("result", result)], value)
                        },
                    )
                })
                .collect()
        },
    );
    family(
        "rendez_auth_failures_total",
        "counter",
        "Requests refused by authentication, by reason (challenge: a first request without credentials, as every client sends).",
        &|f| {
            Rejection::ALL
                .map(|r| (vec![("reason", r.name())], f.stats.auth_failures(r)))
                .into()
        },
    );
    family(
        "rendez_quota_refusals_total",
        "counter",
        "Allocate requests refused with 486 by a [limits] quota.",
        &|f| {
            QuotaExceeded::ALL
                .map(|q| (vec![("quota", q.name())], f.stats.quota_refusals(q)))
                .into()
        },
    );
    family(
        "rendez_refused_draining_total",
        "counter",
        "Allocate requests refused (300 or 486) while the server drains.",
        &|f| vec![(vec![], f.stats.refused_draining)],
    );
    family(
        "rendez_redirected_full_total",
        "counter",
        "Allocate requests sent to an alternate server (300) because this one is full: allocations-total reached or every relay port in use.",
        &|f| vec![(vec![], f.stats.redirected_full)],
    );
    family(
        "rendez_dropped_packets_total",
        "counter",
        "Packets dropped without an answer, by reason.",
        &|f| {
            let core = DropReason::ALL.map(|r| (vec![("reason", r.name())], f.stats.dropped(r)));
            let io = [
                (vec![("reason", "send_failed")], f.io.send_failed),
                (vec![("reason", "client_backlog")], f.io.client_backlog),
            ];
            core.into_iter().chain(io).collect()
        },
    );
    family(
        "rendez_xdp_channels",
        "gauge",
        "Bound channels in the XDP fast path's maps now (relayed in the kernel).",
        &|f| vec![(vec![], f.xdp.channels)],
    );
    family(
        "rendez_xdp_relayed_packets_total",
        "counter",
        "Datagrams the XDP fast path relayed, by direction (also counted in rendez_relayed_packets_total).",
        &|f| {
            let fast = f.stats.fast_path;
            vec![
                (vec![("direction", "to_peer")], fast.to_peers.packets),
                (vec![("direction", "to_client")], fast.to_clients.packets),
            ]
        },
    );
    family(
        "rendez_xdp_map_full_total",
        "counter",
        "Bound channels left on the sockets path because the XDP maps were full ([xdp] max-channels).",
        &|f| vec![(vec![], f.xdp.map_full)],
    );
    out.single(
        "rendez_xdp_binding_responses_total",
        "counter",
        "STUN Binding responses the XDP fast path sent ([xdp] binding); not in rendez_requests_total{method=\"binding\"}, which counts those user space answered.",
        observer
            .xdp_binding
            .as_ref()
            .map_or(0, BindingCounter::responses),
    );
    out.single(
        "rendez_xdp_attached",
        "gauge",
        "1 while the XDP fast path is attached to [xdp] interface.",
        u64::from(observer.xdp_attached),
    );
    if let Some(signal) = observer.signal() {
        for (name, kind, help, value) in [
            (
                "rendez_signal_rooms",
                "gauge",
                "Signaling rooms with at least one participant.",
                signal.rooms as u64,
            ),
            (
                "rendez_signal_participants",
                "gauge",
                "Participants in signaling rooms.",
                signal.participants as u64,
            ),
            (
                "rendez_signal_connections",
                "gauge",
                "Open signaling WebSockets, in a room or not.",
                signal.connections as u64,
            ),
            (
                "rendez_signal_dropped_not_reading_total",
                "counter",
                "Signaling sessions dropped because they stopped reading.",
                signal.dropped_not_reading,
            ),
        ] {
            out.single(name, kind, help, value);
        }
        if let Some(cluster) = signal.cluster {
            for (name, kind, help, value) in [
                (
                    "rendez_cluster_connected",
                    "gauge",
                    "1 while Redis ([cluster]) is reachable; 0: rooms across nodes are unavailable and joins refused.",
                    u64::from(cluster.connected),
                ),
                (
                    "rendez_cluster_dropped_total",
                    "counter",
                    "Messages for participants on other nodes dropped because Redis was unreachable.",
                    cluster.dropped,
                ),
                (
                    "rendez_cluster_redis_calls_total",
                    "counter",
                    "Scripts and publishes sent to Redis.",
                    cluster.calls,
                ),
                (
                    "rendez_cluster_events_total",
                    "counter",
                    "Events received from the other nodes through Redis.",
                    cluster.events,
                ),
                (
                    "rendez_cluster_disconnects_total",
                    "counter",
                    "Times the connection to Redis was lost.",
                    cluster.disconnects,
                ),
            ] {
                out.single(name, kind, help, value);
            }
        }
    }
    out.text
}

/// Label pairs and a value.
type Samples = Vec<(Vec<(&'static str, &'static str)>, u64)>;

/// Relayed traffic by transport and direction.
fn relayed(figures: &Figures, value: impl Fn(&Traffic) -> u64) -> Samples {
    Transport::ALL
        .iter()
        .flat_map(|&transport| {
            let relayed = &figures.stats.relayed[transport as usize];
            [
                ("to_peer", &relayed.to_peers),
                ("to_client", &relayed.to_clients),
            ]
            .map(|(direction, traffic)| {
                (
                    vec![("transport", transport.name()), ("direction", direction)],
                    value(traffic),
                )
            })
        })
        .collect()
}

/// The text format, one family at a time.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// A family of one sample without labels.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// One sample. Label values come from fixed sets of plain names (see the module
    /// documentation), so they need no escaping.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                debug_assert!(value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{value}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}
