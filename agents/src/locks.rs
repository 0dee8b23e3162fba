//! Named async locks: one per repository (its worktrees share one object
//! store and one set of remote-tracking refs, so git operations on it take
//! turns) and one per worktree (two deployments of the same service in the
//! same sandbox take turns end to end).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct Locks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Locks {
    pub fn new() -> Self {
        Self::default()
    }

    /// The lock named `key`. Entries are never removed: there is one per
    /// repository or worktree, a small and bounded set.
    pub fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(key.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_name_is_the_same_lock() {
        let locks = Locks::new();
        let a = locks.get("account");
        let _held = a.try_lock().unwrap();
        assert!(locks.get("account").try_lock().is_err());
        assert!(locks.get("payment").try_lock().is_ok());
    }
}
