//! A deployment's environment, made ready for its container: variables and
//! secrets become `KEY=value` entries, files are written under the agent's
//! data directory and bind-mounted read-only at their paths.

use std::path::{Path, PathBuf};

use sdp_contract::DeployEnvironment;

/// Where the service's sources are mounted; files may not shadow it.
pub const SOURCE_MOUNT: &str = "/src";

#[derive(Debug, thiserror::Error)]
pub enum EnvironmentError {
    #[error(
        "invalid environment variable name {0:?}: use letters, digits and '_', not starting with a digit"
    )]
    VariableName(String),
    #[error(
        "invalid file path {0:?}: it must be absolute, without '..', and outside {SOURCE_MOUNT}"
    )]
    FilePath(String),
    #[error("writing environment file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Checks names and paths, before the deployment is accepted.
pub fn validate(env: &DeployEnvironment) -> Result<(), EnvironmentError> {
    for name in env.variables.keys().chain(env.secrets.keys()) {
        if !valid_variable(name) {
            return Err(EnvironmentError::VariableName(truncate(name)));
        }
    }
    for path in env.files.keys() {
        if !valid_file_path(path) {
            return Err(EnvironmentError::FilePath(truncate(path)));
        }
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn valid_variable(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 256
}

fn valid_file_path(path: &str) -> bool {
    // Checked as text: `Path::components` would quietly drop a `.`.
    path.len() <= 1024
        && !path.contains('\0')
        && path.strip_prefix('/').is_some_and(|rest| {
            rest.split('/')
                .all(|s| !s.is_empty() && s != "." && s != "..")
        })
        && !Path::new(path).starts_with(SOURCE_MOUNT)
}

/// `KEY=value` entries: variables, then secrets, then `PORT`, which the
/// agent owns because the published port points at it.
pub fn container_env(env: &DeployEnvironment, port: u16) -> Vec<String> {
    env.variables
        .iter()
        .chain(env.secrets.iter())
        .filter(|(k, _)| k.as_str() != "PORT")
        .map(|(k, v)| format!("{k}={v}"))
        .chain(std::iter::once(format!("PORT={port}")))
        .collect()
}

/// Writes the files into `dir` (replacing what a previous deployment of the
/// same container left) and returns host path → container path mounts.
pub async fn write_files(
    env: &DeployEnvironment,
    dir: &Path,
) -> Result<Vec<(PathBuf, String)>, EnvironmentError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| EnvironmentError::Write { path, source }
    };
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err(dir)(e)),
    }
    if env.files.is_empty() {
        return Ok(Vec::new());
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(write_err(dir))?;
    // The files may hold secrets: only the agent's user may list them on
    // the host. Inside the container they are read through the mount.
    set_mode(dir, 0o700).await.map_err(write_err(dir))?;
    let mut mounts = Vec::new();
    for (i, (target, content)) in env.files.iter().enumerate() {
        let host = dir.join(format!("file-{i}"));
        tokio::fs::write(&host, content)
            .await
            .map_err(write_err(&host))?;
        set_mode(&host, 0o644).await.map_err(write_err(&host))?;
        mounts.push((host, target.clone()));
    }
    Ok(mounts)
}

async fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).await?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> DeployEnvironment {
        let mut e = DeployEnvironment::default();
        e.variables.insert("DB_HOST".into(), "db".into());
        e.variables.insert("PORT".into(), "1".into());
        e.secrets.insert("JWT_SECRET".into(), "s3".into());
        e.files.insert("/etc/app/config.json".into(), "{}".into());
        e
    }

    #[test]
    fn variables_and_secrets_become_entries_and_port_is_ours() {
        let entries = container_env(&env(), 8080);
        assert_eq!(entries, ["DB_HOST=db", "JWT_SECRET=s3", "PORT=8080"]);
    }

    #[test]
    fn bad_names_and_paths_are_refused() {
        assert!(validate(&env()).is_ok());
        for name in ["", "1A", "A-B", "A=B", "A B"] {
            let mut e = DeployEnvironment::default();
            e.variables.insert(name.into(), "v".into());
            assert!(validate(&e).is_err(), "{name:?}");
        }
        for path in [
            "relative",
            "/",
            "/etc/../x",
            "/src/x",
            "/src",
            "/a/",
            "/a/./b",
        ] {
            let mut e = DeployEnvironment::default();
            e.files.insert(path.into(), "x".into());
            assert!(validate(&e).is_err(), "{path:?}");
        }
    }

    #[tokio::test]
    async fn files_are_written_and_old_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("c");
        let mounts = write_files(&env(), &files).await.unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].1, "/etc/app/config.json");
        assert_eq!(std::fs::read_to_string(&mounts[0].0).unwrap(), "{}");
        let none = write_files(&DeployEnvironment::default(), &files)
            .await
            .unwrap();
        assert!(none.is_empty());
        assert!(!files.exists());
    }
}
