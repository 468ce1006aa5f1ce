//! A small TURN client, just enough for the check: Binding, requests with long-term
//! credentials (RFC 8489 §9.2: the 401 challenge, then integrity with the realm's key, a
//! fresh nonce after 438), Send indications, and waiting for a Data indication.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::transport::{transact, TransactError, Wire};
use crate::random::Rng;
use crate::stun::{
    long_term_key, AttrType, Class, IntegrityAlgorithm, Message, MessageBuilder, Method,
    TransactionId,
};

/// A username and password (a static user's, or one minted from a REST secret).
#[derive(Clone)]
pub struct Login {
    pub username: String,
    pub password: String,
}

/// What the server's 401 challenge told us.
struct Challenge {
    realm: String,
    nonce: Vec<u8>,
    key: [u8; 16],
}

/// A successful response, kept whole so its attributes can be read.
pub struct Reply(Vec<u8>);

impl Reply {
    /// The response, parsed (it was checked when it arrived).
    pub fn message(&self) -> Message<'_> {
        Message::parse(&self.0).expect("replies are parsed before they are kept")
    }
}

/// An error response: its code, reason phrase and the realm it named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: u16,
    pub reason: String,
    pub realm: Option<String>,
}

impl ErrorReply {
    /// Reads an error response; a missing or malformed ERROR-CODE reads as code 0.
    pub fn from_message(message: &Message<'_>) -> Self {
        let reason = message
            .attribute(AttrType::ERROR_CODE)
            .and_then(|value| value.get(4..))
            .map(|phrase| String::from_utf8_lossy(phrase).into_owned())
            .unwrap_or_default();
        ErrorReply {
            code: message.error_code().unwrap_or(0),
            reason,
            realm: message
                .realm()
                .map(|realm| String::from_utf8_lossy(realm).into_owned()),
        }
    }
}

/// Why a request did not succeed.
#[derive(Debug)]
pub enum RequestError {
    /// No response, or the connection failed.
    Transport(TransactError),
    /// The server answered with an error (after the credential dance, if any).
    Refused(ErrorReply),
    /// The server answered, but not as a TURN server should: a challenge without REALM or
    /// NONCE, a success whose integrity does not verify, an endless run of challenges.
    Unexpected(&'static str),
}

impl From<TransactError> for RequestError {
    fn from(error: TransactError) -> Self {
        RequestError::Transport(error)
    }
}

/// A TURN client over one wire.
pub struct TurnClient<W> {
    wire: W,
    login: Login,
    challenge: Option<Challenge>,
    rng: Rng,
    timeout: Duration,
}

impl<W: Wire> TurnClient<W> {
    pub fn new(wire: W, login: Login, rng: Rng, timeout: Duration) -> Self {
        Self {
            wire,
            login,
            challenge: None,
            rng,
            timeout,
        }
    }

    /// The realm of the server's challenge, once there was one.
    pub fn realm(&self) -> Option<&str> {
        self.challenge.as_ref().map(|c| c.realm.as_str())
    }

    /// Uses `login` from the next request on (the realm and nonce stay).
    pub fn change_login(&mut self, login: Login) {
        if let Some(challenge) = &mut self.challenge {
            challenge.key = long_term_key(&login.username, &challenge.realm, &login.password);
        }
        self.login = login;
    }

    /// A Binding request (unauthenticated): the response's XOR-MAPPED-ADDRESS.
    pub async fn binding(&mut self) -> Result<SocketAddr, RequestError> {
        binding(&mut self.wire, &mut self.rng, self.timeout).await
    }

    /// A request with long-term credentials: first without (the server challenges with
    /// 401), then with the challenge's realm and nonce; once more after a 438.
    pub async fn request(
        &mut self,
        method: Method,
        add_attributes: impl Fn(&mut MessageBuilder),
    ) -> Result<Reply, RequestError> {
        // Unauthenticated, authenticated, and one retry with a fresh nonce.
        for _ in 0..3 {
            let transaction_id = new_transaction_id(&mut self.rng);
            let mut builder = MessageBuilder::new(Class::Request, method, transaction_id);
            add_attributes(&mut builder);
            if let Some(challenge) = &self.challenge {
                builder
                    .add(AttrType::USERNAME, self.login.username.as_bytes())
                    .add(AttrType::REALM, challenge.realm.as_bytes())
                    .add(AttrType::NONCE, &challenge.nonce)
                    .add_integrity(IntegrityAlgorithm::Sha1, &challenge.key);
            }
            builder.add_fingerprint();
            let bytes = transact(
                &mut self.wire,
                &builder.finish(),
                transaction_id,
                self.timeout,
            )
            .await?;
            let message = Message::parse(&bytes).expect("transact returns parsed responses");
            if message.class() == Class::Success {
                return match &self.challenge {
                    Some(c) if message.verify_integrity(&c.key).is_none() => {
                        Err(RequestError::Unexpected(
                            "the response's MESSAGE-INTEGRITY does not verify",
                        ))
                    }
                    _ => Ok(Reply(bytes)),
                };
            }
            let error = ErrorReply::from_message(&message);
            match (error.code, &mut self.challenge) {
                (401, None) => {
                    let (Some(realm), Some(nonce)) = (error.realm, message.nonce()) else {
                        return Err(RequestError::Unexpected(
                            "the 401 challenge has no REALM or NONCE",
                        ));
                    };
                    let key = long_term_key(&self.login.username, &realm, &self.login.password);
                    self.challenge = Some(Challenge {
                        realm,
                        nonce: nonce.to_vec(),
                        key,
                    });
                }
                (438, Some(challenge)) => match message.nonce() {
                    Some(nonce) => challenge.nonce = nonce.to_vec(),
                    None => return Err(RequestError::Unexpected("the 438 has no NONCE")),
                },
                _ => {
                    // A refusal after authenticating carries a fresh nonce: keep it, so a
                    // retry with another login needs no new challenge.
                    if let (Some(challenge), Some(nonce)) = (&mut self.challenge, message.nonce()) {
                        challenge.nonce = nonce.to_vec();
                    }
                    return Err(RequestError::Refused(error));
                }
            }
        }
        Err(RequestError::Unexpected(
            "the server keeps asking for credentials",
        ))
    }

    /// Sends a Send indication carrying `data` to `peer` (RFC 8656 §11.1).
    pub async fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> std::io::Result<()> {
        let transaction_id = new_transaction_id(&mut self.rng);
        let mut builder = MessageBuilder::new(Class::Indication, Method::SEND, transaction_id);
        builder
            .add_xor_address(AttrType::XOR_PEER_ADDRESS, peer)
            .add(AttrType::DATA, data)
            .add_fingerprint();
        self.wire.send(&builder.finish()).await
    }

    /// Waits until `deadline` for a Data indication carrying exactly `data`; returns the
    /// peer address it names. Everything else is skipped.
    pub async fn data_indication(
        &mut self,
        data: &[u8],
        deadline: Instant,
    ) -> std::io::Result<Option<SocketAddr>> {
        loop {
            let Ok(received) = tokio::time::timeout_at(deadline, self.wire.recv()).await else {
                return Ok(None);
            };
            let bytes = received?;
            let Ok(message) = Message::parse(&bytes) else {
                continue;
            };
            if message.class() == Class::Indication
                && message.method() == Method::DATA
                && message.data() == Some(data)
            {
                return Ok(message.xor_peer_address());
            }
        }
    }
}

/// A Binding request over any wire: the response's XOR-MAPPED-ADDRESS.
pub async fn binding(
    wire: &mut impl Wire,
    rng: &mut Rng,
    timeout: Duration,
) -> Result<SocketAddr, RequestError> {
    let transaction_id = new_transaction_id(rng);
    let mut builder = MessageBuilder::new(Class::Request, Method::BINDING, transaction_id);
    builder.add_fingerprint();
    let bytes = transact(wire, &builder.finish(), transaction_id, timeout).await?;
    let message = Message::parse(&bytes).expect("transact returns parsed responses");
    if message.class() == Class::Error {
        return Err(RequestError::Refused(ErrorReply::from_message(&message)));
    }
    message.xor_mapped_address().ok_or(RequestError::Unexpected(
        "the Binding response has no XOR-MAPPED-ADDRESS",
    ))
}

fn new_transaction_id(rng: &mut Rng) -> TransactionId {
    let mut id = TransactionId::default();
    rng.fill(&mut id.0);
    id
}
