//! Issues 4 and 5, "done when", through the JSON API with the real agents:
//! sandboxes made from a template, deployed with `POST
//! /sandboxes/{name}/deploy` onto the real Docker engine, their gateway
//! running the real Apache + mod_php image, and route overrides switching a
//! service between the sandbox's container and a stand-in OCP upstream.
//!
//! The gateway container reaches the host (sandbox services, the OCP
//! stand-in) through the Docker bridge's address, as the micro agent
//! advertises it: see [`Bed::start_routing`].

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Bed, USER, files_containing, remove_sandbox_containers, trace_log};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG_PHP: &str = "application/config/production/config.php";

/// Removes the containers and networks of extra sandboxes, even when the
/// test fails half-way.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for sandbox in &self.0 {
            remove_sandbox_containers(sandbox);
        }
    }
}

/// The JSON API as a script would use it; every answer is kept, so the
/// test can show that no answer ever carried the secret.
struct Api<'a> {
    bed: &'a Bed,
    seen: Mutex<String>,
}

impl<'a> Api<'a> {
    fn new(bed: &'a Bed) -> Self {
        Api {
            bed,
            seen: Mutex::new(String::new()),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.bed.http.request(method.clone(), self.bed.url(path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        {
            let mut seen = self.seen.lock().unwrap();
            seen.push_str(&text);
            seen.push('\n');
        }
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!(status == 200 || status == 201, "POST {path}: {status} {v}");
        v
    }

    async fn put(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(reqwest::Method::PUT, path, Some(body)).await;
        assert_eq!(status, 200, "PUT {path}: {v}");
        v
    }

    async fn text(&self, path: &str) -> String {
        let text = self
            .bed
            .http
            .get(self.bed.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut seen = self.seen.lock().unwrap();
        seen.push_str(&text);
        text
    }

    /// `POST /sandboxes/{name}/deploy`, then every deployment to its final
    /// state; panics with the logs unless all are RUNNING.
    async fn deploy_sandbox(&self, sandbox: &str) -> Vec<Value> {
        let list = self
            .post(&format!("/sandboxes/{sandbox}/deploy"), json!({}))
            .await;
        let list = list.as_array().expect("a list of deployments").clone();
        let mut out = Vec::new();
        for d in list {
            assert_eq!(d["state"], "QUEUED", "{d}");
            let id = d["id"].as_str().unwrap();
            let d = self.bed.wait_final(id).await;
            if d["state"] != "RUNNING" {
                let logs = self.text(&format!("/deployments/{id}/logs")).await;
                panic!(
                    "{} of {sandbox} is not RUNNING: {d}\n{logs}",
                    d["repository"]
                );
            }
            out.push(d);
        }
        out
    }
}

/// A stand-in for OCP on the host, on every interface (the gateway
/// container reaches it through the Docker bridge): answers
/// `{"ocp": "<service>", "path": "<path>"}`, the service read from a first
/// path segment `ocp-<service>`.
async fn ocp_upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&seen);
                let path = head
                    .lines()
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .unwrap_or("/")
                    .to_owned();
                let service = path
                    .trim_start_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("ocp-")
                    .to_owned();
                let body = json!({"ocp": service, "path": path}).to_string();
                let _ = socket
                    .write_all(
                        format!(
                            "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    port
}

/// The sample gateway's `config.php` with its OCP defaults pointing at the
/// stand-in: `http://ocp-{svc}.example.invalid` → `{ocp}/ocp-{svc}`.
fn config_php_with_ocp(ocp: &str) -> String {
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testbed/samples/erangel")
        .join(CONFIG_PHP);
    let text = std::fs::read_to_string(sample).unwrap();
    let mut out = text.clone();
    for svc in ["account", "payment", "user", "legacy"] {
        out = out.replace(
            &format!("http://ocp-{svc}.example.invalid"),
            &format!("{ocp}/ocp-{svc}"),
        );
    }
    assert_ne!(out, text, "the sample's OCP defaults moved");
    out
}

/// GET through a sandbox gateway's published port, as the mobile app does.
async fn through_gateway(port: u16, path: &str) -> Value {
    let url = format!("http://127.0.0.1:{port}{path}");
    let r = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "GET {url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: {e}: {text}"))
}

/// The published host port of a service as the sandbox view shows it.
fn port_of(view: &Value, pointer: &str) -> u16 {
    view.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no {pointer} in {view}")) as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_gateway_routes_one_service_to_the_sandbox_and_the_rest_to_ocp() {
    let bed = Bed::start_routing().await;
    let api = Api::new(&bed);
    let sandbox = bed.sandbox.clone();
    let bridge = sdp::dev::docker_host_ip().await.unwrap();
    let ocp = format!("http://{bridge}:{}", ocp_upstream().await);
    // The gateway branch's OCP defaults point at the stand-in.
    bed.demo
        .push_commit("erangel", "main", CONFIG_PHP, &config_php_with_ocp(&ocp))
        .await
        .unwrap();
    let secret = format!("S3cret-{}-never-shown", bed.sandbox);

    let r = bed.login(&bed.password.clone()).await;
    assert_eq!(r.status(), 200, "login: {}", r.text().await.unwrap());

    // An environment with a variable and a secret; the secret reads back as
    // a name only.
    let env = api
        .post(
            "/environments",
            json!({"name": "qa-env", "variables": {"DEMO_GREETING": "hello-qa"},
                   "secrets": {"DEMO_TOKEN": secret}}),
        )
        .await;
    assert_eq!(env["secrets"], json!(["DEMO_TOKEN"]), "{env}");
    let env = api.get("/environments/qa-env").await;
    assert_eq!(env["variables"]["DEMO_GREETING"], "hello-qa", "{env}");

    // A template, and the sandbox from it.
    api.post(
        "/templates",
        json!({"name": "login-fix", "environment": "qa-env", "gateway": {"branch": "main"},
               "services": {"account": {"branch": "feature/login-error"},
                            "payment": {"use_ocp": true}}}),
    )
    .await;
    let view = api
        .post("/templates/login-fix/sandboxes", json!({"name": sandbox}))
        .await;
    assert_eq!(view["template"], "login-fix", "{view}");
    assert_eq!(view["status"], "created", "{view}");
    // The environment comes through the template (environment → template
    // → sandbox layering).
    let resolved = api.get(&format!("/sandboxes/{sandbox}/environment")).await;
    assert_eq!(resolved["environment"], "qa-env", "{resolved}");
    assert_eq!(
        view["services"]["account"]["branch"], "feature/login-error",
        "{view}"
    );
    assert_eq!(view["services"]["payment"]["use_ocp"], true, "{view}");
    let gateway_port = port_of(&view, "/gateway/port");
    let account_port = port_of(&view, "/services/account/port");
    assert_eq!(
        view["gateway_url"],
        format!("http://127.0.0.1:{gateway_port}"),
        "{view}"
    );

    // Deploy it: the account service, then the gateway.
    let deployed = api.deploy_sandbox(&sandbox).await;
    let mut repos: Vec<&str> = deployed
        .iter()
        .map(|d| d["repository"].as_str().unwrap())
        .collect();
    repos.sort_unstable();
    assert_eq!(repos, ["account", "erangel"]);
    for d in &deployed {
        assert_eq!(d["user"], USER, "{d}");
        assert_eq!(d["environment"], "qa-env", "{d}");
        let stages = d["stages"].as_array().unwrap();
        assert!(
            stages.iter().all(|s| s["status"] == "completed"),
            "every stage ✓: {d}"
        );
    }
    let gateway = deployed
        .iter()
        .find(|d| d["repository"] == "erangel")
        .unwrap();
    assert_eq!(gateway["port"], gateway_port, "{gateway}");
    let view = api.get(&format!("/sandboxes/{sandbox}")).await;
    assert_eq!(view["status"], "running", "{view}");

    // Account to the sandbox (already the default for a branch service).
    let routes = api
        .put(
            &format!("/sandboxes/{sandbox}/routes/account"),
            json!({"mode": "sandbox"}),
        )
        .await;
    let account_url = format!("http://{bridge}:{account_port}");
    assert_eq!(routes["account"]["mode"], "sandbox", "{routes}");
    assert_eq!(routes["account"]["target"], account_url, "{routes}");
    assert_eq!(routes["account"]["live"], true, "{routes}");

    // Through the gateway: account from the sandbox's branch, with the
    // environment injected; payment from OCP.
    let body = through_gateway(gateway_port, "/erangel/account/hello").await;
    assert_eq!(body["service"], "account", "{body}");
    assert_eq!(body["branch"], "feature/login-error", "{body}");
    assert_eq!(body["path"], "/hello", "{body}");
    assert_eq!(body["env"]["DEMO_GREETING"], "hello-qa", "{body}");
    assert_eq!(
        body["env"]["DEMO_TOKEN"], secret,
        "the secret reaches the container: {body}"
    );
    let body = through_gateway(gateway_port, "/erangel/payment/x").await;
    assert_eq!(body, json!({"ocp": "payment", "path": "/ocp-payment/x"}));

    // Account back to OCP: the next request goes there.
    let routes = api
        .put(
            &format!("/sandboxes/{sandbox}/routes/account"),
            json!({"mode": "ocp"}),
        )
        .await;
    assert_eq!(routes["account"]["mode"], "ocp", "{routes}");
    let body = through_gateway(gateway_port, "/erangel/account/hello").await;
    assert_eq!(
        body,
        json!({"ocp": "account", "path": "/ocp-account/hello"})
    );

    // A gateway redeploy keeps the routes the sandbox wants: account stays
    // with OCP.
    let redeployed = api
        .call(
            reqwest::Method::POST,
            &format!("/sandboxes/{sandbox}/deploy"),
            Some(json!({"services": ["gateway"]})),
        )
        .await;
    assert_eq!(redeployed.0, 201, "{}", redeployed.1);
    let id = redeployed.1[0]["id"].as_str().unwrap().to_owned();
    let d = bed.wait_final(&id).await;
    assert_eq!(d["state"], "RUNNING", "{d}\n{}", bed.logs(&id).await);
    let body = through_gateway(gateway_port, "/erangel/account/hello").await;
    assert_eq!(body["ocp"], "account", "{body}");

    // The routes side by side: mode, target, OCP default.
    let routes = api.get(&format!("/sandboxes/{sandbox}/routes")).await;
    for svc in ["account", "payment"] {
        let default = format!("{ocp}/ocp-{svc}");
        assert_eq!(routes[svc]["mode"], "ocp", "{routes}");
        assert_eq!(routes[svc]["target"], default, "{routes}");
        assert_eq!(routes[svc]["ocp_default"], default, "{routes}");
        assert_eq!(routes[svc]["live"], true, "{routes}");
    }
    assert_eq!(routes["user"]["ocp_default"], format!("{ocp}/ocp-user"));

    // Account to another branch and back to the sandbox: same port, and the
    // running gateway sends the next request to the new build.
    api.put(
        &format!("/sandboxes/{sandbox}"),
        json!({"services": {"account": {"branch": "develop"}, "payment": {"use_ocp": true}}}),
    )
    .await;
    let (status, list) = api
        .call(
            reqwest::Method::POST,
            &format!("/sandboxes/{sandbox}/deploy"),
            Some(json!({"services": ["account"]})),
        )
        .await;
    assert_eq!(status, 201, "{list}");
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let d = bed.wait_final(&id).await;
    assert_eq!(d["state"], "RUNNING", "{d}\n{}", bed.logs(&id).await);
    assert_eq!(d["port"], account_port, "{d}");
    let routes = api
        .put(
            &format!("/sandboxes/{sandbox}/routes/account"),
            json!({"mode": "sandbox"}),
        )
        .await;
    assert_eq!(routes["account"]["target"], account_url, "{routes}");
    let body = through_gateway(gateway_port, "/erangel/account/hello").await;
    assert_eq!(body["branch"], "develop", "{body}");

    // The gateway to another branch, whose file has its own OCP default
    // for payment: the routes show that branch's snapshot, and account
    // still goes to the sandbox.
    api.put(
        &format!("/sandboxes/{sandbox}"),
        json!({"gateway": {"branch": "feature/gateway-x"}}),
    )
    .await;
    let (status, list) = api
        .call(
            reqwest::Method::POST,
            &format!("/sandboxes/{sandbox}/deploy"),
            Some(json!({"services": ["gateway"]})),
        )
        .await;
    assert_eq!(status, 201, "{list}");
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let d = bed.wait_final(&id).await;
    assert_eq!(d["state"], "RUNNING", "{d}\n{}", bed.logs(&id).await);
    assert_eq!(d["port"], gateway_port, "{d}");
    let routes = api.get(&format!("/sandboxes/{sandbox}/routes")).await;
    assert_eq!(
        routes["payment"]["ocp_default"], "http://ocp-payment-v2.example.invalid",
        "{routes}"
    );
    assert_eq!(routes["account"]["mode"], "sandbox", "{routes}");
    assert_eq!(routes["account"]["target"], account_url, "{routes}");
    let body = through_gateway(gateway_port, "/erangel/account/hello").await;
    assert_eq!(body["branch"], "develop", "{body}");

    // The audit trail: every step, by the user.
    let audit = api.get(&format!("/audit?user={USER}&limit=200")).await;
    let audit = audit.as_array().expect("audit records");
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| {
            assert_eq!(a["user"], USER, "{a}");
            (
                a["action"].as_str().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    for want in [
        "login",
        "environment_create",
        "template_create",
        "sandbox_create",
        "deployment_create",
        "route_set",
    ] {
        assert!(
            actions.contains(&(want, "ok")),
            "no {want} in the audit: {actions:?}"
        );
    }
    let of_sandbox = api.get(&format!("/audit?sandbox={sandbox}")).await;
    let of_sandbox = of_sandbox.as_array().unwrap();
    let deploys: Vec<&Value> = of_sandbox
        .iter()
        .filter(|a| a["action"] == "deployment_create")
        .collect();
    assert_eq!(deploys.len(), 5, "{of_sandbox:?}");
    assert!(
        deploys
            .iter()
            .any(|a| a["repository"] == "account" && a["branch"] == "feature/login-error"),
        "{deploys:?}"
    );
    assert!(
        deploys.iter().all(|a| a["environment"] == "qa-env"),
        "{deploys:?}"
    );
    let route_sets = of_sandbox
        .iter()
        .filter(|a| a["action"] == "route_set" && a["repository"] == "account")
        .count();
    assert_eq!(route_sets, 3, "{of_sandbox:?}");

    // The secret's value: in no API answer, no file under the data
    // directories (database, logs, agents' spools and worktrees), no stored
    // log, and nothing SDP traced.
    for d in &deployed {
        api.text(&format!("/deployments/{}/logs", d["id"].as_str().unwrap()))
            .await;
    }
    api.get("/deployments").await;
    api.get(&format!("/sandboxes/{sandbox}/environment")).await;
    api.get("/templates/login-fix").await;
    let seen = api.seen.lock().unwrap().clone();
    assert!(!seen.contains(&secret), "the secret in an API answer");
    assert!(seen.contains("DEMO_TOKEN"), "the secret's name is shown");
    let hits = files_containing(bed.dir.path(), secret.as_bytes());
    assert!(hits.is_empty(), "the secret in {hits:?}");
    let trace = std::fs::read(trace_log()).unwrap();
    assert!(
        !trace.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret in the tracing output"
    );

    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sandboxes_deploy_account_at_two_branches_at_once() {
    let bed = Bed::start_routing().await;
    let api = Api::new(&bed);
    let a = bed.sandbox.clone();
    let b = format!("{a}-b");
    let _cleanup = Cleanup(vec![b.clone()]);
    let r = bed.login(&bed.password.clone()).await;
    assert_eq!(r.status(), 200, "login: {}", r.text().await.unwrap());

    let mut ports = Vec::new();
    for (name, branch) in [(&a, "main"), (&b, "feature/login-error")] {
        let view = api
            .post(
                "/sandboxes",
                json!({"name": name, "gateway": {"branch": "main"},
                       "services": {"account": {"branch": branch}}}),
            )
            .await;
        ports.push((
            port_of(&view, "/gateway/port"),
            port_of(&view, "/services/account/port"),
        ));
    }
    assert_ne!(ports[0], ports[1], "each sandbox has its own ports");

    let started = Instant::now();
    let (da, db) = tokio::join!(api.deploy_sandbox(&a), api.deploy_sandbox(&b));
    eprintln!("both sandboxes deployed in {:?}", started.elapsed());
    assert_eq!(da.len(), 2);
    assert_eq!(db.len(), 2);
    // Both account builds ran side by side (two build slots per node).
    let account = |list: &[Value]| {
        list.iter()
            .find(|d| d["repository"] == "account")
            .cloned()
            .unwrap()
    };
    let (aa, ab) = (account(&da), account(&db));
    assert_eq!(aa["branch"], "main");
    assert_eq!(ab["branch"], "feature/login-error");
    assert_ne!(aa["commit"], ab["commit"], "{aa}\n{ab}");

    for ((gateway_port, account_port), branch) in ports.iter().zip(["main", "feature/login-error"])
    {
        // Straight to the sandbox's container, and through its gateway.
        let direct: Value = bed
            .http
            .get(format!("http://127.0.0.1:{account_port}/hello"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(direct["branch"], branch, "{direct}");
        let body = through_gateway(*gateway_port, "/erangel/account/hello").await;
        assert_eq!(body["service"], "account", "{body}");
        assert_eq!(body["branch"], branch, "{body}");
    }
    // Each gateway is its own container on its own network.
    for name in [&a, &b] {
        let out = std::process::Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}",
                &format!("sandbox-{name}-gateway"),
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("sandbox-{name}")
        );
    }

    // Deleting one sandbox removes its containers, network and worktrees
    // through the agents and frees its ports; the other keeps running.
    let (status, gone) = api
        .call(reqwest::Method::DELETE, &format!("/sandboxes/{b}"), None)
        .await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["warnings"], json!([]), "{gone}");
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label=sdp.sandbox={b}")])
        .output()
        .unwrap();
    assert!(left.stdout.trim_ascii().is_empty(), "containers left");
    let network = std::process::Command::new("docker")
        .args(["network", "inspect", &format!("sandbox-{b}")])
        .output()
        .unwrap();
    assert!(!network.status.success(), "network sandbox-{b} left");
    // deleted_sandbox_leaves_an_empty_worktree_directory: the sandbox's
    // directory under each agent's work root goes with its last worktree.
    for root in ["worktrees", "gateway-worktrees"] {
        let dir = bed.dir.path().join(root).join(&b);
        assert!(!dir.exists(), "{} left", dir.display());
        assert!(bed.dir.path().join(root).join(&a).exists());
    }
    let c = format!("{a}-c");
    let _cleanup_c = Cleanup(vec![c.clone()]);
    let view = api
        .post(
            "/sandboxes",
            json!({"name": c, "gateway": {"branch": "main"},
                   "services": {"account": {"branch": "main"}}}),
        )
        .await;
    assert_eq!(
        (
            port_of(&view, "/gateway/port"),
            port_of(&view, "/services/account/port")
        ),
        ports[1],
        "the deleted sandbox's ports are free again"
    );
    let body = through_gateway(ports[0].0, "/erangel/account/hello").await;
    assert_eq!(body["branch"], "main", "{body}");
    bed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_change_while_the_gateway_is_stopped_is_kept_and_applied_on_restart() {
    let bed = Bed::start_routing().await;
    let api = Api::new(&bed);
    let sandbox = bed.sandbox.clone();
    let r = bed.login(&bed.password.clone()).await;
    assert_eq!(r.status(), 200, "login: {}", r.text().await.unwrap());
    api.post(
        "/sandboxes",
        json!({"name": sandbox, "gateway": {"branch": "main"},
               "services": {"account": {"branch": "main"}}}),
    )
    .await;
    let deployed = api.deploy_sandbox(&sandbox).await;
    let gateway = deployed
        .iter()
        .find(|d| d["repository"] == "erangel")
        .unwrap();
    let id = gateway["id"].as_str().unwrap();

    // The gateway is stopped; the route change is kept (not refused), and
    // the routes show what is wanted.
    let stopped = api
        .post(&format!("/deployments/{id}/stop"), json!({}))
        .await;
    assert_eq!(stopped["state"], "STOPPED", "{stopped}");
    let (status, routes) = api
        .call(
            reqwest::Method::PUT,
            &format!("/sandboxes/{sandbox}/routes/account"),
            Some(json!({"mode": "ocp"})),
        )
        .await;
    assert_eq!(status, 200, "{routes}");
    assert_eq!(routes["account"]["wanted"], "ocp", "{routes}");

    // Restarted, the gateway serves the route the sandbox wants.
    let restarted = api
        .post(&format!("/deployments/{id}/restart"), json!({}))
        .await;
    assert_eq!(restarted["state"], "RUNNING", "{restarted}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let routes = api.get(&format!("/sandboxes/{sandbox}/routes")).await;
        if routes["account"]["live"] == true && routes["account"]["mode"] == "ocp" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted gateway never applied the route: {routes}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bed.stop().await;
}
