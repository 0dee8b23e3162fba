//! Environments (variables, secrets, files) and the layering of
//! environment → template → sandbox overrides.
//!
//! Secrets are write-only: the API takes values and answers names. Their
//! values are encrypted before they reach storage ([`crate::secrets`]),
//! decrypted only to seal them to the agent that runs a deployment, and
//! masked in the logs the control plane stores.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use sdp_contract::DeployEnvironment;
use serde::{Deserialize, Serialize};

use crate::ControlPlane;
use crate::api::ApiJson;
use crate::audit::AuditEntry;
use crate::error::ApiError;
use crate::model::Deployment;
use crate::secrets::SecretKey;
use crate::sessions::CurrentSession;
use crate::storage::{EnvironmentRecord, Layer, SandboxRecord};

/// Bounds what is echoed back from a request.
pub(crate) fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Names of environments and templates: like sandbox names, safe anywhere.
pub(crate) fn check_slug(field: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid {field} {:?}: use 1 to 63 lowercase letters, digits and inner '-'",
            clip(s)
        )))
    }
}

fn check_key(field: &str, key: &str) -> Result<(), ApiError> {
    let mut bytes = key.bytes();
    let ok = key.len() <= 128
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid {field} name {:?}: use letters, digits and '_', not starting with a digit",
            clip(key)
        )))
    }
}

fn check_value(field: &str, key: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "{field}.{}: values must not contain NUL characters",
            clip(key)
        )));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), ApiError> {
    let ok = !path.is_empty()
        && path.len() <= 255
        && !path.contains('\0')
        && !path.ends_with('/')
        && path.split('/').all(|part| part != ".." && part != ".");
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid files path {:?}: at most 255 bytes, no '.' or '..' components, not a directory",
            clip(path)
        )))
    }
}

/// The variables/secrets/files part of a request body (environment,
/// template or sandbox). A field left out keeps what is stored; `variables`
/// and `files` replace the stored maps; `secrets` is merged, since no client
/// can read the values back to resend them: a value sets, `null` removes.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LayerBody {
    #[serde(default)]
    pub variables: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub secrets: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    pub files: Option<BTreeMap<String, String>>,
}

impl LayerBody {
    /// `current` with this body applied, secrets encrypted; validated first,
    /// so nothing is stored from a bad body.
    pub fn apply(&self, current: &Layer, key: &SecretKey) -> Result<Layer, ApiError> {
        let mut layer = current.clone();
        if let Some(vars) = &self.variables {
            for (k, v) in vars {
                check_key("variables", k)?;
                check_value("variables", k, v)?;
            }
            layer.variables = vars.clone();
        }
        if let Some(files) = &self.files {
            for (path, content) in files {
                check_path(path)?;
                check_value("files", path, content)?;
            }
            layer.files = files.clone();
        }
        if let Some(secrets) = &self.secrets {
            for (k, v) in secrets {
                check_key("secrets", k)?;
                match v {
                    Some(v) => {
                        check_value("secrets", k, v)?;
                        layer.secrets.insert(k.clone(), key.encrypt(v));
                    }
                    None => {
                        layer.secrets.remove(k);
                    }
                }
            }
        }
        if let Some(k) = layer
            .variables
            .keys()
            .find(|k| layer.secrets.contains_key(*k))
        {
            return Err(ApiError::bad_request(format!(
                "{k:?} is both a variable and a secret: keep one"
            )));
        }
        Ok(layer)
    }
}

/// Body of `POST /environments` and `PUT /environments/{name}`.
#[derive(Debug, Clone, Deserialize)]
pub struct EnvironmentBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    pub layer: LayerBody,
}

/// An environment as the API shows it: secrets by name only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvironmentView {
    pub name: String,
    pub variables: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub files: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<EnvironmentRecord> for EnvironmentView {
    fn from(e: EnvironmentRecord) -> Self {
        EnvironmentView {
            name: e.name,
            variables: e.layer.variables,
            secrets: e.layer.secrets.into_keys().collect(),
            files: e.layer.files,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// One resolved value and the layer it comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resolved<T> {
    #[serde(flatten)]
    pub value: T,
    /// `environment {name}`, `template {name}` or `sandbox {name}`.
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValueOf {
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContentOf {
    pub content: String,
}

/// `GET /sandboxes/{name}/environment`: which value wins, and from where.
/// Secrets show where they come from, never their value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedView {
    pub environment: Option<String>,
    pub template: Option<String>,
    pub variables: BTreeMap<String, Resolved<ValueOf>>,
    pub secrets: BTreeMap<String, Resolved<()>>,
    pub files: BTreeMap<String, Resolved<ContentOf>>,
}

/// Layers of a sandbox, lowest first, with their labels. Secrets stay
/// ciphertext here.
struct Layers {
    environment: Option<String>,
    template: Option<String>,
    layers: Vec<(String, Layer)>,
}

struct Merged {
    variables: BTreeMap<String, (String, String)>,
    secrets: BTreeMap<String, (String, String)>,
    files: BTreeMap<String, (String, String)>,
}

impl Layers {
    fn merge(&self) -> Merged {
        let mut m = Merged {
            variables: BTreeMap::new(),
            secrets: BTreeMap::new(),
            files: BTreeMap::new(),
        };
        for (label, layer) in &self.layers {
            for (k, v) in &layer.variables {
                // A key is a variable or a secret, whichever layer said last.
                m.secrets.remove(k);
                m.variables.insert(k.clone(), (v.clone(), label.clone()));
            }
            for (k, v) in &layer.secrets {
                m.variables.remove(k);
                m.secrets.insert(k.clone(), (v.clone(), label.clone()));
            }
            for (k, v) in &layer.files {
                m.files.insert(k.clone(), (v.clone(), label.clone()));
            }
        }
        m
    }
}

impl ControlPlane {
    pub async fn environments(&self) -> Result<Vec<EnvironmentView>, ApiError> {
        let list = self.store().environments().await?;
        Ok(list.into_iter().map(EnvironmentView::from).collect())
    }

    pub async fn environment(&self, name: &str) -> Result<EnvironmentView, ApiError> {
        self.store()
            .environment(name)
            .await?
            .map(EnvironmentView::from)
            .ok_or_else(|| env_not_found(name))
    }

    pub async fn create_environment(
        &self,
        body: &EnvironmentBody,
    ) -> Result<EnvironmentView, ApiError> {
        let name = body
            .name
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("name is required"))?;
        check_slug("environment name", name)?;
        let layer = body
            .layer
            .apply(&Layer::default(), &self.inner.secret_key)?;
        let now = Utc::now();
        let record = EnvironmentRecord {
            name: name.to_owned(),
            layer,
            created_at: now,
            updated_at: now,
        };
        self.store().create_environment(&record).await?;
        Ok(record.into())
    }

    pub async fn update_environment(
        &self,
        name: &str,
        body: &EnvironmentBody,
    ) -> Result<EnvironmentView, ApiError> {
        if let Some(n) = &body.name
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "name {:?} differs from the environment in the path ({:?}): environments cannot be renamed",
                clip(n),
                clip(name)
            )));
        }
        let mut record = self
            .store()
            .environment(name)
            .await?
            .ok_or_else(|| env_not_found(name))?;
        record.layer = body.layer.apply(&record.layer, &self.inner.secret_key)?;
        record.updated_at = Utc::now();
        self.store().update_environment(&record).await?;
        self.clear_masks();
        Ok(record.into())
    }

    pub async fn delete_environment(&self, name: &str) -> Result<(), ApiError> {
        self.store().delete_environment(name).await?;
        Ok(())
    }

    /// The layers of `sandbox`: its environment (or `environment`, when a
    /// deployment names another), its template, itself.
    async fn layers(
        &self,
        sandbox: &SandboxRecord,
        environment: Option<&str>,
    ) -> Result<Layers, ApiError> {
        let template = match &sandbox.template {
            Some(t) => self.store().template(t).await?,
            None => None,
        };
        let env_name = environment
            .map(str::to_owned)
            .or_else(|| sandbox.environment.clone())
            .or_else(|| template.as_ref().and_then(|t| t.environment.clone()));
        let mut layers = Vec::new();
        if let Some(e) = &env_name {
            let env = self
                .store()
                .environment(e)
                .await?
                .ok_or_else(|| env_not_found(e))?;
            layers.push((format!("environment {e}"), env.layer));
        }
        if let Some(t) = &template {
            layers.push((format!("template {}", t.name), t.layer.clone()));
        }
        layers.push((format!("sandbox {}", sandbox.name), sandbox.layer.clone()));
        Ok(Layers {
            environment: env_name,
            template: template.map(|t| t.name),
            layers,
        })
    }

    /// The environment name a sandbox's deployments get, unless they name one.
    pub(crate) async fn effective_environment(
        &self,
        sandbox: &SandboxRecord,
    ) -> Result<Option<String>, ApiError> {
        Ok(self.layers(sandbox, None).await?.environment)
    }

    pub async fn resolved_environment(&self, sandbox: &str) -> Result<ResolvedView, ApiError> {
        let record = self
            .store()
            .sandbox(sandbox)
            .await?
            .ok_or_else(|| crate::sandboxes::sandbox_not_found(sandbox))?;
        let layers = self.layers(&record, None).await?;
        let m = layers.merge();
        Ok(ResolvedView {
            environment: layers.environment,
            template: layers.template,
            variables: m
                .variables
                .into_iter()
                .map(|(k, (value, from))| {
                    (
                        k,
                        Resolved {
                            value: ValueOf { value },
                            from,
                        },
                    )
                })
                .collect(),
            secrets: m
                .secrets
                .into_iter()
                .map(|(k, (_, from))| (k, Resolved { value: (), from }))
                .collect(),
            files: m
                .files
                .into_iter()
                .map(|(k, (content, from))| {
                    (
                        k,
                        Resolved {
                            value: ContentOf { content },
                            from,
                        },
                    )
                })
                .collect(),
        })
    }

    /// What a deployment's container gets, secrets in clear: only to seal to
    /// its agent. `None` when there is nothing to inject.
    pub(crate) async fn deploy_environment(
        &self,
        d: &Deployment,
    ) -> Result<Option<DeployEnvironment>, ApiError> {
        let Some(sandbox) = self.store().sandbox(&d.sandbox).await? else {
            return Ok(None);
        };
        let m = self
            .layers(&sandbox, d.environment.as_deref())
            .await?
            .merge();
        let mut secrets = BTreeMap::new();
        for (k, (cipher, _)) in m.secrets {
            let plain = self
                .inner
                .secret_key
                .decrypt(&cipher)
                .map_err(ApiError::internal)?;
            secrets.insert(k, plain.as_str().to_owned());
        }
        self.lock_masks()
            .set(&d.id, secrets.values().cloned().collect());
        let env = DeployEnvironment {
            variables: m.variables.into_iter().map(|(k, (v, _))| (k, v)).collect(),
            secrets,
            files: m.files.into_iter().map(|(k, (v, _))| (k, v)).collect(),
        };
        let empty = env.variables.is_empty() && env.secrets.is_empty() && env.files.is_empty();
        Ok((!empty).then_some(env))
    }

    fn lock_masks(&self) -> std::sync::MutexGuard<'_, Masks> {
        self.inner.masks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Secret values to mask in deployment `id`'s log, longest first.
    pub(crate) async fn mask_for(&self, id: &str) -> Arc<Vec<String>> {
        if let Some(m) = self.lock_masks().current.get(id) {
            return m.clone();
        }
        // After a restart, or after a secret changed.
        let values = match self.store().deployment(id).await {
            Ok(Some(d)) => match self.deploy_environment(&d).await {
                Ok(_) => {
                    return self
                        .lock_masks()
                        .current
                        .get(id)
                        .cloned()
                        .unwrap_or_default();
                }
                Err(e) => {
                    tracing::warn!(deployment = id, error = %e, "could not resolve secrets to mask");
                    Vec::new()
                }
            },
            _ => Vec::new(),
        };
        self.lock_masks().set(id, values)
    }

    pub(crate) fn forget_mask(&self, id: &str) {
        let mut m = self.lock_masks();
        m.current.remove(id);
        m.previous.remove(id);
    }

    /// After a secret changed, masks are worked out again on next use.
    pub(crate) fn clear_masks(&self) {
        let mut m = self.lock_masks();
        let current = std::mem::take(&mut m.current);
        m.previous.extend(current);
    }
}

/// Secret values to mask, per deployment. A running container keeps the
/// values it started with, so when a secret changes its old value stays
/// masked ([`Masks::previous`]) besides the new one.
#[derive(Default)]
pub struct Masks {
    current: std::collections::HashMap<String, Arc<Vec<String>>>,
    previous: std::collections::HashMap<String, Arc<Vec<String>>>,
}

impl Masks {
    fn set(&mut self, id: &str, mut values: Vec<String>) -> Arc<Vec<String>> {
        if let Some(old) = self.previous.remove(id) {
            values.extend(old.iter().cloned());
        }
        let masks = Arc::new(crate::secrets::mask_order(values));
        self.current.insert(id.to_owned(), masks.clone());
        masks
    }
}

fn env_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("environment {:?} not found", clip(name)))
}

fn audit_env(action: &'static str, name: &str) -> AuditEntry {
    AuditEntry {
        action,
        environment: Some(clip(name)),
        ..AuditEntry::default()
    }
}

/// `GET /api/v1/environments`
pub async fn list(
    State(cp): State<ControlPlane>,
    _: CurrentSession,
) -> Result<Json<Vec<EnvironmentView>>, ApiError> {
    Ok(Json(cp.environments().await?))
}

/// `GET /api/v1/environments/{name}`
pub async fn get(
    State(cp): State<ControlPlane>,
    _: CurrentSession,
    Path(name): Path<String>,
) -> Result<Json<EnvironmentView>, ApiError> {
    Ok(Json(cp.environment(&name).await?))
}

/// `POST /api/v1/environments`
pub async fn create(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    ApiJson(body): ApiJson<EnvironmentBody>,
) -> Result<Response, ApiError> {
    let name = body.name.clone().unwrap_or_default();
    let result = cp.create_environment(&body).await;
    cp.audit(
        session.username(),
        audit_env("environment_create", &name),
        &result,
    )
    .await;
    Ok((StatusCode::CREATED, Json(result?)).into_response())
}

/// `PUT /api/v1/environments/{name}`
pub async fn update(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<EnvironmentBody>,
) -> Result<Json<EnvironmentView>, ApiError> {
    let result = cp.update_environment(&name, &body).await;
    cp.audit(
        session.username(),
        audit_env("environment_update", &name),
        &result,
    )
    .await;
    Ok(Json(result?))
}

/// `DELETE /api/v1/environments/{name}`
pub async fn delete(
    State(cp): State<ControlPlane>,
    CurrentSession(session): CurrentSession,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let result = cp.delete_environment(&name).await;
    cp.audit(
        session.username(),
        audit_env("environment_delete", &name),
        &result,
    )
    .await;
    result.map(|()| StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (tempfile::TempDir, SecretKey) {
        let dir = tempfile::tempdir().unwrap();
        let k = SecretKey::load_or_create(&dir.path().join("k")).unwrap();
        (dir, k)
    }

    #[test]
    fn secrets_merge_while_variables_and_files_replace() {
        let (_d, k) = key();
        let first: LayerBody = serde_json::from_value(serde_json::json!({
            "variables": {"A": "1", "B": "2"},
            "secrets": {"DB_PASSWORD": "p1", "TOKEN": "t1"},
            "files": {"/etc/app.yaml": "x: 1"}
        }))
        .unwrap();
        let layer = first.apply(&Layer::default(), &k).unwrap();
        assert!(!layer.secrets["DB_PASSWORD"].contains("p1"));
        let second: LayerBody = serde_json::from_value(serde_json::json!({
            "variables": {"A": "3"},
            "secrets": {"TOKEN": null, "NEW": "n"}
        }))
        .unwrap();
        let layer = second.apply(&layer, &k).unwrap();
        assert_eq!(layer.variables.len(), 1);
        let names: Vec<_> = layer.secrets.keys().cloned().collect();
        assert_eq!(names, ["DB_PASSWORD", "NEW"]);
        assert_eq!(layer.files.len(), 1);
    }

    #[test]
    fn bad_keys_paths_and_clashes_are_refused_naming_the_field() {
        let (_d, k) = key();
        let cases = [
            (
                serde_json::json!({"variables": {"1A": "x"}}),
                "variables name",
            ),
            (serde_json::json!({"secrets": {"a-b": "x"}}), "secrets name"),
            (
                serde_json::json!({"files": {"../etc/passwd": "x"}}),
                "files path",
            ),
            (
                serde_json::json!({"variables": {"K": "x"}, "secrets": {"K": "y"}}),
                "both a variable and a secret",
            ),
        ];
        for (body, want) in cases {
            let body: LayerBody = serde_json::from_value(body).unwrap();
            let e = body.apply(&Layer::default(), &k).unwrap_err();
            assert!(e.message().contains(want), "{e}");
        }
    }

    #[test]
    fn a_changed_secret_keeps_its_old_value_masked() {
        let mut m = Masks::default();
        m.set("d", vec!["old-value".into()]);
        let current = std::mem::take(&mut m.current);
        m.previous.extend(current);
        let masks = m.set("d", vec!["new-value".into()]);
        assert_eq!(masks.len(), 2);
        assert!(masks.contains(&"old-value".to_owned()));
        assert!(m.previous.is_empty());
    }

    #[test]
    fn later_layers_win_and_say_where_values_come_from() {
        let mut env = Layer::default();
        env.variables.insert("A".into(), "env".into());
        env.secrets.insert("S".into(), "c1".into());
        let mut sandbox = Layer::default();
        sandbox.variables.insert("A".into(), "sandbox".into());
        sandbox.variables.insert("S".into(), "now plain".into());
        let layers = Layers {
            environment: Some("e".into()),
            template: None,
            layers: vec![("environment e".into(), env), ("sandbox s".into(), sandbox)],
        };
        let m = layers.merge();
        assert_eq!(m.variables["A"], ("sandbox".into(), "sandbox s".into()));
        assert!(m.secrets.is_empty());
        assert_eq!(m.variables["S"].0, "now plain");
    }
}
