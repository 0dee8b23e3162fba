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

/// Stand-ins for `docker`, `dockerd` and `pgrep` first on PATH, a private
/// lock and log, so the machine's real engine is never stopped or started
/// and a real starter elsewhere never shares (or holds) the lock.
struct Stand {
    tmp: tempfile::TempDir,
}

impl Stand {
    fn new() -> Self {
        let stand = Self {
            tmp: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(stand.bin()).unwrap();
        write_exe(&stand.bin().join("pgrep"), "#!/bin/sh\nexit 1\n");
        stand
    }

    fn bin(&self) -> std::path::PathBuf {
        self.tmp.path().join("bin")
    }

    /// The file whose presence means "the engine answers".
    fn up(&self) -> std::path::PathBuf {
        self.tmp.path().join("engine-up")
    }

    fn log(&self) -> std::path::PathBuf {
        self.tmp.path().join("dockerd.log")
    }

    /// `docker info` answers once the engine is up; `never` makes it fail.
    fn docker(&self, answers: bool) {
        let body = if answers {
            format!("[ \"$1\" = info ] && [ -e '{}' ]", self.up().display())
        } else {
            "exit 1".to_owned()
        };
        write_exe(&self.bin().join("docker"), &format!("#!/bin/sh\n{body}\n"));
    }

    /// `{up}` in the script stands for the engine-up file.
    fn dockerd(&self, script: &str) {
        let script = script.replace("{up}", &self.up().display().to_string());
        write_exe(
            &self.bin().join("dockerd"),
            &format!("#!/bin/sh\n{script}\n"),
        );
    }

    /// `timeout` turns a hang into a failure that names itself.
    fn run(&self, wait: &str) -> std::process::Output {
        let tree = sdp_testbed::materialize().unwrap();
        let path = format!(
            "{}:{}",
            self.bin().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("timeout")
            .args(["120", "bash"])
            .arg(tree.join("scripts/testbed/docker.sh"))
            .env("PATH", &path)
            .env("SDP_DOCKER_LOCK", self.tmp.path().join("lock"))
            .env("SDP_DOCKERD_LOG", self.log())
            .env("SDP_DOCKER_WAIT", wait)
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(124), "docker.sh hung");
        out
    }
}

/// With no engine answering, docker.sh starts dockerd detached and waits
/// until `docker info` works.
#[test]
fn docker_sh_starts_an_engine_and_waits_for_it() {
    if !is_root() {
        eprintln!("docker.sh refuses to start an engine without root; skipped");
        return;
    }
    let stand = Stand::new();
    stand.docker(true);
    // The "engine" comes up a moment after it is started, like dockerd.
    stand.dockerd("echo started\nsleep 1\ntouch '{up}'");

    let out = stand.run("20");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("starting dockerd"), "{stderr}");
    assert!(stand.up().exists());
    assert!(
        std::fs::read_to_string(stand.log())
            .unwrap()
            .contains("started")
    );

    // Already answering: nothing is started again.
    let again = stand.run("20");
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
    let stand = Stand::new();
    stand.docker(false);
    stand.dockerd("echo 'engine broke' >&2");
    let out = stand.run("2");
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
    let stand = Stand::new();
    stand.docker(true);
    // The engine reports whether it holds descriptor 9, then lives on like
    // a daemon (bounded, so the test leaves nothing behind for long).
    stand.dockerd("[ -e /proc/$$/fd/9 ] && echo lock-inherited\ntouch '{up}'\nexec sleep 30");
    let out = stand.run("20");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let engine_log = std::fs::read_to_string(stand.log()).unwrap();
    assert!(!engine_log.contains("lock-inherited"), "{engine_log}");

    // The engine still runs, and the lock is free for the next starter.
    stand.docker(false);
    let next = stand.run("1");
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
