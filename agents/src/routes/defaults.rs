//! The OCP defaults of each gateway branch: the `_url` map of the pristine
//! `config.php` right after checkout, kept in `{data_dir}/ocp-defaults.json`
//! so "route to OCP" restores exactly what the branch had, across agent
//! restarts and after the live file has been patched.
//!
//! Layout: `{ repository: { branch: { service: url } } }`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokio::sync::Mutex;

use crate::atomic;

pub type Routes = BTreeMap<String, String>;
type Store = BTreeMap<String, BTreeMap<String, Routes>>;

pub const FILE_NAME: &str = "ocp-defaults.json";

#[derive(Debug, thiserror::Error)]
pub enum DefaultsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid OCP defaults file: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct OcpDefaults {
    path: PathBuf,
    /// Read-modify-write of one file: deployments of two sandboxes must not
    /// lose each other's snapshot.
    lock: Mutex<()>,
}

impl OcpDefaults {
    pub fn new(data_dir: &Path) -> Self {
        OcpDefaults {
            path: data_dir.join(FILE_NAME),
            lock: Mutex::new(()),
        }
    }

    async fn load(&self) -> Result<Store, DefaultsError> {
        match tokio::fs::read(&self.path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| DefaultsError::Corrupt {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::new()),
            Err(source) => Err(DefaultsError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Remembers `routes` as `branch`'s defaults, replacing older ones: a
    /// new commit on the branch may change them.
    pub async fn record(
        &self,
        repository: &str,
        branch: &str,
        routes: &Routes,
    ) -> Result<(), DefaultsError> {
        let _turn = self.lock.lock().await;
        let mut store = self.load().await?;
        let slot = store
            .entry(repository.to_owned())
            .or_default()
            .entry(branch.to_owned())
            .or_default();
        if slot == routes {
            return Ok(());
        }
        *slot = routes.clone();
        let bytes = serde_json::to_vec_pretty(&store).unwrap_or_default();
        atomic::write(&self.path, &bytes)
            .await
            .map_err(|source| DefaultsError::Write {
                path: self.path.clone(),
                source,
            })
    }

    pub async fn get(
        &self,
        repository: &str,
        branch: &str,
    ) -> Result<Option<Routes>, DefaultsError> {
        let _turn = self.lock.lock().await;
        let mut store = self.load().await?;
        Ok(store
            .get_mut(repository)
            .and_then(|branches| branches.remove(branch)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn snapshots_are_per_branch_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let main = Routes::from([("account".into(), "http://ocp-a".into())]);
        let feature = Routes::from([("account".into(), "http://ocp-a-v2".into())]);
        let d = OcpDefaults::new(dir.path());
        assert_eq!(d.get("erangel", "main").await.unwrap(), None);
        d.record("erangel", "main", &main).await.unwrap();
        d.record("erangel", "feature/x", &feature).await.unwrap();
        let again = OcpDefaults::new(dir.path());
        assert_eq!(again.get("erangel", "main").await.unwrap(), Some(main));
        assert_eq!(
            again.get("erangel", "feature/x").await.unwrap(),
            Some(feature)
        );
        assert_eq!(again.get("other", "main").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_corrupt_file_is_an_error_not_an_empty_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let err = OcpDefaults::new(dir.path())
            .get("e", "main")
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("not a valid OCP defaults file"),
            "{err}"
        );
    }
}
