//! Loading the program and attaching it to `[xdp] interface` through a bpf_link.
//!
//! A bpf_link belongs to the file descriptor that holds it: when the process exits, however
//! it exits (SIGKILL too), the kernel detaches the program, so nothing keeps relaying with
//! no server behind it. An interface that already runs an XDP program (someone else's, or
//! a rendez still running) is refused, never replaced.

use std::ffi::CString;
use std::io;

use anyhow::Context;
use aya::maps::Map;
use aya::programs::links::FdLink;
use aya::programs::{ProgramError, Xdp};
use aya::{Ebpf, EbpfLoader};

use super::ChannelMaps;
use crate::config::{ConfigError, XdpConfig, XdpMode};

/// The program compiled by build.rs from bpf/relay.bpf.c.
static RELAY_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/relay.bpf.o"));
const PROGRAM: &str = "rendez_relay";
const CLIENT_MAP: &str = "client_channels";
const PEER_MAP: &str = "peer_channels";

/// The attached program and its maps; dropping it detaches the program.
pub(crate) struct FastPath {
    // The link first: it is dropped (detached) before the program and maps go.
    _link: FdLink,
    _ebpf: Ebpf,
    client_map: u32,
    peer_map: u32,
}

impl FastPath {
    /// Loads and attaches the program as `[xdp]` says; `None` when it is off, or when the
    /// kernel or the process's privileges do not allow it and `mode` is not "native" (one
    /// warning says so, and the sockets path carries everything). An interface that does
    /// not exist or already has an XDP program is an error in every mode.
    pub fn start(config: &XdpConfig) -> anyhow::Result<Option<FastPath>> {
        let Some(interface) = config.interface.as_deref() else {
            return Ok(None);
        };
        let if_index = interface_index(interface)?;
        raise_memlock_limit();
        match load_and_attach(config, interface, if_index) {
            Ok(fast_path) => Ok(Some(fast_path)),
            Err(Refusal::Fatal(error)) => Err(error),
            Err(Refusal::Unsupported(error)) if config.mode == XdpMode::Native => Err(error
                .context(format!(
                    "`xdp.mode = \"native\"` on {interface}: the driver or this process cannot (use \"auto\" to fall back to generic XDP or the sockets path)"
                ))),
            Err(Refusal::Unsupported(error)) => {
                tracing::warn!(
                    %interface,
                    error = %format!("{error:#}"),
                    "the XDP fast path cannot be used here (it needs CAP_BPF and CAP_NET_ADMIN, or root, and a kernel with XDP): relaying through sockets"
                );
                Ok(None)
            }
        }
    }

    /// A handle on the maps for one UDP worker.
    pub fn channel_maps(&self) -> anyhow::Result<ChannelMaps> {
        ChannelMaps::open(self.client_map, self.peer_map)
            .context("opening the XDP fast path's maps for a worker")
    }
}

/// Why the fast path is not attached: a configuration to fix, or a host that cannot.
enum Refusal {
    Fatal(anyhow::Error),
    Unsupported(anyhow::Error),
}

fn load_and_attach(
    config: &XdpConfig,
    interface: &str,
    if_index: u32,
) -> Result<FastPath, Refusal> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(CLIENT_MAP, config.max_channels)
        .map_max_entries(PEER_MAP, config.max_channels)
        .load(RELAY_OBJECT)
        .map_err(|e| {
            Refusal::Unsupported(anyhow::Error::new(e).context("loading the XDP program"))
        })?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| {
            Refusal::Fatal(anyhow::anyhow!(
                "the embedded object has no XDP program {PROGRAM}"
            ))
        })?;
    program.load().map_err(|e| {
        Refusal::Unsupported(anyhow::Error::new(e).context("loading the XDP program"))
    })?;
    let modes: &[(aya::programs::XdpMode, &str)] = match config.mode {
        XdpMode::Native => &[(aya::programs::XdpMode::Driver, "native")],
        XdpMode::Generic => &[(aya::programs::XdpMode::Skb, "generic")],
        XdpMode::Auto => &[
            (aya::programs::XdpMode::Driver, "native"),
            (aya::programs::XdpMode::Skb, "generic"),
        ],
    };
    let mut last_error = None;
    let mut attached = None;
    for &(mode, name) in modes {
        match program.attach_to_if_index(if_index, mode) {
            Ok(id) => {
                attached = Some((id, name));
                break;
            }
            Err(error) if already_attached(&error) => {
                return Err(Refusal::Fatal(anyhow::anyhow!(
                    "`xdp.interface`: {interface} already has an XDP program (see `bpftool net show dev {interface}`); rendez does not replace another program: detach it, or stop the other rendez"
                )));
            }
            Err(error) => {
                last_error =
                    Some(anyhow::Error::new(error).context(format!("attaching in {name} mode")))
            }
        }
    }
    let Some((id, mode_name)) = attached else {
        return Err(Refusal::Unsupported(
            last_error.unwrap_or_else(|| anyhow::anyhow!("no attach mode to try")),
        ));
    };
    let link = program
        .take_link(id)
        .map_err(|e| Refusal::Unsupported(e.into()))?;
    // aya falls back to a netlink attachment on kernels without bpf_link for XDP (before
    // Linux 5.9); that one would outlive a killed process, so it is given up (dropping it
    // detaches).
    let link = FdLink::try_from(link).map_err(|_| {
        Refusal::Unsupported(anyhow::anyhow!(
            "this kernel cannot attach XDP through a bpf_link (Linux 5.9 or later can)"
        ))
    })?;
    let client_map = map_id(&ebpf, CLIENT_MAP).map_err(Refusal::Fatal)?;
    let peer_map = map_id(&ebpf, PEER_MAP).map_err(Refusal::Fatal)?;
    warn_unless_forwarding(interface);
    tracing::info!(
        %interface,
        mode = mode_name,
        max_channels = config.max_channels,
        "XDP fast path attached: bound channels over UDP are relayed in the kernel"
    );
    Ok(FastPath {
        _link: link,
        _ebpf: ebpf,
        client_map,
        peer_map,
    })
}

/// EBUSY: a program or link is attached in this mode; EEXIST: one in the other mode.
fn already_attached(error: &ProgramError) -> bool {
    let code = match error {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        ProgramError::XdpError(aya::programs::XdpError::NetlinkError(e)) => {
            let text = e.to_string();
            return text.contains("File exists") || text.contains("busy");
        }
        _ => None,
    };
    matches!(code, Some(libc::EBUSY) | Some(libc::EEXIST))
}

fn map_id(ebpf: &Ebpf, name: &str) -> anyhow::Result<u32> {
    match ebpf.map(name) {
        Some(Map::HashMap(data)) => Ok(data.info()?.id()),
        _ => anyhow::bail!("the embedded object has no hash map {name}"),
    }
}

/// The interface's index, or a config error naming the key.
fn interface_index(interface: &str) -> Result<u32, ConfigError> {
    let name = CString::new(interface).map_err(|_| ConfigError::Invalid {
        key: "xdp.interface".into(),
        problem: "must not contain NUL".into(),
    })?;
    // SAFETY: if_nametoindex reads a NUL-terminated string that lives across the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(ConfigError::Invalid {
            key: "xdp.interface".into(),
            problem: format!(
                "no network interface {interface:?} on this host ({}); name one that `ip link` lists",
                io::Error::last_os_error()
            ),
        });
    }
    Ok(index)
}

/// The program finds next hops with `bpf_fib_lookup`, which answers only where the kernel
/// forwards: IPv4 forwarding on the interface, IPv6 forwarding on the host. rendez does not
/// change either (forwarding also changes how the host treats router advertisements); it
/// says what to set.
fn warn_unless_forwarding(interface: &str) {
    let on = |path: String| std::fs::read_to_string(path).is_ok_and(|value| value.trim() != "0");
    let ipv4 = format!("net.ipv4.conf.{interface}.forwarding");
    let ipv6 = "net.ipv6.conf.all.forwarding".to_owned();
    let off: Vec<String> = [ipv4, ipv6]
        .into_iter()
        .filter(|key| !on(format!("/proc/sys/{}", key.replace('.', "/"))))
        .collect();
    if !off.is_empty() {
        tracing::warn!(
            sysctls = %off.join(", "),
            "the XDP fast path finds next hops through the kernel's forwarding table, which answers only with forwarding on: until these are 1, that family's channels take the sockets path (see README \"Kernel fast path (XDP)\"; with IPv6 forwarding set accept_ra = 2 to keep router advertisements)"
        );
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the cgroup. Raise
/// the limit where allowed; a refusal is not fatal (loading says if memory is short).
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a live local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK (fine on Linux 5.11 and later)"
        );
    }
}
