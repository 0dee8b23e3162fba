//! The live `config.php` of a sandbox's gateway: read, patched through a
//! staged copy that must pass `php -l` before it replaces the file. A
//! failed check, a crash or a kill at any point leaves the previous file,
//! which was valid, in place.

use std::future::Future;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use super::defaults::Routes;
use super::patcher::Change;
use super::{RouteError, patcher};
use crate::atomic;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("php -l refused the patched config.php, which was left as it was: {0}")]
    Invalid(String),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a rewrite did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The map now in the file.
    pub routes: Routes,
    /// Whether the file's bytes changed (no reload is needed otherwise).
    pub changed: bool,
}

async fn load(path: &Path) -> Result<Vec<u8>, FileError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| FileError::Read {
            path: path.to_owned(),
            source,
        })
}

/// The map in the file at `path`.
pub async fn read(path: &Path) -> Result<Routes, FileError> {
    let bytes = load(path).await?;
    Ok(patcher::read(super::text(&bytes)?)?)
}

/// Applies `changes` to the file at `path`. `lint` gets the staged file's
/// path and says whether PHP accepts it.
pub async fn rewrite<L, F>(
    path: &Path,
    changes: &BTreeMap<String, Change>,
    lint: L,
) -> Result<Rewritten, FileError>
where
    L: FnOnce(PathBuf) -> F,
    F: Future<Output = Result<(), String>>,
{
    let bytes = load(path).await?;
    let old = super::text(&bytes)?;
    let new = patcher::apply(old, changes)?;
    let routes = patcher::read(&new)?;
    if new == old {
        return Ok(Rewritten {
            routes,
            changed: false,
        });
    }
    let write_err = |source| FileError::Write {
        path: path.to_owned(),
        source,
    };
    let staged = atomic::stage(path, new.as_bytes())
        .await
        .map_err(write_err)?;
    if let Err(message) = lint(staged.clone()).await {
        let _ = tokio::fs::remove_file(&staged).await;
        return Err(FileError::Invalid(message));
    }
    atomic::commit(&staged, path).await.map_err(write_err)?;
    Ok(Rewritten {
        routes,
        changed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "<?php\n$config['_url'] = array(\n    'account' => 'http://ocp-a',\n);\n";

    fn changes(url: &str) -> BTreeMap<String, Change> {
        BTreeMap::from([("account".to_owned(), Change::Set(url.to_owned()))])
    }

    #[tokio::test]
    async fn a_checked_rewrite_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.php");
        std::fs::write(&path, CONFIG).unwrap();
        let live = path.clone();
        let done = rewrite(&path, &changes("http://m:9001"), |staged| async move {
            assert_ne!(staged, live);
            Ok(())
        })
        .await
        .unwrap();
        assert!(done.changed);
        assert_eq!(done.routes["account"], "http://m:9001");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            CONFIG.replace("http://ocp-a", "http://m:9001")
        );
        assert!(!atomic::temp_path(&path).exists());
        let same = rewrite(&path, &changes("http://m:9001"), |_| async {
            panic!("nothing to check")
        })
        .await
        .unwrap();
        assert!(!same.changed);
    }

    #[tokio::test]
    async fn a_refused_rewrite_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.php");
        std::fs::write(&path, CONFIG).unwrap();
        let err = rewrite(&path, &changes("http://m:9001"), |_| async {
            Err("PHP Parse error: on line 3".to_owned())
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("left as it was"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), CONFIG);
        assert!(!atomic::temp_path(&path).exists());
    }

    #[tokio::test]
    async fn an_unparsable_file_is_not_touched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.php");
        let broken = "<?php\n$config['_url'] = array(\n  'account' => BASE . '/a',\n);\n";
        std::fs::write(&path, broken).unwrap();
        let err = rewrite(&path, &changes("http://x"), |_| async { Ok(()) })
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.php line 3: the URL of 'account' is not a plain quoted string"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);
        let err = read(&dir.path().join("missing.php")).await.unwrap_err();
        assert!(matches!(err, FileError::Read { .. }));
    }
}
