//! Headless Chromium for the tests, driven through ChromeDriver's W3C
//! WebDriver protocol (JSON over HTTP on loopback, with reqwest).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
pub const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// A ChromeDriver process on a free loopback port, killed on drop.
pub struct ChromeDriver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl ChromeDriver {
    pub async fn start() -> Self {
        assert!(
            Path::new(CHROMEDRIVER).exists(),
            "{CHROMEDRIVER} is missing: install Debian's chromium and chromium-driver \
             (apt-get install chromium chromium-driver; .ci/run does it)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = driver.call(reqwest::Method::GET, "/status", None).await
                && status["value"]["ready"] == true
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "ChromeDriver did not answer ready on {} within 20 s",
                driver.url
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One WebDriver command: the answer's JSON, or an error naming the
    /// command and what ChromeDriver said.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(serde_json::to_string(&body).unwrap());
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("{method} {path}: {e}: {text}"))?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(format!(
                "{method} {path}: {status}: {} {}",
                value["value"]["error"], value["value"]["message"]
            ))
        }
    }

    pub async fn new_session(&self, profile: &Path) -> Session<'_> {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=900,1100",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let answer = self
            .call(reqwest::Method::POST, "/session", Some(capabilities))
            .await
            .unwrap_or_else(|e| panic!("cannot start Chromium: {e}"));
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {answer}"))
            .to_string();
        Session {
            driver: self,
            id,
            open: true,
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session, deleted on drop if the test did not get to `quit`.
pub struct Session<'a> {
    driver: &'a ChromeDriver,
    id: String,
    open: bool,
}

impl Session<'_> {
    pub async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.id);
        let answer = self
            .driver
            .call(method, &path, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        answer["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub async fn find(&self, css: &str) -> String {
        self.try_find(css)
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    pub async fn try_find(&self, css: &str) -> Result<String, String> {
        let path = format!("/session/{}/element", self.id);
        let body = json!({"using": "css selector", "value": css});
        let answer = self
            .driver
            .call(reqwest::Method::POST, &path, Some(body))
            .await?;
        answer["value"][ELEMENT]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no element reference in {answer}"))
    }

    pub async fn type_into(&self, element: &str, text: &str) {
        let path = format!("/element/{element}/value");
        self.command(reqwest::Method::POST, &path, Some(json!({"text": text})))
            .await;
    }

    pub async fn click(&self, element: &str) {
        let path = format!("/element/{element}/click");
        self.command(reqwest::Method::POST, &path, Some(json!({})))
            .await;
    }

    pub async fn try_h1(&self) -> Result<String, String> {
        let h1 = self.try_find("h1").await?;
        let path = format!("/session/{}/element/{h1}/text", self.id);
        let answer = self.driver.call(reqwest::Method::GET, &path, None).await?;
        Ok(answer["value"].as_str().unwrap_or_default().to_string())
    }

    pub async fn h1(&self) -> String {
        self.try_h1().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits (10 s at most) for the page showing `expected` as its title:
    /// a click may return before the next page has loaded.
    pub async fn wait_for_h1(&self, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let h1 = self.try_h1().await;
            if h1.as_deref() == Ok(expected) {
                return;
            }
            if Instant::now() >= deadline {
                let source = self.command(reqwest::Method::GET, "/source", None).await;
                panic!(
                    "expected the heading {expected:?}, found {h1:?} in:\n{}",
                    source.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `script` (a function body: `return …`) in the page and
    /// returns its value.
    pub async fn execute(&self, script: &str) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits (`timeout` at most) until `script` returns a string that
    /// `done` accepts, and returns it; the page is never reloaded here.
    pub async fn wait_for_value(
        &self,
        what: &str,
        script: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            // (A page that is reloading may fail a script: try again.)
            let path = format!("/session/{}/execute/sync", self.id);
            let body = json!({"script": script, "args": []});
            let value = self
                .driver
                .call(reqwest::Method::POST, &path, Some(body))
                .await
                .map(|answer| answer["value"].as_str().unwrap_or_default().to_string());
            if let Ok(value) = &value
                && done(value)
            {
                return value.clone();
            }
            if Instant::now() >= deadline {
                let source = self.command(reqwest::Method::GET, "/source", None).await;
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last value {value:?}; the page:\n{}",
                    source.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn screenshot(&self) -> Vec<u8> {
        let value = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(value.as_str().expect("no screenshot in the answer"))
            .expect("the screenshot is not base64")
    }

    pub async fn quit(mut self) {
        self.open = false;
        self.command(reqwest::Method::DELETE, "", None).await;
    }
}

impl Drop for Session<'_> {
    /// After a failure: closes the browser with a plain blocking request, as
    /// nothing can be awaited here (ChromeDriver does not need this runtime).
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let addr = self.driver.url.trim_start_matches("http://");
        let Ok(mut stream) = TcpStream::connect(addr) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.id
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return;
        }
        // ChromeDriver keeps the connection open despite `Connection: close`:
        // read until the whole answer is in, so that the browser is gone.
        let mut answer = Vec::new();
        let mut chunk = [0; 1024];
        while let Ok(n @ 1..) = stream.read(&mut chunk) {
            answer.extend_from_slice(&chunk[..n]);
            if answer_complete(&answer) {
                break;
            }
        }
    }
}

/// Whether `answer` holds an HTTP answer's head and all its body.
fn answer_complete(answer: &[u8]) -> bool {
    let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    answer.len() >= head_end + 4 + length
}
