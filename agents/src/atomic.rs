//! Replacing a file so that a reader (Apache, or the agent after a crash)
//! sees the old bytes or the new ones, never a mix: write a temporary file
//! beside it, flush it to disk, rename it over the target.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

/// The temporary sibling `write` uses for `path`. One writer per file at a
/// time (callers hold the file's lock), so a fixed name is enough, and a
/// leftover from a crash is simply overwritten.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.sdp-new"))
}

/// Writes `bytes` to the temporary sibling of `path`, keeping `path`'s
/// permissions, and returns the sibling's path. Nothing is replaced yet.
pub async fn stage(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let temp = temp_path(path);
    let mut file = tokio::fs::File::create(&temp).await?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    drop(file);
    if let Ok(meta) = tokio::fs::metadata(path).await {
        tokio::fs::set_permissions(&temp, meta.permissions()).await?;
    }
    Ok(temp)
}

/// Moves a staged file over `path` and makes the rename durable.
pub async fn commit(temp: &Path, path: &Path) -> std::io::Result<()> {
    tokio::fs::rename(temp, path).await?;
    if let Some(dir) = path.parent() {
        // Best effort: some file systems refuse to sync a directory.
        if let Ok(dir) = tokio::fs::File::open(dir).await {
            let _ = dir.sync_all().await;
        }
    }
    Ok(())
}

/// `stage` then `commit`.
pub async fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = stage(path, bytes).await?;
    commit(&temp, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_staged_file_replaces_the_target_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.php");
        std::fs::write(&path, "old").unwrap();
        let temp = stage(&path, b"new").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        commit(&temp, &path).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert!(!temp.exists());
        write(&path, b"newer").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "newer");
    }
}
