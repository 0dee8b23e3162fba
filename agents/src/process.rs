//! Child processes (git, go) whose output is read line by line while they
//! run, bounded in time and stopped when the agent shuts down.
//!
//! Commands are built elsewhere ([`crate::git::Git`], [`crate::build::GoBuild`]);
//! this module only runs them.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::time::Duration;

use sdp_contract::LogStream;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest line passed on; the rest of a longer line is dropped so one
/// runaway line cannot exhaust memory or exceed the bus's payload limit.
pub const MAX_LINE: usize = 8 * 1024;
/// Stderr lines kept for classifying a failure.
const STDERR_TAIL: usize = 200;
/// Stdout lines kept by [`Process::collect`].
const STDOUT_KEEP: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {} s", .limit.as_secs())]
    TimedOut { program: String, limit: Duration },
    #[error("{program} was stopped because the agent is shutting down")]
    Cancelled { program: String },
    #[error("waiting for {program}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// How a process ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// The last stderr lines, oldest first.
    pub stderr: Vec<String>,
    /// Stdout lines, when collected with [`Process::collect`].
    pub stdout: Vec<String>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// "exit status 1" / "signal 9", for messages.
    pub fn describe_status(&self) -> String {
        match self.status.code() {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_owned(),
        }
    }
}

/// A running child with its output arriving as lines.
pub struct Process {
    program: String,
    child: Child,
    lines: mpsc::Receiver<(LogStream, String)>,
    stderr_tail: VecDeque<String>,
    deadline: Instant,
    limit: Duration,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

impl Process {
    /// Starts `cmd` (which must pipe stdout and stderr), to be done within
    /// `limit`. `program` names it in errors.
    pub fn spawn(mut cmd: Command, program: &str, limit: Duration) -> Result<Self, ProcessError> {
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: program.to_owned(),
            source,
        })?;
        let (tx, rx) = mpsc::channel(256);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, LogStream::Stdout, tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, LogStream::Stderr, tx));
        }
        Ok(Process {
            program: program.to_owned(),
            child,
            lines: rx,
            stderr_tail: VecDeque::new(),
            deadline: Instant::now() + limit,
            limit,
        })
    }

    /// The next output line, or `None` once both streams are closed.
    pub async fn next_line(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Option<(LogStream, String)>, ProcessError> {
        let next = tokio::select! {
            line = self.lines.recv() => line,
            _ = tokio::time::sleep_until(self.deadline) => return Err(self.stop(false).await),
            _ = cancel.cancelled() => return Err(self.stop(true).await),
        };
        if let Some((LogStream::Stderr, line)) = &next {
            if self.stderr_tail.len() == STDERR_TAIL {
                self.stderr_tail.pop_front();
            }
            self.stderr_tail.push_back(line.clone());
        }
        Ok(next)
    }

    /// Waits for the exit, after the output has been read.
    pub async fn finish(mut self, cancel: &CancellationToken) -> Result<Finished, ProcessError> {
        // Drain what is left, so the tail is complete.
        while self.next_line(cancel).await?.is_some() {}
        let status = tokio::select! {
            s = self.child.wait() => s.map_err(|source| ProcessError::Wait {
                program: self.program.clone(),
                source,
            })?,
            _ = tokio::time::sleep_until(self.deadline) => return Err(self.stop(false).await),
            _ = cancel.cancelled() => return Err(self.stop(true).await),
        };
        Ok(Finished {
            status,
            stderr: self.stderr_tail.into_iter().collect(),
            stdout: Vec::new(),
        })
    }

    /// Runs to the end, keeping stdout (for commands whose answer is their
    /// output, like `rev-parse`).
    pub async fn collect(mut self, cancel: &CancellationToken) -> Result<Finished, ProcessError> {
        let mut stdout = Vec::new();
        while let Some((stream, line)) = self.next_line(cancel).await? {
            if stream == LogStream::Stdout && stdout.len() < STDOUT_KEEP {
                stdout.push(line);
            }
        }
        let mut done = self.finish(cancel).await?;
        done.stdout = stdout;
        Ok(done)
    }

    async fn stop(&mut self, cancelled: bool) -> ProcessError {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let program = self.program.clone();
        if cancelled {
            ProcessError::Cancelled { program }
        } else {
            ProcessError::TimedOut {
                program,
                limit: self.limit,
            }
        }
    }
}

/// Forwards `reader`'s lines, each cut at [`MAX_LINE`] bytes.
async fn pump<R: AsyncRead + Unpin>(
    reader: R,
    stream: LogStream,
    tx: mpsc::Sender<(LogStream, String)>,
) {
    let mut reader = BufReader::new(reader);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) if !buf.is_empty() => buf,
            _ => break,
        };
        let newline = buf.iter().position(|&b| b == b'\n');
        let take = newline.map_or(buf.len(), |p| p + 1);
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        reader.consume(take);
        if newline.is_some() && tx.send((stream, to_text(&line))).await.is_err() {
            return;
        }
        if newline.is_some() {
            line.clear();
        }
    }
    if !line.is_empty() {
        let _ = tx.send((stream, to_text(&line))).await;
    }
}

fn to_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.trim_end_matches(['\n', '\r']).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    #[tokio::test]
    async fn lines_arrive_tagged_and_the_tail_is_kept() {
        let cancel = CancellationToken::new();
        let mut p = Process::spawn(
            sh("echo out1; echo err1 >&2; printf 'no-newline'"),
            "sh",
            Duration::from_secs(10),
        )
        .unwrap();
        let mut seen = Vec::new();
        while let Some(l) = p.next_line(&cancel).await.unwrap() {
            seen.push(l);
        }
        let done = p.finish(&cancel).await.unwrap();
        assert!(done.success());
        assert!(seen.contains(&(LogStream::Stdout, "out1".into())));
        assert!(seen.contains(&(LogStream::Stdout, "no-newline".into())));
        assert_eq!(done.stderr, vec!["err1".to_owned()]);
    }

    #[tokio::test]
    async fn a_runaway_line_is_cut() {
        let cancel = CancellationToken::new();
        let p = Process::spawn(
            sh("head -c 100000 /dev/zero | tr '\\0' x; echo; echo after"),
            "sh",
            Duration::from_secs(10),
        )
        .unwrap();
        let done = p.collect(&cancel).await.unwrap();
        assert_eq!(done.stdout[0].len(), MAX_LINE);
        assert_eq!(done.stdout[1], "after");
    }

    #[tokio::test]
    async fn a_slow_child_is_killed_at_its_deadline() {
        let cancel = CancellationToken::new();
        let p = Process::spawn(sh("sleep 30"), "sleeper", Duration::from_millis(200)).unwrap();
        // A guard against a hang, not a timing: the child sleeps 30 s.
        let err = tokio::time::timeout(Duration::from_secs(20), p.collect(&cancel))
            .await
            .expect("the child outlived its deadline")
            .unwrap_err();
        assert!(matches!(err, ProcessError::TimedOut { .. }), "{err}");
    }

    #[tokio::test]
    async fn cancellation_stops_the_child() {
        let cancel = CancellationToken::new();
        let p = Process::spawn(sh("sleep 30"), "sleeper", Duration::from_secs(60)).unwrap();
        cancel.cancel();
        let err = p.collect(&cancel).await.unwrap_err();
        assert!(matches!(err, ProcessError::Cancelled { .. }), "{err}");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut cmd = Command::new("/nonexistent/prog");
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let err = Process::spawn(cmd, "prog", Duration::from_secs(1)).unwrap_err();
            assert!(matches!(err, ProcessError::Spawn { .. }));
        });
    }
}
