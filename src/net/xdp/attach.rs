//! Loading the program and attaching it to every `[xdp] interface` through a bpf_link.
//!
//! A bpf_link belongs to the file descriptor that holds it: when the process exits, however
//! it exits (SIGKILL too), the kernel detaches the program, so nothing keeps relaying with
//! no server behind it. An interface that already runs an XDP program (someone else's, or
//! a rendez still running) is refused, never replaced. One program serves every interface;
//! the ones it may redirect to are in its `attached_devices` map.

use std::ffi::CString;
use std::io;

use anyhow::Context;
use aya::maps::{DevMapHash, Map};
use aya::programs::links::FdLink;
use aya::programs::{ProgramError, Xdp};
use aya::{Ebpf, EbpfLoader};

use super::binding::{self, BindingCounter, BindingListeners, BindingMapIds};
use super::{ChannelMaps, StunService};
use crate::config::{ConfigError, XdpConfig, XdpMode};

/// The program compiled by build.rs from bpf/relay.bpf.c.
static RELAY_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/relay.bpf.o"));
const PROGRAM: &str = "rendez_relay";
const CLIENT_MAP: &str = "client_channels";
const PEER_MAP: &str = "peer_channels";
const DEVICE_MAP: &str = "attached_devices";

/// The attached program and its maps; dropping it detaches the program everywhere.
pub(crate) struct FastPath {
    // The links first: they are dropped (detached) before the program and maps go.
    _links: Vec<FdLink>,
    _ebpf: Ebpf,
    client_map: u32,
    peer_map: u32,
    binding_maps: BindingMapIds,
    /// Whether the program answers Binding requests (at any address).
    answers_binding: bool,
}

/// One `[xdp] interface` entry, resolved.
struct Interface<'a> {
    name: &'a str,
    index: u32,
}

/// How the program ended up attached to one interface.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attachment {
    Native,
    Generic,
}

impl Attachment {
    fn name(self) -> &'static str {
        match self {
            Attachment::Native => "native",
            Attachment::Generic => "generic",
        }
    }
}

impl FastPath {
    /// Loads the program and attaches it to every interface `[xdp]` names; `None` when it
    /// is off, or when the kernel or the process's privileges do not allow it and `mode` is
    /// not "native" (one warning says so, and the sockets path carries everything). An
    /// interface that does not exist or already has an XDP program is an error in every
    /// mode. It is all interfaces or none: one that fails detaches the others.
    pub fn start(config: &XdpConfig, stun: StunService<'_>) -> anyhow::Result<Option<FastPath>> {
        let Some(names) = config.interface.as_deref() else {
            return Ok(None);
        };
        let interfaces = names
            .iter()
            .map(|name| {
                Ok(Interface {
                    name,
                    index: interface_index(name)?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let listed = names.join(", ");
        raise_memlock_limit();
        let listeners = BindingListeners::new(config.binding, stun.nat_discovery, stun.listen);
        if config.binding && stun.nat_discovery {
            tracing::info!("`other-address` is set: Binding requests are answered by the sockets path (`[xdp] binding` answers only plain ones)");
        }
        match load_and_attach(config, &interfaces, &listeners, stun.software) {
            Ok(fast_path) => Ok(Some(fast_path)),
            Err(Refusal::Fatal(error)) => Err(error),
            Err(Refusal::Unsupported(error)) if config.mode == XdpMode::Native => Err(error
                .context(format!(
                    "`xdp.mode = \"native\"` on {listed}: the driver or this process cannot (use \"auto\" to fall back to generic XDP or the sockets path)"
                ))),
            Err(Refusal::Unsupported(error)) => {
                tracing::warn!(
                    interface = %listed,
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

    /// The program's count of Binding responses; `None` when it answers none.
    pub fn binding_counter(&self) -> Option<BindingCounter> {
        if !self.answers_binding {
            return None;
        }
        self.binding_maps
            .counter()
            .map_err(|error| tracing::warn!(%error, "cannot read the XDP Binding counter"))
            .ok()
    }

    /// Puts a reloaded `software` into the program's Binding responses, as the core puts
    /// it into its own.
    pub fn set_software(&self, software: Option<&str>) {
        if let Err(error) = self.binding_maps.set_software(software) {
            tracing::warn!(%error, "could not update SOFTWARE in the XDP Binding responses");
        }
    }
}

/// Why the fast path is not attached: a configuration to fix, or a host that cannot.
enum Refusal {
    Fatal(anyhow::Error),
    Unsupported(anyhow::Error),
}

fn load_and_attach(
    config: &XdpConfig,
    interfaces: &[Interface],
    listeners: &BindingListeners,
    software: Option<&str>,
) -> Result<FastPath, Refusal> {
    let unsupported = |e: ProgramError| {
        Refusal::Unsupported(anyhow::Error::new(e).context("loading the XDP program"))
    };
    let device_count = u32::try_from(interfaces.len()).expect("a config's worth of interfaces");
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(CLIENT_MAP, config.max_channels)
        .map_max_entries(PEER_MAP, config.max_channels)
        .map_max_entries(DEVICE_MAP, device_count)
        .map_max_entries(binding::LISTEN_MAP, listeners.capacity())
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
    program.load().map_err(unsupported)?;
    // On an early return the links made so far are dropped, which detaches them.
    let mut links = Vec::with_capacity(interfaces.len());
    let mut attachments = Vec::with_capacity(interfaces.len());
    for interface in interfaces {
        let (link, attachment) = attach(program, config.mode, interface)?;
        links.push(link);
        attachments.push(attachment);
    }
    fill_redirect_targets(&mut ebpf, interfaces, &attachments)?;
    binding::fill(&mut ebpf, listeners, software).map_err(Refusal::Fatal)?;
    let client_map = map_id(&ebpf, CLIENT_MAP).map_err(Refusal::Fatal)?;
    let peer_map = map_id(&ebpf, PEER_MAP).map_err(Refusal::Fatal)?;
    let binding_maps = BindingMapIds::of(&ebpf).map_err(Refusal::Fatal)?;
    warn_unless_forwarding(interfaces);
    let described: Vec<String> = interfaces
        .iter()
        .zip(&attachments)
        .map(|(interface, attachment)| format!("{} ({})", interface.name, attachment.name()))
        .collect();
    tracing::info!(
        interface = %described.join(", "),
        max_channels = config.max_channels,
        binding = !listeners.is_empty(),
        "XDP fast path attached: bound channels over UDP are relayed in the kernel"
    );
    Ok(FastPath {
        _links: links,
        _ebpf: ebpf,
        client_map,
        peer_map,
        binding_maps,
        answers_binding: !listeners.is_empty(),
    })
}

/// Attaches the loaded program to one interface in the first mode `mode` allows that
/// works, through a bpf_link.
fn attach(
    program: &mut Xdp,
    mode: XdpMode,
    interface: &Interface,
) -> Result<(FdLink, Attachment), Refusal> {
    let modes: &[(aya::programs::XdpMode, Attachment)] = match mode {
        XdpMode::Native => &[(aya::programs::XdpMode::Driver, Attachment::Native)],
        XdpMode::Generic => &[(aya::programs::XdpMode::Skb, Attachment::Generic)],
        XdpMode::Auto => &[
            (aya::programs::XdpMode::Driver, Attachment::Native),
            (aya::programs::XdpMode::Skb, Attachment::Generic),
        ],
    };
    let name = interface.name;
    let mut last_error = None;
    let mut attached = None;
    for &(flags, attachment) in modes {
        match program.attach_to_if_index(interface.index, flags) {
            Ok(id) => {
                attached = Some((id, attachment));
                break;
            }
            Err(error) if already_attached(&error) => {
                return Err(Refusal::Fatal(anyhow::anyhow!(
                    "`xdp.interface`: {name} already has an XDP program (see `bpftool net show dev {name}`); rendez does not replace another program: detach it, or stop the other rendez"
                )));
            }
            Err(error) => {
                last_error = Some(
                    anyhow::Error::new(error)
                        .context(format!("attaching to {name} in {} mode", attachment.name())),
                )
            }
        }
    }
    let Some((id, attachment)) = attached else {
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
    Ok((link, attachment))
}

/// Puts the interfaces a rewritten datagram may be redirected to into `attached_devices`.
/// A native attachment hands the target's driver an XDP frame, which only a driver with
/// native XDP takes; a generic one hands it an sk_buff, which any device sends. An
/// interface that got only generic XDP (`auto` on a driver without native XDP) therefore
/// takes no redirect while another is native: datagrams for it take the sockets path.
fn fill_redirect_targets(
    ebpf: &mut Ebpf,
    interfaces: &[Interface],
    attachments: &[Attachment],
) -> Result<(), Refusal> {
    let any_native = attachments.contains(&Attachment::Native);
    let mut devices = ebpf
        .map_mut(DEVICE_MAP)
        .and_then(|map| DevMapHash::try_from(map).ok())
        .ok_or_else(|| {
            Refusal::Fatal(anyhow::anyhow!(
                "the embedded object has no device map {DEVICE_MAP}"
            ))
        })?;
    let mut left_out = Vec::new();
    for (interface, &attachment) in interfaces.iter().zip(attachments) {
        if any_native && attachment == Attachment::Generic {
            left_out.push(interface.name);
            continue;
        }
        devices
            .insert(interface.index, interface.index, None, 0)
            .map_err(|e| {
                Refusal::Unsupported(anyhow::Error::new(e).context(format!(
                    "adding {} to the program's redirect targets",
                    interface.name
                )))
            })?;
    }
    if !left_out.is_empty() {
        tracing::warn!(
            interface = %left_out.join(", "),
            "only generic XDP on these interfaces while others have native XDP: datagrams between them and the others take the sockets path (a native program cannot hand frames to a driver without XDP)"
        );
    }
    Ok(())
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
/// forwards: IPv4 forwarding on the interface a packet came in on, IPv6 forwarding on the
/// host. rendez does not change either (forwarding also changes how the host treats router
/// advertisements); it says what to set, for every interface in one warning.
fn warn_unless_forwarding(interfaces: &[Interface]) {
    let on = |path: String| std::fs::read_to_string(path).is_ok_and(|value| value.trim() != "0");
    let off: Vec<String> = interfaces
        .iter()
        .map(|interface| format!("net.ipv4.conf.{}.forwarding", interface.name))
        .chain(["net.ipv6.conf.all.forwarding".to_owned()])
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
