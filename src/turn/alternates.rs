//! The other TURN servers of a fleet (`alternate-servers`), where a node that cannot take
//! a new allocation (full, or draining) sends the client: 300 Try Alternate with
//! ALTERNATE-SERVER (RFC 8489 §10).
//!
//! - **In turn.** Each redirect names the next alternate after the one named last, so
//!   clients turned away by one node spread over the fleet instead of all landing on the
//!   first entry. The turn is kept per shard: with several shards the order interleaves,
//!   and every alternate still gets its share.
//! - **The client's family.** ALTERNATE-SERVER must hold an address of the family the
//!   request came from (§10): an alternate with no such address is skipped. When the chosen
//!   alternate also has an address of the other family, it follows as the second
//!   ALTERNATE-SERVER, as §10 recommends.
//! - **TLS.** A client on TLS checks the alternate's certificate against ALTERNATE-DOMAIN
//!   when the response has one, and against the name it used for this node when not
//!   (§10). So an alternate given by name carries that name for TLS clients; one given by
//!   an IP address carries none, and must hold a certificate for the name clients use for
//!   this node (one certificate for the fleet's name).

use std::net::{IpAddr, SocketAddr};

/// One alternate server: its addresses and, when it was given by name, the name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alternate {
    /// At most one address per IP family, written plainly (IPv4 as IPv4, never
    /// `::ffff:a.b.c.d`).
    pub addresses: Vec<SocketAddr>,
    /// The DNS name it was given by: ALTERNATE-DOMAIN for clients on TLS (RFC 8489
    /// §14.16). `None` for an address given as an IP literal.
    pub domain: Option<String>,
}

impl Alternate {
    /// An alternate given by its address alone.
    pub fn at(address: SocketAddr) -> Self {
        Self {
            addresses: vec![address],
            domain: None,
        }
    }

    /// Its address of `ip`'s family, if it has one.
    fn address_like(&self, ip: IpAddr) -> Option<SocketAddr> {
        let v4 = ip.to_canonical().is_ipv4();
        self.addresses
            .iter()
            .find(|a| a.ip().to_canonical().is_ipv4() == v4)
            .copied()
    }
}

/// Where one client is sent: what a 300 response carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Redirect {
    /// The first ALTERNATE-SERVER: of the client's family.
    pub server: SocketAddr,
    /// The second ALTERNATE-SERVER: the same alternate's address of the other family.
    pub other_family: Option<SocketAddr>,
    /// ALTERNATE-DOMAIN, when the alternate was given by name.
    pub domain: Option<String>,
}

/// The alternates of one shard and whose turn is next.
#[derive(Clone, Debug, Default)]
pub(super) struct Alternates {
    servers: Vec<Alternate>,
    /// Where the search for the next alternate starts.
    next: usize,
}

impl Alternates {
    pub fn new(servers: Vec<Alternate>) -> Self {
        Self { servers, next: 0 }
    }

    /// Takes a new list (a reload); the turn goes on from where it was.
    pub fn replace(&mut self, servers: Vec<Alternate>) {
        self.servers = servers;
    }

    /// The next alternate with an address of `client`'s family, in turn; `None` when no
    /// alternate has one (the client then gets the error it would have without any).
    pub fn choose(&mut self, client: IpAddr) -> Option<Redirect> {
        let count = self.servers.len();
        let (index, server) = (0..count)
            .map(|step| (self.next + step) % count)
            .find_map(|i| Some((i, self.servers[i].address_like(client)?)))?;
        self.next = (index + 1) % count;
        let alternate = &self.servers[index];
        let other_family = alternate
            .addresses
            .iter()
            .find(|a| a.is_ipv4() != server.is_ipv4())
            .copied();
        Some(Redirect {
            server,
            other_family,
            domain: alternate.domain.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn v4_client() -> IpAddr {
        "198.51.100.1".parse().unwrap()
    }

    fn chosen(alternates: &mut Alternates, client: IpAddr, times: usize) -> Vec<SocketAddr> {
        (0..times)
            .map(|_| alternates.choose(client).expect("an alternate").server)
            .collect()
    }

    #[test]
    fn alternates_are_named_in_turn() {
        let (a, b, c) = (
            addr("203.0.113.1:3478"),
            addr("203.0.113.2:3478"),
            addr("203.0.113.3:3479"),
        );
        let mut alternates =
            Alternates::new(vec![a, b, c].into_iter().map(Alternate::at).collect());
        assert_eq!(
            chosen(&mut alternates, v4_client(), 7),
            [a, b, c, a, b, c, a]
        );
    }

    #[test]
    fn only_alternates_of_the_clients_family_are_named_each_in_turn() {
        let (v4a, v6, v4b) = (
            addr("203.0.113.1:3478"),
            addr("[2001:db8::2]:3478"),
            addr("203.0.113.3:3478"),
        );
        let mut alternates =
            Alternates::new(vec![v4a, v6, v4b].into_iter().map(Alternate::at).collect());
        assert_eq!(
            chosen(&mut alternates, v4_client(), 4),
            [v4a, v4b, v4a, v4b]
        );
        let v6_client: IpAddr = "2001:db8::99".parse().unwrap();
        assert_eq!(chosen(&mut alternates, v6_client, 2), [v6, v6]);
        // An IPv4-mapped client address is an IPv4 client.
        let mapped: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
        assert!(chosen(&mut alternates, mapped, 3)
            .iter()
            .all(|a| a.is_ipv4()));
    }

    #[test]
    fn no_alternate_of_the_clients_family_means_none() {
        let mut alternates = Alternates::new(vec![Alternate::at(addr("[2001:db8::2]:3478"))]);
        assert_eq!(alternates.choose(v4_client()), None);
        assert_eq!(Alternates::default().choose(v4_client()), None);
    }

    #[test]
    fn a_named_alternate_brings_its_domain_and_its_other_family() {
        let named = Alternate {
            addresses: vec![addr("203.0.113.1:3478"), addr("[2001:db8::1]:3478")],
            domain: Some("turn2.example.com".into()),
        };
        let mut alternates = Alternates::new(vec![named]);
        assert_eq!(
            alternates.choose(v4_client()),
            Some(Redirect {
                server: addr("203.0.113.1:3478"),
                other_family: Some(addr("[2001:db8::1]:3478")),
                domain: Some("turn2.example.com".into()),
            })
        );
        let v6_client: IpAddr = "2001:db8::99".parse().unwrap();
        let redirect = alternates.choose(v6_client).unwrap();
        assert_eq!(redirect.server, addr("[2001:db8::1]:3478"));
        assert_eq!(redirect.other_family, Some(addr("203.0.113.1:3478")));
    }

    #[test]
    fn a_reload_keeps_the_turn_within_the_new_list() {
        let servers: Vec<Alternate> = (1..=3)
            .map(|i| Alternate::at(addr(&format!("203.0.113.{i}:3478"))))
            .collect();
        let mut alternates = Alternates::new(servers.clone());
        chosen(&mut alternates, v4_client(), 2);
        alternates.replace(servers[..1].to_vec());
        assert_eq!(
            chosen(&mut alternates, v4_client(), 2),
            [addr("203.0.113.1:3478"); 2]
        );
    }
}
