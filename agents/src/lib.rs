//! SDP's agents: the processes on the company VMs that do the work the
//! control plane asks for over NATS.
//!
//! An agent serves `sdp.agent.{node}.{op}` (request-reply) on a NATS
//! connection it is given, and announces itself on `sdp.node.{node}.hello`
//! and `.heartbeat` with its public key, so secrets can be sealed to it.
//!
//! - **micro** agents deploy Go services: for a deployment of a branch into a
//!   sandbox they keep a git worktree per sandbox and repository, run
//!   `git fetch`, `git checkout`, `git pull` with the user's credentials,
//!   `go build` on the host, and run the binary in the pre-loaded runtime
//!   image with the worktree bind-mounted at `/src`, in the sandbox's Docker
//!   network, published on the chosen host port.
//! - **gateway** agents validate Bitbucket credentials (`auth`, a real
//!   `git ls-remote`) and deploy the PHP gateway per sandbox ([`gateway`]):
//!   the same worktree discipline, the gateway image with the worktree
//!   bind-mounted, and the sandbox's route overrides patched into its
//!   `config.php` ([`routes`]) and reloaded gracefully.
//!
//! Progress is streamed as events and log lines on `sdp.deploy.{id}.*` with
//! one sequence number per deployment, and spooled on disk so a `replay`
//! can resend whatever the bus dropped. Credentials reach git only through
//! the askpass helper ([`git`]); secret values are masked in every line that
//! leaves the agent ([`mask`]). Docker is reached only through [`docker`],
//! builds are spawned only through [`build`].

mod agent;
pub mod atomic;
pub mod build;
pub mod config;
pub mod docker;
pub mod environment;
pub mod error;
mod gateway;
pub mod git;
mod locks;
pub mod mask;
mod ops;
mod pipeline;
mod presence;
pub mod probe;
pub mod process;
mod reporter;
pub mod routes;
pub mod spool;
mod worktree;

pub use agent::{Agent, AgentHandle};
pub use config::AgentConfig;
pub use error::Error;
pub use sdp_contract::NodeKind;
