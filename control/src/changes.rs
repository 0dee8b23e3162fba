//! "Something a list shows has changed": the signal live list pages wait on
//! instead of re-reading on a timer.
//!
//! It carries no data, only a counter per [`Topic`]: a listener looks again
//! when it moves, so a burst of changes costs it one look (a
//! `tokio::sync::watch` keeps only the latest value), and a slow listener
//! never holds up the writer.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// A node announced itself or sent a heartbeat.
    Nodes,
    /// A sandbox was created, changed or deleted, or one of its deployments
    /// was queued, changed state or a stage, or was deleted.
    Sandboxes,
}

#[derive(Clone)]
pub struct Changes {
    nodes: Arc<watch::Sender<u64>>,
    sandboxes: Arc<watch::Sender<u64>>,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            nodes: Arc::new(watch::Sender::new(0)),
            sandboxes: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl Changes {
    fn sender(&self, topic: Topic) -> &watch::Sender<u64> {
        match topic {
            Topic::Nodes => &self.nodes,
            Topic::Sandboxes => &self.sandboxes,
        }
    }

    /// Wakes every listener of `topic`; costs nothing when nobody listens.
    pub fn fire(&self, topic: Topic) {
        self.sender(topic).send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees only changes made after this call.
    pub fn subscribe(&self, topic: Topic) -> watch::Receiver<u64> {
        self.sender(topic).subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_wakes_a_listener_once_and_topics_are_apart() {
        let c = Changes::default();
        let mut nodes = c.subscribe(Topic::Nodes);
        let mut sandboxes = c.subscribe(Topic::Sandboxes);
        assert!(!nodes.has_changed().unwrap());
        for _ in 0..100 {
            c.fire(Topic::Sandboxes);
        }
        sandboxes.changed().await.unwrap();
        assert!(!sandboxes.has_changed().unwrap(), "one wake for the burst");
        assert!(!nodes.has_changed().unwrap());
        c.fire(Topic::Nodes);
        nodes.changed().await.unwrap();
    }
}
