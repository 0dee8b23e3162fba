//! One client connection: a reader task that parses and routes, and a
//! writer task that drains the client's outbound buffer in batches.
//!
//! Routing happens on the publisher's reader task: it looks the subject up
//! (in a per-connection result cache validated by the sublist generation,
//! so the shared sublist lock is only taken after a subscription change),
//! and formats one `MSG` frame per receiving subscription into a staging
//! buffer per receiver, handed over once per read batch (a short
//! per-receiver mutex, no allocation per message, large batches handed
//! over without a copy). The receiver's writer task takes the queued
//! chunks and writes them with vectored writes. A receiver whose buffered bytes exceed
//! `max_pending` is closed as a slow consumer; a publisher never waits for
//! a receiver.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, trace, warn};

use crate::auth::{self, ClientPerms};
use crate::error::ProtocolError;
use crate::parser::{ClientOp, ConnectOptions, OpRef, Parser, PubRef};
use crate::server::{SERVER_VERSION, ServerInfo, Shared};
use crate::subject::{has_wildcard, is_valid_publish_subject, is_valid_subject};
use crate::sublist::SublistResult;

/// Header block of the status message sent for a request nobody serves.
const NO_RESPONDERS_HEADER: &[u8] = b"NATS/1.0 503\r\n\r\n";
/// First size of a connection's read buffer; it grows with traffic.
const MIN_READ: usize = 512;
/// Largest read buffer reservation.
const MAX_READ: usize = 64 * 1024;
/// How long queued frames (typically a final `-ERR`) may take to flush once
/// the connection is closing.
const CLOSE_FLUSH_DEADLINE: Duration = Duration::from_secs(1);
/// Longest wait for the first server PING (nats-server's
/// `firstClientPingInterval`).
const FIRST_PING: Duration = Duration::from_secs(2);
/// Most bytes queued for a receiver before publishers wait for it.
const STALL_AT: usize = 2 * 1024 * 1024;
/// Longest a publisher waits for its receivers after one read.
const MAX_STALL: Duration = Duration::from_millis(50);
/// Entries in a connection's subject → subscribers cache.
const MATCH_CACHE_SIZE: usize = 1024;
/// A writer buffer larger than this is dropped after a quiet
/// [`IDLE_SHRINK`], so idle connections give the memory back.
const KEEP_BUFFER: usize = 64 * 1024;
/// How long a connection must be quiet before its buffers shrink.
const IDLE_SHRINK: Duration = Duration::from_secs(1);
/// Chunks passed to one vectored write.
const MAX_IOV: usize = 64;
/// Chunks smaller than this are copied into a receiver's queue.
const COPY_BELOW: usize = STAGE_CHUNK / 2;

/// Bytes waiting for a client's writer, with its outbound counters.
///
/// Publishers hand over their batches as chunks, which queue as they are:
/// when several publishers feed one receiver, appending their batches to
/// one growing buffer copied every message a second time and kept
/// reallocating (and page-faulting) that buffer, where a queue of chunks
/// costs a pointer per batch (nats-server keeps a list of buffers too).
#[derive(Debug, Default)]
struct OutBuf {
    /// Chunks handed over whole, in order.
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    chunked: usize,
    /// Frames queued one at a time (PONG, errors, a client's own
    /// messages); they follow `chunks`.
    tail: BytesMut,
    msgs: u64,
    bytes: u64,
}

impl OutBuf {
    fn len(&self) -> usize {
        self.chunked + self.tail.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `chunk` after everything already queued.
    fn push_chunk(&mut self, chunk: Bytes) {
        if chunk.len() < COPY_BELOW {
            // Queued as is, a small chunk would keep its publisher's whole
            // staging buffer alive (a slow receiver of small batches could
            // pin many times its pending bytes; this way at most twice, as
            // with a doubling buffer); copying it is cheap.
            self.tail.extend_from_slice(&chunk);
            self.tail_written();
            return;
        }
        self.seal_tail();
        self.chunked += chunk.len();
        self.chunks.push_back(chunk);
    }

    /// Called after appending to `tail`: a long tail is queued as a chunk
    /// and a new one started, so it is never reallocated and copied
    /// beyond [`STAGE_CHUNK`].
    fn tail_written(&mut self) {
        if self.tail.len() >= STAGE_CHUNK {
            self.seal_tail();
        }
    }

    /// Moves the frames queued one at a time to the chunk queue, so what
    /// comes next is ordered after them.
    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            let tail = self.tail.split().freeze();
            self.chunked += tail.len();
            self.chunks.push_back(tail);
        }
    }

    /// Moves everything queued to the empty `batch`; returns its bytes.
    fn take(&mut self, batch: &mut VecDeque<Bytes>) -> usize {
        debug_assert!(batch.is_empty());
        self.seal_tail();
        std::mem::swap(&mut self.chunks, batch);
        std::mem::take(&mut self.chunked)
    }
}

/// Connection metadata for monitoring, filled at CONNECT.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientMeta {
    pub name: Option<String>,
    pub lang: Option<String>,
    pub version: Option<String>,
    pub user: Option<String>,
}

/// The part of a client shared with the subscriptions that deliver to it
/// and with monitoring.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub cid: u64,
    pub peer: SocketAddr,
    pub started: SystemTime,
    out: Mutex<OutBuf>,
    /// Bytes taken by the writer and not yet written.
    in_flight: AtomicUsize,
    notify: Notify,
    max_pending: usize,
    /// Whether the client declared `headers: true`; decides HMSG vs MSG.
    headers: AtomicBool,
    /// Cancelled when the connection is closing, for whatever reason.
    closing: CancellationToken,
    slow: AtomicBool,
    /// Set when a delivery crossed the stall threshold.
    stalling: AtomicBool,
    /// Signalled by the writer when the queue drops to the stall threshold.
    drained: Notify,
    perms: OnceLock<Arc<ClientPerms>>,
    pub meta: Mutex<ClientMeta>,
    pub in_msgs: AtomicU64,
    pub in_bytes: AtomicU64,
    pub subs: AtomicUsize,
}

impl Outbound {
    /// Appends a frame of `len` bytes written by `write`. Returns false when
    /// the client is closing or was just found to be a slow consumer.
    fn push(&self, shared: &Shared, len: usize, write: impl FnOnce(&mut BytesMut)) -> bool {
        if self.closing.is_cancelled() {
            return false;
        }
        let mut out = self.out.lock();
        let pending = out.len() + self.in_flight.load(Ordering::Relaxed) + len;
        if pending > self.max_pending {
            drop(out);
            if !self.slow.swap(true, Ordering::AcqRel) {
                shared.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                warn!(
                    cid = self.cid,
                    peer = %self.peer,
                    "Slow Consumer Detected: MaxPending of {} Exceeded", self.max_pending
                );
            }
            self.closing.cancel();
            return false;
        }
        let was_empty = out.is_empty();
        write(&mut out.tail);
        out.tail_written();
        drop(out);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    fn send_bytes(&self, shared: &Shared, frame: &[u8]) -> bool {
        self.push(shared, frame.len(), |b| b.extend_from_slice(frame))
    }

    /// Queues a MSG/HMSG frame and counts it. Returns `None` when the
    /// client is closing (or just became a slow consumer), else whether the
    /// buffer was empty, i.e. whether the writer must be woken: the caller
    /// does that once per batch (see `Connection::wake_writers`).
    #[allow(clippy::too_many_arguments)]
    fn send_msg(
        &self,
        shared: &Shared,
        subject: &[u8],
        sid: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &[u8],
        count: bool,
    ) -> Option<bool> {
        let hlen = headers.map_or(0, <[u8]>::len);
        let len = frame_capacity(subject, sid, reply, headers, payload);
        if self.closing.is_cancelled() {
            return None;
        }
        let mut out = self.out.lock();
        let pending = out.len() + self.in_flight.load(Ordering::Relaxed) + len;
        if pending > self.max_pending {
            drop(out);
            self.push(shared, len, |_| {});
            return None;
        }
        let was_empty = out.is_empty();
        format_message(&mut out.tail, subject, sid, reply, headers, payload);
        out.tail_written();
        if count {
            out.msgs += 1;
            out.bytes += (hlen + payload.len()) as u64;
        }
        let stall = out.len() + self.in_flight.load(Ordering::Relaxed) > self.stall_threshold();
        drop(out);
        if stall {
            self.stalling.store(true, Ordering::Relaxed);
        }
        Some(was_empty)
    }

    /// Queued bytes past which publishers wait for this client: half its
    /// allowance, at most [`STALL_AT`], so buffers stay small enough to be
    /// cheap to grow and write.
    fn stall_threshold(&self) -> usize {
        (self.max_pending / 2).min(STALL_AT)
    }

    /// Whether the client has more than its stall threshold queued; a
    /// publisher then waits briefly for it (nats-server stalls producers
    /// the same way), so a consumer that is merely slower than its
    /// publisher is not cut off.
    fn over_stall_threshold(&self) -> bool {
        self.pending_bytes() > self.stall_threshold()
    }

    /// Messages and bytes delivered to this client.
    pub fn out_counters(&self) -> (u64, u64) {
        let out = self.out.lock();
        (out.msgs, out.bytes)
    }

    /// Bytes queued for this client.
    pub fn pending_bytes(&self) -> usize {
        self.out.lock().len() + self.in_flight.load(Ordering::Relaxed)
    }
}

/// One SUB of one client, as stored in the sublist.
#[derive(Debug)]
pub(crate) struct Subscription {
    client: Arc<Outbound>,
    subject: Bytes,
    queue: Option<Bytes>,
    sid: Bytes,
    wildcard: bool,
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
        shared.remove_sub(&sub.subject, sub.queue.as_deref(), sub);
        sub.client.subs.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bookkeeping of one delivery to `sub`: the auto-unsubscribe limit,
/// the receiver's subscribe deny list and its reply allowance. Returns
/// `None` when the message must not be delivered, else whether the
/// receiver gets headers.
fn admit(
    shared: &Shared,
    sub: &Arc<Subscription>,
    subject: &[u8],
    reply: Option<&[u8]>,
) -> Option<bool> {
    if sub.is_removed() {
        return None;
    }
    let perms = sub.client.perms.get();
    if let Some(p) = perms {
        if sub.wildcard && p.has_subscribe_deny() && p.delivery_denied(subject) {
            return None;
        }
    }
    let max = sub.max.load(Ordering::Acquire);
    if max > 0 {
        let count = sub.delivered.fetch_add(1, Ordering::AcqRel) + 1;
        if count > max {
            return None;
        }
        if count == max {
            remove_subscription(shared, sub);
        }
    } else {
        sub.delivered.fetch_add(1, Ordering::Relaxed);
    }
    if let (Some(p), Some(reply)) = (perms, reply) {
        if p.has_responses() {
            p.note_request(reply);
        }
    }
    Some(sub.client.headers.load(Ordering::Relaxed))
}

/// Queues `MSG`/`HMSG` for `sub` straight into its buffer. Returns `None`
/// if nothing was queued, else whether the receiver's writer needs waking.
fn deliver(
    shared: &Shared,
    sub: &Arc<Subscription>,
    subject: &[u8],
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) -> Option<bool> {
    let with_headers = admit(shared, sub, subject, reply)?;
    // Clients that did not declare headers get the payload alone.
    let headers = headers.filter(|_| with_headers);
    sub.client
        .send_msg(shared, subject, &sub.sid, reply, headers, payload, true)
}

/// Frames for one receiver gathered during a publisher's read batch.
#[derive(Debug)]
struct Staged {
    client: Arc<Outbound>,
    /// Frames cut off `buf` when it ran out of room, in order.
    full: Vec<Bytes>,
    /// Where the next frames go; its filled part is handed over as a
    /// chunk, its spare room kept for the next batch.
    buf: BytesMut,
    /// Bytes in `full` and `buf`.
    len: usize,
    msgs: u64,
    bytes: u64,
}

impl Staged {
    /// Makes room in `buf` for a frame of at most `len` bytes without
    /// moving what is already there: a full buffer is cut off as a chunk
    /// and writing continues in reclaimed or new memory.
    fn reserve(&mut self, len: usize) {
        if self.buf.capacity() - self.buf.len() >= len {
            return;
        }
        if !self.buf.is_empty() {
            self.full.push(self.buf.split().freeze());
        }
        // Memory whose chunks were all written is reused as is.
        if !self.buf.try_reclaim(len) {
            // Small fan-outs of small messages reserve little; a busy
            // receiver soon gets whole chunks.
            let size = (2 * self.len + STAGE_FIRST).min(STAGE_CHUNK);
            self.buf = BytesMut::with_capacity(size.max(len));
        }
    }

    /// The staged frames as chunks, in order.
    fn chunks(&mut self) -> impl Iterator<Item = Bytes> + '_ {
        let last = (!self.buf.is_empty()).then(|| self.buf.split().freeze());
        self.full.drain(..).chain(last)
    }
}

/// A publisher's deliveries to other connections, gathered per receiver
/// and handed over once per read batch: one lock and one wake-up per
/// receiver and batch instead of per message (nats-server gathers its
/// per-client pending flushes the same way).
#[derive(Debug, Default)]
struct Staging {
    entries: Vec<Staged>,
    index: HashMap<u64, usize, BuildHasherDefault<FxHasher>>,
    staged_bytes: usize,
    /// Staging buffers kept between batches, with their spare room.
    pool: Vec<BytesMut>,
}

/// Staged bytes after which a publisher hands over before the batch ends.
const STAGE_FLUSH: usize = 256 * 1024;
/// Largest staging buffer; a frame larger than this gets its own.
const STAGE_CHUNK: usize = 64 * 1024;
/// First size of a new staging buffer.
const STAGE_FIRST: usize = 4 * 1024;
/// Staging buffers kept between batches.
const STAGE_POOL: usize = 4;

impl Staging {
    /// Stages a message for `sub`; false if it cannot be delivered.
    fn add(
        &mut self,
        shared: &Shared,
        sub: &Arc<Subscription>,
        subject: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> bool {
        if sub.client.closing.is_cancelled() {
            return false;
        }
        let Some(with_headers) = admit(shared, sub, subject, reply) else {
            return false;
        };
        let headers = headers.filter(|_| with_headers);
        let cid = sub.client.cid;
        let idx = match self.index.get(&cid) {
            Some(&i) => i,
            None => {
                self.entries.push(Staged {
                    client: sub.client.clone(),
                    full: Vec::new(),
                    buf: self.pool.pop().unwrap_or_default(),
                    len: 0,
                    msgs: 0,
                    bytes: 0,
                });
                self.index.insert(cid, self.entries.len() - 1);
                self.entries.len() - 1
            }
        };
        let st = &mut self.entries[idx];
        let capacity = frame_capacity(subject, &sub.sid, reply, headers, payload);
        let len = if capacity > STAGE_CHUNK {
            if !st.buf.is_empty() {
                st.full.push(st.buf.split().freeze());
            }
            let mut own = BytesMut::new();
            format_message(&mut own, subject, &sub.sid, reply, headers, payload);
            let len = own.len();
            st.full.push(own.freeze());
            len
        } else {
            st.reserve(capacity);
            let before = st.buf.len();
            format_message(&mut st.buf, subject, &sub.sid, reply, headers, payload);
            st.buf.len() - before
        };
        st.len += len;
        st.msgs += 1;
        st.bytes += (headers.map_or(0, <[u8]>::len) + payload.len()) as u64;
        self.staged_bytes += len;
        true
    }

    fn is_full(&self) -> bool {
        self.staged_bytes > STAGE_FLUSH
    }

    /// Hands every receiver its frames, wakes idle writers, and notes the
    /// receivers past their stall threshold.
    fn flush(&mut self, shared: &Shared, stalled: &mut Vec<Arc<Outbound>>) {
        if self.entries.is_empty() {
            // A batch without deliveries: the connection is quiet, keep
            // no spare memory.
            self.pool.clear();
            return;
        }
        for mut st in self.entries.drain(..) {
            let client = st.client.clone();
            let mut out = client.out.lock();
            let in_flight = client.in_flight.load(Ordering::Relaxed);
            if client.closing.is_cancelled() || out.len() + in_flight + st.len > client.max_pending
            {
                drop(out);
                // Marks the slow consumer and closes it.
                client.push(shared, st.len, |_| {});
                st.full.clear();
                st.buf.clear();
            } else {
                let was_empty = out.is_empty();
                for chunk in st.chunks() {
                    out.push_chunk(chunk);
                }
                out.msgs += st.msgs;
                out.bytes += st.bytes;
                let stall = out.len() + in_flight > client.stall_threshold();
                drop(out);
                if was_empty {
                    client.notify.notify_one();
                }
                if stall && !stalled.iter().any(|c| c.cid == client.cid) {
                    stalled.push(client.clone());
                }
            }
            if self.pool.len() < STAGE_POOL {
                self.pool.push(st.buf);
            }
        }
        self.index.clear();
        self.staged_bytes = 0;
    }
}

/// Receivers a publisher should wait for, see [`Outbound::over_stall_threshold`].
fn note_stall(stalled: &mut Vec<Arc<Outbound>>, sub: &Subscription) {
    if sub.client.stalling.swap(false, Ordering::Relaxed)
        && !stalled.iter().any(|c| c.cid == sub.client.cid)
    {
        stalled.push(sub.client.clone());
    }
}

/// Room enough for the frame of a message: its parts plus the verb,
/// separators and sizes.
fn frame_capacity(
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) -> usize {
    48 + subject.len()
        + sid.len()
        + reply.map_or(0, <[u8]>::len)
        + headers.map_or(0, <[u8]>::len)
        + payload.len()
}

fn format_message(
    buf: &mut BytesMut,
    subject: &[u8],
    sid: &[u8],
    reply: Option<&[u8]>,
    headers: Option<&[u8]>,
    payload: &[u8],
) {
    let hlen = headers.map_or(0, <[u8]>::len);
    buf.reserve(frame_capacity(subject, sid, reply, headers, payload));
    buf.put_slice(if headers.is_some() { b"HMSG " } else { b"MSG " });
    buf.put_slice(subject);
    buf.put_u8(b' ');
    buf.put_slice(sid);
    buf.put_u8(b' ');
    if let Some(reply) = reply {
        buf.put_slice(reply);
        buf.put_u8(b' ');
    }
    let mut num = itoa_buf(hlen);
    if headers.is_some() {
        buf.put_slice(num.as_bytes());
        buf.put_u8(b' ');
        num = itoa_buf(hlen + payload.len());
    } else {
        num = itoa_buf(payload.len());
    }
    buf.put_slice(num.as_bytes());
    buf.put_slice(b"\r\n");
    if let Some(h) = headers {
        buf.put_slice(h);
    }
    buf.put_slice(payload);
    buf.put_slice(b"\r\n");
}

/// Decimal digits of `n` without allocating.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(mut n: usize) -> Digits {
    let mut d = Digits {
        buf: [0; 20],
        start: 20,
    };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return d;
        }
    }
}

/// A fast non-cryptographic hash (rustc's Fx) for the per-connection
/// subject cache. Collisions a client could provoke only slow down that
/// client's own bounded cache.
#[derive(Debug, Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// Unregisters a client from the server when its connection ends.
struct Registration {
    shared: Arc<Shared>,
    cid: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.clients.lock().remove(&self.cid);
        self.shared
            .stats
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(mut stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let cid = shared.next_client_id();
    let current = shared.stats.connections.fetch_add(1, Ordering::Relaxed) + 1;
    shared
        .stats
        .total_connections
        .fetch_add(1, Ordering::Relaxed);
    let out = Arc::new(Outbound {
        cid,
        peer,
        started: SystemTime::now(),
        out: Mutex::new(OutBuf::default()),
        in_flight: AtomicUsize::new(0),
        notify: Notify::new(),
        max_pending: shared.config.max_pending,
        headers: AtomicBool::new(false),
        closing: shared.shutdown.child_token(),
        slow: AtomicBool::new(false),
        stalling: AtomicBool::new(false),
        drained: Notify::new(),
        perms: OnceLock::new(),
        meta: Mutex::new(ClientMeta::default()),
        in_msgs: AtomicU64::new(0),
        in_bytes: AtomicU64::new(0),
        subs: AtomicUsize::new(0),
    });
    let registration = Registration {
        shared: shared.clone(),
        cid,
    };
    shared.clients.lock().insert(cid, out.clone());
    debug!(cid, %peer, "Client connection created");

    let info = ServerInfo {
        server_id: &shared.server_id,
        server_name: &shared.config.server_name,
        version: SERVER_VERSION,
        proto: 1,
        host: &shared.host,
        port: shared.port,
        headers: true,
        auth_required: shared.config.authorization.is_required(),
        tls_required: shared.config.tls.is_some(),
        max_payload: shared.config.max_payload,
        client_id: cid,
        client_ip: peer.ip().to_string(),
    };
    let mut first = match serde_json::to_vec(&info) {
        Ok(json) => {
            let mut line = b"INFO ".to_vec();
            line.extend_from_slice(&json);
            line.extend_from_slice(b" \r\n");
            line
        }
        Err(e) => {
            error!(cid, "cannot encode INFO: {e}");
            return;
        }
    };
    let max_conns = shared.config.max_connections;
    let refused = max_conns > 0 && current > max_conns;
    if refused {
        error!(cid, %peer, "maximum connections exceeded");
        first.extend_from_slice(ProtocolError::MaxConnections.to_wire().as_bytes());
    }
    // The INFO goes out in clear, also when TLS follows (nats-server 2.9).
    let sent = tokio::time::timeout(shared.config.write_deadline, stream.write_all(&first)).await;
    if refused || !matches!(sent, Ok(Ok(()))) {
        let _ = stream.shutdown().await;
        drop(registration);
        return;
    }

    match shared.config.tls.as_ref().map(|t| t.acceptor()) {
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(shared.config.tls_timeout, acceptor.accept(stream)).await;
            match handshake {
                Ok(Ok(tls)) => {
                    let (rd, wr) = tokio::io::split(tls);
                    run(rd, wr, peer, shared, out, registration).await;
                }
                Ok(Err(e)) => debug!(cid, %peer, "TLS handshake error: {e}"),
                Err(_) => debug!(cid, %peer, "TLS handshake timeout"),
            }
        }
        None => {
            let (rd, wr) = stream.into_split();
            run(rd, wr, peer, shared, out, registration).await;
        }
    }
}

async fn run<R, W>(
    rd: R,
    wr: W,
    peer: SocketAddr,
    shared: Arc<Shared>,
    out: Arc<Outbound>,
    registration: Registration,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let writer = shared.tracker.spawn(write_loop(
        wr,
        out.clone(),
        shared.shutdown.clone(),
        shared.config.write_deadline,
    ));
    let mut parser = Parser::with_capacity(shared.config.parser_limits(), MIN_READ);
    parser.set_headers_allowed(false);
    let authenticated = !shared.config.authorization.is_required();
    let conn = Connection {
        headers_change: None,
        cid: out.cid,
        peer,
        out,
        opts: ConnectOptions::default(),
        subs: HashMap::new(),
        pings_out: 0,
        got_pong: false,
        authenticated,
        perms: None,
        cache: HashMap::default(),
        cache_generation: 0,
        stalled: Vec::new(),
        wake: Vec::new(),
        counts: BatchCounts::default(),
        staging: Staging::default(),
        shared,
    };
    conn.read_loop(rd, parser).await;
    let _ = writer.await;
    drop(registration);
}

struct Connection {
    shared: Arc<Shared>,
    cid: u64,
    peer: SocketAddr,
    out: Arc<Outbound>,
    /// Set by CONNECT, applied to the parser before the next operation.
    headers_change: Option<bool>,
    /// nats-server's defaults until CONNECT arrives.
    opts: ConnectOptions,
    /// This client's subscriptions by sid.
    subs: HashMap<Bytes, Arc<Subscription>>,
    pings_out: u32,
    /// Whether the client ever answered a PING (nats-server then knows the
    /// round trip and delays PINGs while the client is active).
    got_pong: bool,
    authenticated: bool,
    perms: Option<Arc<ClientPerms>>,
    /// Subject → subscribers, valid while the sublist generation is
    /// `cache_generation`.
    cache: HashMap<Bytes, Arc<SublistResult<Subscription>>, BuildHasherDefault<FxHasher>>,
    cache_generation: u64,
    /// Receivers over their stall threshold after the last batch.
    stalled: Vec<Arc<Outbound>>,
    /// Receivers whose writers must be woken at the end of the batch.
    wake: Vec<Arc<Outbound>>,
    /// Counters gathered during a batch, published after it.
    counts: BatchCounts,
    /// Deliveries to other connections, handed over per batch.
    staging: Staging,
}

/// Message counters of one read batch.
#[derive(Debug, Default)]
struct BatchCounts {
    in_msgs: u64,
    in_bytes: u64,
    out_msgs: u64,
    out_bytes: u64,
}

impl Connection {
    async fn read_loop<R: AsyncRead + Unpin>(mut self, mut rd: R, mut parser: Parser) {
        // nats-server's timing: a first PING after min(interval, 2 s) plus
        // up to 20% jitter (it measures the round trip), then one per
        // interval, skipped while the client keeps sending.
        let interval = self.shared.config.ping_interval;
        let first = interval.min(FIRST_PING);
        let jitter = rand::thread_rng().gen_range(0..=first.as_millis() as u64 / 5);
        let ping = tokio::time::sleep(first + Duration::from_millis(jitter));
        tokio::pin!(ping);
        let mut last_in = Instant::now();
        let auth_deadline = tokio::time::sleep(self.shared.config.auth_timeout);
        tokio::pin!(auth_deadline);
        let closing = self.out.closing.clone();
        let mut read_size = MIN_READ;

        let reason: String = loop {
            let buf = parser.buffer_mut();
            if buf.capacity() - buf.len() < read_size / 2 {
                buf.reserve(read_size);
            }
            tokio::select! {
                biased;
                _ = closing.cancelled() => break "closed by server".into(),
                _ = &mut auth_deadline, if !self.authenticated => {
                    self.send_error(&ProtocolError::AuthenticationTimeout);
                    break "authentication timeout".into();
                }
                _ = &mut ping => {
                    let now = Instant::now();
                    ping.as_mut().reset(now + interval);
                    if self.got_pong && now.duration_since(last_in) < interval {
                        continue;
                    }
                    if self.pings_out + 1 > self.shared.config.max_pings_out {
                        self.send_error(&ProtocolError::StaleConnection);
                        break "stale connection".into();
                    }
                    self.pings_out += 1;
                    self.out.send_bytes(&self.shared, b"PING\r\n");
                }
                read = rd.read_buf(parser.buffer_mut()) => match read {
                    Ok(0) => break "client closed connection".into(),
                    Ok(n) => {
                        last_in = Instant::now();
                        // Grow the buffer for busy clients, shrink it back
                        // for quiet ones.
                        if n >= read_size && read_size < MAX_READ {
                            read_size *= 2;
                        } else if n < read_size / 4 && read_size > MIN_READ {
                            read_size /= 2;
                        }
                        let processed = self.process(&mut parser);
                        self.end_batch();
                        if let Err(e) = processed {
                            if e.sends_error() {
                                self.send_error(&e);
                            }
                            break format!("protocol error: {e}");
                        }
                        if !self.stalled.is_empty() {
                            self.wait_for_stalled().await;
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
        let name = self.out.meta.lock().name.clone();
        debug!(cid = self.cid, peer = %self.peer, ?name, "Client connection closed: {reason}");
    }

    /// Wakes the writers of the receivers this batch filled and publishes
    /// the batch's counters: one wake-up and a few atomic additions per
    /// read instead of per message, so writes go out in large chunks.
    fn end_batch(&mut self) {
        self.staging.flush(&self.shared, &mut self.stalled);
        for client in self.wake.drain(..) {
            client.notify.notify_one();
        }
        let c = std::mem::take(&mut self.counts);
        if c.in_msgs > 0 {
            let stats = &self.shared.stats;
            self.out.in_msgs.fetch_add(c.in_msgs, Ordering::Relaxed);
            self.out.in_bytes.fetch_add(c.in_bytes, Ordering::Relaxed);
            stats.in_msgs.fetch_add(c.in_msgs, Ordering::Relaxed);
            stats.in_bytes.fetch_add(c.in_bytes, Ordering::Relaxed);
            stats.out_msgs.fetch_add(c.out_msgs, Ordering::Relaxed);
            stats.out_bytes.fetch_add(c.out_bytes, Ordering::Relaxed);
        }
    }

    /// Waits (bounded) until the receivers this publisher filled past their
    /// stall threshold drained below it, or closed.
    async fn wait_for_stalled(&mut self) {
        let deadline = Instant::now() + MAX_STALL;
        for client in std::mem::take(&mut self.stalled) {
            loop {
                let drained = client.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if !client.over_stall_threshold() || client.closing.is_cancelled() {
                    break;
                }
                tokio::select! {
                    _ = drained => {}
                    _ = client.closing.cancelled() => break,
                    _ = tokio::time::sleep_until(deadline) => return,
                }
            }
        }
    }

    /// Handles every complete operation in the buffer. Returns the error
    /// that must close the connection, if any.
    fn process(&mut self, parser: &mut Parser) -> Result<(), ProtocolError> {
        while let Some(op) = parser.next_op_ref()? {
            let handled = match op {
                OpRef::Pub(p) => self.handle_pub(p),
                OpRef::Op(op) => self.handle(op),
            };
            if let Some(allowed) = self.headers_change.take() {
                parser.set_headers_allowed(allowed);
            }
            if let Err(e) = handled {
                if e.closes_connection() {
                    return Err(e);
                }
                self.send_error(&e);
            }
        }
        Ok(())
    }

    fn handle_pub(&mut self, p: PubRef<'_>) -> Result<(), ProtocolError> {
        trace!(cid = self.cid, op = ?p, "<<-");
        if !self.authenticated {
            return Err(ProtocolError::AuthorizationViolation);
        }
        self.publish(p.subject, p.reply, p.headers, p.payload)
    }

    fn send_error(&self, e: &ProtocolError) {
        match e {
            ProtocolError::PublishViolation(s) => {
                error!(cid = self.cid, peer = %self.peer, "Publish Violation - Subject {s:?}");
            }
            ProtocolError::SubscriptionViolation(s) => {
                error!(cid = self.cid, peer = %self.peer, "Subscription Violation - Subject {s:?}");
            }
            ProtocolError::AuthorizationViolation => {
                error!(cid = self.cid, peer = %self.peer, "authentication error");
            }
            _ => debug!(cid = self.cid, "-ERR '{}' ({e})", e.server_message()),
        }
        self.out.send_bytes(&self.shared, e.to_wire().as_bytes());
    }

    fn ok(&self) {
        if self.opts.verbose {
            self.out.send_bytes(&self.shared, b"+OK\r\n");
        }
    }

    fn handle(&mut self, op: ClientOp) -> Result<(), ProtocolError> {
        trace!(cid = self.cid, ?op, "<<-");
        if !self.authenticated && !matches!(op, ClientOp::Connect(_)) {
            return Err(ProtocolError::AuthorizationViolation);
        }
        match op {
            ClientOp::Ping => {
                self.out.send_bytes(&self.shared, b"PONG\r\n");
            }
            ClientOp::Pong => {
                self.pings_out = 0;
                self.got_pong = true;
            }
            ClientOp::Connect(opts) => self.connect(*opts)?,
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

    fn connect(&mut self, opts: ConnectOptions) -> Result<(), ProtocolError> {
        debug!(cid = self.cid, ?opts, "CONNECT");
        if !self.authenticated {
            let Some(ok) = auth::authenticate(
                &self.shared.config.authorization,
                opts.user.as_deref(),
                opts.pass.as_deref(),
                opts.auth_token.as_deref(),
            ) else {
                return Err(ProtocolError::AuthorizationViolation);
            };
            self.authenticated = true;
            if let Some(p) = ok.perms {
                let _ = self.out.perms.set(p.clone());
                self.perms = Some(p);
            }
            self.out.meta.lock().user = ok.user;
        }
        if !(0..=1).contains(&opts.protocol) {
            return Err(ProtocolError::BadClientProtocol);
        }
        if opts.no_responders && !opts.headers {
            return Err(ProtocolError::NoRespondersRequiresHeaders);
        }
        self.out.headers.store(opts.headers, Ordering::Relaxed);
        self.headers_change = Some(opts.headers);
        {
            let mut meta = self.out.meta.lock();
            meta.name.clone_from(&opts.name);
            meta.lang.clone_from(&opts.lang);
            meta.version.clone_from(&opts.version);
        }
        self.opts = opts;
        self.ok();
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
        if let Some(p) = &self.perms {
            if !p.can_subscribe(&subject) {
                return Err(ProtocolError::SubscriptionViolation(
                    String::from_utf8_lossy(&subject).into_owned(),
                ));
            }
        }
        // nats-server ignores a SUB reusing a live sid; one whose
        // subscription auto-expired may be reused.
        if self.subs.get(&sid).is_some_and(|s| !s.is_removed()) {
            self.ok();
            return Ok(());
        }
        let sub = Arc::new(Subscription {
            client: self.out.clone(),
            wildcard: has_wildcard(&subject),
            subject,
            queue,
            sid: sid.clone(),
            max: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            removed: AtomicBool::new(false),
        });
        self.shared
            .insert_sub(&sub.subject, sub.queue.as_deref(), sub.clone())
            .map_err(|_| ProtocolError::InvalidSubject)?;
        self.out.subs.fetch_add(1, Ordering::Relaxed);
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

    /// The subscriptions matching `subject`, from the cache while no
    /// subscription changed anywhere.
    fn lookup(&mut self, subject: &[u8]) -> Arc<SublistResult<Subscription>> {
        let generation = self.shared.generation();
        if generation != self.cache_generation {
            self.cache.clear();
            self.cache_generation = generation;
        } else if let Some(r) = self.cache.get(subject) {
            return r.clone();
        }
        let (result, generation) = self.shared.match_subject(subject);
        let result = Arc::new(result);
        if generation == self.cache_generation {
            if self.cache.len() >= MATCH_CACHE_SIZE {
                self.cache.clear();
            }
            self.cache
                .insert(Bytes::copy_from_slice(subject), result.clone());
        }
        result
    }

    fn publish(
        &mut self,
        subject: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(), ProtocolError> {
        let size = (headers.map_or(0, <[u8]>::len) + payload.len()) as u64;
        self.counts.in_msgs += 1;
        self.counts.in_bytes += size;

        // nats-server checks the subject only for pedantic clients (the
        // default), when the control line arrives, and then still routes
        // the message (a wildcard token matches like a literal one).
        if self.opts.pedantic && !is_valid_publish_subject(subject) {
            self.send_error(&ProtocolError::InvalidPublishSubject);
        }
        if let Some(p) = &self.perms {
            if p.restricts_publish() && !p.can_publish(subject) {
                return Err(ProtocolError::PublishViolation(
                    String::from_utf8_lossy(subject).into_owned(),
                ));
            }
        }
        // The acknowledgement precedes the deliveries, as in nats-server.
        self.ok();
        // A header block of zero bytes is no header block.
        let headers = headers.filter(|h| !h.is_empty());
        let result = self.lookup(subject);
        let shared = &*self.shared;
        let echo = self.opts.echo;
        let cid = self.cid;
        // Deliveries to this connection go straight to its buffer, keeping
        // their order with its other replies; those to others are staged.
        let own = |sub: &Arc<Subscription>| sub.client.cid == cid;
        let mut delivered = 0u64;

        for sub in &result.psubs {
            if own(sub) {
                if !echo {
                    continue;
                }
                if let Some(wake) = deliver(shared, sub, subject, reply, headers, payload) {
                    delivered += 1;
                    if wake {
                        self.wake.push(sub.client.clone());
                    }
                    note_stall(&mut self.stalled, sub);
                }
            } else if self
                .staging
                .add(shared, sub, subject, reply, headers, payload)
            {
                delivered += 1;
            }
        }
        for group in &result.qsubs {
            let n = group.members.len();
            // Start at a random member and fall through to the next ones if
            // it cannot take the message (closing, past its max, own).
            let start = if n > 1 {
                rand::thread_rng().gen_range(0..n)
            } else {
                0
            };
            for i in 0..n {
                let sub = &group.members[(start + i) % n];
                if own(sub) {
                    if !echo {
                        continue;
                    }
                    if let Some(wake) = deliver(shared, sub, subject, reply, headers, payload) {
                        delivered += 1;
                        if wake {
                            self.wake.push(sub.client.clone());
                        }
                        note_stall(&mut self.stalled, sub);
                        break;
                    }
                } else if self
                    .staging
                    .add(shared, sub, subject, reply, headers, payload)
                {
                    delivered += 1;
                    break;
                }
            }
        }
        if self.staging.is_full() {
            self.staging.flush(shared, &mut self.stalled);
        }
        if delivered > 0 {
            self.counts.out_msgs += delivered;
            self.counts.out_bytes += delivered * size;
        } else if self.opts.no_responders {
            if let Some(reply) = reply {
                self.no_responders(reply);
            }
        }
        Ok(())
    }

    /// Tells a requester at once that nobody will answer, through its own
    /// subscription matching the reply subject (the inbox wildcard clients
    /// use), as nats-server does.
    fn no_responders(&self, reply: &[u8]) {
        let (result, _) = self.shared.match_subject(reply);
        let sub = result
            .psubs
            .iter()
            .chain(result.qsubs.iter().flat_map(|g| g.members.iter()))
            .find(|s| s.client.cid == self.cid);
        if let Some(sub) = sub {
            // Like nats-server, the status message is not counted as a
            // delivery.
            if sub.client.send_msg(
                &self.shared,
                reply,
                &sub.sid,
                None,
                Some(NO_RESPONDERS_HEADER),
                b"",
                false,
            ) == Some(true)
            {
                sub.client.notify.notify_one();
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    out: Arc<Outbound>,
    shutdown: CancellationToken,
    write_deadline: Duration,
) {
    let mut batch = VecDeque::new();
    'outer: loop {
        // Buffers grown by a burst are kept while traffic flows (no
        // reallocation per batch) and given back after a quiet second.
        let big = batch.capacity() > MAX_IOV || out.out.lock().tail.capacity() > KEEP_BUFFER;
        tokio::select! {
            biased;
            _ = out.closing.cancelled() => break,
            _ = out.notify.notified() => {}
            _ = tokio::time::sleep(IDLE_SHRINK), if big => {
                batch = VecDeque::new();
                let mut o = out.out.lock();
                if o.tail.is_empty() {
                    o.tail = BytesMut::new();
                }
                if o.chunks.is_empty() {
                    o.chunks = VecDeque::new();
                }
                continue;
            }
        }
        loop {
            {
                let mut o = out.out.lock();
                if o.is_empty() {
                    break;
                }
                let len = o.take(&mut batch);
                out.in_flight.store(len, Ordering::Relaxed);
            }
            let written = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                r = tokio::time::timeout(write_deadline, write_chunks(&mut wr, &mut batch)) => r,
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
                        peer = %out.peer,
                        "Slow Consumer Detected: WriteDeadline of {write_deadline:?} exceeded"
                    );
                    out.slow.store(true, Ordering::Release);
                    out.closing.cancel();
                    return;
                }
            }
            out.in_flight.store(0, Ordering::Relaxed);
            out.drained.notify_waiters();
        }
    }

    // Best effort: whatever was queued before the close (typically the
    // final -ERR, or messages accepted before a shutdown) goes out, within
    // a short deadline. A slow consumer gets nothing more.
    if !out.slow.load(Ordering::Acquire) {
        let mut rest = VecDeque::new();
        out.out.lock().take(&mut rest);
        batch.append(&mut rest);
    }
    let flush = async {
        write_chunks(&mut wr, &mut batch).await?;
        wr.flush().await?;
        wr.shutdown().await
    };
    let _ = tokio::time::timeout(CLOSE_FLUSH_DEADLINE, flush).await;
}

/// Writes `chunks` front to back, several per system call, dropping each
/// once written; what is left after an error or a cancellation is exactly
/// what was not written.
async fn write_chunks<W: AsyncWrite + Unpin>(
    wr: &mut W,
    chunks: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    while !chunks.is_empty() {
        // The slices are built on each poll, so they take no room in the
        // writer task while it waits.
        let mut n = std::future::poll_fn(|cx| {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let k = chunks.len().min(MAX_IOV);
            for (slot, chunk) in iov.iter_mut().zip(chunks.iter()) {
                *slot = IoSlice::new(chunk);
            }
            Pin::new(&mut *wr).poll_write_vectored(cx, &iov[..k])
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(front) = chunks.front_mut() else {
                break;
            };
            if n < front.len() {
                front.advance(n);
                break;
            }
            n -= front.len();
            chunks.pop_front();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(
        subject: &[u8],
        sid: &[u8],
        reply: Option<&[u8]>,
        headers: Option<&[u8]>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut b = BytesMut::new();
        format_message(&mut b, subject, sid, reply, headers, payload);
        b.to_vec()
    }

    /// Takes at most `max` bytes per write, vectored or not.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
            }
            std::task::Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn chunks_go_out_whole_and_in_order_across_partial_writes() {
        let chunks: VecDeque<Bytes> = (0..200u8)
            .map(|i| Bytes::from(vec![i; usize::from(i % 7) * 3 + 1]))
            .collect();
        let want: Vec<u8> = chunks.iter().flatten().copied().collect();
        for max in [1, 5, 64, 100_000] {
            let mut w = Trickle {
                out: Vec::new(),
                max,
            };
            let mut left = chunks.clone();
            write_chunks(&mut w, &mut left).await.expect("write");
            assert!(left.is_empty());
            assert_eq!(w.out, want, "at most {max} bytes per write");
        }
    }

    #[test]
    fn single_frames_and_chunks_keep_their_order() {
        let mut o = OutBuf::default();
        let big = |b: u8| Bytes::from(vec![b; COPY_BELOW]);
        let mut want = Vec::new();
        o.tail.extend_from_slice(b"a");
        o.push_chunk(big(b'b'));
        o.push_chunk(Bytes::from_static(b"c"));
        o.tail.extend_from_slice(b"d");
        o.push_chunk(Bytes::new());
        o.push_chunk(big(b'e'));
        o.push_chunk(big(b'f'));
        o.tail.extend_from_slice(b"g");
        for part in [&b"a"[..], &big(b'b'), b"cd", &big(b'e'), &big(b'f'), b"g"] {
            want.extend_from_slice(part);
        }
        assert_eq!(o.len(), want.len());
        let mut batch = VecDeque::new();
        assert_eq!(o.take(&mut batch), want.len());
        assert!(o.is_empty());
        assert!(batch.iter().all(|c| !c.is_empty()));
        let all: Vec<u8> = batch.iter().flatten().copied().collect();
        assert_eq!(all, want);
    }

    #[test]
    fn message_frames() {
        assert_eq!(
            frame(b"foo", b"1", None, None, b"hi"),
            b"MSG foo 1 2\r\nhi\r\n"
        );
        assert_eq!(
            frame(b"foo", b"1", Some(b"r.x"), None, b""),
            b"MSG foo 1 r.x 0\r\n\r\n"
        );
        assert_eq!(
            frame(b"_INBOX.a.b", b"9", None, Some(NO_RESPONDERS_HEADER), b""),
            b"HMSG _INBOX.a.b 9 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
        );
        assert_eq!(
            frame(b"s", b"2", Some(b"r"), Some(b"NATS/1.0\r\n\r\n"), b"x"),
            b"HMSG s 2 r 12 13\r\nNATS/1.0\r\n\r\nx\r\n"
        );
        let big = vec![b'x'; 1234567];
        let f = frame(b"s", b"2", None, None, &big);
        assert!(f.starts_with(b"MSG s 2 1234567\r\nxx"));
    }
}
