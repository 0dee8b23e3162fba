//! Reading a deployment's log by byte offset.
//!
//! The control plane appends each log line to `logs/{id}.log` only after it
//! has put the agent's messages in sequence order, dropped duplicates and had
//! gaps replayed, and after masking secrets. So that file, read from a byte
//! offset, is a cursor that can neither skip nor repeat a line: a page that
//! shows bytes `0..n` continues at `n`. Reads stop at the last complete line,
//! so a line being appended is never split between two frames.
//!
//! The control plane's own reader returns the whole file; a 100,000-line log
//! followed from an open page needs to read only what is new.

use std::io::SeekFrom;
use std::path::PathBuf;

use sdp_control::ControlPlane;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// `None` for anything that is not one of the control plane's ids (the same
/// rule its log files use), so no request names another file.
pub fn path(cp: &ControlPlane, id: &str) -> Option<PathBuf> {
    safe_id(id).then(|| cp.config().data_dir.join("logs").join(format!("{id}.log")))
}

fn safe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Complete lines from `from`, at most about `max` bytes (always at least one
/// whole line if there is one), and the offset after them.
pub async fn read_from(path: &PathBuf, from: u64, max: usize) -> std::io::Result<(String, u64)> {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), from)),
        Err(e) => return Err(e),
    };
    let len = file.metadata().await?.len();
    if len <= from {
        return Ok((String::new(), from));
    }
    file.seek(SeekFrom::Start(from)).await?;
    let want = usize::try_from(len - from).unwrap_or(usize::MAX).min(max);
    let mut buf = vec![0; want];
    file.read_exact(&mut buf).await?;
    let mut end = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if end == 0 && want < usize::try_from(len - from).unwrap_or(usize::MAX) {
        // One line longer than `max`: read on to its end rather than stall.
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).await?;
        if let Some(i) = rest.iter().position(|&b| b == b'\n') {
            buf.extend_from_slice(&rest[..=i]);
            end = buf.len();
        }
    }
    buf.truncate(end);
    let next = from + end as u64;
    Ok((String::from_utf8_lossy(&buf).into_owned(), next))
}

/// The end of the log (at most `max` bytes of it, from a line start) and the
/// offsets where that text starts and ends.
pub async fn tail(path: &PathBuf, max: usize) -> std::io::Result<(u64, String, u64)> {
    let len = match tokio::fs::metadata(path).await {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, String::new(), 0)),
        Err(e) => return Err(e),
    };
    let start = len.saturating_sub(max as u64);
    let (mut text, end) = read_from(path, start, max).await?;
    let mut from = start;
    if start > 0 {
        // Started mid-line: drop the partial first line.
        match text.find('\n') {
            Some(i) => {
                from += i as u64 + 1;
                text.drain(..=i);
            }
            None => {
                from = end;
                text.clear();
            }
        }
    }
    Ok((from, text, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_whole_lines_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.log");
        assert_eq!(read_from(&p, 0, 100).await.unwrap(), (String::new(), 0));
        std::fs::write(&p, "[a] one\n[a] two\n[b] thr").unwrap();
        let (text, next) = read_from(&p, 0, 100).await.unwrap();
        assert_eq!(text, "[a] one\n[a] two\n");
        assert_eq!(next, 16);
        let (text, next) = read_from(&p, 8, 100).await.unwrap();
        assert_eq!((text.as_str(), next), ("[a] two\n", 16));
        // The half-written line comes once complete, whole.
        std::fs::write(&p, "[a] one\n[a] two\n[b] three\n").unwrap();
        let (text, next) = read_from(&p, 16, 100).await.unwrap();
        assert_eq!((text.as_str(), next), ("[b] three\n", 26));
        // A small budget still moves forward by whole lines.
        let (text, next) = read_from(&p, 0, 3).await.unwrap();
        assert_eq!((text.as_str(), next), ("[a] one\n", 8));
        let (text, next) = read_from(&p, 0, 12).await.unwrap();
        assert_eq!((text.as_str(), next), ("[a] one\n", 8));
    }

    #[tokio::test]
    async fn the_tail_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.log");
        assert_eq!(tail(&p, 10).await.unwrap(), (0, String::new(), 0));
        std::fs::write(&p, "[a] one\n[a] two\n[b] three\n").unwrap();
        assert_eq!(
            tail(&p, 100).await.unwrap(),
            (0, "[a] one\n[a] two\n[b] three\n".into(), 26)
        );
        assert_eq!(tail(&p, 12).await.unwrap(), (16, "[b] three\n".into(), 26));
    }

    #[test]
    fn ids_that_are_not_ours_get_no_path() {
        for bad in ["", "../x", "a/b", "a.b", &"a".repeat(65)] {
            assert!(!safe_id(bad), "{bad:?}");
        }
        assert!(safe_id("0b1c2d3e-aaaa-bbbb-cccc-000000000000"));
    }
}
