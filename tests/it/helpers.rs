//! Real parts for the tests: a fresh database per test (SQLite in a temp
//! dir, or its own Postgres database), an SMTP server on loopback that
//! records what it receives, and a configuration written to a temp dir.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gazette::config::{self, Settings};
use gazette::delivery::Engine;
use mailin_embedded::response::{self, Response};
use mailin_embedded::{Handler, Server, SslConfig};

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

/// One message as the SMTP server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
}

impl Received {
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.data)
            .expect("the received message does not parse as MIME")
    }
}

#[derive(Clone, Default)]
struct Recorder {
    inbox: Arc<Mutex<Vec<Received>>>,
    /// Recipients answered with a 550 at RCPT.
    reject: Arc<Vec<String>>,
    current: Option<Received>,
}

impl Handler for Recorder {
    fn rcpt(&mut self, to: &str) -> Response {
        if self.reject.iter().any(|r| r.eq_ignore_ascii_case(to)) {
            response::NO_MAILBOX
        } else {
            response::OK
        }
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.current = Some(Received {
            from: from.to_string(),
            to: to.to_vec(),
            data: Vec::new(),
        });
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(c) = self.current.as_mut() {
            c.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        if let Some(c) = self.current.take() {
            self.inbox.lock().unwrap().push(c);
        }
        response::OK
    }
}

/// A real SMTP server on a loopback port, recording every message.
pub struct SmtpServer {
    pub port: u16,
    inbox: Arc<Mutex<Vec<Received>>>,
}

impl SmtpServer {
    pub fn start() -> Self {
        Self::start_rejecting(&[])
    }

    /// Answers 550 to RCPT for the given addresses.
    pub fn start_rejecting(reject: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let recorder = Recorder {
            reject: Arc::new(reject.iter().map(|s| s.to_string()).collect()),
            ..Recorder::default()
        };
        let inbox = recorder.inbox.clone();
        let mut server = Server::new(recorder);
        server
            .with_name("smtp.test")
            .with_ssl(SslConfig::None)
            .unwrap()
            .with_num_threads(4)
            .with_tcp_listener(listener);
        // The server lives as long as the test process.
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        Self { port, inbox }
    }

    pub fn received(&self) -> Vec<Received> {
        self.inbox.lock().unwrap().clone()
    }

    /// The messages addressed to `email` (envelope recipient).
    pub fn received_by(&self, email: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(email)))
            .collect()
    }
}

pub fn templates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("templates")
}

/// A working directory with a configuration file; `extra` is appended to
/// the generated TOML (for example `[[digests]]` sections).
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Workspace {
    pub fn new(db_url: &str, smtp_port: Option<u16>, extra: &str) -> Self {
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
[templates]
dir = "{templates}"
[delivery]
retry_base_ms = 50
retry_max_ms = 200
max_attempts = 3
{extra}
"#,
            outbox = dir.path().join("outbox").display(),
            port = smtp_port.unwrap_or(2525),
            templates = templates_dir().display(),
        );
        std::fs::write(&config, text).unwrap();
        Self { dir, config }
    }

    pub fn settings(&self) -> Settings {
        config::load(self.dir.path(), Some(&self.config))
            .expect("the test configuration is invalid")
    }

    pub async fn engine(&self) -> Engine {
        gazette::app::open(self.settings())
            .await
            .expect("cannot open the engine")
    }

    pub fn outbox(&self) -> PathBuf {
        self.dir.path().join("outbox")
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

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
