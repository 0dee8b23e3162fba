//! `sdp-broker`: an embedded, NATS-compatible message broker.
//!
//! SDP's control plane and agents talk only through NATS subjects. By
//! default the broker runs inside the control-plane process; at scale the
//! same deployment points at an external nats-server instead. This crate is
//! therefore a server for the standard NATS client protocol, enough for
//! stock clients (`async-nats`, nats-py) to work unchanged:
//!
//! - INFO / CONNECT, PING / PONG (both directions, with stale-connection
//!   detection), `+OK` for verbose clients, `-ERR '...'` with nats-server's
//!   texts;
//! - PUB, HPUB, SUB with optional queue group, UNSUB with optional max,
//!   MSG / HMSG, `*` and `>` wildcards;
//! - headers stripped for clients that did not declare `headers`, `echo`
//!   honoured, and the no-responders status (`NATS/1.0 503`) returned at
//!   once for a request nobody serves;
//! - max payload and max control line limits, slow consumer protection.
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

pub mod auth;
mod connection;
pub mod error;
pub mod flags;
pub mod monitoring;
pub mod parser;
pub mod server;
pub mod subject;
pub mod sublist;
pub mod tls;

pub use auth::{Authorization, Permissions, ResponsePermission, SubjectPermission, User, Users};
pub use error::{BrokerError, ProtocolError};
pub use parser::{ClientOp, ConnectOptions, Parser, ParserLimits};
pub use server::{Broker, BrokerConfig, BrokerHandle, SERVER_VERSION};
pub use sublist::{Sublist, SublistResult};
pub use tls::TlsConfig;
