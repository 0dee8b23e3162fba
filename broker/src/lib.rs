//! `sdp-broker`: an embedded, NATS-compatible message broker.
//!
//! SDP's control plane and agents talk only through NATS subjects. By
//! default the broker runs inside the control-plane process; at scale the
//! same deployment points at an external nats-server instead. This crate is
//! therefore a server for the standard NATS client protocol, enough for
//! stock clients (`async-nats`, nats-py) to work unchanged:
//!
//! - INFO / CONNECT (nats-server's defaults: a missing `verbose`,
//!   `pedantic` or `echo` means true), PING / PONG in both directions with
//!   nats-server's timing and stale-connection detection, `+OK` for verbose
//!   clients, `-ERR '...'` with nats-server 2.9's exact texts, sent or not
//!   and closing or not as it does (malformed arguments close silently);
//! - PUB, HPUB, SUB with optional queue group, UNSUB with optional max,
//!   MSG / HMSG, `*` and `>` wildcards, echo, headers stripped for clients
//!   that did not declare them, the no-responders status (`NATS/1.0 503`);
//! - limits: max payload, max control line, max connections, per-client
//!   pending bytes (a slow consumer is closed; a publisher waits at most
//!   briefly for a receiver, as nats-server stalls producers), graceful
//!   shutdown that flushes what was accepted;
//! - security: token or users with plain or bcrypt passwords and the auth
//!   timeout; per-user publish/subscribe allow and deny lists with
//!   wildcards and `allow_responses` ([`auth`]); optional TLS ([`tls`]);
//! - monitoring over HTTP ([`monitoring`]) and nats-server's command line
//!   flags ([`flags`]).
//!
//! Conformance is proven by `tests/conformance.rs` and
//! `tests/clients_differential.rs`, which run the same scripts and clients
//! against Debian's nats-server 2.9.10 and this broker and require the
//! same result. Known differences: INFO announces version 2.10.0 (clients
//! gate features on it) and no `go`, `nonce` or cluster fields; nkeys, JWT,
//! accounts, JetStream and clustering are not implemented.
//!
//! Design for speed: the parser is I/O-free and resumable; subjects are
//! matched in a token trie, and each connection caches lookups keyed by a
//! sublist generation, so the publish path takes no shared lock while
//! subscriptions are stable; deliveries are appended straight into each
//! receiver's buffer and its writer task is woken once per read batch.
//!
//! Layout, kept so a fuller nats-server clone can grow from it:
//!
//! - [`parser`]: pure, resumable protocol parser (bytes in, [`ClientOp`] out);
//! - [`subject`]: pure subject validation and matching;
//! - [`sublist`]: the subscription index, a token trie behind a small API;
//! - [`server`]: the listener, [`BrokerConfig`], [`Broker::start`] and the
//!   [`BrokerHandle`];
//! - `connection`: per-client reader and batching writer tasks;
//! - [`auth`]: users, tokens, bcrypt passwords and permissions;
//! - [`tls`]: rustls server configuration;
//! - [`monitoring`]: `/healthz`, `/varz`, `/connz` over HTTP;
//! - [`flags`]: nats-server's command line flags, for `sdp broker`;
//! - [`error`]: [`BrokerError`] and the wire-level [`ProtocolError`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), sdp_broker::BrokerError> {
//! use sdp_broker::{Broker, BrokerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
//! let shutdown = CancellationToken::new();
//! let broker = Broker::start(listener, BrokerConfig::default(), shutdown.clone()).await?;
//! println!("clients connect to {}", broker.client_url());
//! shutdown.cancel();
//! broker.stopped().await;
//! # Ok(())
//! # }
//! ```

// The pure core: no I/O, built with or without the server.
pub mod error;
pub mod parser;
pub mod subject;
pub mod sublist;

#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
mod connection;
#[cfg(feature = "server")]
pub mod flags;
#[cfg(feature = "server")]
pub mod monitoring;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod tls;

#[cfg(feature = "server")]
pub use auth::{Authorization, Permissions, ResponsePermission, SubjectPermission, User, Users};
pub use error::{BrokerError, ProtocolError};
pub use parser::{ClientOp, ConnectOptions, OpRef, Parser, ParserLimits, PubRef};
#[cfg(feature = "server")]
pub use server::{Broker, BrokerConfig, BrokerHandle, SERVER_VERSION, runtime};
pub use sublist::{Sublist, SublistResult};
#[cfg(feature = "server")]
pub use tls::TlsConfig;
