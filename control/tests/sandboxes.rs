//! Environments, templates, sandboxes, ports, routes, deployment operations,
//! the audit trail and restart safety, through the JSON API with fake agents
//! over a real nats-server.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use sdp_contract::{RouteTarget, stages};
use serde_json::{Value, json};
use support::{Agents, Harness, LOSSY_BRANCH, SLOW_BRANCH, USER, ocp_default};

const BOTH: Agents = Agents {
    gateway: true,
    micro: true,
};

async fn json_of(res: reqwest::Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let text = res.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Deploys `branch` of `repository` into sandbox `qa`; the deployment's id.
async fn deploy_to_qa(h: &Harness, cookie: &str, repository: &str, branch: &str) -> String {
    let body = json!({"sandbox": "qa", "repository": repository, "branch": branch});
    let d = json_of(h.deploy(cookie, body).await, 201).await;
    d["id"].as_str().unwrap().to_owned()
}

async fn error_of(res: reqwest::Response, status: u16) -> String {
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/json",
        "error answers are JSON"
    );
    let body = json_of(res, status).await;
    body["error"].as_str().unwrap().to_owned()
}

/// Every response body seen, to check no secret ever comes back.
#[derive(Default)]
struct Seen(String);

impl Seen {
    async fn json(&mut self, res: reqwest::Response, status: u16) -> Value {
        let got = res.status().as_u16();
        let text = res.text().await.unwrap();
        self.0.push_str(&text);
        assert_eq!(got, status, "{text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

#[tokio::test]
async fn environment_template_sandbox_deploy_routes_and_audit_end_to_end() {
    let h = Harness::start(BOTH).await;
    let mut published = h
        .nats
        .client()
        .await
        .subscribe("sdp.audit.>")
        .await
        .unwrap();
    let cookie = h.session().await;
    let mut seen = Seen::default();
    let secret = format!("db-{:016x}-value", rand::random::<u64>());

    // An environment with a variable, a secret and a file.
    let env = seen
        .json(
            h.post(
                &cookie,
                "/environments",
                json!({"name": "staging", "variables": {"LOG_LEVEL": "debug", "REGION": "id"},
                       "secrets": {"DB_PASSWORD": secret}, "files": {"/etc/app/app.yaml": "debug: true"}}),
            )
            .await,
            201,
        )
        .await;
    assert_eq!(env["secrets"], json!(["DB_PASSWORD"]));
    assert_eq!(env["variables"]["LOG_LEVEL"], "debug");
    let again = h
        .post(&cookie, "/environments", json!({"name": "staging"}))
        .await;
    assert!(error_of(again, 409).await.contains("already exists"));

    // A template on it: eredar from a branch, kael from OCP, one override.
    let t = seen
        .json(
            h.post(
                &cookie,
                "/templates",
                json!({"name": "login-flow", "environment": "staging",
                       "gateway": {"branch": "main"},
                       "services": {"eredar": {"branch": "feature/login"}, "kael": {"use_ocp": true}},
                       "variables": {"REGION": "sg"}}),
            )
            .await,
            201,
        )
        .await;
    assert_eq!(t["services"]["kael"], json!({"use_ocp": true}));

    // A sandbox from the template, with an override of its own.
    let sb = seen
        .json(
            h.post(
                &cookie,
                "/templates/login-flow/sandboxes",
                json!({"name": "qa-login", "variables": {"LOG_LEVEL": "info"}}),
            )
            .await,
            201,
        )
        .await;
    assert_eq!(sb["template"], "login-flow");
    // It follows the template's environment, and says so.
    assert_eq!(sb["environment"], "staging");
    assert_eq!(sb["environment_from"], "template login-flow");
    assert_eq!(sb["gateway"], json!({"branch": "main", "port": 8080}));
    assert_eq!(sb["services"]["eredar"]["port"], 9001);
    assert_eq!(sb["services"]["eredar"]["branch"], "feature/login");
    assert_eq!(sb["services"]["kael"]["use_ocp"], true);
    assert_eq!(sb["status"], "created");
    assert_eq!(sb["gateway_url"], "http://127.0.0.1:8080");

    // The layered view says which value wins and where it comes from.
    let resolved = seen
        .json(h.get(&cookie, "/sandboxes/qa-login/environment").await, 200)
        .await;
    assert_eq!(resolved["environment"], "staging");
    assert_eq!(
        resolved["variables"]["LOG_LEVEL"],
        json!({"value": "info", "from": "sandbox qa-login"})
    );
    assert_eq!(
        resolved["variables"]["REGION"],
        json!({"value": "sg", "from": "template login-flow"})
    );
    assert_eq!(
        resolved["secrets"]["DB_PASSWORD"],
        json!({"from": "environment staging"})
    );

    // Deploy: eredar, then the gateway with the routes.
    let deployed = seen
        .json(
            h.send(Method::POST, &cookie, "/sandboxes/qa-login/deploy", None)
                .await,
            201,
        )
        .await;
    let list = deployed.as_array().unwrap();
    assert_eq!(list.len(), 2, "{deployed}");
    assert_eq!(list[0]["repository"], "eredar");
    assert_eq!(list[0]["port"], 9001);
    assert_eq!(list[0]["environment"], "staging");
    assert_eq!(list[1]["repository"], "erangel");
    assert_eq!(list[1]["port"], 8080);
    let names: Vec<_> = list[1]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, stages::GATEWAY);
    for d in list {
        let d = h.wait_final(&cookie, d["id"].as_str().unwrap()).await;
        assert_eq!(d["state"], "RUNNING", "{d}");
        seen.0.push_str(&d.to_string());
    }
    let micro_id = list[0]["id"].as_str().unwrap().to_owned();
    let gateway_id = list[1]["id"].as_str().unwrap().to_owned();

    // The micro agent got the layered environment, the secret in it.
    let micro = h.micro.clone().unwrap();
    {
        let st = micro.lock();
        let env = &st.environments[&micro_id];
        assert_eq!(env.secrets["DB_PASSWORD"], secret);
        assert_eq!(env.variables["LOG_LEVEL"], "info");
        assert_eq!(env.variables["REGION"], "sg");
        assert_eq!(env.files["/etc/app/app.yaml"], "debug: true");
    }
    // The gateway got the route map: eredar to the sandbox, kael to OCP.
    let gateway = h.gateway.clone().unwrap();
    {
        let st = gateway.lock();
        let routes = &st.deploy_routes[&gateway_id];
        assert_eq!(
            routes["eredar"],
            RouteTarget::Sandbox {
                url: "http://127.0.0.1:9001".into()
            }
        );
        assert_eq!(routes["kael"], RouteTarget::Ocp);
    }

    // The stored log masks the secret the program printed.
    let log = h
        .get(&cookie, &format!("/deployments/{micro_id}/logs"))
        .await
        .text()
        .await
        .unwrap();
    assert!(log.contains("connecting with password ********"), "{log}");
    assert!(!log.contains(&secret));

    // Routes: live from the gateway, OCP defaults beside them.
    let routes = seen
        .json(h.get(&cookie, "/sandboxes/qa-login/routes").await, 200)
        .await;
    assert_eq!(routes["eredar"]["mode"], "sandbox");
    assert_eq!(routes["eredar"]["target"], "http://127.0.0.1:9001");
    assert_eq!(routes["eredar"]["ocp_default"], ocp_default("eredar"));
    assert_eq!(routes["eredar"]["live"], true);
    assert_eq!(routes["kael"]["mode"], "ocp");
    assert_eq!(routes["kael"]["target"], ocp_default("kael"));
    assert_eq!(routes["account"]["mode"], "ocp");
    let routes = seen
        .json(
            h.put(
                &cookie,
                "/sandboxes/qa-login/routes/eredar",
                json!({"mode": "ocp"}),
            )
            .await,
            200,
        )
        .await;
    assert_eq!(routes["eredar"]["mode"], "ocp");
    assert_eq!(routes["eredar"]["target"], ocp_default("eredar"));
    let routes = seen
        .json(
            h.put(
                &cookie,
                "/sandboxes/qa-login/routes/eredar",
                json!({"mode": "sandbox"}),
            )
            .await,
            200,
        )
        .await;
    assert_eq!(routes["eredar"]["target"], "http://127.0.0.1:9001");
    let res = h
        .put(
            &cookie,
            "/sandboxes/qa-login/routes/kael",
            json!({"mode": "sandbox"}),
        )
        .await;
    assert!(error_of(res, 409).await.contains("no deployment port"));
    let res = h
        .put(
            &cookie,
            "/sandboxes/qa-login/routes/eredar",
            json!({"mode": "moon"}),
        )
        .await;
    assert!(error_of(res, 400).await.contains("invalid mode"));

    let sb = seen
        .json(h.get(&cookie, "/sandboxes/qa-login").await, 200)
        .await;
    assert_eq!(sb["status"], "running");

    // The audit trail has each step, with the user.
    let audit = seen.json(h.get(&cookie, "/audit").await, 200).await;
    let steps: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|a| {
            assert_eq!(a["user"], USER, "{a}");
            (
                a["action"].as_str().unwrap().to_owned(),
                a["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let ok = |a: &str| (a.to_owned(), "ok".to_owned());
    let err = |a: &str| (a.to_owned(), "error".to_owned());
    assert_eq!(
        steps,
        [
            ok("login"),
            ok("environment_create"),
            err("environment_create"),
            ok("template_create"),
            ok("sandbox_create"),
            ok("deployment_create"),
            ok("deployment_create"),
            ok("route_set"),
            ok("route_set"),
            err("route_set"),
            err("route_set"),
        ]
    );
    let deploys = seen
        .json(
            h.get(&cookie, "/audit?sandbox=qa-login&repository=eredar")
                .await,
            200,
        )
        .await;
    let first = deploys
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "deployment_create")
        .unwrap();
    assert_eq!(first["branch"], "feature/login");
    assert_eq!(first["environment"], "staging");
    assert_eq!(first["deployment"], micro_id.as_str());
    let none = seen
        .json(h.get(&cookie, "/audit?user=somebody-else").await, 200)
        .await;
    assert_eq!(none, json!([]));

    // Each record went out on sdp.audit.{action} too.
    let mut subjects = Vec::new();
    while subjects.len() < steps.len() {
        let msg = tokio::time::timeout(Duration::from_secs(5), published.next())
            .await
            .expect("an audit record on the bus")
            .unwrap();
        let record: Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(record["user"], USER);
        subjects.push(msg.subject.to_string());
    }
    let want: Vec<String> = steps
        .iter()
        .map(|(a, _)| format!("sdp.audit.{a}"))
        .collect();
    assert_eq!(subjects, want);

    // The secret never came back and is nowhere on disk in clear.
    assert!(
        !seen.0.contains(&secret),
        "the secret appeared in a response"
    );
    assert!(seen.0.contains("DB_PASSWORD"));
    h.assert_nowhere_on_disk(&secret);
    // The fake agent prints the secret on the bus on purpose (a real agent
    // masks it); the NATS client's own trace of that payload is not ours.
    let traced = support::captured_tracing();
    let leaked: Vec<&str> = traced
        .lines()
        .filter(|l| l.contains(&secret) && !l.contains("async_nats"))
        .map(|l| &l[..l.len().min(300)])
        .collect();
    assert!(
        leaked.is_empty(),
        "the secret appears in tracing output: {leaked:?}"
    );
    h.assert_password_nowhere();
}

#[tokio::test]
async fn fifty_concurrent_sandboxes_get_distinct_ports_and_free_them_on_delete() {
    let h = Harness::start(BOTH).await;
    let cookie = h.session().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let http = h.http.clone();
        let url = h.url("/sandboxes");
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let res = http
                .post(url)
                .header("cookie", cookie)
                .json(
                    &json!({"name": format!("sb-{i}"), "gateway": {"branch": "main"},
                              "services": {"eredar": {"branch": "main"}}}),
                )
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }));
    }
    let mut gateway_ports = BTreeSet::new();
    let mut micro_ports = BTreeSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 201, "{body}");
        gateway_ports.insert(body["gateway"]["port"].as_u64().unwrap());
        micro_ports.insert(body["services"]["eredar"]["port"].as_u64().unwrap());
    }
    assert_eq!(gateway_ports.len(), 50);
    assert_eq!(micro_ports.len(), 50);
    assert_eq!(gateway_ports.first(), Some(&8080));
    assert_eq!(gateway_ports.last(), Some(&8129));
    assert_eq!(micro_ports.last(), Some(&9050));
    assert_eq!(
        h.control.store().port_allocations().await.unwrap().len(),
        100
    );

    // A requested port that is taken is a clear 409, and stores nothing.
    let res = h
        .post(
            &cookie,
            "/sandboxes",
            json!({"name": "late", "gateway": {"branch": "main", "port": 8080}}),
        )
        .await;
    let msg = error_of(res, 409).await;
    assert!(msg.contains("port 8080 is in use"), "{msg}");
    assert_eq!(h.get(&cookie, "/sandboxes/late").await.status(), 404);

    let mut tasks = Vec::new();
    for i in 0..50 {
        let http = h.http.clone();
        let url = h.url(&format!("/sandboxes/sb-{i}"));
        let cookie = cookie.clone();
        tasks.push(tokio::spawn(async move {
            let res = http
                .delete(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["warnings"], json!([]));
    }
    assert!(
        h.control
            .store()
            .port_allocations()
            .await
            .unwrap()
            .is_empty()
    );
    let removed = h.micro.as_ref().unwrap().lock().ops.len();
    assert_eq!(removed, 50);
    // Ports survive nothing stale: a new sandbox starts from the bottom.
    let sb = h
        .sandbox(&cookie, "fresh", json!({"eredar": {"branch": "main"}}))
        .await;
    assert_eq!(sb["gateway"]["port"], 8080);
    assert_eq!(sb["services"]["eredar"]["port"], 9001);
}

#[tokio::test]
async fn sandboxes_update_clone_and_refuse_bad_input_naming_the_field() {
    let h = Harness::start(BOTH).await;
    let cookie = h.session().await;
    let sb = h
        .sandbox(
            &cookie,
            "qa",
            json!({"eredar": {"branch": "main", "port": 9100}}),
        )
        .await;
    assert_eq!(sb["services"]["eredar"]["port"], 9100);

    let clone = json_of(
        h.post(&cookie, "/sandboxes/qa/clone", json!({"name": "qa-2"}))
            .await,
        201,
    )
    .await;
    assert_eq!(clone["services"]["eredar"]["branch"], "main");
    assert_eq!(clone["services"]["eredar"]["port"], 9001);
    assert_eq!(clone["gateway"]["port"], 8081);
    let res = h
        .post(&cookie, "/sandboxes/qa/clone", json!({"name": "qa-2"}))
        .await;
    assert!(error_of(res, 409).await.contains("already exists"));
    let res = h
        .post(&cookie, "/sandboxes/nope/clone", json!({"name": "qa-3"}))
        .await;
    assert!(
        error_of(res, 404)
            .await
            .contains("sandbox \"nope\" not found")
    );

    // Update: a new service gets a port; moving one to OCP releases its port.
    let up = json_of(
        h.put(
            &cookie,
            "/sandboxes/qa",
            json!({"services": {"eredar": {"use_ocp": true}, "kael": {"branch": "feature/x"}}}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        up["services"]["eredar"],
        json!({"use_ocp": true, "route": "ocp"})
    );
    assert_eq!(up["services"]["kael"]["port"], 9002);
    let ports: Vec<u16> = h
        .control
        .store()
        .port_allocations()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.sandbox == "qa")
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [8080, 9002]);

    let cases = [
        (
            json!({"name": "Bad_Name", "gateway": {"branch": "main"}}),
            400,
            "sandbox name",
        ),
        (
            json!({"name": "ok", "gateway": {"branch": "--upload-pack=x"}}),
            400,
            "gateway.branch",
        ),
        (json!({"name": "ok"}), 400, "gateway is required"),
        (
            json!({"name": "ok", "gateway": {"branch": "main"}, "services": {"e": {"branch": "m", "port": 70000}}}),
            400,
            "services.e.port",
        ),
        (
            json!({"name": "ok", "gateway": {"branch": "main"}, "environment": "missing"}),
            404,
            "environment \"missing\" not found",
        ),
        (
            json!({"name": "ok", "gateway": {"branch": "main"}, "template": "missing"}),
            404,
            "template \"missing\" not found",
        ),
        (
            json!({"name": "ok", "gateway": {"branch": "main"}, "variables": {"9X": "v"}}),
            400,
            "variables name",
        ),
        (
            json!({"name": "ok", "gateway": {"branch": "main"}, "services": {"e": {"branch": "m", "port": 9002}}}),
            409,
            "port 9002 is in use",
        ),
        (
            json!({"gateway": {"branch": "main"}}),
            400,
            "name is required",
        ),
    ];
    for (body, status, want) in cases {
        let res = h.post(&cookie, "/sandboxes", body.clone()).await;
        let msg = error_of(res, status).await;
        assert!(msg.contains(want), "{body}: {msg}");
    }
    assert_eq!(h.get(&cookie, "/sandboxes/ok").await.status(), 404);
    let res = h
        .put(&cookie, "/sandboxes/qa", json!({"name": "other"}))
        .await;
    assert!(error_of(res, 400).await.contains("cannot be renamed"));
    let res = h
        .post(
            &cookie,
            "/environments",
            json!({"name": "e", "secrets": {"K": 5}}),
        )
        .await;
    assert_eq!(res.status(), 422);
    let res = h
        .post(
            &cookie,
            "/templates",
            json!({"name": "t", "gateway": {"branch": "main", "port": 8080}}),
        )
        .await;
    assert!(error_of(res, 400).await.contains("gateway.port"));
    let res = h
        .post(
            &cookie,
            "/sandboxes/qa/deploy",
            json!({"services": ["nope"]}),
        )
        .await;
    assert!(error_of(res, 400).await.contains("not a branch service"));
    for path in [
        "/environments/none",
        "/templates/none",
        "/sandboxes/none",
        "/sandboxes/none/routes",
    ] {
        assert_eq!(h.get(&cookie, path).await.status(), 404, "{path}");
    }
    assert_eq!(h.delete(&cookie, "/environments/none").await.status(), 404);

    // An environment in use cannot be deleted; a template in use neither.
    json_of(
        h.post(&cookie, "/environments", json!({"name": "dev"}))
            .await,
        201,
    )
    .await;
    json_of(
        h.post(
            &cookie,
            "/templates",
            json!({"name": "t", "environment": "dev", "gateway": {"branch": "main"}}),
        )
        .await,
        201,
    )
    .await;
    json_of(
        h.post(&cookie, "/templates/t/sandboxes", json!({"name": "from-t"}))
            .await,
        201,
    )
    .await;
    let res = h.delete(&cookie, "/environments/dev").await;
    assert!(error_of(res, 409).await.contains("template t"));
    let res = h.delete(&cookie, "/templates/t").await;
    assert!(error_of(res, 409).await.contains("from-t"));
    json_of(h.delete(&cookie, "/sandboxes/from-t").await, 200).await;
    assert_eq!(h.delete(&cookie, "/templates/t").await.status(), 204);
    assert_eq!(h.delete(&cookie, "/environments/dev").await.status(), 204);

    // Secrets: write-only, merged on update, removed with null.
    json_of(
        h.post(
            &cookie,
            "/environments",
            json!({"name": "s", "secrets": {"A": "aaa-secret", "B": "bbb-secret"}}),
        )
        .await,
        201,
    )
    .await;
    let e = json_of(
        h.put(
            &cookie,
            "/environments/s",
            json!({"secrets": {"A": null, "C": "ccc-secret"}}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(e["secrets"], json!(["B", "C"]));
    assert!(!e.to_string().contains("-secret"));
}

#[tokio::test]
async fn stop_restart_and_delete_go_through_the_agent() {
    let h = Harness::start(BOTH).await;
    let cookie = h.session().await;
    h.sandbox(&cookie, "qa", json!({"eredar": {"branch": "main"}}))
        .await;
    let list = json_of(
        h.post(
            &cookie,
            "/sandboxes/qa/deploy",
            json!({"services": ["eredar"]}),
        )
        .await,
        201,
    )
    .await;
    let id = list[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(h.wait_final(&cookie, &id).await["state"], "RUNNING");

    let d = json_of(
        h.send(
            Method::POST,
            &cookie,
            &format!("/deployments/{id}/stop"),
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(d["state"], "STOPPED");
    let res = h
        .send(
            Method::POST,
            &cookie,
            &format!("/deployments/{id}/stop"),
            None,
        )
        .await;
    assert!(
        error_of(res, 409)
            .await
            .contains("only a RUNNING deployment")
    );
    let d = json_of(
        h.send(
            Method::POST,
            &cookie,
            &format!("/deployments/{id}/restart"),
            None,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(d["state"], "RUNNING");
    assert_eq!(
        h.delete(&cookie, &format!("/deployments/{id}"))
            .await
            .status(),
        204
    );
    assert_eq!(
        h.get(&cookie, &format!("/deployments/{id}")).await.status(),
        404
    );
    assert!(!h.data_dir().join(format!("logs/{id}.log")).exists());
    let ops: Vec<String> = h
        .micro
        .as_ref()
        .unwrap()
        .lock()
        .ops
        .iter()
        .map(|(op, sandbox, repo)| format!("{op} {sandbox} {repo}"))
        .collect();
    assert_eq!(
        ops,
        ["stop qa eredar", "restart qa eredar", "remove qa eredar"]
    );
    let audit = json_of(h.get(&cookie, "/audit?repository=eredar").await, 200).await;
    let actions: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|a| {
            format!(
                "{} {}",
                a["action"].as_str().unwrap(),
                a["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            "deployment_create ok",
            "deployment_stop ok",
            "deployment_stop error",
            "deployment_restart ok",
            "deployment_delete ok"
        ]
    );
    assert_eq!(
        h.send(Method::POST, &cookie, "/deployments/nope/restart", None)
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn builds_queue_per_node_and_all_finish() {
    let h = Harness::start_with(BOTH, |c| c.builds_per_node = 1).await;
    let cookie = h.session().await;
    h.sandbox(
        &cookie,
        "qa",
        json!({"a": {"branch": SLOW_BRANCH}, "b": {"branch": SLOW_BRANCH}, "c": {"branch": SLOW_BRANCH}}),
    )
    .await;
    let list = json_of(
        h.post(
            &cookie,
            "/sandboxes/qa/deploy",
            json!({"services": ["a", "b", "c"]}),
        )
        .await,
        201,
    )
    .await;
    let ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        let d = h
            .wait_final_within(&cookie, id, Duration::from_secs(30))
            .await;
        assert_eq!(d["state"], "RUNNING", "{d}");
    }
    assert_eq!(h.micro.as_ref().unwrap().lock().max_building, 1);
    let log = h
        .get(&cookie, &format!("/deployments/{}/logs", ids[2]))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        log.starts_with("[control] waiting for a free build slot on node micro\n"),
        "{log}"
    );
}

#[tokio::test]
async fn a_lost_message_is_replayed_and_the_log_has_no_gap() {
    let h = Harness::start(BOTH).await;
    let cookie = h.session().await;
    h.sandbox(&cookie, "qa", json!({})).await;
    let id = deploy_to_qa(&h, &cookie, "eredar", LOSSY_BRANCH).await;
    let d = h.wait_final(&cookie, &id).await;
    assert_eq!(d["state"], "RUNNING", "{d}");
    assert!(
        d["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "completed"),
        "{d}"
    );
    let replays = h.micro.as_ref().unwrap().lock().replays.clone();
    assert_eq!(replays, [(id.clone(), 3)]);
    let log = h
        .get(&cookie, &format!("/deployments/{id}/logs"))
        .await
        .text()
        .await
        .unwrap();
    let expected: String = stages::MICRO
        .iter()
        .map(|s| format!("[{s}] doing {s} for {LOSSY_BRANCH}\n"))
        .collect();
    assert_eq!(log, expected);
}

#[tokio::test]
async fn a_control_plane_killed_mid_deploy_ends_it_in_its_true_state_with_a_whole_log() {
    let mut h = Harness::start(BOTH).await;
    let cookie = h.session().await;
    h.sandbox(&cookie, "qa", json!({})).await;
    let id = deploy_to_qa(&h, &cookie, "eredar", SLOW_BRANCH).await;
    // Kill it once the build is under way.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h
        .get(&cookie, &format!("/deployments/{id}/logs"))
        .await
        .text()
        .await
        .unwrap()
        .contains("git fetch")
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.kill_control().await;
    // The agent finishes while nobody listens.
    let micro = h.micro.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !micro.lock().finished.contains(&id) {
        assert!(Instant::now() < deadline, "the fake build did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.start_control_again().await;
    let cookie = h.session().await;
    let d = h.wait_final(&cookie, &id).await;
    assert_eq!(d["state"], "RUNNING", "{d}");
    assert!(
        d["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "completed"),
        "{d}"
    );
    let log = h
        .get(&cookie, &format!("/deployments/{id}/logs"))
        .await
        .text()
        .await
        .unwrap();
    let expected: String = stages::MICRO
        .iter()
        .map(|s| format!("[{s}] doing {s} for {SLOW_BRANCH}\n"))
        .collect();
    assert_eq!(log, expected);
    assert!(!micro.lock().replays.is_empty());
}

#[tokio::test]
async fn a_deployment_never_sent_before_a_restart_fails_with_the_reason() {
    let mut h = Harness::start(Agents {
        gateway: true,
        micro: false,
    })
    .await;
    let cookie = h.session().await;
    h.sandbox(&cookie, "qa", json!({})).await;
    // Stored as queued, as if the process died before sending it.
    let mut d: sdp_control::Deployment = {
        let list = h
            .control
            .deployments(&sdp_control::DeploymentFilter {
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(list.is_empty());
        let res = h
            .deploy(
                &cookie,
                json!({"sandbox": "qa", "repository": "eredar", "branch": "main"}),
            )
            .await;
        let v = json_of(res, 201).await;
        h.control
            .deployment(v["id"].as_str().unwrap())
            .await
            .unwrap()
            .unwrap()
    };
    d.id = "00000000-0000-4000-8000-000000000001".into();
    d.state = sdp_contract::DeploymentState::Queued;
    d.reason = None;
    d.completed_at = None;
    h.control.store().insert_deployment(&d).await.unwrap();
    h.kill_control().await;
    h.start_control_again().await;
    let cookie = h.session().await;
    let back = h.wait_final(&cookie, &d.id).await;
    assert_eq!(back["state"], "FAILED");
    assert!(
        back["reason"]
            .as_str()
            .unwrap()
            .contains("restarted before"),
        "{back}"
    );
}

#[tokio::test]
async fn the_openapi_description_is_served() {
    let h = Harness::start(BOTH).await;
    let res = h.http.get(h.url("/openapi.json")).send().await.unwrap();
    let doc = json_of(res, 200).await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/sandboxes/{name}/routes/{service}"]["put"].is_object());
    assert!(doc["paths"]["/audit"]["get"].is_object());
}

#[tokio::test]
async fn repositories_and_branches_come_from_the_agents() {
    let h = Harness::start(BOTH).await;
    let cookie = h.session().await;
    let repos = json_of(h.get(&cookie, "/repositories").await, 200).await;
    assert_eq!(
        repos,
        json!([
            {"name": "erangel", "node": "gateway", "kind": "gateway"},
            {"name": "eredar", "node": "micro", "kind": "micro"}
        ])
    );
    let branches = json_of(h.get(&cookie, "/repositories/eredar/branches").await, 200).await;
    assert_eq!(branches[0]["name"], "feature/login");
    assert_eq!(branches[1]["name"], "main");
    let res = h.get(&cookie, "/repositories/nope/branches").await;
    assert!(error_of(res, 404).await.contains("not configured"));
    let res = h.get(&cookie, "/repositories/Bad%20Name/branches").await;
    assert!(error_of(res, 400).await.contains("repository name"));
}

#[tokio::test]
async fn failed_sign_ins_are_rate_limited_and_audited() {
    let h = Harness::start(BOTH).await;
    for _ in 0..5 {
        assert_eq!(h.login("wrong").await.status(), 401);
    }
    let res = h.login(&h.password.clone()).await;
    let msg = error_of(res, 429).await;
    assert!(msg.contains("too many failed sign-ins"), "{msg}");
    let records = h
        .control
        .audit_log(&sdp_control::storage::AuditFilter {
            user: Some(USER.into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(records.len(), 6);
    assert!(
        records
            .iter()
            .all(|r| r.action == "login" && r.outcome == "error")
    );
    h.assert_nowhere_on_disk("wrong");
}

#[tokio::test]
async fn a_websocket_streams_the_deployment_and_its_whole_log_as_json() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let h = Harness::start(BOTH).await;
    let cookie = h.session().await;
    h.sandbox(&cookie, "qa", json!({})).await;
    let id = &deploy_to_qa(&h, &cookie, "eredar", SLOW_BRANCH).await;
    let url = format!(
        "{}/api/v1/ws/deployments/{id}",
        h.base.replace("http://", "ws://")
    );
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut lines = Vec::new();
    let mut states = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a message")
            .expect("the stream")
            .unwrap();
        let tokio_tungstenite::tungstenite::Message::Text(text) = msg else {
            continue;
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        match v["type"].as_str().unwrap() {
            "deployment" => states.push(v["deployment"]["state"].as_str().unwrap().to_owned()),
            "log" => lines.push(v["line"].as_str().unwrap().to_owned()),
            "end" => break,
            other => panic!("unexpected message type {other}"),
        }
    }
    assert_eq!(states.first().map(String::as_str), Some("QUEUED"));
    assert_eq!(states.last().map(String::as_str), Some("RUNNING"));
    let expected: Vec<String> = stages::MICRO
        .iter()
        .map(|s| format!("[{s}] doing {s} for {SLOW_BRANCH}"))
        .collect();
    assert_eq!(lines, expected);

    // Without a session there is no socket.
    let req = url.as_str().into_client_request().unwrap();
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
}

/// Polls the sandbox's routes until `check` holds.
async fn routes_until(h: &Harness, cookie: &str, sandbox: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let routes = json_of(
            h.get(cookie, &format!("/sandboxes/{sandbox}/routes")).await,
            200,
        )
        .await;
        if check(&routes) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "routes never got there: {routes}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn services_added_or_moved_in_a_running_sandbox_are_rerouted() {
    let h = Harness::start(BOTH).await;
    let cookie = h.session().await;
    h.sandbox(&cookie, "qa", json!({"eredar": {"branch": "main"}}))
        .await;
    let list = json_of(
        h.send(Method::POST, &cookie, "/sandboxes/qa/deploy", None)
            .await,
        201,
    )
    .await;
    for d in list.as_array().unwrap() {
        assert_eq!(
            h.wait_final(&cookie, d["id"].as_str().unwrap()).await["state"],
            "RUNNING"
        );
    }
    routes_until(&h, &cookie, "qa", |r| {
        r["kael"]["mode"] == "ocp" && r["kael"]["live"] == true
    })
    .await;

    let d = json_of(
        h.deploy(
            &cookie,
            json!({"sandbox": "qa", "repository": "kael", "branch": "main"}),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(d["port"], 9002);
    routes_until(&h, &cookie, "qa", |r| {
        r["kael"]["mode"] == "sandbox" && r["kael"]["target"] == "http://127.0.0.1:9002"
    })
    .await;

    json_of(
        h.put(
            &cookie,
            "/sandboxes/qa",
            json!({"services": {"eredar": {"use_ocp": true}, "kael": {"branch": "main"}}}),
        )
        .await,
        200,
    )
    .await;
    routes_until(&h, &cookie, "qa", |r| {
        r["eredar"]["mode"] == "ocp" && r["eredar"]["target"] == ocp_default("eredar")
    })
    .await;
}

#[tokio::test]
async fn a_queued_deployment_of_a_deleted_sandbox_is_never_sent() {
    let h = Harness::start_with(BOTH, |c| c.builds_per_node = 1).await;
    let cookie = h.session().await;
    h.sandbox(
        &cookie,
        "qa",
        json!({"a": {"branch": SLOW_BRANCH}, "b": {"branch": SLOW_BRANCH}}),
    )
    .await;
    let list = json_of(
        h.post(
            &cookie,
            "/sandboxes/qa/deploy",
            json!({"services": ["a", "b"]}),
        )
        .await,
        201,
    )
    .await;
    let first = list[0]["id"].as_str().unwrap().to_owned();
    let second = list[1]["id"].as_str().unwrap().to_owned();
    json_of(h.delete(&cookie, "/sandboxes/qa").await, 200).await;
    let b = json_of(h.get(&cookie, &format!("/deployments/{second}")).await, 200).await;
    assert_eq!(b["state"], "STOPPED");
    assert_eq!(b["reason"], "the sandbox was deleted");
    // The first build ends (the fake ignores the removal); the second is
    // never sent.
    let micro = h.micro.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !micro.lock().finished.contains(&first) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!micro.lock().spool.contains_key(&second));
}
