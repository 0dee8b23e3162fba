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

/// Runs docker.sh with stand-ins first on PATH and a private lock, so a real
/// starter elsewhere on the machine never shares (or holds) it; `timeout`
/// turns a hang into a failure that names itself.
fn docker_sh(bin: &Path, lock: &Path, envs: &[(&str, &Path)], wait: &str) -> std::process::Output {
    let tree = sdp_testbed::materialize().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("timeout");
    cmd.args(["120", "bash"])
        .arg(tree.join("scripts/testbed/docker.sh"))
        .env("PATH", &path)
        .env("SDP_DOCKER_LOCK", lock)
        .env("SDP_DOCKER_WAIT", wait);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert_ne!(out.status.code(), Some(124), "docker.sh hung");
    out
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
    let lock = tmp.path().join("lock");

    let out = docker_sh(&bin, &lock, &[("SDP_DOCKERD_LOG", &log)], "20");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("starting dockerd"), "{stderr}");
    assert!(up.exists());
    assert!(std::fs::read_to_string(&log).unwrap().contains("started"));

    // Already answering: nothing is started again.
    let again = docker_sh(&bin, &lock, &[("SDP_DOCKERD_LOG", &log)], "20");
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
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    write_exe(&bin.join("docker"), "#!/bin/sh\nexit 1\n");
    write_exe(&bin.join("dockerd"), "#!/bin/sh\necho 'engine broke' >&2\n");
    write_exe(&bin.join("pgrep"), "#!/bin/sh\nexit 1\n");
    let log = tmp.path().join("dockerd.log");
    let lock = tmp.path().join("lock");
    let out = docker_sh(&bin, &lock, &[("SDP_DOCKERD_LOG", &log)], "2");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not answer within 2s"), "{stderr}");
    assert!(
        stderr.contains("engine broke"),
        "the log's tail is shown: {stderr}"
    );
}

/// CI hung for 600 s in both tests above: the dockerd that `scripts/test`
/// started inherited docker.sh's lock descriptor and held the lock for its
/// whole life, so every later docker.sh waited on `flock` forever.
#[test]
fn regression_dockerd_inherited_the_starter_lock_and_hung_later_starters() {
    if !is_root() {
        return;
    }
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
    // The engine reports whether it holds descriptor 9, then lives on like
    // a daemon (bounded, so the test leaves nothing behind for long).
    write_exe(
        &bin.join("dockerd"),
        &format!(
            "#!/bin/sh\n[ -e /proc/$$/fd/9 ] && echo lock-inherited\ntouch '{}'\nexec sleep 30\n",
            up.display()
        ),
    );
    write_exe(&bin.join("pgrep"), "#!/bin/sh\nexit 1\n");
    let log = tmp.path().join("dockerd.log");
    let lock = tmp.path().join("lock");
    let out = docker_sh(&bin, &lock, &[("SDP_DOCKERD_LOG", &log)], "20");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let engine_log = std::fs::read_to_string(&log).unwrap();
    assert!(!engine_log.contains("lock-inherited"), "{engine_log}");

    // The engine still runs, and the lock is free for the next starter.
    std::fs::remove_file(&up).unwrap();
    write_exe(&bin.join("docker"), "#!/bin/sh\nexit 1\n");
    let next = docker_sh(&bin, &lock, &[("SDP_DOCKERD_LOG", &log)], "1");
    let stderr = String::from_utf8_lossy(&next.stderr);
    assert!(stderr.contains("did not answer within 1s"), "{stderr}");
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
