//! The walking skeleton end to end: a real nats-server, fake agents speaking
//! the contract, and the JSON API over HTTP.

mod support;

use sdp_contract::stages;
use serde_json::{Value, json};
use support::{Agents, BROKEN_BRANCH, Harness, USER};

const BOTH: Agents = Agents {
    gateway: true,
    micro: true,
};

async fn error_of(res: reqwest::Response) -> String {
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/json",
        "error answers are JSON"
    );
    let body: Value = res.json().await.unwrap();
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn login_sets_a_session_cookie_and_a_wrong_password_is_401() {
    let h = Harness::start(BOTH).await;

    let res = h.login(&h.password.clone()).await;
    assert_eq!(res.status(), 200);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("sdp_session="), "{cookie}");
    let token = cookie["sdp_session=".len()..].split(';').next().unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert!(!cookie.contains("Secure"), "no TLS here: {cookie}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"user": {"username": USER}}));

    let session = format!("sdp_session={token}");
    let me: Value = h.get(&session, "/session").await.json().await.unwrap();
    assert_eq!(me["user"]["username"], USER);

    let res = h.login("not-the-password").await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        error_of(res).await,
        "Bitbucket rejected the username or password"
    );

    // Logout invalidates the session.
    let res = h
        .http
        .delete(h.url("/session"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(h.get(&session, "/deployments").await.status(), 401);
    h.assert_password_nowhere();
}

#[tokio::test]
async fn login_without_a_gateway_agent_is_503_at_once() {
    let h = Harness::start(Agents {
        gateway: false,
        micro: true,
    })
    .await;
    let res = h.login(&h.password.clone()).await;
    // "At once": 503 with this text comes only from the bus's no-responders
    // answer; a waited-out request timeout answers 504. No clock is read.
    assert_eq!(res.status(), 503);
    assert_eq!(
        error_of(res).await,
        "no gateway agent is connected: login needs one to check your Bitbucket credentials"
    );
}

#[tokio::test]
async fn unauthenticated_requests_are_401_json() {
    let h = Harness::start(BOTH).await;
    for path in ["/deployments", "/nodes", "/deployments/x", "/session"] {
        let res = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 401, "{path}");
        assert!(error_of(res).await.contains("sign in"));
    }
    let res = h
        .deploy(
            "sdp_session=00",
            json!({"sandbox": "qa", "repository": "eredar", "branch": "main"}),
        )
        .await;
    assert_eq!(res.status(), 401);
    let res = h.get("sdp_session=", "/deployments").await;
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn a_deployment_runs_its_stages_in_order_and_keeps_its_log() {
    let h = Harness::start(BOTH).await;
    let cookie = h.session().await;
    h.sandbox(&cookie, "qa-login", json!({})).await;
    h.sandbox(&cookie, "dev", json!({})).await;

    let res = h
        .deploy(
            &cookie,
            json!({"sandbox": "qa-login", "repository": "eredar", "branch": "feature/login"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["state"], "QUEUED");
    assert_eq!(created["sandbox"], "qa-login");
    assert_eq!(created["repository"], "eredar");
    assert_eq!(created["branch"], "feature/login");
    assert_eq!(created["user"], USER);
    assert_eq!(created["port"], 9001);
    assert!(created["completed_at"].is_null());
    let pending: Vec<_> = created["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    let expected: Vec<_> = stages::MICRO.iter().map(|s| (*s, "pending")).collect();
    assert_eq!(pending, expected);

    let id = created["id"].as_str().unwrap();
    let d = h.wait_final(&cookie, id).await;
    assert_eq!(d["state"], "RUNNING", "{d}");
    assert_eq!(d["commit"], "0123456789abcdef0123456789abcdef01234567");
    assert!(d["failed_stage"].is_null());
    assert!(d["started_at"].is_string() && d["completed_at"].is_string());
    let stages_now = d["stages"].as_array().unwrap();
    let names: Vec<_> = stages_now
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, stages::MICRO);
    let mut previous_end = String::new();
    for s in stages_now {
        assert_eq!(s["status"], "completed", "{s}");
        let (start, end) = (
            s["started_at"].as_str().unwrap(),
            s["completed_at"].as_str().unwrap(),
        );
        assert!(previous_end.as_str() <= start && start <= end, "{s}");
        previous_end = end.to_owned();
    }

    let res = h.get(&cookie, &format!("/deployments/{id}/logs")).await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let log = res.text().await.unwrap();
    for stage in stages::MICRO {
        let line = format!("[{stage}] doing {stage} for feature/login\n");
        assert!(log.contains(&line), "{log:?} lacks {line:?}");
    }

    // The list and its filters.
    let list: Value = h
        .get(&cookie, "/deployments?sandbox=qa-login&state=RUNNING")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id);
    let none: Value = h
        .get(&cookie, "/deployments?user=someone-else")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none, json!([]));
    let res = h.get(&cookie, "/deployments?state=DONE").await;
    assert_eq!(res.status(), 400);

    // Nodes are listed from their presence.
    let nodes: Value = h.get(&cookie, "/nodes").await.json().await.unwrap();
    let names: Vec<_> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap(),
                n["kind"].as_str().unwrap(),
                n["connected"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [("gateway", "gateway", true), ("micro", "micro", true)]
    );

    // A second service elsewhere gets the next port; the same port
    // requested for another service conflicts; a redeploy keeps its port;
    // an unknown sandbox is 404.
    let res = h
        .deploy(
            &cookie,
            json!({"sandbox": "dev", "repository": "eredar", "branch": "main"}),
        )
        .await;
    let other: Value = res.json().await.unwrap();
    assert_eq!(other["port"], 9002);
    let res = h
        .deploy(
            &cookie,
            json!({"sandbox": "dev", "repository": "kael", "branch": "main", "port": 9001}),
        )
        .await;
    assert_eq!(res.status(), 409);
    assert!(error_of(res).await.contains("port 9001 is in use"));
    let again: Value = h
        .deploy(
            &cookie,
            json!({"sandbox": "qa-login", "repository": "eredar", "branch": "main"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["port"], 9001);
    let res = h
        .deploy(
            &cookie,
            json!({"sandbox": "nowhere", "repository": "eredar", "branch": "main"}),
        )
        .await;
    assert_eq!(res.status(), 404);
    assert!(
        error_of(res)
            .await
            .contains("sandbox \"nowhere\" not found")
    );

    let res = h.get(&cookie, "/deployments/no-such-id").await;
    assert_eq!(res.status(), 404);
    assert!(error_of(res).await.contains("not found"));
    let res = h.get(&cookie, "/deployments/no-such-id/logs").await;
    assert_eq!(res.status(), 404);

    h.assert_password_nowhere();
}

#[tokio::test]
async fn a_failing_build_ends_failed_with_the_stage_and_reason() {
    let h = Harness::start(BOTH).await;
    let cookie = h.session().await;
    h.sandbox(&cookie, "qa", json!({})).await;
    let res = h
        .deploy(
            &cookie,
            json!({"sandbox": "qa", "repository": "eredar", "branch": BROKEN_BRANCH}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = h.wait_final(&cookie, &id).await;
    assert_eq!(d["state"], "FAILED", "{d}");
    assert_eq!(d["failed_stage"], stages::GO_BUILD);
    assert_eq!(d["reason"], "go build exited with status 1");
    let statuses: Vec<_> = d["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["completed", "completed", "completed", "failed", "pending"]
    );
    let log = h
        .get(&cookie, &format!("/deployments/{id}/logs"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        log.contains("[go build] ./main.go:3:1: syntax error\n"),
        "{log}"
    );
    h.assert_password_nowhere();
}

#[tokio::test]
async fn a_deployment_no_micro_agent_takes_is_recorded_failed() {
    let h = Harness::start(Agents {
        gateway: true,
        micro: false,
    })
    .await;
    let cookie = h.session().await;
    h.sandbox(&cookie, "qa", json!({})).await;
    h.sandbox(&cookie, "dev", json!({})).await;
    let res = h
        .deploy(
            &cookie,
            json!({"sandbox": "qa", "repository": "eredar", "branch": "main"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let d: Value = res.json().await.unwrap();
    assert_eq!(d["state"], "FAILED");
    assert_eq!(d["reason"], "no micro agent is connected");
    assert!(d["completed_at"].is_string());
    // The port belongs to the sandbox's service, not to the failed
    // deployment: another sandbox gets the next one.
    let again: Value = h
        .deploy(
            &cookie,
            json!({"sandbox": "dev", "repository": "eredar", "branch": "main"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["port"], 9002);
}

#[tokio::test]
async fn a_branch_that_looks_like_an_option_is_refused_and_nothing_is_stored() {
    let h = Harness::start(BOTH).await;
    let cookie = h.session().await;
    let res = h
        .deploy(
            &cookie,
            json!({"sandbox": "qa", "repository": "eredar", "branch": "--upload-pack=x"}),
        )
        .await;
    assert_eq!(res.status(), 400);
    let msg = error_of(res).await;
    assert!(
        msg.starts_with("invalid branch name \"--upload-pack=x\""),
        "{msg}"
    );
    assert!(msg.contains("option"), "{msg}");

    let res = h
        .deploy(
            &cookie,
            json!({"sandbox": "../etc", "repository": "eredar", "branch": "main"}),
        )
        .await;
    assert_eq!(res.status(), 400);
    assert!(error_of(res).await.contains("sandbox name"));
    let res = h
        .deploy(&cookie, json!({"sandbox": "qa", "branch": "main"}))
        .await;
    assert_eq!(res.status(), 422);
    assert!(error_of(res).await.contains("repository"));

    let list: Value = h.get(&cookie, "/deployments").await.json().await.unwrap();
    assert_eq!(list, json!([]));
    let logs: Vec<_> = std::fs::read_dir(h.data_dir().join("logs"))
        .unwrap()
        .collect();
    assert!(logs.is_empty());
}

#[tokio::test]
async fn an_oversized_or_malformed_body_is_a_json_error() {
    let h = Harness::start(BOTH).await;
    let cookie = h.session().await;
    let huge = "x".repeat(100 * 1024);
    let res = h
        .deploy(
            &cookie,
            json!({"sandbox": "qa", "repository": "eredar", "branch": huge}),
        )
        .await;
    assert_eq!(res.status(), 413);
    assert!(error_of(res).await.contains("larger than the limit"));

    // Without a Content-Length (chunked), the limit still holds.
    let (status, body) = chunked_post(&h, "/api/v1/session", 100, 1024).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("larger than the limit"), "{body}");

    let res = h
        .http
        .post(h.url("/session"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = h
        .http
        .post(h.url("/session"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let res = h.http.get(h.url("/no-such-endpoint")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    error_of(res).await;
    let res = h.http.put(h.url("/nodes")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    error_of(res).await;
}

/// POSTs `chunks` chunks of `size` spaces with chunked transfer encoding (no
/// Content-Length), over a raw socket.
async fn chunked_post(h: &Harness, path: &str, chunks: usize, size: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = h.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{size:x}\r\n{}\r\n", " ".repeat(size));
    for _ in 0..chunks {
        // The server may answer and close before the whole body is sent.
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}
