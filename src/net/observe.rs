//! [`Observer`]: a read-only view of every shard's published figures and the signaling
//! hub's, cheap to clone. The metrics endpoint, the status line and [`Handle`]'s counters
//! all read through it; none of them ever reaches into a shard.
//!
//! [`Handle`]: super::Handle

use super::http::hub::{HubHandle, SignalFigures};
use super::turn_io::{Figures, PublishedFigures};
use super::xdp::BindingCounter;
use crate::turn::{Gauges, Stats};

#[derive(Clone)]
pub(crate) struct Observer {
    /// One per UDP worker, in worker order.
    pub workers: Vec<PublishedFigures>,
    /// The TCP/TLS shard.
    pub stream: PublishedFigures,
    pub hub: Option<HubHandle>,
    /// Whether the XDP fast path is attached.
    pub xdp_attached: bool,
    /// The fast path's count of Binding responses, when it answers them.
    pub xdp_binding: Option<BindingCounter>,
}

/// A shard's name in metrics: `udp-0`, `udp-1`, ... for the UDP workers, `stream` for the
/// TCP/TLS shard.
pub(crate) struct ShardFigures {
    pub name: String,
    pub figures: Figures,
}

impl Observer {
    /// Every shard's figures, UDP workers first (at most 100 ms old).
    pub fn shards(&self) -> Vec<ShardFigures> {
        let workers = self
            .workers
            .iter()
            .enumerate()
            .map(|(id, figures)| ShardFigures {
                name: format!("udp-{id}"),
                figures: figures.read(),
            });
        let stream = ShardFigures {
            name: "stream".into(),
            figures: self.stream.read(),
        };
        workers.chain(std::iter::once(stream)).collect()
    }

    /// The counters of every shard, added up.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for shard in self.shards() {
            total.add(&shard.figures.stats);
        }
        total
    }

    /// The gauges of every shard, added up.
    pub fn gauges(&self) -> Gauges {
        let mut total = Gauges::default();
        for shard in self.shards() {
            total.add(&shard.figures.gauges);
        }
        total
    }

    /// Rooms, participants and sessions (None when signaling is off).
    pub fn signal(&self) -> Option<SignalFigures> {
        self.hub.as_ref().map(HubHandle::figures)
    }
}
