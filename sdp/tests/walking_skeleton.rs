//! The walking skeleton, end to end through the JSON API: login checked by a
//! real `git ls-remote` on the gateway agent, a branch of `account` fetched
//! over authenticated HTTP, built with `go build` and run on the real Docker
//! engine, progress and logs over the embedded broker.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Bed, Options, files_containing, free_port, trace_log};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_feature_branch_answers_on_its_published_port() {
    let bed = Bed::start(Options::default()).await;
    bed.login_ok().await;
    let port = free_port();
    let (status, d) = bed
        .deploy(json!({"sandbox": bed.sandbox, "repository": "account",
                       "branch": "feature/login-error", "port": port}))
        .await;
    assert_eq!(status, 201, "{d}");
    assert_eq!(d["state"], "QUEUED");
    let id = d["id"].as_str().unwrap().to_owned();

    let d = bed.wait_final(&id).await;
    let logs = bed.logs(&id).await;
    assert_eq!(d["state"], "RUNNING", "{d}\n{logs}");
    assert_eq!(d["port"], port);
    let stages: Vec<_> = d["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        stages,
        [
            ("git fetch", "completed"),
            ("git checkout", "completed"),
            ("git pull", "completed"),
            ("go build", "completed"),
            ("start container", "completed"),
        ]
    );
    for stage in ["[git fetch]", "[go build]", "[start container]"] {
        assert!(logs.contains(stage), "no {stage} lines in:\n{logs}");
    }

    let body: serde_json::Value = bed
        .http
        .get(format!("http://127.0.0.1:{port}/hello"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["service"], "account", "{body}");
    assert_eq!(body["branch"], "feature/login-error", "{body}");
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_login_is_401_with_a_clear_message() {
    let bed = Bed::start(Options::default()).await;
    let r = bed.login("not-the-password").await;
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("rejected"), "{msg}");
    // No session was created: the API still refuses us.
    let (status, _) = bed
        .deploy(json!({"sandbox": bed.sandbox, "repository": "account", "branch": "main"}))
        .await;
    assert_eq!(status, 401);
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_without_a_gateway_agent_fails_at_once_saying_so() {
    let bed = Bed::start(Options {
        no_gateway: true,
        ..Options::default()
    })
    .await;
    let r = bed.login(&bed.password.clone()).await;
    // "At once": 503 comes only from the bus's no-responders answer; a
    // waited-out request timeout would answer 504. No clock is read.
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("gateway agent"), "{msg}");
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_with_credentials_bitbucket_no_longer_accepts_fails_at_git_fetch() {
    let bed = Bed::start(Options::default()).await;
    bed.login_ok().await;
    // The password changed in Bitbucket after login.
    bed.demo.git.set_password("rotated-elsewhere");
    let (status, d) = bed
        .deploy(json!({"sandbox": bed.sandbox, "repository": "account",
                       "branch": "main", "port": free_port()}))
        .await;
    assert_eq!(status, 201, "{d}");
    let d = bed.wait_final(d["id"].as_str().unwrap()).await;
    assert_eq!(d["state"], "FAILED", "{d}");
    assert_eq!(d["failed_stage"], "git fetch", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("authentication"), "{reason}");
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_branch_fails_at_git_checkout() {
    let bed = Bed::start(Options::default()).await;
    bed.login_ok().await;
    let (status, d) = bed
        .deploy(json!({"sandbox": bed.sandbox, "repository": "account",
                       "branch": "feature/does-not-exist", "port": free_port()}))
        .await;
    assert_eq!(status, 201, "{d}");
    let d = bed.wait_final(d["id"].as_str().unwrap()).await;
    assert_eq!(d["state"], "FAILED", "{d}");
    assert_eq!(d["failed_stage"], "git checkout", "{d}");
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("feature/does-not-exist"),
        "{d}"
    );
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_like_branch_is_rejected_before_git_runs() {
    let bed = Bed::start(Options::default()).await;
    bed.login_ok().await;
    let argv_before = bed.argv();
    let (status, body) = bed
        .deploy(json!({"sandbox": bed.sandbox, "repository": "account",
                       "branch": "--upload-pack=touch /tmp/sdp-pwned"}))
        .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("branch"), "{msg}");
    // Nothing was stored and no git ran for it.
    let list: serde_json::Value = bed
        .http
        .get(bed.url(&format!("/deployments?sandbox={}", bed.sandbox)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    assert_eq!(bed.argv(), argv_before);
    assert!(!std::path::Path::new("/tmp/sdp-pwned").exists());
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_leaks_nowhere_during_a_deploy() {
    let bed = Bed::start(Options::default()).await;
    bed.login_ok().await;
    let (status, d) = bed
        .deploy(json!({"sandbox": bed.sandbox, "repository": "account",
                       "branch": "develop", "port": free_port()}))
        .await;
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    let d = bed.wait_final(&id).await;
    assert_eq!(d["state"], "RUNNING", "{d}\n{}", bed.logs(&id).await);

    let needle = bed.password.as_bytes();
    // Every file of the run: demo repositories and the clones' `.git/`
    // (where worktree metadata lives), worktrees, the control plane's
    // database and logs, the agents' data directories, the argv record.
    let hits = files_containing(bed.dir.path(), needle);
    assert!(hits.is_empty(), "password found in {hits:?}");
    let argv = bed.argv();
    assert!(
        argv.contains("git "),
        "the argv recorder saw no git: {argv}"
    );
    assert!(
        argv.contains("go build"),
        "the argv recorder saw no go build"
    );
    assert!(!argv.contains(&bed.password));
    // Everything SDP logged (tracing at debug level).
    let trace = std::fs::read(trace_log()).unwrap();
    assert!(
        !trace.windows(needle.len()).any(|w| w == needle),
        "password in tracing output"
    );
    // The container's environment.
    let inspect = std::process::Command::new("docker")
        .args(["inspect", &format!("sandbox-{}-account", bed.sandbox)])
        .output()
        .unwrap();
    assert!(inspect.status.success());
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains(&bed.password));
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_taps_deploy_logs_on_the_embedded_broker() {
    let bed = Bed::start(Options::default()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nats_tap.py");
    let mut tap = tokio::process::Command::new("python3")
        .args([script, &bed.stack.nats_url, "sdp.deploy.*.log", ">"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let stdout = tap.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("tap never got ready")
        .unwrap();
    assert_eq!(ready.as_deref(), Some("READY"), "nats-py tap: {ready:?}");

    bed.login_ok().await;
    let (status, d) = bed
        .deploy(json!({"sandbox": bed.sandbox, "repository": "account",
                       "branch": "main", "port": free_port()}))
        .await;
    assert_eq!(status, 201, "{d}");
    let id = d["id"].as_str().unwrap().to_owned();
    let d = bed.wait_final(&id).await;
    assert_eq!(d["state"], "RUNNING", "{d}");

    // Read what the tap printed until it has shown the deploy's last line.
    let log_subject = format!("sdp.deploy.{id}.log");
    let mut seen_log_lines = 0;
    let mut everything = String::new();
    let collect = async {
        while let Ok(Some(line)) = lines.next_line().await {
            everything.push_str(&line);
            everything.push('\n');
            let msg: serde_json::Value = serde_json::from_str(&line).unwrap();
            if msg["sub"] == "sdp.deploy.*.log" && msg["subject"] == log_subject.as_str() {
                seen_log_lines += 1;
                let data: serde_json::Value =
                    serde_json::from_str(msg["data"].as_str().unwrap()).unwrap();
                if data["stage"] == "start container" && seen_log_lines > 3 {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), collect).await;
    assert!(
        seen_log_lines > 3,
        "nats-py saw {seen_log_lines} log lines:\n{everything}"
    );
    // An operator tapping `>` sees only ciphertext of the credentials.
    assert!(
        everything.contains("sdp.agent.micro.deploy"),
        "tap missed the deploy request"
    );
    assert!(
        !everything.contains(&bed.password),
        "password on the bus in clear"
    );
    let _ = tap.kill().await;
    bed.stop().await;
}
