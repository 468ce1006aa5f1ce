//! The local address of a datagram on a wildcard socket, both ways (Linux).
//!
//! A socket bound to `0.0.0.0` or `[::]` receives datagrams sent to any of the host's
//! addresses, and a plain `sendto` leaves from whichever address the kernel's route prefers.
//! On a host with several addresses (a secondary IP, IPv6 privacy addresses, 127.0.0.2) a
//! client that sent to one address then gets the answer from another, and drops it. So
//! wildcard listeners ask the kernel for packet information (`IP_PKTINFO`,
//! `IPV6_RECVPKTINFO`): each received datagram carries a control message naming the address
//! it came to ([`destination`]), and each reply carries one naming the address to leave from
//! ([`write_source`]).
//!
//! Control messages live in fixed [`Control`] buffers the caller owns, so nothing here
//! allocates; they are read and written through the `CMSG_*` accessors only, never by
//! assuming a layout.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

/// Bytes of control data for one packet-information message of either family: the
/// larger of the two (`in6_pktinfo`), header and padding included.
pub(crate) const CONTROL_LEN: usize = {
    let v4 = size_of::<libc::in_pktinfo>();
    let v6 = size_of::<libc::in6_pktinfo>();
    let largest = if v4 > v6 { v4 } else { v6 };
    // SAFETY: CMSG_SPACE is arithmetic on its argument; `unsafe` only by libc's convention.
    unsafe { libc::CMSG_SPACE(largest as libc::c_uint) as usize }
};

/// Room for one control message, aligned as the kernel's `cmsghdr` requires (the `CMSG_*`
/// accessors cast the start of the buffer to a header).
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Control {
    _align: [libc::cmsghdr; 0],
    bytes: [u8; CONTROL_LEN],
}

impl Control {
    pub const EMPTY: Control = Control {
        _align: [],
        bytes: [0; CONTROL_LEN],
    };

    /// Where the kernel writes or reads the control data.
    pub fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.bytes.as_mut_ptr().cast()
    }
}

/// Asks the kernel to report, with each datagram `socket` receives, the address it was sent
/// to. `ipv6` says the socket's family.
pub(crate) fn enable(socket: &impl AsRawFd, ipv6: bool) -> io::Result<()> {
    let (level, option) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int of the size given from a live local.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The local address a received datagram was sent to, from the packet information in the
/// control data of `header` (as `recvmsg` returned it). `None` when there is none: the
/// socket did not ask for it, or the kernel cut the control data short.
///
/// For IPv4 this is `ipi_spec_dst`, the address the kernel would answer from: for a unicast
/// datagram it is the destination in the header, and for a broadcast it is the host's own
/// address on that link (a broadcast address cannot be a source). An IPv6 multicast
/// destination is `None` for the same reason.
// Lengths in msghdr and cmsghdr are size_t on glibc but socklen_t on musl: cast either way.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn destination(header: &libc::msghdr) -> Option<IpAddr> {
    // SAFETY: `header` is as the kernel left it: msg_control points at a live buffer and
    // msg_controllen says how much of it the kernel filled with whole control messages;
    // CMSG_FIRSTHDR/CMSG_NXTHDR stay within that length.
    let mut message = unsafe { libc::CMSG_FIRSTHDR(header) };
    while !message.is_null() {
        // SAFETY: non-null results of CMSG_FIRSTHDR/CMSG_NXTHDR point at a whole cmsghdr
        // inside the control buffer.
        let cmsg = unsafe { &*message };
        // Read a message only if the control data holds all of it, whatever its header says.
        let offset = message as usize - header.msg_control as usize;
        let within = offset + cmsg.cmsg_len as usize <= header.msg_controllen as usize;
        if let Some(address) = within.then(|| read_pktinfo(cmsg)).flatten() {
            return Some(address);
        }
        // SAFETY: as above; NXTHDR returns null past the end of the filled control data.
        message = unsafe { libc::CMSG_NXTHDR(header, message) };
    }
    None
}

/// Writes into `control` a control message that makes a datagram leave from `source`, and
/// returns its length for `msg_controllen`.
pub(crate) fn write_source(control: &mut Control, source: IpAddr) -> usize {
    *control = Control::EMPTY;
    // A header naming only the control buffer, so CMSG_FIRSTHDR can place the message.
    // SAFETY: msghdr is plain old data; all zeroes is a valid value.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_control = control.as_mut_ptr();
    header.msg_controllen = CONTROL_LEN as _;
    // SAFETY: the control buffer is CONTROL_LEN bytes, room for a header and either
    // pktinfo struct (see CONTROL_LEN), so the first header is non-null and CMSG_DATA
    // points at enough bytes for the data written; write_unaligned needs no alignment.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&header);
        debug_assert!(!cmsg.is_null());
        let data = libc::CMSG_DATA(cmsg);
        match source {
            IpAddr::V4(ip) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as _) as _;
                // ipi_spec_dst is the source to use; interface 0 lets the route choose.
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(ip).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                data.cast::<libc::in_pktinfo>().write_unaligned(info);
                libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as _) as usize
            }
            IpAddr::V6(ip) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as _) as _;
                // Interface 0: a link-local client's address carries its scope already.
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                data.cast::<libc::in6_pktinfo>().write_unaligned(info);
                libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as _) as usize
            }
        }
    }
}

/// The address in one packet-information control message; `None` for any other message,
/// or one too short to hold its struct.
#[allow(clippy::unnecessary_cast)] // cmsg_len is size_t or socklen_t, as above
fn read_pktinfo(cmsg: &libc::cmsghdr) -> Option<IpAddr> {
    let holds = |size: usize| {
        // SAFETY: CMSG_LEN is arithmetic on its argument.
        cmsg.cmsg_len as usize >= unsafe { libc::CMSG_LEN(size as libc::c_uint) } as usize
    };
    // SAFETY (both arms): the level, type and length checked say the data holds the struct
    // read; read_unaligned needs no alignment.
    match (cmsg.cmsg_level, cmsg.cmsg_type) {
        (libc::IPPROTO_IP, libc::IP_PKTINFO) if holds(size_of::<libc::in_pktinfo>()) => {
            let info = unsafe {
                libc::CMSG_DATA(cmsg)
                    .cast::<libc::in_pktinfo>()
                    .read_unaligned()
            };
            let ip = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
            (!ip.is_unspecified()).then_some(IpAddr::V4(ip))
        }
        (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if holds(size_of::<libc::in6_pktinfo>()) => {
            let info = unsafe {
                libc::CMSG_DATA(cmsg)
                    .cast::<libc::in6_pktinfo>()
                    .read_unaligned()
            };
            let ip = Ipv6Addr::from(info.ipi6_addr.s6_addr);
            (!ip.is_multicast() && !ip.is_unspecified()).then_some(IpAddr::V6(ip))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header over `control` with `len` bytes of control data, as recvmsg leaves it.
    fn received(control: &mut Control, len: usize) -> libc::msghdr {
        // SAFETY: msghdr is plain old data; all zeroes is a valid value.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_control = control.as_mut_ptr();
        header.msg_controllen = len as _;
        header
    }

    #[test]
    fn a_written_source_reads_back_for_both_families() {
        for source in ["192.0.2.7", "2001:db8::7", "127.0.0.2", "::1"] {
            let source: IpAddr = source.parse().unwrap();
            let mut control = Control::EMPTY;
            let len = write_source(&mut control, source);
            assert!(len <= CONTROL_LEN);
            // The kernel reports IPv4 in the same struct, with the source in ipi_spec_dst.
            assert_eq!(destination(&received(&mut control, len)), Some(source));
        }
    }

    #[test]
    fn no_or_cut_control_data_is_no_destination() {
        let mut control = Control::EMPTY;
        assert_eq!(destination(&received(&mut control, 0)), None);
        let len = write_source(&mut control, "2001:db8::7".parse().unwrap());
        // Less than the whole message: the header claims more than the buffer holds.
        assert_eq!(destination(&received(&mut control, len - 8)), None);
    }

    #[test]
    fn a_multicast_or_unspecified_destination_is_none() {
        for address in ["ff02::1", "::", "0.0.0.0"] {
            let mut control = Control::EMPTY;
            let len = write_source(&mut control, address.parse().unwrap());
            assert_eq!(destination(&received(&mut control, len)), None, "{address}");
        }
    }
}
