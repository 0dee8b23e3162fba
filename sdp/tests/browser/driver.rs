//! Headless Chromium driven through `chromedriver` (Debian's `chromium` and
//! `chromium-driver`), for the dashboard's browser tests.
//!
//! Each test gets its own chromedriver and a fresh profile directory. Every
//! step can save a screenshot under `target/browser-shots/{test}/`; a test
//! that fails leaves `failure.png` and `failure.html` there, and the path is
//! printed either way.

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::{Value, json};

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub struct Browser {
    pub client: Client,
    pub base: String,
    pub shots: PathBuf,
    step: std::sync::atomic::AtomicU32,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

use sdp_testbed::free_port;

fn chromedriver() -> PathBuf {
    for p in ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("chromedriver is missing: apt-get install chromium chromium-driver");
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `base` is the
    /// dashboard's URL, `test` names the screenshot folder.
    pub async fn start(base: &str, test: &str) -> Browser {
        let port = free_port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::Builder::new()
            .prefix("sdp-chromium-")
            .tempdir()
            .unwrap();
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,1000".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": "/usr/bin/chromium", "args": args }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("chromium did not start through chromedriver: {e}"),
            }
        };
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/browser-shots")
            .join(test);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).unwrap();
        println!("screenshots of {test}: {}", shots.display());
        Browser {
            client,
            base: base.trim_end_matches('/').to_owned(),
            shots,
            step: 0.into(),
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, path: &str) -> Result {
        self.client.goto(&format!("{}{path}", self.base)).await?;
        Ok(())
    }

    /// Saves `NN-{name}.png`.
    pub async fn shot(&self, name: &str) -> Result {
        let n = self.step.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let png = self.client.screenshot().await?;
        let path = self.shots.join(format!("{n:02}-{name}.png"));
        std::fs::write(&path, png)?;
        println!("  screenshot {}", path.display());
        Ok(())
    }

    /// Runs `body`; on an error or a panic leaves a screenshot and the page's
    /// HTML, then fails the test with the reason.
    pub async fn run<'a, F>(&'a self, body: F)
    where
        F: Future<Output = Result> + 'a,
    {
        let outcome = std::panic::AssertUnwindSafe(body).catch_unwind().await;
        let reason = match outcome {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".into()),
        };
        if let Ok(png) = self.client.screenshot().await {
            let _ = std::fs::write(self.shots.join("failure.png"), png);
        }
        if let Ok(html) = self.client.source().await {
            let _ = std::fs::write(self.shots.join("failure.html"), html);
        }
        // Ends the browser too: chromedriver's death alone leaves Chromium.
        let _ = self.client.clone().close().await;
        panic!(
            "{reason}\n(screenshot and HTML of the page: {})",
            self.shots.display()
        );
    }

    pub async fn find(&self, css: &str) -> Result<Element> {
        Ok(self.client.find(Locator::Css(css)).await?)
    }

    /// Waits until `css` matches.
    pub async fn wait_for(&self, css: &str, within: Duration) -> Result<Element> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                return Ok(e);
            }
            if Instant::now() > deadline {
                return Err(format!("nothing matched {css:?} within {within:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the text of `css` satisfies `ok`; returns that text.
    pub async fn wait_text(
        &self,
        css: &str,
        within: Duration,
        what: &str,
        ok: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await
                && let Ok(t) = e.text().await
            {
                if ok(&t) {
                    return Ok(t);
                }
                last = t;
            }
            if Instant::now() > deadline {
                let tail: String = last
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                return Err(format!(
                    "{css:?} never showed {what} within {within:?}; last text:\n{tail}"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn js(&self, script: &str) -> Result<Value> {
        Ok(self.client.execute(script, vec![]).await?)
    }

    pub async fn fill(&self, css: &str, text: &str) -> Result {
        let e = self.find(css).await?;
        e.clear().await?;
        e.send_keys(text).await?;
        Ok(())
    }

    pub async fn select(&self, css: &str, value: &str) -> Result {
        let e = self.find(css).await?;
        e.select_by_value(value).await?;
        Ok(())
    }

    pub async fn click(&self, css: &str) -> Result {
        self.find(css).await?.click().await?;
        Ok(())
    }

    pub async fn path(&self) -> Result<String> {
        Ok(self.client.current_url().await?.path().to_owned())
    }

    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}
