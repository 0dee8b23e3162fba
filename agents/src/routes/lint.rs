//! `php -l` on a staged `config.php`: inside the sandbox's gateway
//! container (the PHP that will run the file), or on the host when the
//! agent is configured so (no container yet, or no PHP in the image).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::docker::DockerEngine;

/// Bound on one `php -l`.
const LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub enum Linter {
    /// `docker exec {container} php -l {mount}/{path below host_root}`.
    Container {
        container: String,
        host_root: PathBuf,
        mount: String,
    },
    /// `{php} -l {path}` on the host.
    Host { php: PathBuf },
}

impl Linter {
    /// `Ok` if PHP parses `file`; else PHP's complaint.
    pub async fn check(&self, docker: &DockerEngine, file: &Path) -> Result<(), String> {
        match self {
            Linter::Container {
                container,
                host_root,
                mount,
            } => {
                let below = file.strip_prefix(host_root).map_err(|_| {
                    format!(
                        "{} is not inside the mounted {}",
                        file.display(),
                        host_root.display()
                    )
                })?;
                let inside = format!("{}/{}", mount.trim_end_matches('/'), below.display());
                let out = docker
                    .exec(container, &["php", "-l", &inside], LIMIT)
                    .await
                    .map_err(|e| format!("cannot run php -l: {e}"))?;
                if out.success() {
                    return Ok(());
                }
                let lines: Vec<&str> = out.lines.iter().map(|(_, l)| l.as_str()).collect();
                Err(complaint(&lines).unwrap_or_else(|| match out.exit_code {
                    Some(code) => format!("php -l exited with code {code}"),
                    None => "php -l did not report how it ended".to_owned(),
                }))
            }
            Linter::Host { php } => {
                let mut cmd = tokio::process::Command::new(php);
                cmd.arg("-l")
                    .arg(file)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                let out = tokio::time::timeout(LIMIT, cmd.output())
                    .await
                    .map_err(|_| format!("php -l did not finish within {} s", LIMIT.as_secs()))?
                    .map_err(|e| format!("cannot run {}: {e}", php.display()))?;
                if out.status.success() {
                    return Ok(());
                }
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let lines: Vec<&str> = text.lines().collect();
                Err(complaint(&lines).unwrap_or_else(|| format!("php -l failed ({})", out.status)))
            }
        }
    }
}

/// PHP's first error line ("PHP Parse error: ... on line 12").
fn complaint(lines: &[&str]) -> Option<String> {
    lines
        .iter()
        .map(|l| l.trim())
        .find(|l| !l.is_empty() && !l.starts_with("Errors parsing"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn host_php_accepts_good_files_and_names_the_line_of_bad_ones() {
        let php = PathBuf::from("php");
        if std::process::Command::new(&php).arg("-v").output().is_err() {
            eprintln!("php not installed: skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.php");
        std::fs::write(&good, "<?php\n$a = 1;\n").unwrap();
        let bad = dir.path().join("bad.php");
        std::fs::write(&bad, "<?php\n$a = 1;\n$b = ;\n").unwrap();
        let linter = Linter::Host { php };
        let docker = DockerEngine::new();
        linter.check(&docker, &good).await.unwrap();
        let err = linter.check(&docker, &bad).await.unwrap_err();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn the_complaint_skips_the_summary() {
        assert_eq!(
            complaint(&["", "PHP Parse error:  x on line 3", "Errors parsing f"]).as_deref(),
            Some("PHP Parse error:  x on line 3")
        );
        assert_eq!(complaint(&["Errors parsing f"]), None);
    }
}
