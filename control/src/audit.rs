//! The audit trail: every state-changing request is recorded with who did
//! it, what it touched and how it ended, queryable through `GET /audit`, and
//! published on `sdp.audit.{action}` for ops and notification consumers.
//!
//! A failure to record is logged, never turned into a failure of the action:
//! the action already happened.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::Utc;
use serde::Deserialize;

use crate::ControlPlane;
use crate::error::ApiError;
use crate::sessions::CurrentSession;
use crate::storage::{AuditFilter, AuditRecord};

/// What an action touched. `action` is one subject token (no dots), so the
/// record goes out on exactly `sdp.audit.{action}`.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    pub action: &'static str,
    pub sandbox: Option<String>,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub environment: Option<String>,
    pub deployment: Option<String>,
    pub detail: Option<String>,
}

impl ControlPlane {
    /// Records `entry` by `user` with the outcome of `result`.
    pub async fn audit<T>(&self, user: &str, entry: AuditEntry, result: &Result<T, ApiError>) {
        let (outcome, error) = match result {
            Ok(_) => ("ok", None),
            Err(e) => ("error", Some(e.message().to_owned())),
        };
        let record = AuditRecord {
            id: uuid::Uuid::new_v4().to_string(),
            at: Utc::now(),
            user: user.to_owned(),
            action: entry.action.to_owned(),
            outcome: outcome.to_owned(),
            error,
            sandbox: entry.sandbox,
            repository: entry.repository,
            branch: entry.branch,
            environment: entry.environment,
            deployment: entry.deployment,
            detail: entry.detail,
        };
        self.record_audit(&record).await;
    }

    pub(crate) async fn record_audit(&self, record: &AuditRecord) {
        tracing::info!(
            user = %record.user,
            action = %record.action,
            outcome = %record.outcome,
            sandbox = record.sandbox.as_deref().unwrap_or(""),
            "audit"
        );
        if let Err(e) = self.store().insert_audit(record).await {
            tracing::error!(action = %record.action, error = %e, "could not store an audit record");
        }
        let subject = sdp_contract::subjects::audit(&record.action);
        if let Err(e) = self
            .inner
            .nats
            .publish(subject, sdp_contract::encode(record).into())
            .await
        {
            tracing::warn!(action = %record.action, error = %e, "could not publish an audit record");
        }
    }

    pub async fn audit_log(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, ApiError> {
        Ok(self.store().audit(filter).await?)
    }
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    user: Option<String>,
    sandbox: Option<String>,
    repository: Option<String>,
    action: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/v1/audit?user=&sandbox=&repository=&action=&limit=`, newest first.
pub async fn list(
    State(cp): State<ControlPlane>,
    _: CurrentSession,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let filter = AuditFilter {
        user: nonempty(q.user),
        sandbox: nonempty(q.sandbox),
        repository: nonempty(q.repository),
        action: nonempty(q.action),
        limit: q.limit.unwrap_or(200).clamp(1, 5000),
    };
    Ok(Json(cp.audit_log(&filter).await?))
}
