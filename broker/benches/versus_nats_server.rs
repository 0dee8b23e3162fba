//! The embedded broker versus Debian's nats-server, driven by the same raw
//! protocol client in one run: throughput (publish-only, 1:1, 1:4 fan-out
//! and 4:4 at 16 B, 128 B and 1 KiB), request-reply latency (p50/p99),
//! idle RSS and memory per idle connection (10,000 connections).
//!
//! Both servers run as separate processes (the embedded broker in a child
//! process re-executing this benchmark with `SDP_BROKER_BENCH_CHILD` set),
//! so RSS is read the same way from `/proc/<pid>/status` and neither
//! shares a runtime with the client. Run with
//! `cargo bench -p sdp-broker --bench versus_nats_server`; it takes about
//! a minute. `BENCH_SCALE=0.2` shortens it.
//!
//! Each throughput case also prints (on stderr) both servers' CPU time and
//! page faults per message, and the CPUs each kept busy and waited for:
//! on a shared machine the throughput ratio also depends on the share of
//! the CPUs each process got, the cost per message does not.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const CHILD_ENV: &str = "SDP_BROKER_BENCH_CHILD";
const SUBJECT: &str = "bench";
const IDLE_CONNECTIONS: usize = 10_000;

fn main() {
    if let Ok(port) = std::env::var(CHILD_ENV) {
        run_child(port.parse().expect("port"));
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is understood.
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(scale));
}

/// The embedded broker alone in this process, until killed.
fn run_child(port: u16) {
    // The runtime `sdp broker` and `sdp server` run on.
    let rt = sdp_broker::runtime().expect("runtime");
    rt.block_on(async move {
        // A deep accept queue like nats-server's (Go uses somaxconn).
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .expect("bind");
        let listener = socket.listen(4096).expect("listen");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let broker = sdp_broker::Broker::start(
            listener,
            sdp_broker::BrokerConfig::default(),
            shutdown.clone(),
        )
        .await
        .expect("start");
        broker.stopped().await;
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn nats_server() -> Server {
        let port = free_port();
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed");
        Server::ready("nats-server", child, port)
    }

    fn embedded() -> Server {
        let port = free_port();
        let child = Command::new(std::env::current_exe().expect("exe"))
            .env(CHILD_ENV, port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn embedded broker");
        Server::ready("embedded", child, port)
    }

    fn ready(name: &'static str, child: Child, port: u16) -> Server {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "{name} did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Server { child, addr }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// What the server process has used so far: read around a case, it
    /// tells the cost per message apart from the share of a busy machine
    /// the process got.
    fn usage(&self) -> Usage {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
        // The 10th field after the parenthesised command name.
        let faults = stat[stat.rfind(')').expect("comm") + 2..]
            .split_whitespace()
            .nth(7)
            .and_then(|v| v.parse().ok())
            .expect("minflt");
        let mut usage = Usage {
            faults,
            ..Usage::default()
        };
        // Per thread: nanoseconds on a CPU, then waiting for one.
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("proc tasks")
            .flatten()
        {
            let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let mut f = s.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
            usage.cpu += f.next().unwrap_or(0.0) / 1e9;
            usage.waiting += f.next().unwrap_or(0.0) / 1e9;
        }
        usage
    }
}

/// CPU seconds, seconds runnable but waiting for a CPU (both summed over
/// threads) and minor page faults of a server process; with `wall`, the
/// seconds they were measured over.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    cpu: f64,
    waiting: f64,
    faults: f64,
    wall: f64,
}

impl Usage {
    fn since(self, before: Usage, started: Instant) -> Usage {
        Usage {
            cpu: self.cpu - before.cpu,
            waiting: self.waiting - before.waiting,
            faults: self.faults - before.faults,
            wall: started.elapsed().as_secs_f64(),
        }
    }

    fn add(&mut self, o: Usage) {
        self.cpu += o.cpu;
        self.waiting += o.waiting;
        self.faults += o.faults;
        self.wall += o.wall;
    }

    /// Per message: CPU µs and page faults; on average: CPUs used and
    /// threads waiting for one.
    fn describe(&self, msgs: usize) -> String {
        let msgs = msgs as f64;
        format!(
            "{:.2} µs CPU/msg, {:.3} faults/msg, {:.2} CPUs busy, {:.2} waiting",
            self.cpu * 1e6 / msgs,
            self.faults / msgs,
            self.cpu / self.wall,
            self.waiting / self.wall
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects, reads INFO, sends CONNECT (+ `extra`) and waits for PONG.
async fn client(addr: SocketAddr, extra: &str) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut rd = BufReader::with_capacity(256 * 1024, stream);
    let mut line = String::new();
    rd.read_line(&mut line).await.expect("INFO");
    rd.get_mut()
        .write_all(
            format!("CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\n{extra}PING\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    loop {
        line.clear();
        rd.read_line(&mut line).await.expect("PONG");
        if line == "PONG\r\n" {
            return rd;
        }
    }
}

/// Messages per second published (each delivered to every subscriber).
async fn throughput(addr: SocketAddr, pubs: usize, subs: usize, size: usize, n: usize) -> f64 {
    let frame_len = format!("MSG {SUBJECT} 1 {size}\r\n").len() + size + 2;
    let mut sub_tasks = Vec::new();
    for _ in 0..subs {
        let mut rd = client(addr, &format!("SUB {SUBJECT} 1\r\n")).await;
        sub_tasks.push(tokio::spawn(async move {
            let want = n * frame_len;
            let mut got = rd.buffer().len();
            rd.consume(got);
            let mut buf = vec![0u8; 256 * 1024];
            let stream = rd.get_mut();
            while got < want {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got += k,
                }
            }
            Instant::now()
        }));
    }
    let per_pub = n / pubs;
    let mut one = format!("PUB {SUBJECT} {size}\r\n").into_bytes();
    one.extend(std::iter::repeat_n(b'x', size));
    one.extend_from_slice(b"\r\n");
    let per_chunk = (64 * 1024 / one.len()).max(1);
    let chunk: Vec<u8> = one.repeat(per_chunk);
    let mut publishers = Vec::new();
    for _ in 0..pubs {
        publishers.push(client(addr, "").await);
    }
    let start = Instant::now();
    let pub_tasks: Vec<_> = publishers
        .into_iter()
        .map(|mut rd| {
            let chunk = chunk.clone();
            let one = one.clone();
            tokio::spawn(async move {
                let w = rd.get_mut();
                let mut left = per_pub;
                while left >= per_chunk {
                    w.write_all(&chunk).await.expect("publish");
                    left -= per_chunk;
                }
                for _ in 0..left {
                    w.write_all(&one).await.expect("publish");
                }
                w.write_all(b"PING\r\n").await.expect("ping");
                let mut line = String::new();
                loop {
                    line.clear();
                    if rd.read_line(&mut line).await.unwrap_or(0) == 0 || line == "PONG\r\n" {
                        break;
                    }
                }
                Instant::now()
            })
        })
        .collect();
    let mut end = start;
    for t in pub_tasks {
        end = end.max(t.await.expect("publisher"));
    }
    for t in sub_tasks {
        end = end.max(t.await.expect("subscriber"));
    }
    (per_pub * pubs) as f64 / end.duration_since(start).as_secs_f64()
}

/// Request-reply round trips: (p50, p99) in microseconds.
async fn latency(addr: SocketAddr, rounds: usize) -> (f64, f64) {
    let mut responder = client(addr, "SUB rr 1\r\n").await;
    let serve = tokio::spawn(async move {
        let mut line = String::new();
        let mut body = vec![0u8; 18];
        loop {
            line.clear();
            if responder.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            // MSG rr 1 <reply> 16
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.first() != Some(&"MSG") || parts.len() != 5 {
                continue;
            }
            let reply = parts[3].to_string();
            if responder.read_exact(&mut body).await.is_err() {
                return;
            }
            let out = format!("PUB {reply} 16\r\n0123456789abcdef\r\n");
            if responder.get_mut().write_all(out.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut req = client(addr, "SUB inbox.1 1\r\n").await;
    let mut samples = Vec::with_capacity(rounds);
    let mut line = String::new();
    let mut body = vec![0u8; 18];
    for i in 0..rounds + 200 {
        let t = Instant::now();
        req.get_mut()
            .write_all(b"PUB rr inbox.1 16\r\n0123456789abcdef\r\n")
            .await
            .expect("request");
        loop {
            line.clear();
            req.read_line(&mut line).await.expect("reply");
            if line.starts_with("MSG ") {
                req.read_exact(&mut body).await.expect("body");
                break;
            }
        }
        if i >= 200 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    serve.abort();
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    (pct(0.50), pct(0.99))
}

/// Opens `count` idle connections; returns (all held, KiB per connection).
async fn idle_connections(server: &Server, count: usize) -> (bool, f64) {
    let before = server.rss_kib();
    let mut conns = Vec::with_capacity(count);
    let mut ok = true;
    for batch in 0..count.div_ceil(500) {
        let n = 500.min(count - batch * 500);
        let opened = futures::future::join_all((0..n).map(|_| async {
            let open = async {
                let stream = TcpStream::connect(server.addr).await.ok()?;
                let mut rd = BufReader::with_capacity(1024, stream);
                let mut line = String::new();
                rd.read_line(&mut line).await.ok()?;
                rd.get_mut()
                    .write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
                    .await
                    .ok()?;
                line.clear();
                rd.read_line(&mut line).await.ok()?;
                (line == "PONG\r\n").then_some(rd)
            };
            tokio::time::timeout(Duration::from_secs(20), open)
                .await
                .ok()
                .flatten()
        }))
        .await;
        for c in opened {
            match c {
                Some(c) => conns.push(c),
                None => ok = false,
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib();
    // Every one still answers (skipping the servers' own PINGs).
    for c in conns.iter_mut().step_by(97) {
        let answered = async {
            c.get_mut().write_all(b"PING\r\n").await.ok()?;
            let mut line = String::new();
            loop {
                line.clear();
                if c.read_line(&mut line).await.ok()? == 0 {
                    return None;
                }
                if line == "PONG\r\n" {
                    return Some(());
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), answered)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            ok = false;
        }
    }
    let per = after.saturating_sub(before) as f64 / conns.len().max(1) as f64;
    ok &= conns.len() == count;
    drop(conns);
    (ok, per)
}

struct Row {
    name: String,
    nats: f64,
    ours: f64,
    unit: &'static str,
    higher_is_better: bool,
}

async fn run(scale: f64) {
    // BENCH_ONLY=<text>: only the throughput and latency cases whose name
    // contains it (for profiling).
    let only = std::env::var("BENCH_ONLY").ok();
    let mut rows = Vec::new();
    // Memory first, on fresh processes.
    let count = ((IDLE_CONNECTIONS as f64 * scale) as usize).max(100);
    let (held, per) = if only.is_some() {
        (vec![false, false], vec![0.0, 0.0])
    } else {
        let servers = [Server::nats_server(), Server::embedded()];
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle: Vec<f64> = servers
            .iter()
            .map(|s| s.rss_kib() as f64 / 1024.0)
            .collect();
        rows.push(Row {
            name: "idle RSS".into(),
            nats: idle[0],
            ours: idle[1],
            unit: "MiB",
            higher_is_better: false,
        });
        let mut held = Vec::new();
        let mut per = Vec::new();
        for s in &servers {
            let (ok, kib) = idle_connections(s, count).await;
            held.push(ok);
            per.push(kib);
        }
        (held, per)
    };
    rows.push(Row {
        name: format!("memory per idle connection ({count})"),
        nats: per[0],
        ours: per[1],
        unit: "KiB",
        higher_is_better: false,
    });

    let servers = [Server::nats_server(), Server::embedded()];
    let cases = [
        ("publish-only", 1, 0),
        ("1:1 pub/sub", 1, 1),
        ("1:4 fan-out", 1, 4),
        ("4:4 pub/sub", 4, 4),
    ];
    for (size, n) in [(16usize, 2_000_000usize), (128, 1_000_000), (1024, 300_000)] {
        for (label, pubs, subs) in cases {
            if only
                .as_deref()
                .is_some_and(|o| !format!("{label} {size} B").contains(o))
            {
                continue;
            }
            let n = ((n as f64 * scale) as usize / 4).max(1000) * 4;
            let n = if subs >= 4 { n / 2 } else { n };
            let mut best = [0f64; 2];
            let mut usage = [Usage::default(); 2];
            for _round in 0..2 {
                for (i, s) in servers.iter().enumerate() {
                    let (before, started) = (s.usage(), Instant::now());
                    let r = tokio::time::timeout(
                        Duration::from_secs(60),
                        throughput(s.addr, pubs, subs, size, n),
                    )
                    .await
                    .unwrap_or(0.0);
                    usage[i].add(s.usage().since(before, started));
                    best[i] = best[i].max(r);
                }
            }
            let row = Row {
                name: format!("{label} {size} B"),
                nats: best[0],
                ours: best[1],
                unit: "msgs/s",
                higher_is_better: true,
            };
            eprintln!(
                "{}: nats-server {}; embedded {}",
                row.name,
                usage[0].describe(2 * n),
                usage[1].describe(2 * n)
            );
            rows.push(row);
        }
    }

    // Latency too with BENCH_ONLY=request.
    let wanted = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    if wanted("request-reply") {
        let rounds = (5000.0 * scale) as usize + 100;
        let mut lat = Vec::new();
        let mut usage = Vec::new();
        for s in &servers {
            let (before, started) = (s.usage(), Instant::now());
            lat.push(latency(s.addr, rounds).await);
            usage.push(s.usage().since(before, started));
        }
        eprintln!(
            "request-reply: nats-server {}; embedded {}",
            usage[0].describe(rounds + 200),
            usage[1].describe(rounds + 200)
        );
        for (p99, name) in [(false, "p50"), (true, "p99")] {
            let pick = |l: (f64, f64)| if p99 { l.1 } else { l.0 };
            rows.push(Row {
                name: format!("request-reply {name}"),
                nats: pick(lat[0]),
                ours: pick(lat[1]),
                unit: "µs",
                higher_is_better: false,
            });
        }
    }
    if only.is_some() {
        for r in &rows {
            println!(
                "{} {:.0} {:.0} {:.2}",
                r.name,
                r.nats,
                r.ours,
                r.ours / r.nats
            );
        }
        return;
    }

    println!();
    println!("| case | nats-server 2.9.10 | embedded | ratio (embedded / nats-server) |");
    println!("|---|---:|---:|---:|");
    for r in &rows {
        let fmt = |v: f64| {
            if r.unit == "msgs/s" {
                format!("{:.0} k{}", v / 1000.0, r.unit)
            } else {
                format!("{v:.1} {}", r.unit)
            }
        };
        let ratio = if r.nats > 0.0 { r.ours / r.nats } else { 0.0 };
        let verdict = if r.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        println!(
            "| {} | {} | {} | {ratio:.2} ({verdict}) |",
            r.name,
            fmt(r.nats),
            fmt(r.ours)
        );
    }
    println!(
        "| {count} idle connections held | {} | {} | |",
        held[0], held[1]
    );
}
