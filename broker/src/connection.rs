//! One client connection: a reader task that parses and routes, and a
//! writer task that drains the client's outbound queue in batches.
//!
//! Routing happens on the publisher's reader task: it looks the subject up
//! in the shared [`Sublist`](crate::sublist::Sublist) (a read lock held only
//! for the lookup), formats one frame per receiving subscription and pushes
//! it onto the receiver's unbounded queue. Memory is bounded by counting the
//! queued bytes per client and dropping clients that exceed `max_pending`
//! (slow consumers), as nats-server does.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use crate::error::ProtocolError;
use crate::parser::{ClientOp, ConnectOptions, Parser};
use crate::server::{SERVER_VERSION, ServerInfo, Shared};
use crate::subject::{is_valid_publish_subject, is_valid_subject};

/// Header block of the status message sent for a request nobody serves.
const NO_RESPONDERS_HEADER: &[u8] = b"NATS/1.0 503\r\n\r\n";
/// Writes are batched up to about this many bytes.
const MAX_WRITE_BATCH: usize = 64 * 1024;
/// Free space kept in the read buffer before each read.
const READ_RESERVE: usize = 16 * 1024;
/// How long queued frames (typically a final `-ERR`) may take to flush once
/// the connection is closing.
const CLOSE_FLUSH_DEADLINE: Duration = Duration::from_secs(1);

/// The sending side of a client, shared with the subscriptions that deliver
/// to it.
#[derive(Debug)]
pub(crate) struct Outbound {
    cid: u64,
    tx: mpsc::UnboundedSender<Bytes>,
    /// Bytes queued and not yet written.
    pending: AtomicUsize,
    max_pending: usize,
    /// Whether the client declared `headers: true`; decides HMSG vs MSG.
    headers: AtomicBool,
    /// Cancelled when the connection is closing, for whatever reason.
    closing: CancellationToken,
}

impl Outbound {
    /// Queues a frame. Returns false when the client is closing or was just
    /// found to be a slow consumer.
    fn send(&self, frame: Bytes) -> bool {
        if self.closing.is_cancelled() {
            return false;
        }
        let len = frame.len();
        let pending = self.pending.fetch_add(len, Ordering::AcqRel) + len;
        if pending > self.max_pending {
            self.pending.fetch_sub(len, Ordering::AcqRel);
            warn!(
                cid = self.cid,
                pending, "Slow Consumer Detected: MaxPending of {} Exceeded", self.max_pending
            );
            self.closing.cancel();
            return false;
        }
        self.tx.send(frame).is_ok()
    }

    fn send_static(&self, frame: &'static [u8]) -> bool {
        self.send(Bytes::from_static(frame))
    }
}

/// One SUB of one client, as stored in the sublist.
#[derive(Debug)]
pub(crate) struct Subscription {
    client: Arc<Outbound>,
    subject: Bytes,
    queue: Option<Bytes>,
    sid: Bytes,
    /// Auto-unsubscribe after this many deliveries; 0 = never.
    max: AtomicU64,
    delivered: AtomicU64,
    /// Set once the subscription left the sublist, so a late delivery or a
    /// second removal is a no-op.
    removed: AtomicBool,
}

impl Subscription {
    fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

/// Takes `sub` out of the shared sublist, once.
fn remove_subscription(shared: &Shared, sub: &Arc<Subscription>) {
    if !sub.removed.swap(true, Ordering::AcqRel) {
        shared
            .write_sublist()
            .remove(&sub.subject, sub.queue.as_deref(), sub);
    }
}

/// Formats `MSG`/`HMSG` for `sub`, queues it, and applies the auto-unsubscribe
/// limit. Returns whether the message was queued.
fn deliver(
    shared: &Shared,
    sub: &Arc<Subscription>,
    subject: &[u8],
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) -> bool {
    if sub.is_removed() {
        return false;
    }
    let count = sub.delivered.fetch_add(1, Ordering::AcqRel) + 1;
    let max = sub.max.load(Ordering::Acquire);
    if max > 0 {
        if count > max {
            return false;
        }
        if count == max {
            remove_subscription(shared, sub);
        }
    }
    // Clients that did not declare headers get the payload alone.
    let headers = headers.filter(|_| sub.client.headers.load(Ordering::Relaxed));
    let frame = format_message(subject, &sub.sid, reply, headers, payload);
    sub.client.send(frame)
}

fn format_message(
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) -> Bytes {
    let hlen = headers.map_or(0, <[u8]>::len);
    let mut buf = BytesMut::with_capacity(
        48 + subject.len() + sid.len() + reply.map_or(0, <[u8]>::len) + hlen + payload.len(),
    );
    buf.put_slice(if headers.is_some() { b"HMSG " } else { b"MSG " });
    buf.put_slice(subject);
    buf.put_u8(b' ');
    buf.put_slice(sid);
    buf.put_u8(b' ');
    if let Some(reply) = reply {
        buf.put_slice(reply);
        buf.put_u8(b' ');
    }
    // Writing into a BytesMut cannot fail.
    let _ = match headers {
        Some(_) => write!(buf, "{} {}\r\n", hlen, hlen + payload.len()),
        None => write!(buf, "{}\r\n", payload.len()),
    };
    if let Some(h) = headers {
        buf.put_slice(h);
    }
    buf.put_slice(payload);
    buf.put_slice(b"\r\n");
    buf.freeze()
}

/// Spawns the reader and writer tasks of a newly accepted connection.
pub(crate) fn spawn(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let cid = shared.next_client_id();
    let (tx, rx) = mpsc::unbounded_channel();
    let out = Arc::new(Outbound {
        cid,
        tx,
        pending: AtomicUsize::new(0),
        max_pending: shared.config.max_pending,
        headers: AtomicBool::new(false),
        closing: shared.shutdown.child_token(),
    });
    let (rd, wr) = stream.into_split();
    debug!(cid, %peer, "Client connection created");

    let info = ServerInfo {
        server_id: &shared.server_id,
        server_name: &shared.config.server_name,
        version: SERVER_VERSION,
        proto: 1,
        host: &shared.host,
        port: shared.port,
        headers: true,
        max_payload: shared.config.max_payload,
        client_id: cid,
        client_ip: peer.ip().to_string(),
    };
    match serde_json::to_string(&info) {
        Ok(json) => {
            out.send(Bytes::from(format!("INFO {json}\r\n")));
        }
        Err(e) => {
            warn!(cid, "cannot encode INFO: {e}");
            return;
        }
    }

    shared.tracker.spawn(write_loop(
        wr,
        rx,
        out.clone(),
        shared.shutdown.clone(),
        shared.config.write_deadline,
    ));
    let conn = Connection {
        parser: Parser::new(shared.config.parser_limits()),
        shared: shared.clone(),
        cid,
        peer,
        out,
        opts: ConnectOptions::default(),
        subs: HashMap::new(),
        pings_out: 0,
    };
    shared.tracker.spawn(conn.read_loop(rd));
}

struct Connection {
    shared: Arc<Shared>,
    cid: u64,
    peer: SocketAddr,
    out: Arc<Outbound>,
    parser: Parser,
    /// nats-server's defaults until CONNECT arrives.
    opts: ConnectOptions,
    /// This client's subscriptions by sid.
    subs: HashMap<Bytes, Arc<Subscription>>,
    pings_out: u32,
}

impl Connection {
    async fn read_loop(mut self, mut rd: OwnedReadHalf) {
        let interval = self.shared.config.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let closing = self.out.closing.clone();

        let reason: String = loop {
            let buf = self.parser.buffer_mut();
            if buf.capacity() - buf.len() < READ_RESERVE {
                buf.reserve(READ_RESERVE);
            }
            tokio::select! {
                biased;
                _ = closing.cancelled() => break "closed by server".into(),
                _ = ping.tick() => {
                    if self.pings_out + 1 > self.shared.config.max_pings_out {
                        self.send_error(&ProtocolError::StaleConnection);
                        break "stale connection".into();
                    }
                    self.pings_out += 1;
                    self.out.send_static(b"PING\r\n");
                }
                read = rd.read_buf(self.parser.buffer_mut()) => match read {
                    Ok(0) => break "client closed connection".into(),
                    Ok(_) => {
                        if let Err(e) = self.process() {
                            self.send_error(&e);
                            break format!("protocol error: {e}");
                        }
                    }
                    Err(e) => break format!("read error: {e}"),
                },
            }
        };

        for sub in self.subs.values() {
            remove_subscription(&self.shared, sub);
        }
        self.out.closing.cancel();
        debug!(cid = self.cid, peer = %self.peer, name = ?self.opts.name, "Client connection closed: {reason}");
    }

    /// Handles every complete operation in the buffer. Returns the error
    /// that must close the connection, if any.
    fn process(&mut self) -> Result<(), ProtocolError> {
        while let Some(op) = self.parser.next_op()? {
            if let Err(e) = self.handle(op) {
                if e.closes_connection() {
                    return Err(e);
                }
                self.send_error(&e);
            }
        }
        Ok(())
    }

    fn send_error(&self, e: &ProtocolError) {
        debug!(cid = self.cid, "-ERR '{}' ({e})", e.server_message());
        self.out.send(Bytes::from(e.to_wire()));
    }

    fn ok(&self) {
        if self.opts.verbose {
            self.out.send_static(b"+OK\r\n");
        }
    }

    fn handle(&mut self, op: ClientOp) -> Result<(), ProtocolError> {
        trace!(cid = self.cid, ?op, "<<-");
        match op {
            ClientOp::Ping => {
                self.out.send_static(b"PONG\r\n");
            }
            ClientOp::Pong => self.pings_out = 0,
            ClientOp::Connect(opts) => {
                debug!(cid = self.cid, ?opts, "CONNECT");
                self.out.headers.store(opts.headers, Ordering::Relaxed);
                self.opts = *opts;
                self.ok();
            }
            ClientOp::Sub {
                subject,
                queue,
                sid,
            } => self.subscribe(subject, queue, sid)?,
            ClientOp::Unsub { sid, max } => self.unsubscribe(&sid, max),
            ClientOp::Pub {
                subject,
                reply,
                payload,
            } => self.publish(&subject, reply.as_deref(), None, &payload)?,
            ClientOp::Hpub {
                subject,
                reply,
                headers,
                payload,
            } => self.publish(&subject, reply.as_deref(), Some(&headers), &payload)?,
        }
        Ok(())
    }

    fn subscribe(
        &mut self,
        subject: Bytes,
        queue: Option<Bytes>,
        sid: Bytes,
    ) -> Result<(), ProtocolError> {
        if !is_valid_subject(&subject) {
            return Err(ProtocolError::InvalidSubject);
        }
        // nats-server ignores a SUB reusing a live sid; one whose
        // subscription auto-expired may be reused.
        if self.subs.get(&sid).is_some_and(|s| !s.is_removed()) {
            self.ok();
            return Ok(());
        }
        let sub = Arc::new(Subscription {
            client: self.out.clone(),
            subject,
            queue,
            sid: sid.clone(),
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            removed: AtomicBool::new(false),
        });
        self.shared
            .write_sublist()
            .insert(&sub.subject, sub.queue.as_deref(), sub.clone())
            .map_err(|_| ProtocolError::InvalidSubject)?;
        self.subs.insert(sid, sub);
        self.ok();
        Ok(())
    }

    fn unsubscribe(&mut self, sid: &Bytes, max: Option<u64>) {
        if let Some(sub) = self.subs.get(sid).cloned() {
            match max {
                Some(max) if max > 0 => {
                    sub.max.store(max, Ordering::Release);
                    // A delivery racing with the store may already have
                    // reached the limit without seeing it.
                    if sub.delivered.load(Ordering::Acquire) >= max {
                        remove_subscription(&self.shared, &sub);
                        self.subs.remove(sid);
                    }
                }
                _ => {
                    remove_subscription(&self.shared, &sub);
                    self.subs.remove(sid);
                }
            }
        }
        self.ok();
    }

    fn publish(
        &mut self,
        subject: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(), ProtocolError> {
        if !is_valid_publish_subject(subject) || reply.is_some_and(|r| !is_valid_publish_subject(r))
        {
            return Err(ProtocolError::InvalidPublishSubject);
        }
        let shared = &*self.shared;
        let result = shared.read_sublist().matches(subject);
        let echo = self.opts.echo;
        let own = |sub: &Arc<Subscription>| sub.client.cid == self.cid;
        let mut delivered = false;

        for sub in &result.psubs {
            if !echo && own(sub) {
                continue;
            }
            delivered |= deliver(shared, sub, subject, reply, headers, payload);
        }
        for group in &result.qsubs {
            let members: Vec<&Arc<Subscription>> =
                group.members.iter().filter(|s| echo || !own(s)).collect();
            if members.is_empty() {
                continue;
            }
            // Start at a random member and fall through to the next ones if
            // it cannot take the message (closing, or past its max).
            let start = rand::thread_rng().gen_range(0..members.len());
            for i in 0..members.len() {
                let sub = members[(start + i) % members.len()];
                if deliver(shared, sub, subject, reply, headers, payload) {
                    delivered = true;
                    break;
                }
            }
        }

        if !delivered && self.opts.headers && self.opts.no_responders {
            if let Some(reply) = reply {
                self.no_responders(reply);
            }
        }
        self.ok();
        Ok(())
    }

    /// Tells a requester at once that nobody will answer, through its own
    /// subscription matching the reply subject (the inbox wildcard clients
    /// use), as nats-server does.
    fn no_responders(&self, reply: &[u8]) {
        let result = self.shared.read_sublist().matches(reply);
        let sub = result
            .psubs
            .iter()
            .chain(result.qsubs.iter().flat_map(|g| g.members.iter()))
            .find(|s| s.client.cid == self.cid);
        if let Some(sub) = sub {
            deliver(
                &self.shared,
                sub,
                reply,
                None,
                Some(NO_RESPONDERS_HEADER),
                b"",
            );
        }
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    out: Arc<Outbound>,
    shutdown: CancellationToken,
    write_deadline: Duration,
) {
    let mut buf = BytesMut::with_capacity(MAX_WRITE_BATCH);
    loop {
        let frame = tokio::select! {
            biased;
            _ = out.closing.cancelled() => break,
            frame = rx.recv() => frame,
        };
        let Some(frame) = frame else { break };
        buf.extend_from_slice(&frame);
        while buf.len() < MAX_WRITE_BATCH {
            match rx.try_recv() {
                Ok(frame) => buf.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        let n = buf.len();
        let written = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = tokio::time::timeout(write_deadline, wr.write_all(&buf)) => r,
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(cid = out.cid, "write error: {e}");
                out.closing.cancel();
                return;
            }
            Err(_) => {
                warn!(
                    cid = out.cid,
                    "Slow Consumer Detected: WriteDeadline of {write_deadline:?} exceeded"
                );
                out.closing.cancel();
                return;
            }
        }
        out.pending.fetch_sub(n, Ordering::AcqRel);
        buf.clear();
    }

    // Best effort: whatever was queued before the close (typically the
    // final -ERR) goes out, within a short deadline.
    buf.clear();
    while let Ok(frame) = rx.try_recv() {
        buf.extend_from_slice(&frame);
        if buf.len() >= MAX_WRITE_BATCH {
            break;
        }
    }
    let flush = async {
        if !buf.is_empty() {
            wr.write_all(&buf).await?;
        }
        wr.shutdown().await
    };
    let _ = tokio::time::timeout(CLOSE_FLUSH_DEADLINE, flush).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_frames() {
        assert_eq!(
            &format_message(b"foo", b"1", None, None, b"hi")[..],
            b"MSG foo 1 2\r\nhi\r\n"
        );
        assert_eq!(
            &format_message(b"foo", b"1", Some(b"r.x"), None, b"")[..],
            b"MSG foo 1 r.x 0\r\n\r\n"
        );
        assert_eq!(
            &format_message(b"_INBOX.a.b", b"9", None, Some(NO_RESPONDERS_HEADER), b"")[..],
            b"HMSG _INBOX.a.b 9 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
        );
        assert_eq!(
            &format_message(b"s", b"2", Some(b"r"), Some(b"NATS/1.0\r\n\r\n"), b"x")[..],
            b"HMSG s 2 r 12 13\r\nNATS/1.0\r\n\r\nx\r\n"
        );
    }
}
