//! Why an agent could not start. Failures of single requests and deployments
//! are not errors of the agent: they travel back over the bus as
//! [`sdp_contract::AgentError`] replies and `FAILED` events.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("agent configuration: {0}")]
    Config(String),
    #[error("agent key: {0}")]
    Keys(#[from] sdp_contract::SealError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot subscribe to the agent's subjects: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("cannot publish presence: {0}")]
    Publish(#[from] async_nats::PublishError),
}

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
