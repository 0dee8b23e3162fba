//! The dashboard's targets (issue 6), measured rather than asserted:
//!
//! - every page ≤ 100 KiB over the wire with compression, assets included,
//!   on a cold cache;
//! - server-side render p99 ≤ 20 ms for the overview with 200 sandboxes;
//! - a 100,000-line log streams to an open page with every line present, in
//!   order, in frames a browser can keep up with.
//!
//! Run with `cargo bench -p sdp-web --bench dashboard`. The streaming part
//! drives the same code the live WebSocket runs (the log-file cursor and the
//! fragment views) against a log written as fast as the disk allows; the
//! same log in a real browser, through the bus, is `cargo bench -p sdp
//! --bench browser_log`.

use std::io::Write;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use sdp_contract::DeploymentState;
use sdp_control::StageStatus;
use sdp_web::views::deployment::{self, DeploymentPage, Head, StageRow};
use sdp_web::views::sandboxes::{self, SandboxRow, SandboxesPage, Source};
use sdp_web::views::{Viewer, deployments};
use sdp_web::{assets, logfile};

fn gzip(bytes: &[u8]) -> usize {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap().len()
}

fn viewer() -> Viewer {
    Viewer {
        name: "achmad".into(),
        csrf: "9f".repeat(32),
    }
}

fn overview(n: usize) -> SandboxesPage {
    SandboxesPage {
        viewer: viewer(),
        sandboxes: (0..n)
            .map(|i| SandboxRow {
                name: format!("qa-feature-{i:03}"),
                status: ["running", "failed", "deploying", "stopped"][i % 4].into(),
                owner: format!("dev{}", i % 17),
                template: (i % 3 == 0).then(|| "mobile".into()),
                gateway_branch: "main".into(),
                gateway_url: format!("http://10.0.0.10:{}", 8080 + i),
                services: vec![
                    (
                        "account".into(),
                        Source::Branch(format!("feature/ticket-{i}")),
                    ),
                    ("payment".into(), Source::Ocp),
                    ("user".into(), Source::Branch("develop".into())),
                ],
            })
            .collect(),
        repositories: vec!["account".into(), "payment".into(), "user".into()],
        templates: vec!["mobile".into()],
        environments: vec!["dev".into()],
        error: None,
    }
}

fn deployment_page(log_bytes: usize) -> DeploymentPage {
    let line = "[go build] compiling example.com/account/internal/handlers ... ok\n";
    let log: String = line.repeat(log_bytes / line.len());
    let stage = |name: &str, status| StageRow {
        name: name.into(),
        status,
        reason: None,
        took: Some("1.2 s".into()),
        log: vec![],
    };
    DeploymentPage {
        viewer: viewer(),
        head: Head {
            id: "3fc50c8d-0e6e-4d4d-9a92-8dedc7afec06".into(),
            sandbox: "qa-login".into(),
            repository: "account".into(),
            branch: "feature/login-error".into(),
            by: "achmad".into(),
            state: DeploymentState::Running,
            port: 9001,
            commit: Some("3c12f63d32958f7786a8a3defe6b44e5b13eeff7".into()),
            reason: None,
            started: "2026-11-27 16:03:00 UTC".into(),
            completed: "2026-11-27 16:03:40 UTC".into(),
            stages: [
                "git fetch",
                "git checkout",
                "git pull",
                "go build",
                "start container",
            ]
            .iter()
            .map(|s| stage(s, StageStatus::Completed))
            .collect(),
            csrf: "9f".repeat(32),
        },
        log_from: 1,
        log_end: log.len() as u64,
        log,
    }
}

fn sizes() {
    let cold: usize = ["app.css", "app.js", "htmx.min.js", "ws.min.js"]
        .iter()
        .map(|n| gzip(assets::find(n).unwrap().bytes))
        .sum();
    println!("## Page sizes (gzip), cold cache = page + every asset it loads");
    println!();
    for n in ["app.css", "app.js", "htmx.min.js", "ws.min.js"] {
        let a = assets::find(n).unwrap();
        println!(
            "- asset {n}: {} B raw, {} B gzip",
            a.bytes.len(),
            gzip(a.bytes)
        );
    }
    let history = deployments::render(&deployments::DeploymentsPage {
        viewer: viewer(),
        filters: Default::default(),
        rows: (0..200)
            .map(|i| deployments::Row {
                id: format!("3fc50c8d-0e6e-4d4d-9a92-{i:012}"),
                sandbox: format!("qa-feature-{i:03}"),
                repository: "account".into(),
                branch: format!("feature/ticket-{i}"),
                user: "achmad".into(),
                state: DeploymentState::Running,
                port: 9001 + i as u16,
                created: "2026-11-27 16:03:00 UTC".into(),
            })
            .collect(),
    })
    .into_string();
    let pages = [
        (
            "overview, 200 sandboxes",
            sandboxes::overview(&overview(200)).into_string(),
        ),
        (
            "deployment, 48 KiB log tail (the page's cap)",
            deployment::render(&deployment_page(48 * 1024)).into_string(),
        ),
        ("history, 200 deployments", history),
    ];
    for (name, html) in pages {
        let page = gzip(html.as_bytes());
        let total = page + cold;
        println!(
            "- {name}: {} B raw, {} B gzip; cold total {} B = {:.1} KiB (target ≤ 100 KiB)",
            html.len(),
            page,
            total,
            total as f64 / 1024.0
        );
    }
    println!();
}

fn render_p99() {
    let page = overview(200);
    let mut times: Vec<Duration> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            let html = sandboxes::overview(&page).into_string();
            std::hint::black_box(html);
            t.elapsed()
        })
        .collect();
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!("## Render of the overview with 200 sandboxes (2000 runs)");
    println!();
    println!(
        "- p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (target p99 ≤ 20 ms)",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3
    );
    println!();
}

async fn streaming() {
    const LINES: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.log");
    std::fs::write(&path, "").unwrap();
    let writer_path = path.clone();
    let started = Instant::now();
    // The control plane appends one line per write; so does this writer.
    let writer = tokio::task::spawn_blocking(move || {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(writer_path)
            .unwrap();
        for i in 0..LINES {
            writeln!(
                f,
                "[go build] line {i:06} of the build output, as fast as it comes"
            )
            .unwrap();
        }
        started.elapsed()
    });
    let mut offset = 0u64;
    let mut frames = 0usize;
    let mut biggest = 0usize;
    let mut received = String::new();
    let mut wire = 0usize;
    loop {
        let t = Instant::now();
        let (text, next) = logfile::read_from(&path, offset, 256 * 1024).await.unwrap();
        offset = next;
        if !text.is_empty() {
            let frame = deployment::log_append(&text).into_string();
            frames += 1;
            biggest = biggest.max(frame.len());
            wire += frame.len();
            received.push_str(&text);
        }
        if received.lines().count() >= LINES {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            panic!("the stream fell behind");
        }
        tokio::time::sleep_until((t + Duration::from_millis(50)).into()).await;
    }
    let wrote = writer.await.unwrap();
    let total = started.elapsed();
    let in_order = received
        .lines()
        .enumerate()
        .all(|(i, l)| l.starts_with(&format!("[go build] line {i:06} ")));
    println!("## A 100,000-line log streamed to an open page");
    println!();
    println!(
        "- written in {:.2} s; all {} lines delivered in {:.2} s, in order and once each: {}",
        wrote.as_secs_f64(),
        received.lines().count(),
        total.as_secs_f64(),
        in_order
    );
    println!(
        "- {frames} frames (≤ 1 per 50 ms), largest {:.0} KiB, {:.1} MiB of fragments in all",
        biggest as f64 / 1024.0,
        wire as f64 / (1024.0 * 1024.0)
    );
    assert!(in_order);
}

fn main() {
    sizes();
    render_p99();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(streaming());
}
