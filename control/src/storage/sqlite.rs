//! The SQLite backend of [`Storage`]: WAL, busy timeout, foreign keys, the
//! migrations embedded in the binary. The SQL itself stays portable (no
//! SQLite-only types or functions) so PostgreSQL can serve the same schema.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sdp_contract::{DeployEvent, DeploymentState, EventKind};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::{
    AuditFilter, AuditRecord, EnvironmentRecord, GATEWAY_SERVICE, Layer, NewDeployment,
    PortAllocation, PortKind, PortRanges, RouteMode, SandboxRecord, SandboxService, SandboxSpec,
    SeqOutcome, ServiceSource, Storage, StoreError, StoreResult, TemplateRecord,
};
use crate::error::ControlError;
use crate::model::{Deployment, DeploymentFilter, Stage, StageStatus};

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

const DEPLOYMENT_COLUMNS: &str = "id, sandbox, repository, branch, node, username, state, port, \
     commit_sha, container, failed_stage, reason, environment, created_at, started_at, \
     completed_at";

const OWNER_ENVIRONMENT: &str = "environment";
const OWNER_TEMPLATE: &str = "template";
const OWNER_SANDBOX: &str = "sandbox";

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<SqliteStore, ControlError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(options)
            .await?;
        sqlx::migrate!().run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    /// A transaction that takes the write lock at once. A deferred SQLite
    /// transaction that reads and then writes can fail outright (not wait) when
    /// another writer committed in between; taking the lock first also makes
    /// "find the lowest free port, then insert it" one atomic step.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn stages_of(&self, list: &mut [Deployment]) -> StoreResult<()> {
        if list.is_empty() {
            return Ok(());
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT deployment_id, name, status, started_at, completed_at, reason \
             FROM deployment_stages WHERE deployment_id IN (",
        );
        let mut ids = q.separated(", ");
        for d in list.iter() {
            ids.push_bind(&d.id);
        }
        q.push(") ORDER BY deployment_id, position");
        let rows = q.build().fetch_all(&self.pool).await?;
        for row in &rows {
            let id: String = row.try_get("deployment_id")?;
            if let Some(d) = list.iter_mut().find(|d| d.id == id) {
                d.stages.push(stage_from_row(row)?);
            }
        }
        Ok(())
    }

    #[cfg(test)]
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

async fn insert_deployment_rows(conn: &mut SqliteConnection, d: &Deployment) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO deployments (id, sandbox, repository, branch, node, username, state, \
         port, commit_sha, container, failed_stage, reason, environment, last_seq, created_at, \
         started_at, completed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
    )
    .bind(&d.id)
    .bind(&d.sandbox)
    .bind(&d.repository)
    .bind(&d.branch)
    .bind(&d.node)
    .bind(&d.user)
    .bind(d.state.as_str())
    .bind(i64::from(d.port))
    .bind(&d.commit)
    .bind(&d.container)
    .bind(&d.failed_stage)
    .bind(&d.reason)
    .bind(&d.environment)
    .bind(ts(d.created_at))
    .bind(d.started_at.map(ts))
    .bind(d.completed_at.map(ts))
    .execute(&mut *conn)
    .await?;
    for (position, stage) in d.stages.iter().enumerate() {
        sqlx::query(
            "INSERT INTO deployment_stages (deployment_id, name, position, status, \
             started_at, completed_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&d.id)
        .bind(&stage.name)
        .bind(position as i64)
        .bind(stage.status.as_str())
        .bind(stage.started_at.map(ts))
        .bind(stage.completed_at.map(ts))
        .bind(&stage.reason)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Storage for SqliteStore {
    async fn insert_deployment(&self, d: &Deployment) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        insert_deployment_rows(&mut tx, d).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn queue_deployment(
        &self,
        new: &NewDeployment,
        ranges: &PortRanges,
    ) -> StoreResult<Deployment> {
        let mut tx = self.write_tx().await?;
        let mut d = new.deployment.clone();
        if !exists(&mut tx, "sandboxes", &d.sandbox).await? {
            return Err(StoreError::NotFound(format!(
                "sandbox {:?} not found: create it first with POST /api/v1/sandboxes",
                d.sandbox
            )));
        }
        let service = match new.kind {
            PortKind::Gateway => GATEWAY_SERVICE,
            PortKind::Micro => d.repository.as_str(),
        };
        d.port = allocate(
            &mut tx,
            new.kind,
            ranges,
            &d.sandbox,
            service,
            new.requested_port,
        )
        .await?;
        match new.kind {
            PortKind::Micro => {
                // Deploying a branch into a sandbox is the sandbox now running
                // that branch of the service.
                sqlx::query(
                    "INSERT INTO sandbox_services (sandbox, service, branch, route_mode) \
                     VALUES (?, ?, ?, ?) ON CONFLICT (sandbox, service) DO UPDATE SET \
                     branch = excluded.branch",
                )
                .bind(&d.sandbox)
                .bind(&d.repository)
                .bind(&d.branch)
                .bind(RouteMode::Sandbox.as_str())
                .execute(&mut *tx)
                .await?;
            }
            PortKind::Gateway => {
                sqlx::query("UPDATE sandboxes SET gateway_branch = ? WHERE name = ?")
                    .bind(&d.branch)
                    .bind(&d.sandbox)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        insert_deployment_rows(&mut tx, &d).await?;
        tx.commit().await?;
        Ok(d)
    }

    async fn deployment(&self, id: &str) -> StoreResult<Option<Deployment>> {
        let row = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut list = vec![deployment_from_row(&row)?];
        self.stages_of(&mut list).await?;
        Ok(list.pop())
    }

    async fn deployments(&self, filter: &DeploymentFilter) -> StoreResult<Vec<Deployment>> {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE 1 = 1"
        ));
        if let Some(s) = &filter.sandbox {
            q.push(" AND sandbox = ").push_bind(s);
        }
        if let Some(r) = &filter.repository {
            q.push(" AND repository = ").push_bind(r);
        }
        if let Some(u) = &filter.user {
            q.push(" AND username = ").push_bind(u);
        }
        if let Some(st) = filter.state {
            q.push(" AND state = ").push_bind(st.as_str());
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(filter.limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        let mut list: Vec<Deployment> = rows
            .iter()
            .map(deployment_from_row)
            .collect::<Result<_, _>>()?;
        self.stages_of(&mut list).await?;
        Ok(list)
    }

    async fn queued_deployments(&self) -> StoreResult<Vec<(Deployment, bool)>> {
        let rows = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS}, dispatched_at FROM deployments WHERE state = ? \
             ORDER BY created_at"
        ))
        .bind(DeploymentState::Queued.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let dispatched: Option<String> = row.try_get("dispatched_at")?;
            out.push((deployment_from_row(row)?, dispatched.is_some()));
        }
        Ok(out)
    }

    async fn mark_dispatched(&self, id: &str, at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query("UPDATE deployments SET dispatched_at = ? WHERE id = ?")
            .bind(ts(at))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn fail_queued(&self, id: &str, reason: &str, at: DateTime<Utc>) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE deployments SET state = ?, reason = ?, completed_at = ? \
             WHERE id = ? AND state = ?",
        )
        .bind(DeploymentState::Failed.as_str())
        .bind(reason)
        .bind(ts(at))
        .bind(id)
        .bind(DeploymentState::Queued.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_state(
        &self,
        id: &str,
        state: DeploymentState,
        reason: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE deployments SET state = ?, reason = ?, completed_at = ? WHERE id = ?",
        )
        .bind(state.as_str())
        .bind(reason)
        .bind(ts(at))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_deployment(&self, id: &str) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        delete_where(&mut tx, "deployment_stages", "deployment_id", id).await?;
        let done = sqlx::query("DELETE FROM deployments WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn advance_seq(
        &self,
        id: &str,
        seqs: std::ops::RangeInclusive<u64>,
        accept_gap: bool,
    ) -> StoreResult<SeqOutcome> {
        let mut tx = self.write_tx().await?;
        let outcome = claim_seqs(&mut tx, id, seqs, accept_gap).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn apply_event(&self, ev: &DeployEvent, accept_gap: bool) -> StoreResult<SeqOutcome> {
        let mut tx = self.write_tx().await?;
        let outcome = claim_seqs(&mut tx, &ev.deployment, ev.seq..=ev.seq, accept_gap).await?;
        if !matches!(outcome, SeqOutcome::Applied { .. }) {
            return Ok(outcome);
        }
        apply_event_rows(&mut tx, ev).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn last_seq(&self, id: &str) -> StoreResult<Option<u64>> {
        let last: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM deployments WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(last.map(|l| u64::try_from(l).unwrap_or(0)))
    }

    // ------------------------------------------------------------ environments

    async fn environments(&self) -> StoreResult<Vec<EnvironmentRecord>> {
        load_each(&self.pool, "environments", |name| async move {
            self.environment(&name).await
        })
        .await
    }

    async fn environment(&self, name: &str) -> StoreResult<Option<EnvironmentRecord>> {
        let mut conn = self.pool.acquire().await?;
        let row =
            sqlx::query("SELECT name, created_at, updated_at FROM environments WHERE name = ?")
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let layer = load_layer(&mut conn, OWNER_ENVIRONMENT, name).await?;
        Ok(Some(EnvironmentRecord {
            name: row.try_get("name")?,
            layer,
            created_at: required_ts(&row, "created_at")?,
            updated_at: required_ts(&row, "updated_at")?,
        }))
    }

    async fn create_environment(&self, env: &EnvironmentRecord) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        refuse_existing(&mut tx, "environments", "environment", &env.name).await?;
        sqlx::query("INSERT INTO environments (name, created_at, updated_at) VALUES (?, ?, ?)")
            .bind(&env.name)
            .bind(ts(env.created_at))
            .bind(ts(env.updated_at))
            .execute(&mut *tx)
            .await?;
        write_layer(&mut tx, OWNER_ENVIRONMENT, &env.name, &env.layer).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_environment(&self, env: &EnvironmentRecord) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("UPDATE environments SET updated_at = ? WHERE name = ?")
            .bind(ts(env.updated_at))
            .bind(&env.name)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("environment", &env.name));
        }
        write_layer(&mut tx, OWNER_ENVIRONMENT, &env.name, &env.layer).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_environment(&self, name: &str) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        require(&mut tx, "environments", "environment", name).await?;
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT 'template ' || name FROM templates WHERE environment = ? \
             UNION ALL SELECT 'sandbox ' || name FROM sandboxes WHERE environment = ?",
        )
        .bind(name)
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            return Err(StoreError::Conflict(format!(
                "environment {name:?} is used by {}: change those first",
                users.join(", ")
            )));
        }
        delete_layer(&mut tx, OWNER_ENVIRONMENT, name).await?;
        delete_where(&mut tx, "environments", "name", name).await?;
        tx.commit().await?;
        Ok(())
    }

    // ------------------------------------------------------------ templates

    async fn templates(&self) -> StoreResult<Vec<TemplateRecord>> {
        load_each(&self.pool, "templates", |name| async move {
            self.template(&name).await
        })
        .await
    }

    async fn template(&self, name: &str) -> StoreResult<Option<TemplateRecord>> {
        let mut conn = self.pool.acquire().await?;
        let row = sqlx::query(
            "SELECT name, environment, gateway_branch, created_at, updated_at \
             FROM templates WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let rows = sqlx::query(
            "SELECT service, branch FROM template_services WHERE template = ? ORDER BY service",
        )
        .bind(name)
        .fetch_all(&mut *conn)
        .await?;
        let mut services = BTreeMap::new();
        for r in &rows {
            let branch: Option<String> = r.try_get("branch")?;
            services.insert(r.try_get("service")?, source_of(branch));
        }
        let layer = load_layer(&mut conn, OWNER_TEMPLATE, name).await?;
        Ok(Some(TemplateRecord {
            name: row.try_get("name")?,
            environment: row.try_get("environment")?,
            gateway_branch: row.try_get("gateway_branch")?,
            services,
            layer,
            created_at: required_ts(&row, "created_at")?,
            updated_at: required_ts(&row, "updated_at")?,
        }))
    }

    async fn create_template(&self, t: &TemplateRecord) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        refuse_existing(&mut tx, "templates", "template", &t.name).await?;
        check_environment(&mut tx, t.environment.as_deref()).await?;
        sqlx::query(
            "INSERT INTO templates (name, environment, gateway_branch, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&t.name)
        .bind(&t.environment)
        .bind(&t.gateway_branch)
        .bind(ts(t.created_at))
        .bind(ts(t.updated_at))
        .execute(&mut *tx)
        .await?;
        write_template_services(&mut tx, t).await?;
        write_layer(&mut tx, OWNER_TEMPLATE, &t.name, &t.layer).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_template(&self, t: &TemplateRecord) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        check_environment(&mut tx, t.environment.as_deref()).await?;
        let done = sqlx::query(
            "UPDATE templates SET environment = ?, gateway_branch = ?, updated_at = ? \
             WHERE name = ?",
        )
        .bind(&t.environment)
        .bind(&t.gateway_branch)
        .bind(ts(t.updated_at))
        .bind(&t.name)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("template", &t.name));
        }
        delete_where(&mut tx, "template_services", "template", &t.name).await?;
        write_template_services(&mut tx, t).await?;
        write_layer(&mut tx, OWNER_TEMPLATE, &t.name, &t.layer).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_template(&self, name: &str) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        require(&mut tx, "templates", "template", name).await?;
        let users: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sandboxes WHERE template = ? ORDER BY name")
                .bind(name)
                .fetch_all(&mut *tx)
                .await?;
        if !users.is_empty() {
            return Err(StoreError::Conflict(format!(
                "template {name:?} is used by sandbox {}: delete or change those first",
                users.join(", ")
            )));
        }
        delete_layer(&mut tx, OWNER_TEMPLATE, name).await?;
        delete_where(&mut tx, "template_services", "template", name).await?;
        delete_where(&mut tx, "templates", "name", name).await?;
        tx.commit().await?;
        Ok(())
    }

    // ------------------------------------------------------------ sandboxes

    async fn sandboxes(&self) -> StoreResult<Vec<SandboxRecord>> {
        load_each(&self.pool, "sandboxes", |name| async move {
            self.sandbox(&name).await
        })
        .await
    }

    async fn sandbox(&self, name: &str) -> StoreResult<Option<SandboxRecord>> {
        let mut conn = self.pool.acquire().await?;
        load_sandbox(&mut conn, name).await
    }

    async fn create_sandbox(
        &self,
        spec: &SandboxSpec,
        ranges: &PortRanges,
    ) -> StoreResult<SandboxRecord> {
        let mut tx = self.write_tx().await?;
        refuse_existing(&mut tx, "sandboxes", "sandbox", &spec.name).await?;
        check_environment(&mut tx, spec.environment.as_deref()).await?;
        check_template(&mut tx, spec.template.as_deref()).await?;
        let now = ts(Utc::now());
        sqlx::query(
            "INSERT INTO sandboxes (name, template, environment, gateway_branch, created_by, \
             created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&spec.name)
        .bind(&spec.template)
        .bind(&spec.environment)
        .bind(&spec.gateway_branch)
        .bind(&spec.created_by)
        .bind(&now)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        write_sandbox_parts(&mut tx, spec, ranges).await?;
        let record = load_sandbox(&mut tx, &spec.name)
            .await?
            .ok_or_else(|| not_found("sandbox", &spec.name))?;
        tx.commit().await?;
        Ok(record)
    }

    async fn update_sandbox(
        &self,
        spec: &SandboxSpec,
        ranges: &PortRanges,
    ) -> StoreResult<SandboxRecord> {
        let mut tx = self.write_tx().await?;
        check_environment(&mut tx, spec.environment.as_deref()).await?;
        check_template(&mut tx, spec.template.as_deref()).await?;
        let done = sqlx::query(
            "UPDATE sandboxes SET template = ?, environment = ?, gateway_branch = ?, \
             updated_at = ? WHERE name = ?",
        )
        .bind(&spec.template)
        .bind(&spec.environment)
        .bind(&spec.gateway_branch)
        .bind(ts(Utc::now()))
        .bind(&spec.name)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("sandbox", &spec.name));
        }
        write_sandbox_parts(&mut tx, spec, ranges).await?;
        let record = load_sandbox(&mut tx, &spec.name)
            .await?
            .ok_or_else(|| not_found("sandbox", &spec.name))?;
        tx.commit().await?;
        Ok(record)
    }

    async fn delete_sandbox(&self, name: &str) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        require(&mut tx, "sandboxes", "sandbox", name).await?;
        delete_where(&mut tx, "port_allocations", "sandbox", name).await?;
        delete_where(&mut tx, "sandbox_services", "sandbox", name).await?;
        delete_layer(&mut tx, OWNER_SANDBOX, name).await?;
        delete_where(&mut tx, "sandboxes", "name", name).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_route_mode(
        &self,
        sandbox: &str,
        service: &str,
        mode: RouteMode,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        require(&mut tx, "sandboxes", "sandbox", sandbox).await?;
        sqlx::query(
            "INSERT INTO sandbox_services (sandbox, service, branch, route_mode) \
             VALUES (?, ?, NULL, ?) ON CONFLICT (sandbox, service) DO UPDATE SET \
             route_mode = excluded.route_mode",
        )
        .bind(sandbox)
        .bind(service)
        .bind(mode.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn port_allocations(&self) -> StoreResult<Vec<PortAllocation>> {
        let rows = sqlx::query(
            "SELECT node_kind, port, sandbox, service FROM port_allocations \
             ORDER BY node_kind, port",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("node_kind")?;
                Ok(PortAllocation {
                    kind: kind_of(&kind)?,
                    port: port_from(r.try_get("port")?)?,
                    sandbox: r.try_get("sandbox")?,
                    service: r.try_get("service")?,
                })
            })
            .collect()
    }

    // ------------------------------------------------------------ audit

    async fn insert_audit(&self, a: &AuditRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, username, action, outcome, error, sandbox, \
             repository, branch, environment, deployment, detail) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&a.id)
        .bind(ts(a.at))
        .bind(&a.user)
        .bind(&a.action)
        .bind(&a.outcome)
        .bind(&a.error)
        .bind(&a.sandbox)
        .bind(&a.repository)
        .bind(&a.branch)
        .bind(&a.environment)
        .bind(&a.deployment)
        .bind(&a.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT id, at, username, action, outcome, error, sandbox, repository, branch, \
             environment, deployment, detail FROM audit_log WHERE 1 = 1",
        );
        if let Some(u) = &filter.user {
            q.push(" AND username = ").push_bind(u);
        }
        if let Some(s) = &filter.sandbox {
            q.push(" AND sandbox = ").push_bind(s);
        }
        if let Some(r) = &filter.repository {
            q.push(" AND repository = ").push_bind(r);
        }
        if let Some(a) = &filter.action {
            q.push(" AND action = ").push_bind(a);
        }
        q.push(" ORDER BY at DESC, id DESC LIMIT ")
            .push_bind(i64::from(filter.limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    id: r.try_get("id")?,
                    at: required_ts(r, "at")?,
                    user: r.try_get("username")?,
                    action: r.try_get("action")?,
                    outcome: r.try_get("outcome")?,
                    error: r.try_get("error")?,
                    sandbox: r.try_get("sandbox")?,
                    repository: r.try_get("repository")?,
                    branch: r.try_get("branch")?,
                    environment: r.try_get("environment")?,
                    deployment: r.try_get("deployment")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}

// ---------------------------------------------------------------- helpers

fn not_found(what: &str, name: &str) -> StoreError {
    StoreError::NotFound(format!("{what} {name:?} not found"))
}

/// `table` has a row named `name`. The table is always one of ours.
async fn exists(conn: &mut SqliteConnection, table: &str, name: &str) -> StoreResult<bool> {
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE name = ?"))
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    Ok(n > 0)
}

/// A `what` named `name` is in `table`, or the call fails as not found.
async fn require(
    conn: &mut SqliteConnection,
    table: &str,
    what: &str,
    name: &str,
) -> StoreResult<()> {
    if exists(conn, table, name).await? {
        Ok(())
    } else {
        Err(not_found(what, name))
    }
}

/// No `what` named `name` is in `table` yet, or the call fails as a conflict.
async fn refuse_existing(
    conn: &mut SqliteConnection,
    table: &str,
    what: &str,
    name: &str,
) -> StoreResult<()> {
    if exists(conn, table, name).await? {
        Err(StoreError::Conflict(format!(
            "{what} {name:?} already exists"
        )))
    } else {
        Ok(())
    }
}

async fn check_environment(conn: &mut SqliteConnection, name: Option<&str>) -> StoreResult<()> {
    match name {
        Some(n) => require(conn, "environments", "environment", n).await,
        None => Ok(()),
    }
}

async fn check_template(conn: &mut SqliteConnection, name: Option<&str>) -> StoreResult<()> {
    match name {
        Some(n) => require(conn, "templates", "template", n).await,
        None => Ok(()),
    }
}

/// Deletes the rows of `table` whose `column` is `key`. Table and column are
/// always ours, never caller input, so formatting them in is safe.
async fn delete_where(
    conn: &mut SqliteConnection,
    table: &str,
    column: &str,
    key: &str,
) -> StoreResult<()> {
    sqlx::query(&format!("DELETE FROM {table} WHERE {column} = ?"))
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Every record of `table`, by name. Each is loaded on its own, so one
/// deleted between the listing and its load is skipped rather than failing.
async fn load_each<T, F, Fut>(pool: &SqlitePool, table: &str, load: F) -> StoreResult<Vec<T>>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = StoreResult<Option<T>>>,
{
    let names: Vec<String> = sqlx::query_scalar(&format!("SELECT name FROM {table} ORDER BY name"))
        .fetch_all(pool)
        .await?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if let Some(record) = load(name).await? {
            out.push(record);
        }
    }
    Ok(out)
}

fn source_of(branch: Option<String>) -> ServiceSource {
    branch.map_or(ServiceSource::Ocp, ServiceSource::Branch)
}

fn kind_of(s: &str) -> Result<PortKind, sqlx::Error> {
    match s {
        "gateway" => Ok(PortKind::Gateway),
        "micro" => Ok(PortKind::Micro),
        other => Err(sqlx::Error::ColumnDecode {
            index: "node_kind".into(),
            source: format!("unknown node kind {other:?}").into(),
        }),
    }
}

async fn write_template_services(
    conn: &mut SqliteConnection,
    t: &TemplateRecord,
) -> StoreResult<()> {
    for (service, source) in &t.services {
        sqlx::query("INSERT INTO template_services (template, service, branch) VALUES (?, ?, ?)")
            .bind(&t.name)
            .bind(service)
            .bind(source.branch())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

const ENTRY_VARIABLE: &str = "variable";
const ENTRY_SECRET: &str = "secret";
const ENTRY_FILE: &str = "file";

async fn load_layer(
    conn: &mut SqliteConnection,
    owner_kind: &str,
    owner: &str,
) -> StoreResult<Layer> {
    let rows = sqlx::query(
        "SELECT entry_kind, entry_key, entry_value FROM layer_entries \
         WHERE owner_kind = ? AND owner = ? ORDER BY entry_kind, entry_key",
    )
    .bind(owner_kind)
    .bind(owner)
    .fetch_all(&mut *conn)
    .await?;
    let mut layer = Layer::default();
    for r in &rows {
        let kind: String = r.try_get("entry_kind")?;
        let map = match kind.as_str() {
            ENTRY_VARIABLE => &mut layer.variables,
            ENTRY_SECRET => &mut layer.secrets,
            ENTRY_FILE => &mut layer.files,
            _ => continue,
        };
        map.insert(r.try_get("entry_key")?, r.try_get("entry_value")?);
    }
    Ok(layer)
}

async fn delete_layer(
    conn: &mut SqliteConnection,
    owner_kind: &str,
    owner: &str,
) -> StoreResult<()> {
    sqlx::query("DELETE FROM layer_entries WHERE owner_kind = ? AND owner = ?")
        .bind(owner_kind)
        .bind(owner)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Replaces the layer of `owner` with `layer`.
async fn write_layer(
    conn: &mut SqliteConnection,
    owner_kind: &str,
    owner: &str,
    layer: &Layer,
) -> StoreResult<()> {
    delete_layer(conn, owner_kind, owner).await?;
    for (kind, map) in [
        (ENTRY_VARIABLE, &layer.variables),
        (ENTRY_SECRET, &layer.secrets),
        (ENTRY_FILE, &layer.files),
    ] {
        for (key, value) in map {
            sqlx::query(
                "INSERT INTO layer_entries (owner_kind, owner, entry_kind, entry_key, \
                 entry_value) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(owner_kind)
            .bind(owner)
            .bind(kind)
            .bind(key)
            .bind(value)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

async fn load_sandbox(
    conn: &mut SqliteConnection,
    name: &str,
) -> StoreResult<Option<SandboxRecord>> {
    let row = sqlx::query(
        "SELECT name, template, environment, gateway_branch, created_by, created_at, updated_at \
         FROM sandboxes WHERE name = ?",
    )
    .bind(name)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let allocations =
        sqlx::query("SELECT node_kind, port, service FROM port_allocations WHERE sandbox = ?")
            .bind(name)
            .fetch_all(&mut *conn)
            .await?;
    let mut gateway_port = 0;
    let mut micro_ports = BTreeMap::new();
    for a in &allocations {
        let kind: String = a.try_get("node_kind")?;
        let port = port_from(a.try_get("port")?)?;
        let service: String = a.try_get("service")?;
        match kind_of(&kind)? {
            PortKind::Gateway => gateway_port = port,
            PortKind::Micro => {
                micro_ports.insert(service, port);
            }
        }
    }
    let rows = sqlx::query(
        "SELECT service, branch, route_mode FROM sandbox_services WHERE sandbox = ? \
         ORDER BY service",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    let mut services = BTreeMap::new();
    for r in &rows {
        let service: String = r.try_get("service")?;
        let branch: Option<String> = r.try_get("branch")?;
        let mode: String = r.try_get("route_mode")?;
        let route = RouteMode::parse(&mode).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "route_mode".into(),
            source: format!("unknown route mode {mode:?}").into(),
        })?;
        let port = micro_ports.get(&service).copied();
        services.insert(
            service,
            SandboxService {
                source: source_of(branch),
                port,
                route,
            },
        );
    }
    let layer = load_layer(conn, OWNER_SANDBOX, name).await?;
    Ok(Some(SandboxRecord {
        name: row.try_get("name")?,
        template: row.try_get("template")?,
        environment: row.try_get("environment")?,
        gateway_branch: row.try_get("gateway_branch")?,
        gateway_port,
        services,
        layer,
        created_by: row.try_get("created_by")?,
        created_at: required_ts(&row, "created_at")?,
        updated_at: required_ts(&row, "updated_at")?,
    }))
}

/// Services, ports and layer of a sandbox whose row exists.
async fn write_sandbox_parts(
    conn: &mut SqliteConnection,
    spec: &SandboxSpec,
    ranges: &PortRanges,
) -> StoreResult<()> {
    allocate(
        conn,
        PortKind::Gateway,
        ranges,
        &spec.name,
        GATEWAY_SERVICE,
        spec.gateway_port,
    )
    .await?;
    let old_modes: Vec<(String, String)> =
        sqlx::query_as("SELECT service, route_mode FROM sandbox_services WHERE sandbox = ?")
            .bind(&spec.name)
            .fetch_all(&mut *conn)
            .await?;
    let old_modes: BTreeMap<String, String> = old_modes.into_iter().collect();
    delete_where(conn, "sandbox_services", "sandbox", &spec.name).await?;
    // Ports of services that left the sandbox, or moved to OCP, are released.
    let held: Vec<String> = sqlx::query_scalar(
        "SELECT service FROM port_allocations WHERE sandbox = ? AND node_kind = ?",
    )
    .bind(&spec.name)
    .bind(PortKind::Micro.as_str())
    .fetch_all(&mut *conn)
    .await?;
    for service in held {
        let keep = spec
            .services
            .get(&service)
            .is_some_and(|s| s.source.branch().is_some());
        if !keep {
            sqlx::query(
                "DELETE FROM port_allocations WHERE sandbox = ? AND node_kind = ? AND service = ?",
            )
            .bind(&spec.name)
            .bind(PortKind::Micro.as_str())
            .bind(&service)
            .execute(&mut *conn)
            .await?;
        }
    }
    for (service, s) in &spec.services {
        let default = match s.source {
            ServiceSource::Branch(_) => RouteMode::Sandbox,
            ServiceSource::Ocp => RouteMode::Ocp,
        };
        let mode = s
            .route
            .or_else(|| old_modes.get(service).and_then(|m| RouteMode::parse(m)))
            .unwrap_or(default);
        // A service served by OCP has nothing in the sandbox to route to.
        let mode = if s.source == ServiceSource::Ocp {
            RouteMode::Ocp
        } else {
            mode
        };
        sqlx::query(
            "INSERT INTO sandbox_services (sandbox, service, branch, route_mode) \
             VALUES (?, ?, ?, ?)",
        )
        .bind(&spec.name)
        .bind(service)
        .bind(s.source.branch())
        .bind(mode.as_str())
        .execute(&mut *conn)
        .await?;
        if s.source.branch().is_some() {
            allocate(conn, PortKind::Micro, ranges, &spec.name, service, s.port).await?;
        } else if s.port.is_some() {
            return Err(StoreError::Invalid(format!(
                "services.{service}.port: a service served by OCP has no port"
            )));
        }
    }
    write_layer(conn, OWNER_SANDBOX, &spec.name, &spec.layer).await
}

/// The port of `sandbox`'s `service` on `kind`: the requested one if free
/// (moving the allocation), else the one it holds, else the lowest free one
/// in range. Runs inside a write transaction; the primary key on
/// (node_kind, port) is the backstop should two writers ever race.
async fn allocate(
    conn: &mut SqliteConnection,
    kind: PortKind,
    ranges: &PortRanges,
    sandbox: &str,
    service: &str,
    requested: Option<u16>,
) -> StoreResult<u16> {
    let existing: Option<i64> = sqlx::query_scalar(
        "SELECT port FROM port_allocations WHERE sandbox = ? AND node_kind = ? AND service = ?",
    )
    .bind(sandbox)
    .bind(kind.as_str())
    .bind(service)
    .fetch_optional(&mut *conn)
    .await?;
    let existing = existing.map(port_from).transpose()?;
    let port = match requested {
        Some(0) => {
            return Err(StoreError::Invalid(
                "invalid port 0: choose a port from 1 to 65535".into(),
            ));
        }
        Some(p) if existing == Some(p) => return Ok(p),
        Some(p) => {
            let holder: Option<(String, String)> = sqlx::query_as(
                "SELECT sandbox, service FROM port_allocations WHERE node_kind = ? AND port = ?",
            )
            .bind(kind.as_str())
            .bind(i64::from(p))
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((sb, svc)) = holder {
                return Err(StoreError::Conflict(format!(
                    "port {p} is in use by {svc:?} of sandbox {sb:?}: choose another {} port \
                     or leave port out to get a free one",
                    kind.as_str()
                )));
            }
            p
        }
        None => {
            if let Some(p) = existing {
                return Ok(p);
            }
            let (first, last) = ranges.of(kind);
            let used: Vec<i64> = sqlx::query_scalar(
                "SELECT port FROM port_allocations WHERE node_kind = ? AND port >= ? \
                 AND port <= ? ORDER BY port",
            )
            .bind(kind.as_str())
            .bind(i64::from(first))
            .bind(i64::from(last))
            .fetch_all(&mut *conn)
            .await?;
            let used: std::collections::BTreeSet<i64> = used.into_iter().collect();
            (first..=last)
                .find(|p| !used.contains(&i64::from(*p)))
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "every {} port from {first} to {last} is allocated: delete a sandbox first",
                        kind.as_str()
                    ))
                })?
        }
    };
    let result = if existing.is_some() {
        sqlx::query(
            "UPDATE port_allocations SET port = ? \
             WHERE sandbox = ? AND node_kind = ? AND service = ?",
        )
        .bind(i64::from(port))
        .bind(sandbox)
        .bind(kind.as_str())
        .bind(service)
        .execute(&mut *conn)
        .await
    } else {
        sqlx::query(
            "INSERT INTO port_allocations (node_kind, port, sandbox, service, created_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(kind.as_str())
        .bind(i64::from(port))
        .bind(sandbox)
        .bind(service)
        .bind(ts(Utc::now()))
        .execute(&mut *conn)
        .await
    };
    match result {
        Ok(_) => Ok(port),
        Err(e)
            if e.as_database_error()
                .is_some_and(|d| d.is_unique_violation()) =>
        {
            Err(StoreError::Conflict(format!(
                "port {port} was just taken by another request; try again"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

fn required_ts(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    let value: String = row.try_get(column)?;
    Ok(parse_ts(column, Some(value))?.unwrap_or_default())
}

async fn apply_event_rows(tx: &mut SqliteConnection, ev: &DeployEvent) -> StoreResult<()> {
    let id = ev.deployment.as_str();
    let at = ts(ev.at);
    match &ev.kind {
        EventKind::StageStarted { stage } => {
            upsert_stage(tx, id, stage, StageStatus::Running, &at, None).await?;
            sqlx::query("UPDATE deployments SET started_at = COALESCE(started_at, ?) WHERE id = ?")
                .bind(&at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        EventKind::StageCompleted { stage } => {
            upsert_stage(tx, id, stage, StageStatus::Completed, &at, None).await?;
        }
        EventKind::StageFailed { stage, reason } => {
            upsert_stage(tx, id, stage, StageStatus::Failed, &at, Some(reason)).await?;
            sqlx::query("UPDATE deployments SET failed_stage = ?, reason = ? WHERE id = ?")
                .bind(stage)
                .bind(reason)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        EventKind::State {
            state,
            reason,
            commit,
            container,
        } => {
            if *state == DeploymentState::Failed {
                fail_running_stages(tx, id, &at, reason.as_deref()).await?;
            }
            let completed = state.is_final().then(|| at.clone());
            // A failure keeps the reason its stage gave if the state names
            // none; any other state replaces an earlier reason.
            let reason_sql = if *state == DeploymentState::Failed {
                "COALESCE(?, reason)"
            } else {
                "?"
            };
            sqlx::query(&format!(
                "UPDATE deployments SET state = ?, reason = {reason_sql}, \
                 commit_sha = COALESCE(?, commit_sha), container = COALESCE(?, container), \
                 started_at = COALESCE(started_at, ?), \
                 completed_at = COALESCE(?, completed_at) WHERE id = ?"
            ))
            .bind(state.as_str())
            .bind(reason)
            .bind(commit)
            .bind(container)
            .bind(&at)
            .bind(completed)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

async fn claim_seqs(
    tx: &mut SqliteConnection,
    id: &str,
    seqs: std::ops::RangeInclusive<u64>,
    accept_gap: bool,
) -> Result<SeqOutcome, sqlx::Error> {
    let (first, seq) = seqs.into_inner();
    let last: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM deployments WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(last) = last else {
        return Ok(SeqOutcome::Unknown);
    };
    let last = u64::try_from(last).unwrap_or(0);
    if seq <= last {
        return Ok(SeqOutcome::Duplicate { last });
    }
    if first > last + 1 && !accept_gap {
        return Ok(SeqOutcome::Gap { last });
    }
    sqlx::query("UPDATE deployments SET last_seq = ? WHERE id = ?")
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(SeqOutcome::Applied { previous: last })
}

async fn upsert_stage(
    tx: &mut SqliteConnection,
    id: &str,
    stage: &str,
    status: StageStatus,
    at: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    let (started, completed) = match status {
        StageStatus::Running => (Some(at), None),
        _ => (None, Some(at)),
    };
    // A stage the pipeline did not list goes after the known ones.
    sqlx::query(
        "INSERT INTO deployment_stages (deployment_id, name, position, status, started_at, \
         completed_at, reason) VALUES (?, ?, \
         (SELECT COALESCE(MAX(position), -1) + 1 FROM deployment_stages WHERE deployment_id = ?), \
         ?, COALESCE(?, ?), ?, ?) \
         ON CONFLICT (deployment_id, name) DO UPDATE SET status = excluded.status, \
         started_at = CASE WHEN excluded.status = 'running' THEN excluded.started_at \
         ELSE COALESCE(deployment_stages.started_at, excluded.started_at) END, \
         completed_at = excluded.completed_at, reason = excluded.reason",
    )
    .bind(id)
    .bind(stage)
    .bind(id)
    .bind(status.as_str())
    .bind(started)
    .bind(completed)
    .bind(completed)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A deployment that fails without naming a stage failed in whichever stage
/// was running.
async fn fail_running_stages(
    tx: &mut SqliteConnection,
    id: &str,
    at: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    let running: Option<String> = sqlx::query_scalar(
        "SELECT name FROM deployment_stages WHERE deployment_id = ? AND status = ? \
         ORDER BY position LIMIT 1",
    )
    .bind(id)
    .bind(StageStatus::Running.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(stage) = running else { return Ok(()) };
    sqlx::query(
        "UPDATE deployment_stages SET status = ?, completed_at = ?, reason = ? \
         WHERE deployment_id = ? AND status = ?",
    )
    .bind(StageStatus::Failed.as_str())
    .bind(at)
    .bind(reason)
    .bind(id)
    .bind(StageStatus::Running.as_str())
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE deployments SET failed_stage = COALESCE(failed_stage, ?) WHERE id = ?")
        .bind(stage)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Timestamps are stored as RFC 3339 UTC text: portable, and ordered as text.
fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_ts(column: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    value
        .map(|s| {
            DateTime::parse_from_rfc3339(&s)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|e| decode_error(column, e))
        })
        .transpose()
}

fn decode_error(column: &str, e: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    }
}

fn port_from(value: i64) -> Result<u16, sqlx::Error> {
    u16::try_from(value).map_err(|e| decode_error("port", e))
}

fn deployment_from_row(row: &SqliteRow) -> Result<Deployment, sqlx::Error> {
    let state: String = row.try_get("state")?;
    let state = DeploymentState::parse(&state).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "state".into(),
        source: format!("unknown deployment state {state:?}").into(),
    })?;
    let created_at: String = row.try_get("created_at")?;
    Ok(Deployment {
        id: row.try_get("id")?,
        sandbox: row.try_get("sandbox")?,
        repository: row.try_get("repository")?,
        branch: row.try_get("branch")?,
        node: row.try_get("node")?,
        user: row.try_get("username")?,
        state,
        port: port_from(row.try_get("port")?)?,
        commit: row.try_get("commit_sha")?,
        container: row.try_get("container")?,
        failed_stage: row.try_get("failed_stage")?,
        reason: row.try_get("reason")?,
        environment: row.try_get("environment")?,
        stages: Vec::new(),
        created_at: parse_ts("created_at", Some(created_at))?.unwrap_or_default(),
        started_at: parse_ts("started_at", row.try_get("started_at")?)?,
        completed_at: parse_ts("completed_at", row.try_get("completed_at")?)?,
    })
}

fn stage_from_row(row: &SqliteRow) -> Result<Stage, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(Stage {
        name: row.try_get("name")?,
        status: StageStatus::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "status".into(),
            source: format!("unknown stage status {status:?}").into(),
        })?,
        started_at: parse_ts("started_at", row.try_get("started_at")?)?,
        completed_at: parse_ts("completed_at", row.try_get("completed_at")?)?,
        reason: row.try_get("reason")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::ServiceSpec;
    use super::*;
    use sdp_contract::stages::MICRO;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("sdp.db")).await.unwrap();
        (dir, store)
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn queued(id: &str, sandbox: &str, port: u16, created: i64) -> Deployment {
        Deployment {
            id: id.into(),
            sandbox: sandbox.into(),
            repository: "eredar".into(),
            branch: "feature/login".into(),
            node: "micro".into(),
            user: "achmad".into(),
            state: DeploymentState::Queued,
            port,
            commit: None,
            container: None,
            failed_stage: None,
            reason: None,
            environment: None,
            stages: MICRO
                .iter()
                .map(|s| Stage {
                    name: (*s).into(),
                    status: StageStatus::Pending,
                    started_at: None,
                    completed_at: None,
                    reason: None,
                })
                .collect(),
            created_at: at(created),
            started_at: None,
            completed_at: None,
        }
    }

    fn event(id: &str, seq: u64, kind: EventKind) -> DeployEvent {
        DeployEvent {
            deployment: id.into(),
            seq,
            at: at(seq as i64),
            kind,
        }
    }

    #[tokio::test]
    async fn a_deployment_round_trips_with_its_stages_in_pipeline_order() {
        let (_dir, store) = store().await;
        let d = queued("d1", "qa", 9001, 0);
        store.insert_deployment(&d).await.unwrap();
        let back = store.deployment("d1").await.unwrap().unwrap();
        assert_eq!(back, d);
        let names: Vec<_> = back.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, MICRO);
        assert!(store.deployment("nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn events_move_stages_and_state_and_duplicates_are_skipped() {
        let (_dir, store) = store().await;
        store
            .insert_deployment(&queued("d1", "qa", 9001, 0))
            .await
            .unwrap();
        let started = EventKind::StageStarted {
            stage: MICRO[0].into(),
        };
        assert_eq!(
            store
                .apply_event(&event("d1", 1, started.clone()), false)
                .await
                .unwrap(),
            SeqOutcome::Applied { previous: 0 }
        );
        assert_eq!(
            store
                .apply_event(&event("d1", 1, started), false)
                .await
                .unwrap(),
            SeqOutcome::Duplicate { last: 1 }
        );
        let completed = EventKind::StageCompleted {
            stage: MICRO[0].into(),
        };
        // A gap (2 is missing) is reported and not applied: the replay
        // brings 2 and 3 again, in order.
        assert_eq!(
            store
                .apply_event(&event("d1", 3, completed.clone()), false)
                .await
                .unwrap(),
            SeqOutcome::Gap { last: 1 }
        );
        store.advance_seq("d1", 2..=2, false).await.unwrap();
        assert_eq!(
            store
                .apply_event(&event("d1", 3, completed), false)
                .await
                .unwrap(),
            SeqOutcome::Applied { previous: 2 }
        );
        let running = EventKind::State {
            state: DeploymentState::Running,
            reason: None,
            commit: Some("abc123".into()),
            container: Some("sandbox-qa-eredar".into()),
        };
        store
            .apply_event(&event("d1", 4, running), false)
            .await
            .unwrap();

        let d = store.deployment("d1").await.unwrap().unwrap();
        assert_eq!(d.state, DeploymentState::Running);
        assert_eq!(d.commit.as_deref(), Some("abc123"));
        assert_eq!(d.started_at, Some(at(1)));
        assert_eq!(d.completed_at, Some(at(4)));
        assert_eq!(d.stages[0].status, StageStatus::Completed);
        assert_eq!(d.stages[0].started_at, Some(at(1)));
        assert_eq!(d.stages[0].completed_at, Some(at(3)));
        assert_eq!(d.stages[1].status, StageStatus::Pending);
    }

    #[tokio::test]
    async fn a_run_of_log_lines_is_taken_in_one_write_skipping_what_was_seen() {
        let (_dir, store) = store().await;
        store
            .insert_deployment(&queued("d1", "qa", 9001, 0))
            .await
            .unwrap();
        assert_eq!(
            store.advance_seq("d1", 1..=5, false).await.unwrap(),
            SeqOutcome::Applied { previous: 0 }
        );
        // A replay from 3 overlaps: only 6..=8 are new.
        assert_eq!(
            store.advance_seq("d1", 3..=8, false).await.unwrap(),
            SeqOutcome::Applied { previous: 5 }
        );
        assert_eq!(
            store.advance_seq("d1", 2..=8, false).await.unwrap(),
            SeqOutcome::Duplicate { last: 8 }
        );
        // 9 is missing: refused, unless the agent cannot replay it.
        assert_eq!(
            store.advance_seq("d1", 10..=12, false).await.unwrap(),
            SeqOutcome::Gap { last: 8 }
        );
        assert_eq!(store.last_seq("d1").await.unwrap(), Some(8));
        assert_eq!(
            store.advance_seq("d1", 10..=12, true).await.unwrap(),
            SeqOutcome::Applied { previous: 8 }
        );
        assert_eq!(store.last_seq("d1").await.unwrap(), Some(12));
    }

    #[tokio::test]
    async fn a_failure_names_the_stage_and_the_reason() {
        let (_dir, store) = store().await;
        store
            .insert_deployment(&queued("d1", "qa", 9001, 0))
            .await
            .unwrap();
        let build = MICRO[3];
        store
            .apply_event(
                &event(
                    "d1",
                    1,
                    EventKind::StageStarted {
                        stage: build.into(),
                    },
                ),
                false,
            )
            .await
            .unwrap();
        store
            .apply_event(
                &event(
                    "d1",
                    2,
                    EventKind::StageFailed {
                        stage: build.into(),
                        reason: "exit status 1".into(),
                    },
                ),
                false,
            )
            .await
            .unwrap();
        store
            .apply_event(
                &event(
                    "d1",
                    3,
                    EventKind::State {
                        state: DeploymentState::Failed,
                        reason: Some("go build failed".into()),
                        commit: None,
                        container: None,
                    },
                ),
                false,
            )
            .await
            .unwrap();
        let d = store.deployment("d1").await.unwrap().unwrap();
        assert_eq!(d.state, DeploymentState::Failed);
        assert_eq!(d.failed_stage.as_deref(), Some(build));
        assert_eq!(d.reason.as_deref(), Some("go build failed"));
        assert_eq!(d.stages[3].status, StageStatus::Failed);
        assert_eq!(d.stages[3].reason.as_deref(), Some("exit status 1"));
    }

    #[tokio::test]
    async fn a_failed_state_without_a_stage_failure_fails_the_running_stage() {
        let (_dir, store) = store().await;
        store
            .insert_deployment(&queued("d1", "qa", 9001, 0))
            .await
            .unwrap();
        store
            .apply_event(
                &event(
                    "d1",
                    1,
                    EventKind::StageStarted {
                        stage: MICRO[1].into(),
                    },
                ),
                false,
            )
            .await
            .unwrap();
        store
            .apply_event(
                &event(
                    "d1",
                    2,
                    EventKind::State {
                        state: DeploymentState::Failed,
                        reason: Some("agent restarted".into()),
                        commit: None,
                        container: None,
                    },
                ),
                false,
            )
            .await
            .unwrap();
        let d = store.deployment("d1").await.unwrap().unwrap();
        assert_eq!(d.failed_stage.as_deref(), Some(MICRO[1]));
        assert_eq!(d.stages[1].status, StageStatus::Failed);
    }

    #[tokio::test]
    async fn an_agent_report_of_running_overrides_an_earlier_failure_and_its_reason() {
        let (_dir, store) = store().await;
        store
            .insert_deployment(&queued("d1", "qa", 9001, 0))
            .await
            .unwrap();
        store
            .fail_queued("d1", "no acknowledgement in time", at(1))
            .await
            .unwrap();
        let running = EventKind::State {
            state: DeploymentState::Running,
            reason: None,
            commit: None,
            container: None,
        };
        store
            .apply_event(&event("d1", 5, running), true)
            .await
            .unwrap();
        let d = store.deployment("d1").await.unwrap().unwrap();
        assert_eq!(d.state, DeploymentState::Running);
        assert_eq!(d.reason, None);
        assert_eq!(d.completed_at, Some(at(5)));
    }

    #[tokio::test]
    async fn an_unlisted_stage_is_appended_after_the_pipeline() {
        let (_dir, store) = store().await;
        store
            .insert_deployment(&queued("d1", "qa", 9001, 0))
            .await
            .unwrap();
        store
            .apply_event(
                &event(
                    "d1",
                    1,
                    EventKind::StageStarted {
                        stage: "warm up".into(),
                    },
                ),
                false,
            )
            .await
            .unwrap();
        let d = store.deployment("d1").await.unwrap().unwrap();
        assert_eq!(d.stages.len(), MICRO.len() + 1);
        assert_eq!(d.stages.last().unwrap().name, "warm up");
        assert_eq!(d.stages.last().unwrap().status, StageStatus::Running);
    }

    #[tokio::test]
    async fn unknown_deployments_change_nothing() {
        let (_dir, store) = store().await;
        let ev = event("ghost", 1, EventKind::StageStarted { stage: "x".into() });
        assert_eq!(
            store.apply_event(&ev, false).await.unwrap(),
            SeqOutcome::Unknown
        );
        assert_eq!(
            store.advance_seq("ghost", 1..=1, false).await.unwrap(),
            SeqOutcome::Unknown
        );
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deployment_stages")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn filters_narrow_the_list_and_live_ports_skip_finished_deployments() {
        let (_dir, store) = store().await;
        store
            .insert_deployment(&queued("d1", "qa", 9001, 0))
            .await
            .unwrap();
        store
            .insert_deployment(&queued("d2", "dev", 9002, 1))
            .await
            .unwrap();
        store
            .insert_deployment(&queued("d3", "qa", 9003, 2))
            .await
            .unwrap();
        assert!(
            store
                .fail_queued("d3", "no micro agent", at(3))
                .await
                .unwrap()
        );
        assert!(!store.fail_queued("d3", "again", at(4)).await.unwrap());

        let all = store
            .deployments(&DeploymentFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let ids: Vec<_> = all.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["d3", "d2", "d1"]);
        assert!(all.iter().all(|d| d.stages.len() == MICRO.len()));

        let qa_failed = store
            .deployments(&DeploymentFilter {
                sandbox: Some("qa".into()),
                state: Some(DeploymentState::Failed),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(qa_failed.len(), 1);
        assert_eq!(qa_failed[0].reason.as_deref(), Some("no micro agent"));

        assert_eq!(store.queued_deployments().await.unwrap().len(), 2);
    }

    fn spec(name: &str, services: &[(&str, Option<u16>)]) -> SandboxSpec {
        SandboxSpec {
            name: name.into(),
            template: None,
            environment: None,
            gateway_branch: "main".into(),
            gateway_port: None,
            services: services
                .iter()
                .map(|(svc, port)| {
                    let s = ServiceSpec {
                        source: ServiceSource::Branch("main".into()),
                        port: *port,
                        route: None,
                    };
                    ((*svc).to_owned(), s)
                })
                .collect(),
            layer: Layer::default(),
            created_by: "achmad".into(),
        }
    }

    const RANGES: PortRanges = PortRanges {
        gateway: (8080, 8082),
        micro: (9001, 9999),
    };

    #[tokio::test]
    async fn sandboxes_get_the_lowest_free_ports_and_release_them() {
        let (_dir, store) = store().await;
        let a = store
            .create_sandbox(&spec("a", &[("eredar", None), ("kael", None)]), &RANGES)
            .await
            .unwrap();
        assert_eq!(a.gateway_port, 8080);
        assert_eq!(a.services["eredar"].port, Some(9001));
        assert_eq!(a.services["kael"].port, Some(9002));
        assert_eq!(a.services["kael"].route, RouteMode::Sandbox);
        let b = store
            .create_sandbox(&spec("b", &[("eredar", Some(9500))]), &RANGES)
            .await
            .unwrap();
        assert_eq!(
            (b.gateway_port, b.services["eredar"].port),
            (8081, Some(9500))
        );

        // Taken ports and duplicate names conflict, and change nothing.
        let e = store
            .create_sandbox(&spec("c", &[("eredar", Some(9001))]), &RANGES)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Conflict(m) if m.contains("port 9001 is in use")),
            "{e}"
        );
        assert!(store.sandbox("c").await.unwrap().is_none());
        let e = store
            .create_sandbox(&spec("a", &[]), &RANGES)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)));
        assert_eq!(store.port_allocations().await.unwrap().len(), 5);

        // Dropping a service releases its port; deleting releases the rest.
        let a2 = store
            .update_sandbox(&spec("a", &[("eredar", None)]), &RANGES)
            .await
            .unwrap();
        assert_eq!(a2.services["eredar"].port, Some(9001));
        assert!(!a2.services.contains_key("kael"));
        store.delete_sandbox("a").await.unwrap();
        let left: Vec<_> = store
            .port_allocations()
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.sandbox, p.port))
            .collect();
        assert_eq!(left, [("b".to_owned(), 8081), ("b".to_owned(), 9500)]);
        assert!(matches!(
            store.delete_sandbox("a").await,
            Err(StoreError::NotFound(_))
        ));

        // The gateway range is exhausted after three.
        store
            .create_sandbox(&spec("c", &[]), &RANGES)
            .await
            .unwrap();
        store
            .create_sandbox(&spec("d", &[]), &RANGES)
            .await
            .unwrap();
        let e = store
            .create_sandbox(&spec("e", &[]), &RANGES)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("every gateway port"), "{e}");
    }

    #[tokio::test]
    async fn a_deployment_takes_its_services_port_or_a_new_one() {
        let (_dir, store) = store().await;
        store
            .create_sandbox(&spec("qa", &[("eredar", None)]), &RANGES)
            .await
            .unwrap();
        let mut d = queued("x", "qa", 0, 0);
        let new = |d: &Deployment, port| NewDeployment {
            deployment: d.clone(),
            kind: PortKind::Micro,
            requested_port: port,
        };
        let got = store
            .queue_deployment(&new(&d, None), &RANGES)
            .await
            .unwrap();
        assert_eq!(got.port, 9001);
        d.id = "y".into();
        d.repository = "kael".into();
        let got = store
            .queue_deployment(&new(&d, None), &RANGES)
            .await
            .unwrap();
        assert_eq!(got.port, 9002);
        let sb = store.sandbox("qa").await.unwrap().unwrap();
        assert_eq!(
            sb.services["kael"].source,
            ServiceSource::Branch("feature/login".into())
        );
        d.id = "z".into();
        d.sandbox = "nope".into();
        assert!(matches!(
            store.queue_deployment(&new(&d, None), &RANGES).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn environments_in_use_cannot_be_deleted() {
        let (_dir, store) = store().await;
        let now = at(0);
        let mut layer = Layer::default();
        layer.secrets.insert("K".into(), "ciphertext".into());
        let env = EnvironmentRecord {
            name: "staging".into(),
            layer,
            created_at: now,
            updated_at: now,
        };
        store.create_environment(&env).await.unwrap();
        assert!(matches!(
            store.create_environment(&env).await,
            Err(StoreError::Conflict(_))
        ));
        let mut s = spec("qa", &[]);
        s.environment = Some("staging".into());
        store.create_sandbox(&s, &RANGES).await.unwrap();
        let e = store.delete_environment("staging").await.unwrap_err();
        assert!(e.to_string().contains("sandbox qa"), "{e}");
        store.delete_sandbox("qa").await.unwrap();
        store.delete_environment("staging").await.unwrap();
        assert!(store.environment("staging").await.unwrap().is_none());
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM layer_entries")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
}
