//! Real parts for the tests: a fresh database per test (SQLite in a temp
//! dir, or its own Postgres database), an SMTP server on loopback that
//! records what it receives, and a configuration written to a temp dir.

use std::path::{Path, PathBuf};

use gazette::config::{self, Settings};
use gazette::delivery::Engine;

pub use crate::smtp::SmtpServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one test per backend from `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

/// The Postgres server the tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("GAZETTE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database that exists for one test and is dropped after it.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/gazette.db", dir.path().display());
                Self {
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                use sqlx::Connection;
                let name = format!("gazette_test_{}", &gazette::domain::new_token()[..16]);
                let mut admin = sqlx::PgConnection::connect(&postgres_admin_url())
                    .await
                    .expect("cannot reach Postgres: is it running on 127.0.0.1:5432?");
                sqlx::query(&format!("create database {name}"))
                    .execute(&mut admin)
                    .await
                    .unwrap();
                admin.close().await.unwrap();
                let admin_url = postgres_admin_url();
                let base = admin_url.rsplit_once('/').unwrap().0;
                Self {
                    url: format!("{base}/{name}"),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs outside async: use a runtime of its own on a thread.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut admin) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::query(&format!("drop database if exists {name} with (force)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join()
        .ok();
    }
}

pub fn templates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")
}

/// Copies the directory `from`, with its subdirectories, to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Accepts connections on 127.0.0.1:`port` (0: any free port) on a thread
/// and runtime of its own, so that a test may block (running the
/// `gazette` binary) while it serves; `answer` serves each connection.
/// Returns the address it listens on.
pub fn serve_on_own_thread<F, Fut>(port: u16, answer: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(answer(stream, peer));
            }
        });
    });
    rx.recv().unwrap()
}

/// A working directory with a configuration file; `extra` is appended to
/// the generated TOML (for example `[[digests]]` sections).
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Workspace {
    pub fn new(db_url: &str, smtp_port: Option<u16>, extra: &str) -> Self {
        Self::with_delivery(
            db_url,
            smtp_port,
            "retry_base_ms = 50\nretry_max_ms = 200\nmax_attempts = 3",
            extra,
        )
    }

    /// `delivery` holds the keys of the `[delivery]` table.
    pub fn with_delivery(
        db_url: &str,
        smtp_port: Option<u16>,
        delivery: &str,
        extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gazette.toml");
        let transport = match smtp_port {
            Some(_) => "smtp",
            None => "outbox",
        };
        let text = format!(
            r#"
[database]
url = "{db_url}"
[mail]
transport = "{transport}"
outbox_dir = "{outbox}"
from = "Gazette Test <digest@news.example.org>"
[smtp]
host = "127.0.0.1"
port = {port}
tls = "none"
pool_size = 3
timeout_secs = 10
[web]
base_url = "https://news.example.org/"
bind = "127.0.0.1:0"
token_key = "a test key of at least thirty-two characters"
[templates]
dir = "{templates}"
[delivery]
{delivery}
{extra}
"#,
            outbox = dir.path().join("outbox").display(),
            port = smtp_port.unwrap_or(2525),
            templates = templates_dir().display(),
        );
        std::fs::write(&config, text).unwrap();
        Self { dir, config }
    }

    /// Replaces the `[smtp]` table's `tls = "none"` with `lines`.
    pub fn set_smtp(&self, lines: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains("tls = \"none\"\n"));
        std::fs::write(&self.config, text.replacen("tls = \"none\"\n", lines, 1)).unwrap();
    }

    pub fn settings(&self) -> Settings {
        config::load_from(self.dir.path(), Some(&self.config), [])
            .expect("the test configuration is invalid")
    }

    pub async fn engine(&self) -> Engine {
        self.engine_with_env(&[]).await
    }

    /// [`Workspace::engine`] with these environment variables.
    pub async fn engine_with_env(&self, env: &[(&str, &str)]) -> Engine {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let settings = config::load_from(self.dir.path(), Some(&self.config), env)
            .expect("the test configuration is invalid");
        gazette::app::open(settings)
            .await
            .expect("cannot open the engine")
    }

    pub fn outbox(&self) -> PathBuf {
        self.dir.path().join("outbox")
    }

    /// Writes a subscribers CSV of `n` readers (`reader{i}@example.org`)
    /// and imports it with the binary.
    pub fn import_readers(&self, n: usize) {
        let mut csv = String::from("email,name,digests\n");
        for i in 0..n {
            csv.push_str(&format!("reader{i}@example.org,Reader {i},\n"));
        }
        let path = self.dir.path().join("readers.csv");
        std::fs::write(&path, csv).unwrap();
        let out = self.run(&["subscribers", "import", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    /// Adds one article published a minute ago.
    pub fn add_article(&self, title: &str) {
        let at = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
        let url = format!("https://example.org/{}", title.replace(' ', "-"));
        let out = self.run(&[
            "articles",
            "add",
            "--url",
            &url,
            "--title",
            title,
            "--published-at",
            &at,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    /// Starts the `gazette` binary in this workspace without waiting.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.spawn_with_env(args, &[])
    }

    /// [`Workspace::spawn`] with these environment variables.
    pub fn spawn_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
            .args(args)
            .current_dir(self.dir.path())
            .env("GAZETTE_CONFIG", &self.config)
            .envs(env.iter().copied())
            .env_remove("GAZETTE_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("cannot start the gazette binary")
    }

    /// Runs the `gazette` binary in this workspace.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
            .args(args)
            .current_dir(self.dir.path())
            .env("GAZETTE_CONFIG", &self.config)
            .env_remove("GAZETTE_LOG")
            .output()
            .expect("cannot run the gazette binary")
    }
}

/// Kills `child` with SIGKILL (no chance to clean up) and reaps it.
pub fn kill_9(child: &mut std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait();
}

/// A daily digest section, with overrides appended.
pub fn digest_section(name: &str, extra: &str) -> String {
    format!(
        r#"
[[digests]]
name = "{name}"
title = "The {name} Digest"
schedule = "0 7 * * *"
timezone = "Europe/Berlin"
window = "7d"
{extra}
"#
    )
}

/// Polls `done` until it holds (at most 60 s).
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A child process's standard error, read line by line on a thread of its
/// own: a test waits for what the process says it did.
pub struct Log {
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Log {
    /// Takes `child`'s (piped) standard error.
    pub fn of(child: &mut std::process::Child) -> Self {
        let stderr = child
            .stderr
            .take()
            .expect("the child's stderr is not piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line that `matches` (at most 60 s) and returns it.
    pub fn wait_for(&mut self, what: &str, mut matches: impl FnMut(&str) -> bool) -> String {
        use std::sync::mpsc::RecvTimeoutError;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "timed out waiting for {what}; the log so far:\n{}",
                        self.seen.join("\n")
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the log ended before {what}:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// The whole log, once the process has closed it (exited).
    pub fn all(mut self) -> String {
        self.seen.extend(self.lines.iter());
        self.seen.join("\n")
    }
}

/// How many messages beyond one each reader got, checking that every copy
/// of a message carries the same Message-ID (so receivers can drop it).
pub fn duplicates(smtp: &SmtpServer, readers: usize) -> usize {
    let mut extra = 0;
    for i in 0..readers {
        let got = smtp.received_by(&format!("reader{i}@example.org"));
        assert!(!got.is_empty(), "reader{i} received nothing");
        let first = got[0].message_id();
        assert!(
            got.iter().all(|m| m.message_id() == first),
            "copies with different Message-IDs"
        );
        extra += got.len() - 1;
    }
    extra
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
