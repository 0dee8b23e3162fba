//! Handlers: gather data from the control plane, pick a view. Every
//! state-changing handler is recorded in the audit trail, as the JSON API's
//! are, so the trail does not depend on which front end was used.

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use sdp_contract::{Credentials, DeploymentState, NodeKind};
use sdp_control::audit::AuditEntry;
use sdp_control::deployments::{CreateDeployment, ServiceOp};
use sdp_control::environments::EnvironmentBody;
use sdp_control::sandboxes::{SandboxBody, TemplateBody};
use sdp_control::sessions::{self, Session};
use sdp_control::storage::AuditFilter;
use sdp_control::{ApiError, DeploymentFilter};
use serde_json::{Value, json};

use crate::Web;
use crate::logfile;
use crate::security::Authed;
use crate::views::audit::{self as audit_view, AuditFilters, AuditRow};
use crate::views::deploy::{self, Branch, DeployForm, DeployPage};
use crate::views::deployment::{self, DeploymentPage, Head};
use crate::views::deployments::{self, DeploymentsPage, Filters, Row};
use crate::views::environments::{self as env_view, EnvCard, EnvironmentsPage, FileDraft};
use crate::views::error::{self, ErrorPage};
use crate::views::login::{self, LoginPage};
use crate::views::nodes::{self as nodes_view, NodeRow};
use crate::views::sandboxes::{
    self as sb_view, RouteRow, SandboxPage, SandboxRow, SandboxesPage, ServiceRow, Source,
};
use crate::views::templates::{self as tp_view, TemplateRow, TemplatesPage};
use crate::views::{Viewer, qr};

/// How much of a log the deployment page carries; the rest is a link away,
/// so a 100,000-line log does not make a multi-megabyte page.
const PAGE_LOG_BYTES: usize = 48 * 1024;

type Fields = Vec<(String, String)>;

fn field<'a>(fields: &'a Fields, name: &str) -> &'a str {
    raw_field(fields, name).trim()
}

/// A field as typed, spaces included.
fn raw_field<'a>(fields: &'a Fields, name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// A textarea's text as stored: browsers send its line breaks as CRLF.
fn textarea(fields: &Fields, name: &str) -> String {
    raw_field(fields, name).replace("\r\n", "\n")
}

fn nonempty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

fn error_page(viewer: Option<Viewer>, e: &ApiError) -> Response {
    let page = ErrorPage {
        viewer,
        title: e.status().canonical_reason().unwrap_or("Error").to_owned(),
        message: e.message().to_owned(),
    };
    (e.status(), error::render(&page)).into_response()
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// Where a successful form goes, with a message the next page shows once.
fn see_other_msg(to: &str, msg: &str) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    let q = serde_urlencoded::to_string([("msg", msg)]).unwrap_or_default();
    see_other(&format!("{to}{sep}{q}"))
}

async fn record<T>(web: &Web, a: &Authed, entry: AuditEntry, result: &Result<T, ApiError>) {
    web.cp.audit(a.session.username(), entry, result).await;
}

/// Repositories the micro agents serve: what can be deployed as a service.
fn repositories(web: &Web) -> Vec<String> {
    let mut repos: Vec<String> = web
        .cp
        .repositories()
        .into_iter()
        .filter(|r| r.kind == NodeKind::Micro)
        .map(|r| r.name)
        .collect();
    repos.dedup();
    repos
}

/// The names in a list for a form's choices; a list that cannot be read
/// offers none rather than failing the page.
fn names<T, E>(list: Result<Vec<T>, E>, name: impl Fn(T) -> String) -> Vec<String> {
    list.map(|l| l.into_iter().map(name).collect())
        .unwrap_or_default()
}

// ------------------------------------------------------------- sign in/out

/// `GET /login`
pub async fn login_form(State(web): State<Web>, headers: HeaderMap) -> Response {
    if web.cp.session_user(&headers).is_some() {
        return see_other("/sandboxes");
    }
    login::render(&LoginPage::default()).into_response()
}

/// `POST /login`: signs in through the gateway agent; on failure the form
/// again, with the reason.
pub async fn login(
    State(web): State<Web>,
    form: Result<Form<Credentials>, FormRejection>,
) -> Response {
    let Ok(Form(credentials)) = form else {
        let page = LoginPage {
            username: String::new(),
            error: Some("enter your Bitbucket username and password".into()),
        };
        return (StatusCode::BAD_REQUEST, login::render(&page)).into_response();
    };
    let username = credentials.username.clone();
    match web.cp.login(credentials).await {
        Ok(outcome) => (
            [(SET_COOKIE, web.cp.session_cookie(&outcome.token))],
            Redirect::to("/sandboxes"),
        )
            .into_response(),
        Err(e) => {
            let page = LoginPage {
                username,
                error: Some(e.message().to_owned()),
            };
            (e.status(), login::render(&page)).into_response()
        }
    }
}

/// `POST /logout`
pub async fn logout(State(web): State<Web>, headers: HeaderMap) -> Response {
    if let Some(token) = sessions::token_from_headers(&headers) {
        web.cp.logout(&token);
    }
    (
        [(SET_COOKIE, web.cp.expired_session_cookie())],
        Redirect::to("/login"),
    )
        .into_response()
}

// ------------------------------------------------------------- deployments

/// `GET /`: the deployment history, filtered.
pub async fn home(State(web): State<Web>, a: Authed, Query(filters): Query<Filters>) -> Response {
    let state = DeploymentState::parse(&filters.state.to_ascii_uppercase());
    let filter = DeploymentFilter {
        sandbox: nonempty(&filters.sandbox),
        repository: nonempty(&filters.repository),
        user: nonempty(&filters.user),
        state,
        limit: 200,
    };
    match web.cp.deployments(&filter).await {
        Ok(list) => deployments::render(&DeploymentsPage {
            viewer: a.viewer,
            filters,
            rows: list.iter().map(Row::from).collect(),
        })
        .into_response(),
        Err(e) => error_page(Some(a.viewer), &e),
    }
}

/// `GET /deployments/{id}`: stages, the end of the log, and the live stream
/// that continues it.
pub async fn deployment(State(web): State<Web>, a: Authed, Path(id): Path<String>) -> Response {
    let d = match web.cp.deployment(&id).await {
        Ok(Some(d)) => d,
        Ok(None) => return error_page(Some(a.viewer), &ApiError::not_found("no such deployment")),
        Err(e) => return error_page(Some(a.viewer), &e),
    };
    let (log_from, log, log_end) = match logfile::path(&web.cp, &id) {
        Some(path) => logfile::tail(&path, PAGE_LOG_BYTES)
            .await
            .unwrap_or_default(),
        None => Default::default(),
    };
    let head = Head::new(&d, &log, a.viewer.csrf.clone());
    let page = DeploymentPage {
        viewer: a.viewer,
        head,
        log,
        log_from,
        log_end,
    };
    deployment::render(&page).into_response()
}

/// `POST /deployments/{id}/{restart|stop|delete}`
pub async fn deployment_action(
    State(web): State<Web>,
    a: Authed,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let (op, name) = match action.as_str() {
        "restart" => (ServiceOp::Restart, "deployment_restart"),
        "stop" => (ServiceOp::Stop, "deployment_stop"),
        "delete" => (ServiceOp::Delete, "deployment_delete"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let before = web.cp.deployment(&id).await.ok().flatten();
    let result = web.cp.deployment_op(&id, op).await;
    let entry = AuditEntry {
        action: name,
        sandbox: before.as_ref().map(|d| d.sandbox.clone()),
        repository: before.as_ref().map(|d| d.repository.clone()),
        branch: before.as_ref().map(|d| d.branch.clone()),
        environment: before.as_ref().and_then(|d| d.environment.clone()),
        deployment: before.as_ref().map(|d| d.id.clone()),
        detail: Some("dashboard".into()),
    };
    record(&web, &a, entry, &result).await;
    match result {
        Ok(Some(d)) => see_other(&format!("/deployments/{}", d.id)),
        Ok(None) => match before {
            Some(d) => see_other_msg(&format!("/sandboxes/{}", d.sandbox), "deployment deleted"),
            None => see_other("/"),
        },
        Err(e) => error_page(Some(a.viewer), &e),
    }
}

/// `GET /deploy`
pub async fn deploy_form(
    State(web): State<Web>,
    a: Authed,
    Query(form): Query<DeployForm>,
) -> Response {
    deploy_page(&web, &a.session, a.viewer, form, None, StatusCode::OK).await
}

async fn deploy_page(
    web: &Web,
    session: &Session,
    viewer: Viewer,
    form: DeployForm,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let branches = known_branches(web, session, &form.repository).await;
    let page = DeployPage {
        viewer,
        repositories: repositories(web),
        sandboxes: names(web.cp.sandboxes().await, |s| s.name),
        environments: names(web.cp.environments().await, |e| e.name),
        branches,
        form,
        error,
    };
    (status, deploy::render(&page)).into_response()
}

/// The branches of `repository`, listed live by its agent with the user's
/// credentials; if the agent cannot be asked, those deployed before, so the
/// form still suggests something (any branch can be typed).
async fn known_branches(web: &Web, session: &Session, repository: &str) -> Vec<Branch> {
    if repository.is_empty() {
        return Vec::new();
    }
    match web.cp.branches(session, repository).await {
        Ok(list) => {
            return list
                .into_iter()
                .map(|b| Branch {
                    name: b.name,
                    commit: b.commit,
                })
                .collect();
        }
        Err(e) => tracing::info!(repository, error = %e.message(), "branches not listed live"),
    }
    let filter = DeploymentFilter {
        repository: Some(repository.to_owned()),
        limit: 500,
        ..Default::default()
    };
    let mut out: Vec<Branch> = Vec::new();
    for d in web.cp.deployments(&filter).await.unwrap_or_default() {
        if !out.iter().any(|b| b.name == d.branch) {
            out.push(Branch {
                name: d.branch.clone(),
                commit: d.commit.clone().unwrap_or_default(),
            });
        }
    }
    out
}

#[derive(serde::Deserialize)]
pub struct BranchQuery {
    #[serde(default)]
    repository: String,
}

/// `GET /branches?repository=`: the deploy form's suggestions (a fragment).
pub async fn branches(State(web): State<Web>, a: Authed, Query(q): Query<BranchQuery>) -> Response {
    deploy::branch_list(&known_branches(&web, &a.session, &q.repository).await).into_response()
}

/// `POST /deploy`
pub async fn deploy(State(web): State<Web>, a: Authed, Form(form): Form<DeployForm>) -> Response {
    let port = match form.port.trim() {
        "" => None,
        p => match p.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => {
                let msg = "the port must be a number from 1 to 65535, or empty to allocate one";
                return deploy_page(
                    &web,
                    &a.session,
                    a.viewer,
                    form,
                    Some(msg.into()),
                    StatusCode::BAD_REQUEST,
                )
                .await;
            }
        },
    };
    let req = CreateDeployment {
        sandbox: form.sandbox.trim().to_owned(),
        repository: form.repository.trim().to_owned(),
        branch: form.branch.trim().to_owned(),
        environment: nonempty(&form.environment),
        port,
    };
    let result = web.cp.create_deployment(&a.session, &req).await;
    let entry = AuditEntry {
        action: "deployment_create",
        sandbox: Some(req.sandbox.clone()),
        repository: Some(req.repository.clone()),
        branch: Some(req.branch.clone()),
        environment: match &result {
            Ok(d) => d.environment.clone(),
            Err(_) => req.environment.clone(),
        },
        deployment: result.as_ref().ok().map(|d| d.id.clone()),
        detail: Some("dashboard".into()),
    };
    record(&web, &a, entry, &result).await;
    match result {
        Ok(d) => see_other(&format!("/deployments/{}", d.id)),
        Err(e) => {
            let status = e.status();
            deploy_page(
                &web,
                &a.session,
                a.viewer,
                form,
                Some(e.message().to_owned()),
                status,
            )
            .await
        }
    }
}

// ------------------------------------------------------------------- nodes

/// `GET /nodes`
pub async fn nodes(State(web): State<Web>, a: Authed) -> Response {
    let rows: Vec<NodeRow> = web.cp.nodes().iter().map(NodeRow::from).collect();
    nodes_view::render(&a.viewer, &rows).into_response()
}

// ------------------------------------------------------------------- audit

/// `GET /audit`
pub async fn audit_page(
    State(web): State<Web>,
    a: Authed,
    Query(f): Query<AuditFilters>,
) -> Response {
    let filter = AuditFilter {
        user: nonempty(&f.user),
        sandbox: nonempty(&f.sandbox),
        repository: nonempty(&f.repository),
        action: None,
        limit: 300,
    };
    match web.cp.audit_log(&filter).await {
        Ok(list) => {
            let rows: Vec<AuditRow> = list.iter().map(AuditRow::from).collect();
            audit_view::render(&a.viewer, &f, &rows).into_response()
        }
        Err(e) => error_page(Some(a.viewer), &e),
    }
}

// ------------------------------------------------------------ environments

/// `KEY=VALUE` lines into a map; blank lines and `#` comments skipped.
fn parse_pairs(text: &str, what: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(ApiError::bad_request(format!(
                "{what}, line {}: expected KEY=VALUE",
                i + 1
            )));
        };
        out.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(out)
}

/// What the environments page shows beside the list.
#[derive(Default)]
struct EnvNotes {
    message: Option<String>,
    error: Option<String>,
    draft: Option<FileDraft>,
}

impl EnvNotes {
    fn error(e: &ApiError) -> Self {
        EnvNotes {
            error: Some(e.message().to_owned()),
            ..Default::default()
        }
    }
}

async fn environments_page(
    web: &Web,
    viewer: Viewer,
    notes: EnvNotes,
    status: StatusCode,
) -> Response {
    match web.cp.environments().await {
        Ok(list) => (
            status,
            env_view::render(&EnvironmentsPage {
                viewer,
                environments: list.iter().map(EnvCard::from).collect(),
                message: notes.message,
                error: notes.error,
                draft: notes.draft,
            }),
        )
            .into_response(),
        Err(e) => error_page(Some(viewer), &e),
    }
}

/// `GET /environments`
pub async fn environments(
    State(web): State<Web>,
    a: Authed,
    Query(q): Query<MsgQuery>,
) -> Response {
    let notes = EnvNotes {
        message: nonempty(&q.msg),
        ..Default::default()
    };
    environments_page(&web, a.viewer, notes, StatusCode::OK).await
}

/// The variables and secrets of an environment or template form, in the
/// API's shape: variables replace the stored ones, secrets are set by value
/// or removed by name (`remove_secret`), never read back.
fn layer_json(fields: &Fields) -> Result<Value, ApiError> {
    let variables = parse_pairs(field(fields, "variables"), "variables")?;
    let mut secrets: BTreeMap<String, Value> = parse_pairs(field(fields, "secrets"), "secrets")?
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    for (k, v) in fields {
        if k == "remove_secret" {
            secrets.insert(v.clone(), Value::Null);
        }
    }
    Ok(json!({ "variables": variables, "secrets": secrets }))
}

fn env_body(fields: &Fields, with_name: bool) -> Result<EnvironmentBody, ApiError> {
    let mut body = layer_json(fields)?;
    if with_name {
        body["name"] = json!(field(fields, "name"));
    }
    serde_json::from_value(body).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn env_entry(action: &'static str, name: &str) -> AuditEntry {
    AuditEntry {
        action,
        environment: Some(name.chars().take(80).collect()),
        detail: Some("dashboard".into()),
        ..Default::default()
    }
}

/// `POST /environments`
pub async fn environment_create(
    State(web): State<Web>,
    a: Authed,
    Form(fields): Form<Fields>,
) -> Response {
    let name = field(&fields, "name").to_owned();
    let result = match env_body(&fields, true) {
        Ok(body) => web.cp.create_environment(&body).await,
        Err(e) => Err(e),
    };
    record(&web, &a, env_entry("environment_create", &name), &result).await;
    match result {
        Ok(_) => see_other("/environments"),
        Err(e) => environments_page(&web, a.viewer, EnvNotes::error(&e), e.status()).await,
    }
}

/// `POST /environments/{name}`
pub async fn environment_update(
    State(web): State<Web>,
    a: Authed,
    Path(name): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    let result = match env_body(&fields, false) {
        Ok(body) => web.cp.update_environment(&name, &body).await,
        Err(e) => Err(e),
    };
    record(&web, &a, env_entry("environment_update", &name), &result).await;
    match result {
        Ok(_) => see_other_msg("/environments", &format!("{name}: saved")),
        Err(e) => environments_page(&web, a.viewer, EnvNotes::error(&e), e.status()).await,
    }
}

/// `POST /environments/{name}/delete`
pub async fn environment_delete(
    State(web): State<Web>,
    a: Authed,
    Path(name): Path<String>,
) -> Response {
    let result = web.cp.delete_environment(&name).await;
    record(&web, &a, env_entry("environment_delete", &name), &result).await;
    match result {
        Ok(()) => see_other("/environments"),
        Err(e) => environments_page(&web, a.viewer, EnvNotes::error(&e), e.status()).await,
    }
}

/// The files of `current` with the form's one change: `path` set to
/// `content`, or removed when `remove` is set.
fn files_with_change(
    mut files: BTreeMap<String, String>,
    fields: &Fields,
) -> Result<(BTreeMap<String, String>, String), ApiError> {
    let path = field(fields, "path").to_owned();
    if path.is_empty() {
        return Err(ApiError::bad_request("enter the file's path"));
    }
    if field(fields, "remove").is_empty() {
        // Not trimmed like other fields: a file's spaces are its content.
        files.insert(path.clone(), textarea(fields, "content"));
        Ok((files, format!("file {path} saved")))
    } else if files.remove(&path).is_some() {
        Ok((files, format!("file {path} removed")))
    } else {
        Err(ApiError::not_found(format!(
            "no file {:?} to remove",
            path.chars().take(80).collect::<String>()
        )))
    }
}

/// `POST /environments/{name}/files` `path`, `content` or `remove`: one file
/// created, replaced or removed. The API replaces the whole map, so the
/// others are sent back as stored.
pub async fn environment_file(
    State(web): State<Web>,
    a: Authed,
    Path(name): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    let result = match web.cp.environment(&name).await.and_then(|env| {
        let (files, done) = files_with_change(env.files, &fields)?;
        let body = serde_json::from_value::<EnvironmentBody>(json!({ "files": files }))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok((body, done))
    }) {
        Ok((body, done)) => web.cp.update_environment(&name, &body).await.map(|_| done),
        Err(e) => Err(e),
    };
    let mut entry = env_entry("environment_update", &name);
    entry.detail = Some(format!(
        "dashboard: file {}",
        field(&fields, "path").chars().take(80).collect::<String>()
    ));
    record(&web, &a, entry, &result).await;
    match result {
        Ok(done) => see_other_msg("/environments", &format!("{name}: {done}")),
        Err(e) => {
            let adding = field(&fields, "remove").is_empty();
            let notes = EnvNotes {
                draft: adding.then(|| FileDraft {
                    environment: name.clone(),
                    path: field(&fields, "path").to_owned(),
                    content: textarea(&fields, "content"),
                }),
                ..EnvNotes::error(&e)
            };
            environments_page(&web, a.viewer, notes, e.status()).await
        }
    }
}

// -------------------------------------------------------------- sandboxes

/// The services part of a sandbox or template form: `mode.{svc}` is
/// `branch`, `ocp` or empty (left out), `branch.{svc}` the branch.
fn services_from(fields: &Fields) -> Result<BTreeMap<String, Value>, ApiError> {
    let mut out = BTreeMap::new();
    for (k, mode) in fields {
        let Some(svc) = k.strip_prefix("mode.") else {
            continue;
        };
        match mode.as_str() {
            "" => {}
            "ocp" => {
                out.insert(svc.to_owned(), json!({ "use_ocp": true }));
            }
            "branch" => {
                let branch = field(fields, &format!("branch.{svc}"));
                if branch.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "{svc}: enter a branch, or choose OCP"
                    )));
                }
                out.insert(svc.to_owned(), json!({ "branch": branch }));
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "{svc}: unknown source {other:?}"
                )));
            }
        }
    }
    Ok(out)
}

fn spec_body(fields: &Fields) -> Result<Value, ApiError> {
    let mut body = json!({ "name": field(fields, "name"), "services": services_from(fields)? });
    let gateway = field(fields, "gateway_branch");
    body["gateway"] = json!({ "branch": if gateway.is_empty() { "main" } else { gateway } });
    if let Some(env) = nonempty(field(fields, "environment")) {
        body["environment"] = json!(env);
    }
    if let Some(t) = nonempty(field(fields, "template")) {
        body["template"] = json!(t);
        // A template supplies what the form leaves out.
        if field(fields, "gateway_branch").is_empty() {
            body.as_object_mut().map(|o| o.remove("gateway"));
        }
        if body["services"]
            .as_object()
            .is_some_and(serde_json::Map::is_empty)
        {
            body.as_object_mut().map(|o| o.remove("services"));
        }
    }
    Ok(body)
}

fn sandbox_entry(action: &'static str, name: &str, detail: &str) -> AuditEntry {
    AuditEntry {
        action,
        sandbox: Some(name.chars().take(80).collect()),
        detail: Some(detail.to_owned()),
        ..Default::default()
    }
}

async fn sandboxes_page(
    web: &Web,
    viewer: Viewer,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let list = match web.cp.sandboxes().await {
        Ok(list) => list,
        Err(e) => return error_page(Some(viewer), &e),
    };
    let page = SandboxesPage {
        viewer,
        sandboxes: list.iter().map(SandboxRow::from).collect(),
        repositories: repositories(web),
        templates: names(web.cp.templates().await, |t| t.name),
        environments: names(web.cp.environments().await, |e| e.name),
        error,
    };
    (status, sb_view::overview(&page)).into_response()
}

/// `GET /sandboxes`: the overview.
pub async fn sandboxes(State(web): State<Web>, a: Authed) -> Response {
    sandboxes_page(&web, a.viewer, None, StatusCode::OK).await
}

/// `POST /sandboxes`
pub async fn sandbox_create(
    State(web): State<Web>,
    a: Authed,
    Form(fields): Form<Fields>,
) -> Response {
    let name = field(&fields, "name").to_owned();
    let result = match spec_body(&fields).and_then(|b| {
        serde_json::from_value::<SandboxBody>(b).map_err(|e| ApiError::bad_request(e.to_string()))
    }) {
        Ok(body) => web.cp.create_sandbox(&a.session, &body).await,
        Err(e) => Err(e),
    };
    record(
        &web,
        &a,
        sandbox_entry("sandbox_create", &name, "dashboard"),
        &result,
    )
    .await;
    match result {
        Ok(s) => see_other(&format!("/sandboxes/{}", s.name)),
        Err(e) => sandboxes_page(&web, a.viewer, Some(e.message().to_owned()), e.status()).await,
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
pub struct MsgQuery {
    msg: String,
}

/// `GET /sandboxes/{name}`; `/sandboxes/{name}/qr.svg` is its QR code.
pub async fn sandbox(
    State(web): State<Web>,
    a: Authed,
    Path(name): Path<String>,
    Query(q): Query<MsgQuery>,
) -> Response {
    sandbox_page(
        &web,
        a.viewer,
        &name,
        nonempty(&q.msg),
        None,
        StatusCode::OK,
    )
    .await
}

async fn sandbox_page(
    web: &Web,
    viewer: Viewer,
    name: &str,
    message: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let s = match web.cp.sandbox(name).await {
        Ok(s) => s,
        Err(e) => return error_page(Some(viewer), &e),
    };
    let (services, gateway_latest) = sandbox_services(web, &s).await;
    let routes = web.cp.routes(&s.name).await.unwrap_or_default();
    let row = SandboxRow::from(&s);
    let page = SandboxPage {
        services,
        gateway_latest,
        routes: routes
            .iter()
            .map(|(svc, r)| RouteRow {
                service: svc.clone(),
                mode: r.mode.as_str().to_owned(),
                target: r.target.clone(),
                ocp_default: r.ocp_default.clone(),
                live: r.live,
            })
            .collect(),
        repositories: repositories(web),
        qr: qr::svg(&row.gateway_url),
        environment: s.environment.clone(),
        sandbox: row,
        viewer,
        message,
        error,
    };
    (status, sb_view::detail(&page)).into_response()
}

/// A sandbox's services table rows and its gateway's latest deployment
/// (the page and its live stream both show them).
pub(crate) async fn sandbox_services(
    web: &Web,
    s: &sdp_control::sandboxes::SandboxView,
) -> (Vec<ServiceRow>, Option<(String, DeploymentState)>) {
    let history = web
        .cp
        .deployments(&DeploymentFilter {
            sandbox: Some(s.name.clone()),
            limit: 500,
            ..Default::default()
        })
        .await
        .unwrap_or_default();
    let latest = |repo: &str| {
        history
            .iter()
            .find(|d| d.repository == repo)
            .map(|d| (d.id.clone(), d.state))
    };
    let services = s
        .services
        .iter()
        .map(|(svc, v)| ServiceRow {
            name: svc.clone(),
            source: Source::from_value(v),
            port: v
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok()),
            latest: latest(svc),
        })
        .collect();
    (services, latest(&web.cp.config().gateway_repository))
}

/// `POST /sandboxes/{name}/{deploy|clone|delete}`
pub async fn sandbox_action(
    State(web): State<Web>,
    a: Authed,
    Path((name, action)): Path<(String, String)>,
    Form(fields): Form<Fields>,
) -> Response {
    let outcome: Result<Response, ApiError> = match action.as_str() {
        "deploy" => {
            let only: Vec<String> = fields
                .iter()
                .filter(|(k, _)| k == "service")
                .map(|(_, v)| v.clone())
                .collect();
            let services = (!only.is_empty()).then_some(only.as_slice());
            // `deploy_sandbox` records each deployment in the audit trail.
            web.cp
                .deploy_sandbox(&a.session, &name, services)
                .await
                .map(|list| match list.as_slice() {
                    [one] => see_other(&format!("/deployments/{}", one.id)),
                    _ => see_other_msg(
                        &format!("/sandboxes/{name}"),
                        &format!("{} deployments queued", list.len()),
                    ),
                })
        }
        "update" => {
            let mut body = json!({});
            if let Some(b) = nonempty(field(&fields, "gateway_branch")) {
                body["gateway"] = json!({ "branch": b });
            }
            let result = match services_from(&fields).and_then(|services| {
                body["services"] = json!(services);
                serde_json::from_value::<SandboxBody>(body)
                    .map_err(|e| ApiError::bad_request(e.to_string()))
            }) {
                Ok(body) => web.cp.update_sandbox(&a.session, &name, &body).await,
                Err(e) => Err(e),
            };
            record(
                &web,
                &a,
                sandbox_entry("sandbox_update", &name, "dashboard"),
                &result,
            )
            .await;
            result
                .map(|s| see_other_msg(&format!("/sandboxes/{}", s.name), "saved: deploy to apply"))
        }
        "clone" => {
            let to = field(&fields, "name").to_owned();
            let result = web.cp.clone_sandbox(&a.session, &name, &to).await;
            record(
                &web,
                &a,
                sandbox_entry("sandbox_clone", &to, &format!("dashboard, from {name}")),
                &result,
            )
            .await;
            result.map(|s| see_other(&format!("/sandboxes/{}", s.name)))
        }
        "delete" => {
            let result = web.cp.delete_sandbox(&name).await;
            record(
                &web,
                &a,
                sandbox_entry("sandbox_delete", &name, "dashboard"),
                &result,
            )
            .await;
            result.map(|warnings| {
                if warnings.is_empty() {
                    see_other("/sandboxes")
                } else {
                    see_other_msg("/sandboxes", &warnings.join("; "))
                }
            })
        }
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    match outcome {
        Ok(r) => r,
        Err(e) => {
            sandbox_page(
                &web,
                a.viewer,
                &name,
                None,
                Some(e.message().to_owned()),
                e.status(),
            )
            .await
        }
    }
}

/// `GET /sandboxes/{name}/qr.svg`: the gateway URL as a QR code.
pub async fn sandbox_qr(State(web): State<Web>, _: Authed, Path(name): Path<String>) -> Response {
    match web.cp.sandbox(&name).await {
        Ok(s) => match qr::svg(&s.gateway_url) {
            Some(svg) => (
                [
                    (CONTENT_TYPE, "image/svg+xml"),
                    (CACHE_CONTROL, "private, max-age=60"),
                ],
                svg.into_string(),
            )
                .into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        },
        Err(e) => e.status().into_response(),
    }
}

/// `POST /sandboxes/{name}/routes/{service}` `mode=sandbox|ocp`
pub async fn route_toggle(
    State(web): State<Web>,
    a: Authed,
    Path((name, service)): Path<(String, String)>,
    Form(fields): Form<Fields>,
) -> Response {
    let mode = field(&fields, "mode").to_owned();
    let result = web.cp.set_route(&name, &service, &mode).await;
    let entry = AuditEntry {
        action: "route_set",
        sandbox: Some(name.chars().take(80).collect()),
        repository: Some(service.chars().take(80).collect()),
        detail: Some(format!(
            "dashboard: mode {}",
            mode.chars().take(16).collect::<String>()
        )),
        ..Default::default()
    };
    record(&web, &a, entry, &result).await;
    match result {
        Ok(_) => see_other_msg(
            &format!("/sandboxes/{name}"),
            &format!("{service} now routes to {mode}"),
        ),
        Err(e) => {
            sandbox_page(
                &web,
                a.viewer,
                &name,
                None,
                Some(e.message().to_owned()),
                e.status(),
            )
            .await
        }
    }
}

// -------------------------------------------------------------- templates

async fn templates_page(
    web: &Web,
    viewer: Viewer,
    message: Option<String>,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    match web.cp.templates().await {
        Ok(list) => (
            status,
            tp_view::render(&TemplatesPage {
                viewer,
                templates: list.iter().map(TemplateRow::from).collect(),
                repositories: repositories(web),
                environments: names(web.cp.environments().await, |e| e.name),
                message,
                error,
            }),
        )
            .into_response(),
        Err(e) => error_page(Some(viewer), &e),
    }
}

/// The templates page again, with why the change was refused.
async fn templates_refused(web: &Web, viewer: Viewer, e: &ApiError) -> Response {
    templates_page(web, viewer, None, Some(e.message().to_owned()), e.status()).await
}

/// `GET /templates`
pub async fn templates(State(web): State<Web>, a: Authed, Query(q): Query<MsgQuery>) -> Response {
    templates_page(&web, a.viewer, nonempty(&q.msg), None, StatusCode::OK).await
}

fn template_entry(action: &'static str, name: &str) -> AuditEntry {
    AuditEntry {
        action,
        detail: Some(format!(
            "dashboard: template {}",
            name.chars().take(80).collect::<String>()
        )),
        ..Default::default()
    }
}

/// `POST /templates`
pub async fn template_create(
    State(web): State<Web>,
    a: Authed,
    Form(fields): Form<Fields>,
) -> Response {
    let name = field(&fields, "name").to_owned();
    let result = match spec_body(&fields).and_then(|b| {
        serde_json::from_value::<TemplateBody>(b).map_err(|e| ApiError::bad_request(e.to_string()))
    }) {
        Ok(body) => web.cp.create_template(&body).await,
        Err(e) => Err(e),
    };
    record(&web, &a, template_entry("template_create", &name), &result).await;
    match result {
        Ok(_) => see_other("/templates"),
        Err(e) => templates_refused(&web, a.viewer, &e).await,
    }
}

/// An edited template in the API's `PUT` shape: every field of the form is
/// sent, so what was cleared is cleared (the environment with `null`, a
/// service by leaving it out); secrets only change where asked.
fn template_update_body(fields: &Fields) -> Result<TemplateBody, ApiError> {
    let mut body = layer_json(fields)?;
    body["services"] = json!(services_from(fields)?);
    body["environment"] = json!(nonempty(field(fields, "environment")));
    body["gateway"] = json!({ "branch": field(fields, "gateway_branch") });
    serde_json::from_value(body).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `POST /templates/{name}/{update|sandbox|delete}`
pub async fn template_action(
    State(web): State<Web>,
    a: Authed,
    Path((name, action)): Path<(String, String)>,
    Form(fields): Form<Fields>,
) -> Response {
    match action.as_str() {
        "update" => {
            let result = match template_update_body(&fields) {
                Ok(body) => web.cp.update_template(&name, &body).await,
                Err(e) => Err(e),
            };
            record(&web, &a, template_entry("template_update", &name), &result).await;
            match result {
                Ok(t) => see_other_msg("/templates", &format!("template {} saved", t.name)),
                Err(e) => templates_refused(&web, a.viewer, &e).await,
            }
        }
        "sandbox" => {
            let to = field(&fields, "name").to_owned();
            let body = json!({ "name": to, "template": name });
            let result = match serde_json::from_value::<SandboxBody>(body) {
                Ok(body) => web.cp.create_sandbox(&a.session, &body).await,
                Err(e) => Err(ApiError::bad_request(e.to_string())),
            };
            let detail = format!(
                "dashboard, from template {}",
                name.chars().take(80).collect::<String>()
            );
            record(
                &web,
                &a,
                sandbox_entry("sandbox_create", &to, &detail),
                &result,
            )
            .await;
            match result {
                Ok(s) => see_other(&format!("/sandboxes/{}", s.name)),
                Err(e) => templates_refused(&web, a.viewer, &e).await,
            }
        }
        "delete" => {
            let result = web.cp.delete_template(&name).await;
            record(&web, &a, template_entry("template_delete", &name), &result).await;
            match result {
                Ok(()) => see_other("/templates"),
                Err(e) => templates_refused(&web, a.viewer, &e).await,
            }
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn pairs_parse_line_by_line() {
        let m = parse_pairs("A=1\n\n# c\nB = x=y\r\n", "variables").unwrap();
        assert_eq!(m["A"], "1");
        assert_eq!(m["B"], " x=y");
        assert!(
            parse_pairs("nope", "variables")
                .unwrap_err()
                .message()
                .contains("line 1")
        );
    }

    #[test]
    fn service_choices_become_the_api_shape() {
        let s = services_from(&f(&[
            ("mode.account", "branch"),
            ("branch.account", "feature/x"),
            ("mode.eredar", "ocp"),
            ("branch.eredar", "ignored"),
            ("mode.other", ""),
        ]))
        .unwrap();
        assert_eq!(s["account"], json!({"branch": "feature/x"}));
        assert_eq!(s["eredar"], json!({"use_ocp": true}));
        assert!(!s.contains_key("other"));
        assert!(services_from(&f(&[("mode.account", "branch")])).is_err());
    }

    #[test]
    fn a_sandbox_from_a_template_keeps_the_template_s_choices() {
        let b = spec_body(&f(&[("name", "qa"), ("template", "mobile")])).unwrap();
        assert_eq!(b, json!({"name": "qa", "template": "mobile"}));
        let b = spec_body(&f(&[("name", "qa")])).unwrap();
        assert_eq!(b["gateway"], json!({"branch": "main"}));
    }

    #[test]
    fn an_edited_template_sends_every_choice_so_cleared_ones_clear() {
        let body = template_update_body(&f(&[
            ("environment", ""),
            ("gateway_branch", "release/2"),
            ("mode.account", "ocp"),
            ("mode.payment", ""),
            ("variables", "LEVEL=debug"),
            ("remove_secret", "OLD"),
        ]))
        .unwrap();
        assert_eq!(body.environment, Some(None));
        assert_eq!(body.gateway.unwrap().branch, "release/2");
        let services = body.services.unwrap();
        assert_eq!(services["account"], json!({"use_ocp": true}));
        assert!(!services.contains_key("payment"));
        assert_eq!(body.layer.variables.unwrap()["LEVEL"], "debug");
        assert_eq!(body.layer.secrets.unwrap()["OLD"], None);
        assert!(body.name.is_none() && body.layer.files.is_none());

        let body = template_update_body(&f(&[("environment", "dev"), ("gateway_branch", "main")]))
            .unwrap();
        assert_eq!(body.environment, Some(Some("dev".into())));
    }

    #[test]
    fn a_file_change_touches_that_file_only() {
        let stored: BTreeMap<String, String> = [("a.yml", "a"), ("b.yml", "b")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (files, done) = files_with_change(
            stored.clone(),
            &f(&[("path", " b.yml "), ("content", "  x: 1\r\ny: 2\r\n")]),
        )
        .unwrap();
        assert_eq!(files["a.yml"], "a");
        assert_eq!(
            files["b.yml"], "  x: 1\ny: 2\n",
            "spaces kept, CRLF made LF"
        );
        assert_eq!(done, "file b.yml saved");

        let (files, done) =
            files_with_change(stored.clone(), &f(&[("path", "a.yml"), ("remove", "1")])).unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["b.yml"]);
        assert_eq!(done, "file a.yml removed");

        let e = files_with_change(stored.clone(), &f(&[("path", "c.yml"), ("remove", "1")]))
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        let e = files_with_change(stored, &f(&[("content", "x")])).unwrap_err();
        assert!(e.message().contains("path"), "{}", e.message());
    }

    #[test]
    fn secrets_are_set_or_removed_never_read() {
        let body = env_body(
            &f(&[
                ("variables", "A=1"),
                ("secrets", "S=hunter2"),
                ("remove_secret", "OLD"),
            ]),
            false,
        )
        .unwrap();
        let secrets = body.layer.secrets.unwrap();
        assert_eq!(secrets["S"].as_deref(), Some("hunter2"));
        assert_eq!(secrets["OLD"], None);
    }
}
