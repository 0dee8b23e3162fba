//! The `sdp` binary's wiring: how the broker, control plane, dashboard and
//! agents are assembled into one process or several.
//!
//! Every library crate exposes an entry point that takes its listener (or
//! connected NATS client), its config and a shutdown token; this crate only
//! reads configuration and connects those entry points. The same [`stack`]
//! functions serve `sdp server`, `sdp agent`, `sdp dev` and the integration
//! tests, so what the tests run is what users run.

pub mod bus_permissions;
pub mod cli;
pub mod config;
pub mod dev;
pub mod stack;
