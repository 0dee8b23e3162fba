//! Every SQL statement of the control plane. SQLite by default (WAL, busy
//! timeout, foreign keys); the SQL itself stays portable so PostgreSQL can
//! serve the same schema. Changes that touch several rows run in one
//! transaction.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sdp_contract::{DeployEvent, DeploymentState, EventKind};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool, Transaction};

use crate::error::ControlError;
use crate::model::{Deployment, DeploymentFilter, Stage, StageStatus};
use crate::ports::HeldPort;

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

/// What became of a message carrying sequence number `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqOutcome {
    /// No such deployment: nothing was changed.
    Unknown,
    /// Already applied (a replay, or the bus delivered it twice).
    Duplicate { last: u64 },
    /// Applied; `previous` is the sequence number applied before it, so the
    /// caller sees gaps.
    Applied { previous: u64 },
}

const DEPLOYMENT_COLUMNS: &str = "id, sandbox, repository, branch, node, username, state, port, \
     commit_sha, container, failed_stage, reason, created_at, started_at, completed_at";

impl Store {
    pub async fn open(path: &Path) -> Result<Store, ControlError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!().run(&pool).await?;
        Ok(Store { pool })
    }

    /// A transaction that takes the write lock at once. A deferred SQLite
    /// transaction that reads and then writes can fail outright (not wait) when
    /// another writer committed in between.
    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// Stores a new deployment and its stages (normally all pending).
    pub async fn insert_deployment(&self, d: &Deployment) -> Result<(), sqlx::Error> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO deployments (id, sandbox, repository, branch, node, username, state, \
             port, commit_sha, container, failed_stage, reason, last_seq, created_at, started_at, \
             completed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
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
        .bind(ts(d.created_at))
        .bind(d.started_at.map(ts))
        .bind(d.completed_at.map(ts))
        .execute(&mut *tx)
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
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    pub async fn deployment(&self, id: &str) -> Result<Option<Deployment>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut d = deployment_from_row(&row)?;
        let stages = sqlx::query(
            "SELECT deployment_id, name, status, started_at, completed_at, reason \
             FROM deployment_stages WHERE deployment_id = ? ORDER BY position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        d.stages = stages
            .iter()
            .map(stage_from_row)
            .collect::<Result<_, _>>()?;
        Ok(Some(d))
    }

    /// Newest first, narrowed by `filter`.
    pub async fn deployments(
        &self,
        filter: &DeploymentFilter,
    ) -> Result<Vec<Deployment>, sqlx::Error> {
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
        if list.is_empty() {
            return Ok(list);
        }

        // One query for the stages of every listed deployment.
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT deployment_id, name, status, started_at, completed_at, reason \
             FROM deployment_stages WHERE deployment_id IN (",
        );
        let mut ids = q.separated(", ");
        for d in &list {
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
        Ok(list)
    }

    /// Ports held by queued or running deployments.
    pub async fn live_ports(&self) -> Result<Vec<HeldPort>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, sandbox, repository, port FROM deployments WHERE state IN (?, ?)",
        )
        .bind(DeploymentState::Queued.as_str())
        .bind(DeploymentState::Running.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(HeldPort {
                    deployment: r.try_get("id")?,
                    sandbox: r.try_get("sandbox")?,
                    repository: r.try_get("repository")?,
                    port: port_from(r.try_get("port")?)?,
                })
            })
            .collect()
    }

    /// Marks a deployment the agent never took on as failed. Only a queued
    /// one: an agent's own report of a later state wins.
    pub async fn fail_queued(
        &self,
        id: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
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

    /// Records that the message `seq` of deployment `id` (a log line) has
    /// been taken.
    pub async fn advance_seq(&self, id: &str, seq: u64) -> Result<SeqOutcome, sqlx::Error> {
        let mut tx = self.write_tx().await?;
        let outcome = claim_seq(&mut tx, id, seq).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Applies one agent event: stage and deployment changes and the sequence
    /// number, all in one transaction.
    pub async fn apply_event(&self, ev: &DeployEvent) -> Result<SeqOutcome, sqlx::Error> {
        let mut tx = self.write_tx().await?;
        let outcome = claim_seq(&mut tx, &ev.deployment, ev.seq).await?;
        if !matches!(outcome, SeqOutcome::Applied { .. }) {
            return Ok(outcome);
        }
        let id = ev.deployment.as_str();
        let at = ts(ev.at);
        match &ev.kind {
            EventKind::StageStarted { stage } => {
                upsert_stage(&mut tx, id, stage, StageStatus::Running, &at, None).await?;
                sqlx::query(
                    "UPDATE deployments SET started_at = COALESCE(started_at, ?) WHERE id = ?",
                )
                .bind(&at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            EventKind::StageCompleted { stage } => {
                upsert_stage(&mut tx, id, stage, StageStatus::Completed, &at, None).await?;
            }
            EventKind::StageFailed { stage, reason } => {
                upsert_stage(&mut tx, id, stage, StageStatus::Failed, &at, Some(reason)).await?;
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
                    fail_running_stages(&mut tx, id, &at, reason.as_deref()).await?;
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
        tx.commit().await?;
        Ok(outcome)
    }

    #[cfg(test)]
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

async fn claim_seq(
    tx: &mut Transaction<'static, Sqlite>,
    id: &str,
    seq: u64,
) -> Result<SeqOutcome, sqlx::Error> {
    let last: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM deployments WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(last) = last else {
        return Ok(SeqOutcome::Unknown);
    };
    let last = u64::try_from(last).unwrap_or(0);
    if seq <= last {
        return Ok(SeqOutcome::Duplicate { last });
    }
    sqlx::query("UPDATE deployments SET last_seq = ? WHERE id = ?")
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(SeqOutcome::Applied { previous: last })
}

async fn upsert_stage(
    tx: &mut Transaction<'static, Sqlite>,
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A deployment that fails without naming a stage failed in whichever stage
/// was running.
async fn fail_running_stages(
    tx: &mut Transaction<'static, Sqlite>,
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
    .fetch_optional(&mut **tx)
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
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE deployments SET failed_stage = COALESCE(failed_stage, ?) WHERE id = ?")
        .bind(stage)
        .bind(id)
        .execute(&mut **tx)
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
    use super::*;
    use sdp_contract::stages::MICRO;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("sdp.db")).await.unwrap();
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
                .apply_event(&event("d1", 1, started.clone()))
                .await
                .unwrap(),
            SeqOutcome::Applied { previous: 0 }
        );
        assert_eq!(
            store.apply_event(&event("d1", 1, started)).await.unwrap(),
            SeqOutcome::Duplicate { last: 1 }
        );
        let completed = EventKind::StageCompleted {
            stage: MICRO[0].into(),
        };
        // A gap (2 is missing) is reported, and the event still applies.
        assert_eq!(
            store.apply_event(&event("d1", 3, completed)).await.unwrap(),
            SeqOutcome::Applied { previous: 1 }
        );
        let running = EventKind::State {
            state: DeploymentState::Running,
            reason: None,
            commit: Some("abc123".into()),
            container: Some("sandbox-qa-eredar".into()),
        };
        store.apply_event(&event("d1", 4, running)).await.unwrap();

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
    async fn a_failure_names_the_stage_and_the_reason() {
        let (_dir, store) = store().await;
        store
            .insert_deployment(&queued("d1", "qa", 9001, 0))
            .await
            .unwrap();
        let build = MICRO[3];
        store
            .apply_event(&event(
                "d1",
                1,
                EventKind::StageStarted {
                    stage: build.into(),
                },
            ))
            .await
            .unwrap();
        store
            .apply_event(&event(
                "d1",
                2,
                EventKind::StageFailed {
                    stage: build.into(),
                    reason: "exit status 1".into(),
                },
            ))
            .await
            .unwrap();
        store
            .apply_event(&event(
                "d1",
                3,
                EventKind::State {
                    state: DeploymentState::Failed,
                    reason: Some("go build failed".into()),
                    commit: None,
                    container: None,
                },
            ))
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
            .apply_event(&event(
                "d1",
                1,
                EventKind::StageStarted {
                    stage: MICRO[1].into(),
                },
            ))
            .await
            .unwrap();
        store
            .apply_event(&event(
                "d1",
                2,
                EventKind::State {
                    state: DeploymentState::Failed,
                    reason: Some("agent restarted".into()),
                    commit: None,
                    container: None,
                },
            ))
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
        store.apply_event(&event("d1", 5, running)).await.unwrap();
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
            .apply_event(&event(
                "d1",
                1,
                EventKind::StageStarted {
                    stage: "warm up".into(),
                },
            ))
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
        assert_eq!(store.apply_event(&ev).await.unwrap(), SeqOutcome::Unknown);
        assert_eq!(
            store.advance_seq("ghost", 1).await.unwrap(),
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

        let mut ports: Vec<_> = store
            .live_ports()
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.port)
            .collect();
        ports.sort();
        assert_eq!(ports, [9001, 9002]);
    }
}
