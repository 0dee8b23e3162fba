//! The Docker engine and the two offline images, with real containers.
//!
//! Containers are named `sdp-testbed-<what>-<pid>`, labelled
//! `sdp.testbed=1`, and removed when the test ends, pass or fail.

mod common;

use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use common::{
    Container, PASSWORD, demo, docker_ok, free_port, git_as, git_ok, go_build_ok, wait_http,
};
use sdp_testbed::{
    GATEWAY_IMAGE, GATEWAY_LISTEN_ENV, GATEWAY_MOUNT, RUNTIME_IMAGE, ensure_docker, gateway_image,
    runtime_image,
};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn docker_answers_and_ensure_docker_is_idempotent() {
    ensure_docker().await.unwrap();
    ensure_docker().await.unwrap();
    let version = docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    assert!(!version.is_empty());
}

#[tokio::test]
async fn runtime_image_runs_a_sample_binary() {
    let tag = runtime_image().await.unwrap();
    assert_eq!(tag, RUNTIME_IMAGE);
    assert_eq!(runtime_image().await.unwrap(), tag, "reused");
    docker_ok(&["image", "inspect", &tag]);

    let (demo, _dir, _shutdown) = demo().await;
    let clone = &demo.services["user"];
    let git = git_as(&demo, clone, PASSWORD);
    git_ok(&git, &["checkout", "--quiet", "develop"]).await;
    // Built into the repository, which is bind-mounted at /src, the way
    // the micro agent runs a deployment.
    go_build_ok(clone, &clone.join(".sdp-bin"));
    let mount = format!("{}:/src:ro", clone.display());
    let container = Container::run(
        "runtime",
        &[
            "-p",
            "127.0.0.1::8080",
            "-v",
            &mount,
            "-e",
            "SDP_SANDBOX=demo",
            &tag,
            "/src/.sdp-bin",
        ],
    );
    let port = container.host_port("8080/tcp");
    let resp = wait_http(
        &format!("http://127.0.0.1:{port}/health"),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", container.logs());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["service"], "user");
    assert_eq!(body["branch"], "develop");
    assert_eq!(body["env"]["SDP_SANDBOX"], "demo");

    // The image is a shell and the usual tools, like alpine.
    let out = docker_ok(&[
        "run",
        "--rm",
        &tag,
        "sh",
        "-c",
        "ls -ld /tmp && wget --help 2>&1 | head -n1",
    ]);
    assert!(out.starts_with("drwxrwxrwt"), "{out}");
    assert!(out.contains("BusyBox"), "{out}");
}

/// What the local upstream saw, echoed back as JSON.
async fn echo(
    name: &'static str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let status = if uri.path().ends_with("/created") {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let json = serde_json::json!({
        "upstream": name,
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "body": String::from_utf8_lossy(&body),
        "x_custom": headers.get("x-custom").and_then(|v| v.to_str().ok()),
    });
    (
        status,
        [("content-type", "application/vnd.sample+json")],
        json.to_string(),
    )
}

async fn upstream(name: &'static str, shutdown: CancellationToken) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .fallback(move |m: Method, u: Uri, h: HeaderMap, b: Bytes| echo(name, m, u, h, b));
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .unwrap();
    });
    port
}

/// Rewrites the `account` entry of the `_url` map in the working clone's
/// config.php (a crude stand-in for the gateway agent's patcher).
fn point_account_at(gateway: &Path, from: &str, to: &str) {
    let file = gateway.join("application/config/production/config.php");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains(from), "{from} not in config.php");
    std::fs::write(&file, text.replacen(from, to, 1)).unwrap();
}

/// Slow on a fresh machine: the first gateway_image() runs debootstrap.
#[tokio::test]
async fn gateway_image_serves_erangel() {
    let tag = gateway_image().await.unwrap();
    assert_eq!(tag, GATEWAY_IMAGE);
    let (demo, _dir, shutdown) = demo().await;
    let mount = format!("{}:{GATEWAY_MOUNT}", demo.gateway.display());

    // Bridge network, published port: the route map and 404s, no upstream.
    let bridged = Container::run(
        "gateway-bridge",
        &["-p", "127.0.0.1::80", "-v", &mount, &tag],
    );
    let port = bridged.host_port("80/tcp");
    let base = format!("http://127.0.0.1:{port}/erangel/");
    let resp = wait_http(&base, Duration::from_secs(30)).await;
    assert_eq!(resp.status(), 200, "{}", bridged.logs());
    assert_eq!(resp.headers()["x-erangel-branch"], "main");
    let info: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(info["gateway"], "erangel");
    assert_eq!(
        info["routes"]["account"],
        "http://ocp-account.example.invalid"
    );
    let client = reqwest::Client::new();
    let missing = client.get(format!("{base}nosuch/x")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let missing: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(missing["error"], "unknown service");
    // Application files are never served as files.
    let hidden = client
        .get(format!("{base}application/config/production/config.php"))
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), 404);
    drop(bridged);

    // Host network: the gateway reaches upstreams on the host's loopback.
    let first = upstream("first", shutdown.clone()).await;
    let second = upstream("second", shutdown.clone()).await;
    point_account_at(
        &demo.gateway,
        "http://ocp-account.example.invalid",
        &format!("http://127.0.0.1:{first}"),
    );
    let listen = free_port();
    let env = format!("{GATEWAY_LISTEN_ENV}=127.0.0.1:{listen}");
    let gw = Container::run(
        "gateway-host",
        &["--network", "host", "-e", &env, "-v", &mount, &tag],
    );
    let base = format!("http://127.0.0.1:{listen}/erangel/");
    let resp = wait_http(&base, Duration::from_secs(30)).await;
    assert_eq!(resp.status(), 200, "{}", gw.logs());

    let resp = client
        .post(format!("{base}account/v1/orders/created?x=1&y=2"))
        .header("x-custom", "kept")
        .header("content-type", "text/plain")
        .body("order body")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "status passes through");
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.sample+json"
    );
    assert_eq!(resp.headers()["x-erangel-service"], "account");
    let seen: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(seen["upstream"], "first");
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/v1/orders/created");
    assert_eq!(seen["query"], "x=1&y=2");
    assert_eq!(seen["body"], "order body");
    assert_eq!(seen["x_custom"], "kept");

    // A patched route map plus a graceful reload switches the upstream.
    point_account_at(
        &demo.gateway,
        &format!("http://127.0.0.1:{first}"),
        &format!("http://127.0.0.1:{second}"),
    );
    docker_ok(&["exec", &gw.name, "apachectl", "graceful"]);
    let seen: serde_json::Value = wait_http(&format!("{base}account/x"), Duration::from_secs(10))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["upstream"], "second", "{}", gw.logs());

    // The front controller is the branch's own: switching the clone's
    // branch changes what the mounted repository serves.
    let git = git_as(&demo, &demo.gateway, PASSWORD);
    git_ok(
        &git,
        &["checkout", "--quiet", "--force", "feature/gateway-x"],
    )
    .await;
    let resp = client.get(&base).send().await.unwrap();
    assert_eq!(resp.headers()["x-erangel-feature"], "gateway-x");
    let info: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(info["branch"], "feature/gateway-x");
    assert_eq!(
        info["routes"]["payment"],
        "http://ocp-payment-v2.example.invalid"
    );

    drop(gw);
    shutdown.cancel();
}
