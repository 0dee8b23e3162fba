//! The scripts' own logic, where it can run without touching the machine's
//! real Docker engine.

use std::path::Path;
use std::process::Command;

fn write_exe(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// With no engine answering, docker.sh starts dockerd detached and waits
/// until `docker info` works. `docker`, `dockerd` and `pgrep` are stand-ins
/// on PATH, so the machine's real engine is never stopped or started.
#[test]
fn docker_sh_starts_an_engine_and_waits_for_it() {
    if !is_root() {
        eprintln!("docker.sh refuses to start an engine without root; skipped");
        return;
    }
    let tree = sdp_testbed::materialize().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let up = tmp.path().join("engine-up");
    write_exe(
        &bin.join("docker"),
        &format!(
            "#!/bin/sh\n[ \"$1\" = info ] && [ -e '{}' ]\n",
            up.display()
        ),
    );
    // The "engine" comes up a moment after it is started, like dockerd.
    write_exe(
        &bin.join("dockerd"),
        &format!(
            "#!/bin/sh\necho started\nsleep 1\ntouch '{}'\n",
            up.display()
        ),
    );
    write_exe(&bin.join("pgrep"), "#!/bin/sh\nexit 1\n");
    let log = tmp.path().join("dockerd.log");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let out = Command::new("bash")
        .arg(tree.join("scripts/testbed/docker.sh"))
        .env("PATH", &path)
        .env("SDP_DOCKERD_LOG", &log)
        .env("SDP_DOCKER_WAIT", "20")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("starting dockerd"), "{stderr}");
    assert!(up.exists());
    assert!(std::fs::read_to_string(&log).unwrap().contains("started"));

    // Already answering: nothing is started again.
    let again = Command::new("bash")
        .arg(tree.join("scripts/testbed/docker.sh"))
        .env("PATH", &path)
        .env("SDP_DOCKERD_LOG", &log)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(
        again.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn docker_sh_gives_up_when_the_engine_never_answers() {
    if !is_root() {
        return;
    }
    let tree = sdp_testbed::materialize().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    write_exe(&bin.join("docker"), "#!/bin/sh\nexit 1\n");
    write_exe(&bin.join("dockerd"), "#!/bin/sh\necho 'engine broke' >&2\n");
    write_exe(&bin.join("pgrep"), "#!/bin/sh\nexit 1\n");
    let log = tmp.path().join("dockerd.log");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(tree.join("scripts/testbed/docker.sh"))
        .env("PATH", &path)
        .env("SDP_DOCKERD_LOG", &log)
        .env("SDP_DOCKER_WAIT", "2")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not answer within 2s"), "{stderr}");
    assert!(
        stderr.contains("engine broke"),
        "the log's tail is shown: {stderr}"
    );
}

#[test]
fn sample_repos_sh_is_idempotent() {
    let tree = sdp_testbed::materialize().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let run = || {
        Command::new("bash")
            .arg(tree.join("scripts/testbed/sample-repos.sh"))
            .arg(tmp.path())
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let head = |repo: &str| {
        let out = Command::new("git")
            .args(["--git-dir"])
            .arg(tmp.path().join("bare").join(repo))
            .args(["rev-parse", "refs/heads/main"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let before = head("erangel.git");
    let second = run();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("exists, kept"));
    assert_eq!(head("erangel.git"), before);
    // No half-made repositories are left behind.
    let mut names: Vec<String> = std::fs::read_dir(tmp.path().join("bare"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["account.git", "erangel.git", "payment.git", "user.git"]
    );
}
