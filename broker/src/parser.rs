//! A pure, resumable parser for the client side of the NATS protocol.
//!
//! The parser owns an input buffer. Bytes are appended in chunks of any size
//! ([`Parser::feed`], or directly into [`Parser::buffer_mut`] to read from a
//! socket without copying) and complete operations are pulled out with
//! [`Parser::next_op`]. Nothing here does I/O, so every edge case is unit
//! tested by feeding bytes one at a time or in random splits.
//!
//! Message bodies are handed out as [`Bytes`] slices of the input buffer, so
//! a payload is never copied between the socket and the subscribers' frames.
//!
//! Behaviour follows nats-server's `parser.go`: operation names are case
//! insensitive, control lines end in CRLF or a bare LF, a line longer than
//! the control-line limit is refused, a PUB/HPUB announcing more than
//! `max_payload` bytes is refused as soon as its control line is complete
//! (before the body arrives), and an unknown operation is refused as soon as
//! its first bytes show it is unknown. Every parser error is fatal to the
//! connection; after one, the parser keeps returning it.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::error::ProtocolError;

/// Default maximum control line length (nats-server's `MAX_CONTROL_LINE_SIZE`).
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;
/// Default maximum message size, headers included (nats-server's 1 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Size limits enforced while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserLimits {
    /// Maximum length of a control line, excluding its line ending.
    pub max_control_line: usize,
    /// Maximum message size (headers plus payload).
    pub max_payload: usize,
}

impl Default for ParserLimits {
    fn default() -> Self {
        ParserLimits {
            max_control_line: DEFAULT_MAX_CONTROL_LINE,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// The CONNECT options a client declares.
///
/// Fields missing from the JSON take nats-server's defaults, which are *not*
/// all false: `verbose`, `pedantic` and `echo` default to true, so a bare
/// `CONNECT {}` (or no CONNECT at all) gets `+OK` acknowledgements.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Acknowledge every operation with `+OK`.
    pub verbose: bool,
    /// Ask for strict checking.
    pub pedantic: bool,
    /// The client requires TLS.
    pub tls_required: bool,
    /// Token authentication.
    pub auth_token: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub pass: Option<String>,
    /// Optional client name.
    pub name: Option<String>,
    /// Client library language.
    pub lang: Option<String>,
    /// Client library version.
    pub version: Option<String>,
    /// Protocol level (0 or 1).
    pub protocol: i64,
    /// Deliver the client's own messages back to its matching subscriptions.
    pub echo: bool,
    /// The client understands HMSG.
    pub headers: bool,
    /// The client wants a 503 status message for requests nobody serves.
    pub no_responders: bool,
    /// User JWT.
    pub jwt: Option<String>,
    /// NKey public key.
    pub nkey: Option<String>,
    /// Signed nonce.
    pub sig: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            verbose: true,
            pedantic: true,
            tls_required: false,
            auth_token: None,
            user: None,
            pass: None,
            name: None,
            lang: None,
            version: None,
            protocol: 0,
            echo: true,
            headers: false,
            no_responders: false,
            jwt: None,
            nkey: None,
            sig: None,
        }
    }
}

/// CONNECT as sent: `null` and missing fields both mean "the default", as
/// with Go's `encoding/json`.
#[derive(Deserialize)]
struct RawConnect {
    verbose: Option<bool>,
    pedantic: Option<bool>,
    tls_required: Option<bool>,
    auth_token: Option<String>,
    user: Option<String>,
    pass: Option<String>,
    name: Option<String>,
    lang: Option<String>,
    version: Option<String>,
    protocol: Option<i64>,
    echo: Option<bool>,
    headers: Option<bool>,
    no_responders: Option<bool>,
    jwt: Option<String>,
    nkey: Option<String>,
    sig: Option<String>,
}

impl From<RawConnect> for ConnectOptions {
    fn from(r: RawConnect) -> Self {
        let d = ConnectOptions::default();
        ConnectOptions {
            verbose: r.verbose.unwrap_or(d.verbose),
            pedantic: r.pedantic.unwrap_or(d.pedantic),
            tls_required: r.tls_required.unwrap_or(d.tls_required),
            auth_token: r.auth_token,
            user: r.user,
            pass: r.pass,
            name: r.name,
            lang: r.lang,
            version: r.version,
            protocol: r.protocol.unwrap_or(d.protocol),
            echo: r.echo.unwrap_or(d.echo),
            headers: r.headers.unwrap_or(d.headers),
            no_responders: r.no_responders.unwrap_or(d.no_responders),
            jwt: r.jwt,
            nkey: r.nkey,
            sig: r.sig,
        }
    }
}

// Written by hand so credentials never reach a log line through `{:?}`.
impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("ConnectOptions")
            .field("verbose", &self.verbose)
            .field("pedantic", &self.pedantic)
            .field("tls_required", &self.tls_required)
            .field("auth_token", &redact(&self.auth_token))
            .field("user", &self.user)
            .field("pass", &redact(&self.pass))
            .field("name", &self.name)
            .field("lang", &self.lang)
            .field("version", &self.version)
            .field("protocol", &self.protocol)
            .field("echo", &self.echo)
            .field("headers", &self.headers)
            .field("no_responders", &self.no_responders)
            .field("jwt", &redact(&self.jwt))
            .field("nkey", &self.nkey)
            .field("sig", &redact(&self.sig))
            .finish()
    }
}

/// One operation sent by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    /// `CONNECT {json}`.
    Connect(Box<ConnectOptions>),
    /// `PUB <subject> [reply] <size>` and its payload.
    Pub {
        /// Subject, not yet validated.
        subject: Bytes,
        /// Reply subject, not yet validated.
        reply: Option<Bytes>,
        /// Message body.
        payload: Bytes,
    },
    /// `HPUB <subject> [reply] <header size> <total size>` and its body.
    Hpub {
        /// Subject, not yet validated.
        subject: Bytes,
        /// Reply subject, not yet validated.
        reply: Option<Bytes>,
        /// Header block, `NATS/1.0...\r\n\r\n` as sent.
        headers: Bytes,
        /// Message body after the header block.
        payload: Bytes,
    },
    /// `SUB <subject> [queue] <sid>`.
    Sub {
        /// Subject filter, not yet validated.
        subject: Bytes,
        /// Queue group.
        queue: Option<Bytes>,
        /// Client-chosen subscription id.
        sid: Bytes,
    },
    /// `UNSUB <sid> [max]`.
    Unsub {
        /// Subscription id.
        sid: Bytes,
        /// Remove after this many deliveries in total instead of now.
        max: Option<u64>,
    },
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
}

/// Known operations, their spelling and how their control line continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Pub,
    Hpub,
    Sub,
    Unsub,
    Connect,
    Ping,
    Pong,
    Info,
    Ok,
    Err,
}

/// How the byte after an operation name is constrained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// At least one space or tab, then arguments.
    Space,
    /// Optional spaces or tabs, then an argument (CONNECT, INFO).
    Anything,
    /// Whatever follows up to the line end is ignored (PING, PONG, +OK), as
    /// nats-server does.
    Ignored,
}

const OPS: &[(&[u8], OpKind, Follow)] = &[
    (b"PUB", OpKind::Pub, Follow::Space),
    (b"HPUB", OpKind::Hpub, Follow::Space),
    (b"SUB", OpKind::Sub, Follow::Space),
    (b"UNSUB", OpKind::Unsub, Follow::Space),
    (b"CONNECT", OpKind::Connect, Follow::Anything),
    (b"PING", OpKind::Ping, Follow::Ignored),
    (b"PONG", OpKind::Pong, Follow::Ignored),
    (b"INFO", OpKind::Info, Follow::Anything),
    (b"+OK", OpKind::Ok, Follow::Ignored),
    (b"-ERR", OpKind::Err, Follow::Space),
];

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Whether `start` (the beginning of a control line, possibly incomplete)
/// can still become a known operation.
fn prefix_is_possible(start: &[u8]) -> bool {
    OPS.iter().any(|(name, _, follow)| {
        let n = start.len().min(name.len());
        if !start[..n].eq_ignore_ascii_case(&name[..n]) {
            return false;
        }
        match start.get(name.len()) {
            None => true,
            Some(b) => *follow != Follow::Space || is_space(*b),
        }
    })
}

/// Identifies the operation of a complete control line.
fn identify(line: &[u8]) -> Option<(OpKind, usize)> {
    OPS.iter().find_map(|(name, kind, follow)| {
        if line.len() < name.len() || !line[..name.len()].eq_ignore_ascii_case(name) {
            return None;
        }
        match follow {
            Follow::Space if !line.get(name.len()).is_some_and(|b| is_space(*b)) => None,
            _ => Some((*kind, name.len())),
        }
    })
}

const MAX_ARGS: usize = 4;

/// Splits `line[from..]` on spaces and tabs into at most [`MAX_ARGS`]
/// ranges. Returns `None` when there are more.
fn split_ranges(line: &[u8], from: usize) -> Option<([(usize, usize); MAX_ARGS], usize)> {
    let mut out = [(0, 0); MAX_ARGS];
    let mut n = 0;
    let mut i = from;
    let len = line.len();
    while i < len {
        while i < len && is_space(line[i]) {
            i += 1;
        }
        if i == len {
            break;
        }
        let start = i;
        while i < len && !is_space(line[i]) {
            i += 1;
        }
        if n == MAX_ARGS {
            return None;
        }
        out[n] = (start, i);
        n += 1;
    }
    Some((out, n))
}

/// Arguments of a control line, without allocating.
struct Args {
    items: [Bytes; MAX_ARGS],
    len: usize,
}

impl Args {
    fn as_slice(&self) -> &[Bytes] {
        &self.items[..self.len]
    }
}

/// Splits `line[from..]` on spaces and tabs into at most [`MAX_ARGS`] slices.
/// Returns `None` when there are more.
fn split_args(line: &Bytes, from: usize) -> Option<Args> {
    let mut args = Args {
        items: [Bytes::new(), Bytes::new(), Bytes::new(), Bytes::new()],
        len: 0,
    };
    let mut start: Option<usize> = None;
    for (i, b) in line.iter().enumerate().skip(from) {
        if is_space(*b) {
            if let Some(s) = start.take() {
                if args.len == MAX_ARGS {
                    return None;
                }
                args.items[args.len] = line.slice(s..i);
                args.len += 1;
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        if args.len == MAX_ARGS {
            return None;
        }
        args.items[args.len] = line.slice(s..);
        args.len += 1;
    }
    Some(args)
}

/// Parses a decimal size as nats-server does: digits only, no sign.
fn parse_size(arg: &[u8]) -> Option<usize> {
    if arg.is_empty() {
        return None;
    }
    arg.iter().try_fold(0usize, |acc, b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(usize::from(b - b'0'))
        } else {
            None
        }
    })
}

fn invalid(op: &'static str, line: &[u8]) -> ProtocolError {
    const SNIPPET: usize = 64;
    let shown = &line[..line.len().min(SNIPPET)];
    ProtocolError::InvalidArguments {
        op,
        detail: format!("'{}'", String::from_utf8_lossy(shown)),
    }
}

/// A PUB/HPUB whose control line was read and whose body is awaited.
#[derive(Debug)]
struct PendingMessage {
    /// Length of the control line with its line ending; the line stays at
    /// the front of the buffer until the body is complete, so the whole
    /// frame is cut out at once.
    line_len: usize,
    subject: (usize, usize),
    reply: Option<(usize, usize)>,
    /// `Some` for HPUB.
    header_len: Option<usize>,
    total_len: usize,
}

#[derive(Debug)]
enum State {
    ControlLine,
    Body(PendingMessage),
    Failed(ProtocolError),
}

/// What a complete control line turned into.
enum LineOutcome {
    Op(ClientOp),
    Body(PendingMessage),
    Nothing,
}

/// The incremental client-protocol parser.
#[derive(Debug)]
pub struct Parser {
    limits: ParserLimits,
    buf: BytesMut,
    state: State,
    /// How much of the current control line was already searched for `\n`,
    /// so byte-at-a-time input stays linear.
    scanned: usize,
    /// Whether HPUB is accepted (the client declared `headers`).
    headers_allowed: bool,
    /// Bytes of the last message handed out by reference, dropped from the
    /// buffer on the next call.
    consume: usize,
}

/// A PUB or HPUB borrowed from the parser's buffer (see
/// [`Parser::next_op_ref`]): no allocation and no reference counting on
/// the publish path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubRef<'a> {
    /// Subject, not yet validated.
    pub subject: &'a [u8],
    /// Reply subject, not yet validated.
    pub reply: Option<&'a [u8]>,
    /// Header block, `Some` for HPUB.
    pub headers: Option<&'a [u8]>,
    /// Message body after the header block.
    pub payload: &'a [u8],
}

impl PubRef<'_> {
    /// The owned operation ([`ClientOp::Pub`] or [`ClientOp::Hpub`]).
    pub fn to_op(&self) -> ClientOp {
        let subject = Bytes::copy_from_slice(self.subject);
        let reply = self.reply.map(Bytes::copy_from_slice);
        let payload = Bytes::copy_from_slice(self.payload);
        match self.headers {
            None => ClientOp::Pub {
                subject,
                reply,
                payload,
            },
            Some(h) => ClientOp::Hpub {
                subject,
                reply,
                headers: Bytes::copy_from_slice(h),
                payload,
            },
        }
    }
}

/// An operation from [`Parser::next_op_ref`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpRef<'a> {
    /// A message, borrowed.
    Pub(PubRef<'a>),
    /// Any other operation, owned.
    Op(ClientOp),
}

impl Parser {
    /// A parser with the given limits and an empty buffer.
    pub fn new(limits: ParserLimits) -> Self {
        Parser {
            limits,
            buf: BytesMut::with_capacity(4096),
            state: State::ControlLine,
            scanned: 0,
            headers_allowed: true,
            consume: 0,
        }
    }

    /// A parser whose input buffer starts with `capacity` bytes.
    pub fn with_capacity(limits: ParserLimits, capacity: usize) -> Self {
        let mut p = Parser::new(limits);
        p.buf = BytesMut::with_capacity(capacity);
        p
    }

    /// Whether HPUB is accepted (default true). A server sets it from the
    /// client's CONNECT `headers` option: nats-server refuses HPUB from a
    /// client that did not declare headers.
    pub fn set_headers_allowed(&mut self, allowed: bool) {
        self.headers_allowed = allowed;
    }

    /// The limits in force.
    pub fn limits(&self) -> ParserLimits {
        self.limits
    }

    fn apply_consume(&mut self) {
        if self.consume > 0 {
            let n = self.consume.min(self.buf.len());
            bytes::Buf::advance(&mut self.buf, n);
            self.consume = 0;
        }
    }

    /// Appends a chunk of input.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.apply_consume();
        self.buf.extend_from_slice(chunk);
    }

    /// The input buffer, for reading from a socket straight into it. Only
    /// append to it: removing bytes desynchronises the parser.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        self.apply_consume();
        &mut self.buf
    }

    /// Bytes received but not yet consumed by a complete operation.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.consume.min(self.buf.len())
    }

    /// The next complete operation, `Ok(None)` when more input is needed.
    pub fn next_op(&mut self) -> Result<Option<ClientOp>, ProtocolError> {
        Ok(match self.next_op_ref()? {
            None => None,
            Some(OpRef::Op(op)) => Some(op),
            Some(OpRef::Pub(p)) => Some(p.to_op()),
        })
    }

    /// Like [`Parser::next_op`], with messages borrowed from the buffer;
    /// they are dropped from it on the next call.
    pub fn next_op_ref(&mut self) -> Result<Option<OpRef<'_>>, ProtocolError> {
        self.apply_consume();
        loop {
            match &self.state {
                State::Failed(e) => return Err(e.clone()),
                State::ControlLine => match self.control_line() {
                    Ok(None) => return Ok(None),
                    Ok(Some(LineOutcome::Op(op))) => return Ok(Some(OpRef::Op(op))),
                    Ok(Some(LineOutcome::Body(pending))) => self.state = State::Body(pending),
                    Ok(Some(LineOutcome::Nothing)) => {}
                    Err(e) => return Err(self.fail(e)),
                },
                State::Body(_) => match self.body_complete() {
                    Ok(false) => return Ok(None),
                    Ok(true) => break,
                    Err(e) => return Err(self.fail(e)),
                },
            }
        }
        let State::Body(p) = std::mem::replace(&mut self.state, State::ControlLine) else {
            return Ok(None);
        };
        let start = p.line_len;
        let n = p.total_len;
        self.consume = start + n + 2;
        let buf = &self.buf[..];
        let h = p.header_len.unwrap_or(0);
        Ok(Some(OpRef::Pub(PubRef {
            subject: &buf[p.subject.0..p.subject.1],
            reply: p.reply.map(|(a, b)| &buf[a..b]),
            headers: p.header_len.map(|h| &buf[start..start + h]),
            payload: &buf[start + h..start + n],
        })))
    }

    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        self.state = State::Failed(e.clone());
        self.buf.clear();
        self.consume = 0;
        e
    }

    fn control_line(&mut self) -> Result<Option<LineOutcome>, ProtocolError> {
        let max = self.limits.max_control_line;
        // Clamped in case a caller shrank the buffer through `buffer_mut`.
        self.scanned = self.scanned.min(self.buf.len());
        let Some(pos) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') else {
            self.scanned = self.buf.len();
            if !prefix_is_possible(&self.buf) {
                return Err(ProtocolError::UnknownOperation);
            }
            // One byte of slack for a CR that belongs to the line ending.
            if self.buf.len() > max + 1 {
                return Err(ProtocolError::MaxControlLine {
                    len: self.buf.len(),
                    max,
                });
            }
            return Ok(None);
        };
        let end = self.scanned + pos;
        self.scanned = 0;
        let line_end = if end > 0 && self.buf[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        let line = &self.buf[..line_end];
        // Same order of checks as for an incomplete line, so the error does
        // not depend on how the input was split.
        let id = identify(line);
        if id.is_none() && !prefix_is_possible(line) {
            return Err(ProtocolError::UnknownOperation);
        }
        if line.len() > max {
            return Err(ProtocolError::MaxControlLine {
                len: line.len(),
                max,
            });
        }
        match id {
            // The hot path: nothing is cut out of the buffer before the
            // body is complete.
            Some((OpKind::Pub, name_len)) => {
                let invalid_pub = || invalid("PUB", line);
                let (r, n) = split_ranges(line, name_len).ok_or_else(invalid_pub)?;
                let (subject, reply, size) = match n {
                    2 => (r[0], None, r[1]),
                    3 => (r[0], Some(r[1]), r[2]),
                    _ => return Err(invalid_pub()),
                };
                let size = parse_size(&line[size.0..size.1]).ok_or_else(invalid_pub)?;
                self.check_payload(size)?;
                Ok(Some(LineOutcome::Body(PendingMessage {
                    line_len: end + 1,
                    subject,
                    reply,
                    header_len: None,
                    total_len: size,
                })))
            }
            Some((OpKind::Hpub, name_len)) => {
                if !self.headers_allowed {
                    return Err(ProtocolError::HeadersNotSupported);
                }
                let invalid_hpub = || invalid("HPUB", line);
                let (r, n) = split_ranges(line, name_len).ok_or_else(invalid_hpub)?;
                let (subject, reply, hdr, total) = match n {
                    3 => (r[0], None, r[1], r[2]),
                    4 => (r[0], Some(r[1]), r[2], r[3]),
                    _ => return Err(invalid_hpub()),
                };
                let hdr = parse_size(&line[hdr.0..hdr.1]).ok_or_else(invalid_hpub)?;
                let total = parse_size(&line[total.0..total.1]).ok_or_else(invalid_hpub)?;
                self.check_payload(total)?;
                if hdr > total {
                    return Err(invalid_hpub());
                }
                Ok(Some(LineOutcome::Body(PendingMessage {
                    line_len: end + 1,
                    subject,
                    reply,
                    header_len: Some(hdr),
                    total_len: total,
                })))
            }
            _ => {
                let mut line = self.buf.split_to(end + 1).freeze();
                line.truncate(line_end);
                self.parse_line(line).map(Some)
            }
        }
    }

    fn parse_line(&self, line: Bytes) -> Result<LineOutcome, ProtocolError> {
        let Some((kind, name_len)) = identify(&line) else {
            return Err(ProtocolError::UnknownOperation);
        };
        match kind {
            OpKind::Ping => Ok(LineOutcome::Op(ClientOp::Ping)),
            OpKind::Pong => Ok(LineOutcome::Op(ClientOp::Pong)),
            // A client has no business sending these. nats-server ignores
            // +OK and a well-formed INFO, and closes the connection
            // silently on a client's -ERR or an unparsable INFO.
            OpKind::Ok => Ok(LineOutcome::Nothing),
            OpKind::Info => {
                let json = &line[name_len..];
                let start = json
                    .iter()
                    .position(|b| !is_space(*b))
                    .unwrap_or(json.len());
                serde_json::from_slice::<serde_json::Value>(&json[start..])
                    .map(|_| LineOutcome::Nothing)
                    .map_err(|_| invalid("INFO", &line))
            }
            OpKind::Err => Err(invalid("-ERR", &line)),
            OpKind::Connect => {
                let json = line[name_len..]
                    .iter()
                    .position(|b| !is_space(*b))
                    .map_or(&[][..], |start| &line[name_len + start..]);
                serde_json::from_slice::<RawConnect>(json)
                    .map(|o| LineOutcome::Op(ClientOp::Connect(Box::new(o.into()))))
                    .map_err(|e| ProtocolError::InvalidConnect(e.to_string()))
            }
            // Handled in `control_line` without cutting the line out.
            OpKind::Pub | OpKind::Hpub => Err(ProtocolError::UnknownOperation),
            OpKind::Sub => {
                let args = split_args(&line, name_len).ok_or_else(|| invalid("SUB", &line))?;
                let (subject, queue, sid) = match args.as_slice() {
                    [s, id] => (s.clone(), None, id.clone()),
                    [s, q, id] => (s.clone(), Some(q.clone()), id.clone()),
                    _ => return Err(invalid("SUB", &line)),
                };
                Ok(LineOutcome::Op(ClientOp::Sub {
                    subject,
                    queue,
                    sid,
                }))
            }
            OpKind::Unsub => {
                let args = split_args(&line, name_len).ok_or_else(|| invalid("UNSUB", &line))?;
                let (sid, max) = match args.as_slice() {
                    [id] => (id.clone(), None),
                    // nats-server reads an unparsable max as "none": the
                    // subscription is removed at once.
                    [id, m] => (id.clone(), parse_size(m).map(|m| m as u64)),
                    _ => return Err(invalid("UNSUB", &line)),
                };
                Ok(LineOutcome::Op(ClientOp::Unsub { sid, max }))
            }
        }
    }

    fn check_payload(&self, size: usize) -> Result<(), ProtocolError> {
        if size > self.limits.max_payload {
            return Err(ProtocolError::MaxPayload {
                size,
                max: self.limits.max_payload,
            });
        }
        Ok(())
    }

    /// Whether the awaited body and its CRLF are all in the buffer.
    fn body_complete(&self) -> Result<bool, ProtocolError> {
        let State::Body(pending) = &self.state else {
            return Ok(false);
        };
        let start = pending.line_len;
        let n = pending.total_len;
        // The body must be followed by exactly CRLF (nats-server tolerates a
        // bare LF after control lines, not after bodies).
        match self.buf.get(start + n..start + n + 2) {
            Some(b"\r\n") => Ok(true),
            Some(_) => Err(ProtocolError::UnknownOperation),
            None => match self.buf.get(start + n) {
                None | Some(b'\r') => Ok(false),
                Some(_) => Err(ProtocolError::UnknownOperation),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn parser() -> Parser {
        Parser::new(ParserLimits::default())
    }

    /// Feeds `input` in the given chunk sizes and collects all operations,
    /// stopping at the first error.
    fn run_chunks(
        limits: ParserLimits,
        input: &[u8],
        mut next_len: impl FnMut() -> usize,
    ) -> (Vec<ClientOp>, Option<ProtocolError>) {
        let mut p = Parser::new(limits);
        let mut ops = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let n = next_len().clamp(1, rest.len());
            p.feed(&rest[..n]);
            rest = &rest[n..];
            loop {
                match p.next_op() {
                    Ok(Some(op)) => ops.push(op),
                    Ok(None) => break,
                    Err(e) => return (ops, Some(normalize(e))),
                }
            }
        }
        (ops, None)
    }

    /// How much of an over-long line was seen depends on the split, so the
    /// length is left out of comparisons.
    fn normalize(e: ProtocolError) -> ProtocolError {
        match e {
            ProtocolError::MaxControlLine { max, .. } => {
                ProtocolError::MaxControlLine { len: 0, max }
            }
            other => other,
        }
    }

    /// Parses `input` whole, byte by byte and in many random splits, and
    /// checks every way gives the same result.
    fn parse_all_ways(
        limits: ParserLimits,
        input: &[u8],
    ) -> (Vec<ClientOp>, Option<ProtocolError>) {
        let whole = run_chunks(limits, input, || usize::MAX);
        let bytewise = run_chunks(limits, input, || 1);
        assert_eq!(whole, bytewise, "byte-by-byte differs for {input:?}");
        let mut rng = StdRng::seed_from_u64(0x5d9);
        for _ in 0..50 {
            let max = rng.gen_range(1..=16);
            let split = run_chunks(limits, input, || rng.gen_range(1..=max));
            assert_eq!(whole, split, "random split differs for {input:?}");
        }
        whole
    }

    fn parse_ok(input: &str) -> Vec<ClientOp> {
        let (ops, err) = parse_all_ways(ParserLimits::default(), input.as_bytes());
        assert_eq!(err, None, "{input:?}");
        ops
    }

    fn parse_err(limits: ParserLimits, input: &[u8]) -> ProtocolError {
        let (_, err) = parse_all_ways(limits, input);
        err.unwrap_or_else(|| panic!("expected an error for {input:?}"))
    }

    #[test]
    fn all_operations() {
        let ops = parse_ok(concat!(
            "CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true,\"name\":null}\r\n",
            "PING\r\n",
            "PONG\r\n",
            "SUB foo.* 1\r\n",
            "SUB foo.> workers 2\r\n",
            "PUB foo.bar 5\r\nhello\r\n",
            "PUB foo.bar _INBOX.x 0\r\n\r\n",
            "HPUB foo.bar 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
            "HPUB foo.bar r.1 12 12\r\nNATS/1.0\r\n\r\n\r\n",
            "UNSUB 1\r\n",
            "UNSUB 2 10\r\n",
        ));
        let connect = ConnectOptions {
            verbose: false,
            headers: true,
            no_responders: true,
            ..ConnectOptions::default()
        };
        assert_eq!(
            ops,
            vec![
                ClientOp::Connect(Box::new(connect)),
                ClientOp::Ping,
                ClientOp::Pong,
                ClientOp::Sub {
                    subject: b("foo.*"),
                    queue: None,
                    sid: b("1")
                },
                ClientOp::Sub {
                    subject: b("foo.>"),
                    queue: Some(b("workers")),
                    sid: b("2")
                },
                ClientOp::Pub {
                    subject: b("foo.bar"),
                    reply: None,
                    payload: b("hello")
                },
                ClientOp::Pub {
                    subject: b("foo.bar"),
                    reply: Some(b("_INBOX.x")),
                    payload: b("")
                },
                ClientOp::Hpub {
                    subject: b("foo.bar"),
                    reply: None,
                    headers: b("NATS/1.0\r\n\r\n"),
                    payload: b("hi")
                },
                ClientOp::Hpub {
                    subject: b("foo.bar"),
                    reply: Some(b("r.1")),
                    headers: b("NATS/1.0\r\n\r\n"),
                    payload: b("")
                },
                ClientOp::Unsub {
                    sid: b("1"),
                    max: None
                },
                ClientOp::Unsub {
                    sid: b("2"),
                    max: Some(10)
                },
            ]
        );
    }

    #[test]
    fn case_insensitive_tabs_and_bare_lf() {
        let ops = parse_ok(
            "ping\npOnG\r\nsub\tfoo \t 1\npub  foo\t3\nabc\r\nUnSuB 1\nHpUb a 2 3\n\r\nx\r\n",
        );
        assert_eq!(
            ops,
            vec![
                ClientOp::Ping,
                ClientOp::Pong,
                ClientOp::Sub {
                    subject: b("foo"),
                    queue: None,
                    sid: b("1")
                },
                ClientOp::Pub {
                    subject: b("foo"),
                    reply: None,
                    payload: b("abc")
                },
                ClientOp::Unsub {
                    sid: b("1"),
                    max: None
                },
                ClientOp::Hpub {
                    subject: b("a"),
                    reply: None,
                    headers: b("\r\n"),
                    payload: b("x")
                },
            ]
        );
    }

    #[test]
    fn payload_may_contain_protocol_bytes() {
        let ops = parse_ok("PUB a 12\r\nPING\r\nPUB x\r\r\n");
        assert_eq!(
            ops,
            vec![ClientOp::Pub {
                subject: b("a"),
                reply: None,
                payload: b("PING\r\nPUB x\r"),
            }]
        );
    }

    #[test]
    fn connect_defaults_match_nats_server() {
        let ops = parse_ok("CONNECT {}\r\nconnect{\"echo\":false}\r\n");
        let ClientOp::Connect(o) = &ops[0] else {
            panic!("not a connect")
        };
        assert!(o.verbose && o.pedantic && o.echo && !o.headers && !o.no_responders);
        let ClientOp::Connect(o) = &ops[1] else {
            panic!("not a connect")
        };
        assert!(!o.echo);
    }

    #[test]
    fn connect_debug_redacts_secrets() {
        let o = ConnectOptions {
            pass: Some("hunter2".into()),
            auth_token: Some("tok".into()),
            ..ConnectOptions::default()
        };
        let s = format!("{o:?}");
        assert!(!s.contains("hunter2") && !s.contains("tok\""), "{s}");
    }

    #[test]
    fn ignores_info_and_ok_from_clients_refuses_err() {
        let ops = parse_ok("INFO {}\r\n+OK\r\nPING\r\n");
        assert_eq!(ops, vec![ClientOp::Ping]);
        for bad in ["-ERR 'x'\r\n", "INFO\r\n", "INFO {\r\n"] {
            assert!(matches!(
                parse_err(ParserLimits::default(), bad.as_bytes()),
                ProtocolError::InvalidArguments { .. }
            ));
        }
    }

    #[test]
    fn unknown_operations() {
        for input in [
            "FOO\r\n",
            "GET / HTTP/1.1\r\n",
            "\r\n",
            " PING\r\n",
            "PUBX foo 1\r\n",
            "PUB\r\n",
            "SUB\r\n",
            "UNSUB\r\n",
            "MSG foo 1 1\r\nx\r\n",
            "\0",
        ] {
            assert_eq!(
                parse_err(ParserLimits::default(), input.as_bytes()),
                ProtocolError::UnknownOperation,
                "{input:?}"
            );
        }
    }

    #[test]
    fn unknown_operation_detected_before_line_end() {
        let mut p = parser();
        p.feed(b"GET /");
        assert_eq!(p.next_op(), Err(ProtocolError::UnknownOperation));
        // Once failed, stays failed.
        p.feed(b"PING\r\n");
        assert_eq!(p.next_op(), Err(ProtocolError::UnknownOperation));
    }

    #[test]
    fn connect_null_means_default_and_unsub_bad_max_means_now() {
        let ops = parse_ok("CONNECT {\"verbose\":null,\"echo\":null,\"x\":1}\r\nUNSUB 1 x\r\n");
        let ClientOp::Connect(o) = &ops[0] else {
            panic!("not a connect")
        };
        assert!(o.verbose && o.echo);
        assert_eq!(
            ops[1],
            ClientOp::Unsub {
                sid: b("1"),
                max: None
            }
        );
        assert!(matches!(
            parse_err(ParserLimits::default(), b"CONNECT {} x\r\n"),
            ProtocolError::InvalidConnect(_)
        ));
    }

    #[test]
    fn hpub_refused_without_headers() {
        let mut p = parser();
        p.set_headers_allowed(false);
        p.feed(b"HPUB a 2 3\r\n");
        assert_eq!(p.next_op(), Err(ProtocolError::HeadersNotSupported));
    }

    #[test]
    fn bad_payload_terminator() {
        assert_eq!(
            parse_err(ParserLimits::default(), b"PUB foo 1\r\nx\n"),
            ProtocolError::UnknownOperation
        );
        assert_eq!(
            parse_err(ParserLimits::default(), b"PUB foo 3\r\nabcd\r\n"),
            ProtocolError::UnknownOperation
        );
        assert_eq!(
            parse_err(ParserLimits::default(), b"PUB foo 3\r\nabc\rX"),
            ProtocolError::UnknownOperation
        );
    }

    #[test]
    fn invalid_arguments() {
        for input in [
            "PUB foo\r\n",
            "PUB foo bar baz 1\r\n",
            "PUB foo -1\r\n",
            "PUB foo x\r\n",
            "PUB foo 99999999999999999999999999\r\n",
            "PUB \r\n",
            "HPUB foo 1\r\n",
            "HPUB foo 5 4\r\n",
            "HPUB foo r x 4\r\n",
            "SUB foo\r\n",
            "SUB a b c d\r\n",
            "UNSUB 1 2 3\r\n",
        ] {
            let err = parse_err(ParserLimits::default(), input.as_bytes());
            assert!(
                matches!(err, ProtocolError::InvalidArguments { .. }),
                "{input:?}: {err:?}"
            );
            assert!(err.closes_connection());
        }
        assert!(matches!(
            parse_err(ParserLimits::default(), b"CONNECT {nope\r\n"),
            ProtocolError::InvalidConnect(_)
        ));
        assert!(matches!(
            parse_err(
                ParserLimits::default(),
                b"CONNECT {\"verbose\":\"yes\"}\r\n"
            ),
            ProtocolError::InvalidConnect(_)
        ));
    }

    #[test]
    fn max_payload_refused_before_body() {
        let limits = ParserLimits {
            max_control_line: 4096,
            max_payload: 10,
        };
        let mut p = Parser::new(limits);
        p.feed(b"PUB foo 11\r\n");
        assert_eq!(
            p.next_op(),
            Err(ProtocolError::MaxPayload { size: 11, max: 10 })
        );
        assert_eq!(
            parse_err(limits, b"HPUB foo 2 11\r\n"),
            ProtocolError::MaxPayload { size: 11, max: 10 }
        );
        let (ops, err) = parse_all_ways(limits, b"PUB foo 10\r\n0123456789\r\n");
        assert_eq!((ops.len(), err), (1, None));
        let e = parse_err(ParserLimits::default(), b"PUB foo 1048577\r\n");
        assert_eq!(e.server_message(), "Maximum Payload Violation");
    }

    #[test]
    fn max_control_line() {
        let limits = ParserLimits::default();
        let subject = "a".repeat(4096 - "SUB  1".len());
        let ok = format!("SUB {subject} 1\r\n");
        let (ops, err) = parse_all_ways(limits, ok.as_bytes());
        assert_eq!((ops.len(), err), (1, None));

        let long = format!("SUB {subject}x 1\r\n");
        let e = parse_err(limits, long.as_bytes());
        assert!(matches!(e, ProtocolError::MaxControlLine { .. }), "{e:?}");
        assert_eq!(e.server_message(), "maximum control line exceeded");

        // Refused without waiting for a line end that never comes.
        let mut p = parser();
        p.feed(b"PUB ");
        p.feed("a".repeat(10_000).as_bytes());
        assert!(matches!(
            p.next_op(),
            Err(ProtocolError::MaxControlLine { .. })
        ));
        // Also for lines whose op ignores its rest.
        let mut p = parser();
        p.feed(b"PING");
        p.feed(" ".repeat(5000).as_bytes());
        assert!(matches!(
            p.next_op(),
            Err(ProtocolError::MaxControlLine { .. })
        ));
    }

    #[test]
    fn payload_shares_input_buffer() {
        let mut p = parser();
        p.feed(b"PUB a 3\r\nxyz\r\n");
        let Ok(Some(ClientOp::Pub { payload, .. })) = p.next_op() else {
            panic!("expected a PUB")
        };
        assert_eq!(&payload[..], b"xyz");
        assert_eq!(p.next_op(), Ok(None));
        assert_eq!(p.buffered(), 0);
    }

    /// A long random stream of valid operations survives any split.
    #[test]
    fn random_stream_random_splits() {
        let mut rng = StdRng::seed_from_u64(42);
        let mut input = Vec::new();
        let mut expected = 0;
        for i in 0..300 {
            match rng.gen_range(0..5) {
                0 => input.extend_from_slice(b"PING\r\n"),
                1 => {
                    let n = rng.gen_range(0..300);
                    let body: Vec<u8> = (0..n).map(|_| rng.r#gen::<u8>()).collect();
                    input.extend_from_slice(format!("PUB s.{i} {n}\r\n").as_bytes());
                    input.extend_from_slice(&body);
                    input.extend_from_slice(b"\r\n");
                }
                2 => input.extend_from_slice(format!("SUB s.* q {i}\n").as_bytes()),
                3 => input.extend_from_slice(format!("unsub {i} 3\r\n").as_bytes()),
                _ => {
                    let h = b"NATS/1.0\r\nA: b\r\n\r\n";
                    input.extend_from_slice(
                        format!("HPUB s r {} {}\r\n", h.len(), h.len() + 2).as_bytes(),
                    );
                    input.extend_from_slice(h);
                    input.extend_from_slice(b"ok\r\n");
                }
            }
            expected += 1;
        }
        let (ops, err) = parse_all_ways(ParserLimits::default(), &input);
        assert_eq!(err, None);
        assert_eq!(ops.len(), expected);
    }

    /// Arbitrary garbage never panics, whatever the split.
    #[test]
    fn garbage_never_panics() {
        let mut rng = StdRng::seed_from_u64(7);
        let alphabet = b"PUBSHINGCONTEX \t\r\n0123456789.*>-+{}";
        for _ in 0..300 {
            let n = rng.gen_range(0..200);
            let input: Vec<u8> = (0..n)
                .map(|_| {
                    if rng.gen_bool(0.9) {
                        alphabet[rng.gen_range(0..alphabet.len())]
                    } else {
                        rng.r#gen::<u8>()
                    }
                })
                .collect();
            let _ = parse_all_ways(
                ParserLimits {
                    max_control_line: 32,
                    max_payload: 64,
                },
                &input,
            );
        }
    }
}
