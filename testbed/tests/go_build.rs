//! The sample services build with the host's Go exactly as the micro agent
//! builds them, and answer as documented.

mod common;

use std::time::Duration;

use common::{PASSWORD, demo, git_as, git_ok, go_build, go_build_ok, wait_http};

#[tokio::test]
async fn account_sample_builds_and_broken_build_fails() {
    let (demo, dir, _shutdown) = demo().await;
    let clone = &demo.services["account"];
    let git = git_as(&demo, clone, PASSWORD);
    let bin = dir.path().join("account-bin");

    git_ok(&git, &["checkout", "--quiet", "feature/login-error"]).await;
    go_build_ok(clone, &bin);
    let head = git_ok(&git, &["rev-parse", "HEAD"]).await;

    // The binary answers with its service, branch, feature and the commit
    // go build stamped in.
    let port = common::free_port();
    let mut child = tokio::process::Command::new(&bin)
        .env("PORT", port.to_string())
        .env("DEMO_GREETING", "hello")
        .env("UNRELATED", "hidden")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/login?status=201");
    let first = wait_http(&url, Duration::from_secs(10)).await;
    assert_eq!(first.status(), 201);
    assert_eq!(first.headers()["content-type"], "application/json");
    let body: serde_json::Value = first.json().await.unwrap();
    assert_eq!(body["service"], "account");
    assert_eq!(body["branch"], "feature/login-error");
    assert_eq!(body["feature"], "login-error");
    assert_eq!(body["commit"], head.as_str());
    assert_eq!(body["path"], "/v1/login");
    assert_eq!(body["env"]["DEMO_GREETING"], "hello");
    assert!(body["env"].get("UNRELATED").is_none());
    child.kill().await.unwrap();

    git_ok(&git, &["checkout", "--quiet", "broken-build"]).await;
    let broken = go_build(clone, &dir.path().join("broken-bin"));
    assert!(!broken.status.success(), "broken-build must not compile");
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(stderr.contains("broken.go"), "{stderr}");
}

#[tokio::test]
async fn every_service_builds_on_every_branch() {
    let (demo, dir, _shutdown) = demo().await;
    for (svc, clone) in &demo.services {
        let git = git_as(&demo, clone, PASSWORD);
        for branch in ["main", "develop", "feature/login-error"] {
            git_ok(&git, &["checkout", "--quiet", branch]).await;
            go_build_ok(clone, &dir.path().join(format!("{svc}-bin")));
        }
    }
}
