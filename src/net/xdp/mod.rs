//! The kernel fast path (`[xdp]`, cargo feature `xdp`): an XDP program on the relay's
//! interfaces relays ChannelData on bound channels without the sockets (see
//! `bpf/relay.bpf.c` for what it rewrites and what it leaves to the sockets path).
//!
//! The TURN core stays the authority: it announces which channels are eligible
//! ([`crate::turn::FastPathChange`]), each UDP worker writes and deletes its own entries in
//! the two kernel maps the program reads ([`ChannelMaps`]), and reads back what the program
//! relayed for the core's statistics and bandwidth accounting. The program is attached
//! through a bpf_link ([`FastPath::start`]), which the kernel removes with the process
//! however it ends.
//!
//! Built without the feature, `[xdp] interface` is reported with one warning and every
//! packet takes the sockets path; the types here are then uninhabited.

//!
//! With `[xdp] binding` the program also answers STUN Binding requests to the UDP listen
//! addresses itself (`bpf/stun_binding.h`, [`binding`]), counted by a [`BindingCounter`].

#[cfg(feature = "xdp")]
mod attach;
#[cfg(feature = "xdp")]
mod binding;
#[cfg(feature = "xdp")]
mod maps;

use std::net::SocketAddr;

#[cfg(feature = "xdp")]
pub(crate) use attach::FastPath;
#[cfg(feature = "xdp")]
pub(crate) use binding::BindingCounter;
#[cfg(feature = "xdp")]
pub(crate) use maps::ChannelMaps;

#[cfg(not(feature = "xdp"))]
pub(crate) use disabled::{BindingCounter, ChannelMaps, FastPath};

/// What the program needs to answer Binding requests exactly as the sockets path does.
#[derive(Clone, Copy, Debug)]
// Built without the feature, nothing reads it: there is no program.
#[cfg_attr(not(feature = "xdp"), allow(dead_code))]
pub(crate) struct StunService<'a> {
    /// The UDP listen addresses, as bound.
    pub listen: &'a [SocketAddr],
    /// `other-address` is set: Binding responses carry RFC 5780's attributes.
    pub nat_discovery: bool,
    /// SOFTWARE in every response.
    pub software: Option<&'a str>,
}

/// What one worker's share of the fast path looks like, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct XdpFigures {
    /// Channels the worker has in the kernel maps now.
    pub channels: u64,
    /// Channels that stayed on the sockets path because a map was full.
    pub map_full: u64,
}

#[cfg(not(feature = "xdp"))]
mod disabled {
    //! Without the `xdp` feature no fast path can exist: these types have no values.

    use super::{StunService, XdpFigures};
    use crate::config::XdpConfig;
    use crate::turn::{FastPathEntry, Traffic};

    pub(crate) enum FastPath {}

    impl FastPath {
        /// Says once that `[xdp]` is ignored in this build.
        pub fn start(
            config: &XdpConfig,
            _stun: StunService<'_>,
        ) -> anyhow::Result<Option<FastPath>> {
            if let Some(interfaces) = &config.interface {
                tracing::warn!(
                    interface = %interfaces.join(", "),
                    "`[xdp] interface` is set but this rendez was built without the `xdp` feature: relaying through sockets (build with `--features xdp`)"
                );
            }
            Ok(None)
        }

        pub fn channel_maps(&self) -> anyhow::Result<ChannelMaps> {
            match *self {}
        }

        pub fn binding_counter(&self) -> Option<BindingCounter> {
            match *self {}
        }

        pub fn set_software(&self, _software: Option<&str>) {
            match *self {}
        }
    }

    #[derive(Clone)]
    pub(crate) enum BindingCounter {}

    impl BindingCounter {
        pub fn responses(&self) -> u64 {
            match *self {}
        }
    }

    pub(crate) enum ChannelMaps {}

    impl ChannelMaps {
        pub fn insert(&mut self, _entry: FastPathEntry) {
            match *self {}
        }

        pub fn remove(&mut self, _entry: FastPathEntry) -> (Traffic, Traffic) {
            match *self {}
        }

        pub fn traffic(&mut self) -> Vec<(FastPathEntry, Traffic, Traffic)> {
            match *self {}
        }

        pub fn clear(&mut self) -> Vec<(FastPathEntry, Traffic, Traffic)> {
            match *self {}
        }

        pub fn figures(&self) -> XdpFigures {
            match *self {}
        }
    }
}
