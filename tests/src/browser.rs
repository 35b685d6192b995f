//! Real browsers for the web client's tests: Debian's `chromedriver` driving headless `chromium`
//! over WebDriver (`fantoccini`). Each [`Page`] is a browser of its own (own profile, own
//! storage), like a person on their own machine. Waits poll the page with a deadline; a wait
//! that runs out saves a screenshot of every page of the test and names the files.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::Value;

use crate::etcd::free_port;
use crate::wait::wait_until;
use crate::WAIT;

/// A `chromedriver` process (in a process group of its own, so that the browsers it starts go
/// with it) and the pages opened through it.
pub struct Browsers {
    driver: Option<Child>,
    url: String,
    test: String,
    profiles: tempfile::TempDir,
    pages: Vec<(String, Client)>,
}

/// One browser window, signed in as one person.
#[derive(Clone)]
pub struct Page {
    pub name: String,
    client: Client,
}

/// Where screenshots go: `target/<profile>/browser-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let dir = crate::process::bin_dir().join("browser-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

impl Browsers {
    /// Starts chromedriver; `test` names the screenshots.
    pub fn start(test: &str) -> Browsers {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver (ops/install-deps.sh installs chromium-driver)");
        // Owned before the wait: should it fail, dropping this ends chromedriver.
        let browsers = Browsers {
            driver: Some(driver),
            url: format!("http://127.0.0.1:{port}"),
            test: test.to_string(),
            profiles: tempfile::tempdir().expect("profiles dir"),
            pages: Vec::new(),
        };
        wait_until("chromedriver to listen", WAIT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .unwrap();
        browsers
    }

    /// A new headless Chromium at `url`.
    pub async fn open(&mut self, name: &str, url: &str) -> Page {
        let profile = self.profiles.path().join(name);
        // The flags keep Chromium off the (closed) network: no sync, updates or lookups.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1100,760",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session");
        client.goto(url).await.expect("open the page");
        self.pages.push((name.to_string(), client.clone()));
        Page {
            name: name.to_string(),
            client,
        }
    }

    /// Saves a screenshot of every page as `<test>-<page>-<label>.png`; the files' paths.
    pub async fn screenshots(&self, label: &str) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for (name, client) in &self.pages {
            if let Ok(png) = client.screenshot().await {
                let f = screenshot_dir().join(format!("{}-{name}-{label}.png", self.test));
                if std::fs::write(&f, png).is_ok() {
                    files.push(f);
                }
            }
        }
        files
    }

    /// Polls `script` (a function body that returns a JSON value) on `page` until `done` accepts
    /// its value; on timeout, screenshots of every page and a panic naming them and the last value.
    pub async fn wait(
        &self,
        page: &Page,
        what: &str,
        script: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_for(page, what, WAIT, script, done).await
    }

    pub async fn wait_for(
        &self,
        page: &Page,
        what: &str,
        timeout: Duration,
        script: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let until = Instant::now() + timeout;
        loop {
            let last = match page.client.execute(script, vec![]).await {
                Ok(v) if done(&v) => return v,
                Ok(v) => v,
                Err(e) => Value::String(format!("script failed: {e}")),
            };
            if Instant::now() >= until {
                let label = what.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
                let shots = self.screenshots(&format!("FAILED-{label}")).await;
                panic!(
                    "{}: waited {timeout:?} for {what}; last seen: {last}; screenshots: {shots:?}",
                    page.name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Closes every browser (each session's Chromium ends with it).
    pub async fn close(mut self) {
        for (_, c) in std::mem::take(&mut self.pages) {
            let _ = c.close().await;
        }
    }
}

impl Drop for Browsers {
    fn drop(&mut self) {
        if let Some(mut c) = self.driver.take() {
            // The whole group: chromedriver and any Chromium a failed test left open.
            crate::process::signal_group(c.id(), "KILL");
            let _ = c.wait();
        }
    }
}

fn is_stale(e: &fantoccini::error::CmdError) -> bool {
    matches!(e, fantoccini::error::CmdError::Standard(w)
        if w.error == fantoccini::error::ErrorStatus::StaleElementReference)
}

impl Page {
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no element {css}: {e}", self.name))
    }

    /// Types `text` into the element (appending to what is there).
    pub async fn type_in(&self, css: &str, text: &str) {
        self.find(css)
            .await
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("{}: typing into {css}: {e}", self.name));
    }

    /// Clicks the element `css` names. The page may redraw it between finding and clicking (a
    /// stale element): then it is found again, until the deadline, as a person would click
    /// what is on screen now.
    pub async fn click(&self, css: &str) {
        let until = Instant::now() + WAIT;
        loop {
            match self.find(css).await.click().await {
                Ok(()) => return,
                Err(e) if Instant::now() < until && is_stale(&e) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{}: clicking {css}: {e}", self.name),
            }
        }
    }

    /// Runs `script` (a function body) and returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("{}: script failed: {e}", self.name))
    }
}
