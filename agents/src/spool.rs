//! The on-disk spool of every deployment's events and log lines.
//!
//! Core NATS delivers at most once; the control plane spots a gap in the
//! per-deployment sequence numbers and asks for a `replay`, which is served
//! from here. One file per deployment, `{data_dir}/spool/{id}.jsonl`, one
//! encoded message per line, exactly the bytes that were published.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sdp_contract::subjects::DeployStream;
use sdp_contract::{DeployEvent, LogLine, decode};
use tokio::io::AsyncWriteExt;

/// A deployment id safe as a file name and a subject token.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// One spooled message.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    pub stream: DeployStream,
    /// The bytes as published.
    pub bytes: Vec<u8>,
    /// Set for events.
    pub event: Option<DeployEvent>,
}

impl Spool {
    pub fn new(data_dir: &Path) -> Self {
        Spool {
            dir: data_dir.join("spool"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.jsonl"))
    }

    /// Starts the spool of a new deployment; `None` if `id` already has one,
    /// so a repeated request does not run the deployment twice.
    pub async fn create(&self, id: &str) -> std::io::Result<Option<SpoolWriter>> {
        tokio::fs::create_dir_all(&self.dir).await?;
        match tokio::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(self.path(id))
            .await
        {
            Ok(file) => Ok(Some(SpoolWriter { file })),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Appends to an existing spool (to close an interrupted deployment).
    pub async fn append_to(&self, id: &str) -> std::io::Result<SpoolWriter> {
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(self.path(id))
            .await?;
        Ok(SpoolWriter { file })
    }

    /// Every readable record of `id`, in order. A torn last line (the agent
    /// died mid-write) is skipped.
    pub async fn read(&self, id: &str) -> std::io::Result<Vec<Record>> {
        let text = tokio::fs::read(self.path(id)).await?;
        Ok(text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(parse)
            .collect())
    }

    /// Ids of every spooled deployment.
    pub async fn ids(&self) -> std::io::Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut dir = match tokio::fs::read_dir(&self.dir).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(e),
        };
        while let Some(entry) = dir.next_entry().await? {
            let name = entry.file_name();
            let id = name.to_str().and_then(|n| n.strip_suffix(".jsonl"));
            if let Some(id) = id.filter(|id| valid_id(id)) {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Removes spools not written to for `age`: the control plane has long
    /// stored them by then.
    pub async fn prune(&self, age: Duration) -> std::io::Result<usize> {
        let mut removed = 0;
        let now = SystemTime::now();
        for id in self.ids().await? {
            let path = self.path(&id);
            let modified = tokio::fs::metadata(&path).await?.modified()?;
            if now.duration_since(modified).unwrap_or_default() > age {
                tokio::fs::remove_file(&path).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn parse(line: &[u8]) -> Option<Record> {
    if let Ok(event) = decode::<DeployEvent>(line) {
        return Some(Record {
            seq: event.seq,
            stream: DeployStream::Event,
            bytes: line.to_vec(),
            event: Some(event),
        });
    }
    let log = decode::<LogLine>(line).ok()?;
    Some(Record {
        seq: log.seq,
        stream: DeployStream::Log,
        bytes: line.to_vec(),
        event: None,
    })
}

#[derive(Debug)]
pub struct SpoolWriter {
    file: tokio::fs::File,
}

impl SpoolWriter {
    /// Appends one message and its newline.
    pub async fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(bytes.len() + 1);
        line.extend_from_slice(bytes);
        line.push(b'\n');
        self.file.write_all(&line).await?;
        self.file.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use sdp_contract::{EventKind, LogStream, encode};

    fn event(seq: u64) -> Vec<u8> {
        encode(&DeployEvent {
            deployment: "d1".into(),
            seq,
            at: Utc::now(),
            kind: EventKind::StageStarted {
                stage: "git fetch".into(),
            },
        })
    }

    fn log(seq: u64) -> Vec<u8> {
        encode(&LogLine {
            deployment: "d1".into(),
            seq,
            at: Utc::now(),
            stage: "git fetch".into(),
            stream: LogStream::Agent,
            line: "$ git fetch".into(),
        })
    }

    #[tokio::test]
    async fn records_come_back_in_order_with_their_stream() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path());
        let mut w = spool.create("d1").await.unwrap().unwrap();
        w.append(&event(1)).await.unwrap();
        w.append(&log(2)).await.unwrap();
        drop(w);
        // A torn line from a crash is skipped, not fatal.
        let mut w = spool.append_to("d1").await.unwrap();
        w.file.write_all(b"{\"v\":1,\"depl").await.unwrap();
        let records = spool.read("d1").await.unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].seq, 1);
        assert_eq!(records[0].stream, DeployStream::Event);
        assert!(records[0].event.is_some());
        assert_eq!(records[1].stream, DeployStream::Log);
        assert!(decode::<LogLine>(&records[1].bytes).is_ok());
        assert_eq!(spool.ids().await.unwrap(), vec!["d1".to_owned()]);
    }

    #[tokio::test]
    async fn a_second_create_of_the_same_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path());
        assert!(spool.create("d1").await.unwrap().is_some());
        assert!(spool.create("d1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn prune_keeps_fresh_spools() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path());
        spool.create("d1").await.unwrap();
        assert_eq!(spool.prune(Duration::from_secs(3600)).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(spool.prune(Duration::ZERO).await.unwrap(), 1);
    }

    #[test]
    fn ids_must_be_safe_tokens() {
        assert!(valid_id("3f2a9c1e-77b0-4c5e-9d11-0a1b2c3d4e5f"));
        for bad in ["", "a.b", "a*", "a>", "../x", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
