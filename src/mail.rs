//! Turning a rendered digest into a MIME message, and sending it: over SMTP
//! on long-lived connections, or into an outbox directory of `.eml` files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use lettre::address::Envelope;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;

use crate::config::{Settings, SmtpSettings, TlsMode, TransportKind};
use crate::render::{Rendered, one_line};

/// The headers that identify one email of a run.
#[derive(Debug, Clone)]
pub struct MessageMeta<'a> {
    pub from: &'a Mailbox,
    pub to_email: &'a str,
    pub to_name: Option<&'a str>,
    pub message_id: String,
    /// List-Id and List-Unsubscribe: digests have them, a confirmation
    /// email does not.
    pub list: Option<ListHeaders>,
    pub date: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct ListHeaders {
    pub list_id: String,
    pub unsubscribe_url: String,
}

/// `<digest.run.subscriber@domain>`: the same for every attempt of a
/// delivery, so a receiver can drop a copy re-sent after a crash.
pub fn message_id(from: &Mailbox, digest: &str, run: Option<i64>, subscriber: i64) -> String {
    let run = run.map_or_else(|| "preview".to_string(), |r| r.to_string());
    format!("<{digest}.{run}.{subscriber}@{}>", from.email.domain())
}

/// `Title <digest.domain>` (RFC 2919).
pub fn list_id(from: &Mailbox, digest: &str, title: &str) -> String {
    format!("{} <{digest}.{}>", one_line(title), from.email.domain())
}

fn raw_header(name: &'static str, value: String) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value)
}

/// Builds the multipart/alternative message (text first, then HTML).
pub fn build_message(env: &MessageMeta<'_>, body: &Rendered) -> Result<lettre::Message> {
    let address = env
        .to_email
        .parse()
        .with_context(|| format!("invalid recipient address `{}`", env.to_email))?;
    let to = Mailbox::new(env.to_name.map(one_line).filter(|n| !n.is_empty()), address);
    let mut builder = lettre::Message::builder()
        .from(env.from.clone())
        .to(to)
        .subject(one_line(&body.subject))
        .date(env.date.into())
        .message_id(Some(env.message_id.clone()));
    if let Some(list) = &env.list {
        builder = builder
            .raw_header(raw_header("List-Id", list.list_id.clone()))
            .raw_header(raw_header(
                "List-Unsubscribe",
                format!("<{}>", list.unsubscribe_url),
            ))
            .raw_header(raw_header(
                "List-Unsubscribe-Post",
                "List-Unsubscribe=One-Click".into(),
            ));
    }
    let message = builder
        .multipart(MultiPart::alternative_plain_html(
            body.text.clone(),
            body.html.clone(),
        ))
        .context("cannot build the email message")?;
    Ok(message)
}

// ---------------------------------------------------------------------------
// Sending

/// How a send failed, which decides what the ledger does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Try again later: a 4xx reply, a refused or dropped connection, a timeout.
    Transient(String),
    /// Do not try again: a 5xx reply for this recipient or message.
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transient(m) => write!(f, "temporary failure: {m}"),
            SendError::Permanent(m) => write!(f, "permanent failure: {m}"),
        }
    }
}

/// One worker's way out: each worker owns one, so SMTP connections are
/// never shared and stay open between messages.
pub enum Sender {
    Outbox(PathBuf),
    Smtp(Box<SmtpSender>),
}

impl Sender {
    pub fn new(settings: &Settings) -> Self {
        match settings.mail.transport {
            TransportKind::Outbox => Sender::Outbox(settings.mail.outbox_dir.clone()),
            TransportKind::Smtp => Sender::Smtp(Box::new(SmtpSender::new(settings.smtp.clone()))),
        }
    }

    /// Sends `message`; `file_stem` names its outbox file.
    pub async fn send(
        &mut self,
        message: &lettre::Message,
        file_stem: &str,
    ) -> Result<(), SendError> {
        match self {
            Sender::Outbox(dir) => write_eml(dir, file_stem, &message.formatted())
                .await
                .map(|_| ())
                .map_err(|e| SendError::Transient(format!("{e:#}"))),
            Sender::Smtp(smtp) => smtp.send(message.envelope(), &message.formatted()).await,
        }
    }

    pub async fn close(&mut self) {
        if let Sender::Smtp(smtp) = self {
            smtp.close().await;
        }
    }
}

/// Writes `bytes` to `dir/stem.eml` atomically (a temp file renamed), so a
/// reader never sees half a message and a retry overwrites the same file.
pub async fn write_eml(dir: &Path, stem: &str, bytes: &[u8]) -> Result<PathBuf> {
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("cannot create outbox directory {}", dir.display()))?;
    let path = dir.join(format!("{stem}.eml"));
    let tmp = dir.join(format!(".{stem}.eml.tmp"));
    tokio::fs::write(&tmp, bytes)
        .await
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    tokio::fs::rename(&tmp, &path)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// One SMTP connection, opened on first use and reopened after a failure.
pub struct SmtpSender {
    settings: SmtpSettings,
    conn: Option<AsyncSmtpConnection>,
}

impl SmtpSender {
    pub fn new(settings: SmtpSettings) -> Self {
        Self {
            settings,
            conn: None,
        }
    }

    /// Opens a connection: our own TCP stream with TCP_NODELAY (lettre
    /// leaves Nagle on, which costs ~40 ms per message), then STARTTLS and
    /// AUTH as configured.
    pub async fn connect(
        settings: &SmtpSettings,
        hello: &ClientId,
    ) -> Result<AsyncSmtpConnection, SendError> {
        let s = settings;
        let addr = (s.host.as_str(), s.port);
        let transient = |what: &str, e: &dyn std::fmt::Display| {
            SendError::Transient(format!("{what} {}:{}: {e}", s.host, s.port))
        };
        let mut conn = match s.tls {
            TlsMode::Tls => {
                let tls = TlsParameters::new(s.host.clone())
                    .map_err(|e| SendError::Permanent(format!("TLS setup for {}: {e}", s.host)))?;
                with_timeout(
                    s.timeout,
                    AsyncSmtpConnection::connect_tokio1(
                        addr,
                        Some(s.timeout),
                        hello,
                        Some(tls),
                        None,
                    ),
                )
                .await
                .map_err(|e| transient("cannot connect to SMTP relay", &e))?
            }
            TlsMode::None | TlsMode::Starttls => {
                let stream = tokio::time::timeout(s.timeout, TcpStream::connect(addr))
                    .await
                    .map_err(|_| transient("timed out connecting to SMTP relay", &"no answer"))?
                    .map_err(|e| transient("cannot connect to SMTP relay", &e))?;
                stream
                    .set_nodelay(true)
                    .map_err(|e| transient("cannot configure connection to", &e))?;
                with_timeout(
                    s.timeout,
                    AsyncSmtpConnection::connect_with_transport(Box::new(stream), hello),
                )
                .await
                .map_err(|e| transient("SMTP greeting failed at", &e))?
            }
        };
        if s.tls == TlsMode::Starttls {
            if !conn.can_starttls() {
                return Err(SendError::Transient(format!(
                    "SMTP relay {}:{} does not offer STARTTLS (set smtp.tls = \"none\" only for a trusted relay)",
                    s.host, s.port
                )));
            }
            let tls = TlsParameters::new(s.host.clone())
                .map_err(|e| SendError::Permanent(format!("TLS setup for {}: {e}", s.host)))?;
            with_timeout(s.timeout, conn.starttls(tls, hello))
                .await
                .map_err(|e| transient("STARTTLS failed with", &e))?;
        }
        if let (Some(user), Some(password)) = (&s.username, &s.password) {
            let credentials = Credentials::new(user.clone(), password.expose().to_string());
            let mechanisms = [
                lettre::transport::smtp::authentication::Mechanism::Plain,
                lettre::transport::smtp::authentication::Mechanism::Login,
            ];
            with_timeout(s.timeout, conn.auth(&mechanisms, &credentials))
                .await
                .map_err(|e| {
                    let hint = if e.status().map(|c| c.to_string()) == Some("535".into()) {
                        " (check smtp.username and smtp.password)"
                    } else {
                        ""
                    };
                    classify(&format!("SMTP authentication failed{hint}"), &e)
                })?;
        }
        Ok(conn)
    }

    async fn send(&mut self, envelope: &Envelope, bytes: &[u8]) -> Result<(), SendError> {
        if self.conn.as_ref().is_none_or(|c| c.has_broken()) {
            self.conn = Some(Self::connect(&self.settings, &hello_name(&self.settings)).await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        match with_timeout(self.settings.timeout, conn.send(envelope, bytes)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // After any failure the SMTP session state is unknown: start
                // the next message on a fresh connection.
                if let Some(mut conn) = self.conn.take() {
                    conn.abort().await;
                }
                Err(classify("SMTP relay refused the message", &e))
            }
        }
    }

    async fn close(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.quit()).await;
        }
    }
}

async fn with_timeout<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, TimeoutOr> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(TimeoutOr::Smtp(e)),
        Err(_) => Err(TimeoutOr::Timeout(limit)),
    }
}

#[derive(Debug)]
enum TimeoutOr {
    Smtp(lettre::transport::smtp::Error),
    Timeout(Duration),
}

impl TimeoutOr {
    fn status(&self) -> Option<lettre::transport::smtp::response::Code> {
        match self {
            TimeoutOr::Smtp(e) => e.status(),
            TimeoutOr::Timeout(_) => None,
        }
    }
}

impl std::fmt::Display for TimeoutOr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeoutOr::Smtp(e) => write!(f, "{e}"),
            TimeoutOr::Timeout(d) => write!(f, "no answer within {}s", d.as_secs()),
        }
    }
}

/// 5xx replies are permanent; everything else (4xx, I/O, timeouts) is worth
/// another attempt later.
fn classify(context: &str, e: &TimeoutOr) -> SendError {
    let message = format!("{context}: {e}");
    match e {
        TimeoutOr::Smtp(err) if err.is_permanent() => SendError::Permanent(message),
        _ => SendError::Transient(message),
    }
}

/// The name sent in EHLO: `smtp.hello_name`, or this machine's host name.
fn hello_name(settings: &SmtpSettings) -> ClientId {
    match &settings.hello_name {
        Some(name) => ClientId::Domain(name.clone()),
        None => ClientId::default(),
    }
}

/// Connects to the relay (and authenticates) without sending anything:
/// what `gazette check` does.
pub async fn check_relay(settings: &SmtpSettings) -> Result<(), SendError> {
    let mut conn = SmtpSender::connect(settings, &hello_name(settings)).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.quit()).await;
    Ok(())
}
