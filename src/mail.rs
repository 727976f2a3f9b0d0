//! Turning a rendered digest into a MIME message, and sending it: over SMTP
//! on long-lived connections, or into an outbox directory of `.eml` files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use lettre::address::Envelope;
use lettre::message::header::{ContentTransferEncoding, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::response::Response;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
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

/// Encodes message bodies as quoted-printable with CRLF line ends, one line
/// at a time, and remembers the lines it has encoded.
///
/// Quoted-printable is line-local: a hard line break ends every soft-wrapped
/// line, so encoding a body line by line gives exactly the bytes of encoding
/// it whole. The emails of one run share nearly all their lines (the
/// articles, the layout), and only the few lines with a reader's name,
/// address or links differ, so a worker that keeps one encoder encodes the
/// shared lines once. The memory it holds is bounded: when full, it starts
/// over.
#[derive(Default)]
pub struct BodyEncoder {
    lines: HashMap<Box<str>, Box<[u8]>, foldhash::fast::RandomState>,
    /// Bytes held in `lines`, keys and values.
    held: usize,
}

impl BodyEncoder {
    /// At most this many bytes of lines are remembered.
    const MAX_HELD: usize = 256 << 10;

    /// `text` as a quoted-printable body: LF and CRLF both end a line, and
    /// every line ends in CRLF on the wire.
    pub fn encode(&mut self, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + text.len() / 16);
        let mut lines = text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            match self.lines.get(line) {
                Some(encoded) => out.extend_from_slice(encoded),
                None => {
                    let start = out.len();
                    encode_line(line.as_bytes(), &mut out);
                    let encoded = &out[start..];
                    let size = line.len() + encoded.len();
                    if self.held + size > Self::MAX_HELD {
                        self.lines.clear();
                        self.held = 0;
                    }
                    self.held += size;
                    self.lines.insert(line.into(), encoded.into());
                }
            }
            if lines.peek().is_some() {
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    /// Both bodies of `rendered`.
    pub fn bodies(&mut self, rendered: &Rendered) -> EncodedBodies {
        EncodedBodies {
            text: self.encode(&rendered.text),
            html: self.encode(&rendered.html),
        }
    }
}

/// `text` as a quoted-printable body, appended to `out`: the encoding of
/// [`BodyEncoder::encode`], without its memory of lines.
pub fn encode_body(text: &str, out: &mut Vec<u8>) {
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        encode_line(line.as_bytes(), out);
        if lines.peek().is_some() {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The longest encoded line, without its line end (RFC 2045, 6.7).
const QP_LIMIT: usize = 76;

/// One line (no LF in it) as quoted-printable, appended to `out`: the same
/// bytes as the `quoted_printable` crate's `encode` of the line (the tests
/// compare them), written in place instead of a character at a time into
/// a string of its own. Runs of printable ASCII are copied whole; `=`,
/// control and non-ASCII bytes become `=XX`; a space or tab at the end of
/// the line is encoded; a soft line break (`=` CRLF) keeps every line
/// within 76 characters.
fn encode_line(line: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // The bytes written as they are: tab and printable ASCII but `=`.
    const LITERAL: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = b' ';
        while b <= b'~' {
            table[b as usize] = b != b'=';
            b += 1;
        }
        table[b'\t' as usize] = true;
        table
    };
    let literal = |b: u8| LITERAL[usize::from(b)];
    // Appends one token (a byte or its `=XX`), breaking the line first if
    // it would not fit: before the previous token when the line is full.
    fn append(out: &mut Vec<u8>, token: &[u8], on_line: &mut usize, backup: &mut usize) {
        if *on_line + token.len() > QP_LIMIT {
            if *on_line == QP_LIMIT {
                *on_line = out.len() - *backup;
                out.splice(*backup..*backup, *b"=\r\n");
            } else {
                out.extend_from_slice(b"=\r\n");
                *on_line = 0;
            }
        }
        out.extend_from_slice(token);
        *on_line += token.len();
        *backup = out.len() - token.len();
    }
    let start = out.len();
    out.reserve(line.len() + line.len() / 8);
    let mut on_line = 0;
    let mut backup = start;
    let mut i = 0;
    while i < line.len() {
        let byte = line[i];
        if QP_LIMIT - on_line >= 3 && literal(byte) {
            let stop = line.len().min(i + QP_LIMIT - on_line - 2);
            let end = line[i + 1..stop]
                .iter()
                .position(|&b| !literal(b))
                .map_or(stop, |at| i + 1 + at);
            out.extend_from_slice(&line[i..end]);
            on_line += end - i;
            backup = out.len();
            i = end;
            continue;
        }
        if literal(byte) {
            append(out, &[byte], &mut on_line, &mut backup);
        } else {
            let token = [
                b'=',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 15)],
            ];
            append(out, &token, &mut on_line, &mut backup);
        }
        i += 1;
    }
    if out.len() > start {
        let token: &[u8] = match out[out.len() - 1] {
            b' ' => b"=20",
            b'\t' => b"=09",
            _ => return,
        };
        out.pop();
        on_line -= 1;
        append(out, token, &mut on_line, &mut backup);
    }
}

/// A message's two bodies, quoted-printable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBodies {
    pub text: Vec<u8>,
    pub html: Vec<u8>,
}

/// Builds the multipart/alternative message (text first, then HTML), both
/// parts quoted-printable.
pub fn build_message(
    env: &MessageMeta<'_>,
    subject: &str,
    bodies: EncodedBodies,
) -> Result<lettre::Message> {
    let address: lettre::Address = env
        .to_email
        .parse()
        .with_context(|| format!("invalid recipient address `{}`", env.to_email))?;
    // The envelope is given, so that lettre does not parse it back out of
    // the From and To headers it has just formatted.
    let envelope = Envelope::new(Some(env.from.email.clone()), vec![address.clone()])
        .context("cannot build the SMTP envelope")?;
    let to = Mailbox::new(env.to_name.map(one_line).filter(|n| !n.is_empty()), address);
    let mut builder = lettre::Message::builder()
        .envelope(envelope)
        .from(env.from.clone())
        .to(to)
        .subject(one_line(subject))
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
            Body::dangerous_pre_encoded(bodies.text, ContentTransferEncoding::QuotedPrintable),
            Body::dangerous_pre_encoded(bodies.html, ContentTransferEncoding::QuotedPrintable),
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
        self.send_then(message, file_stem, None).await
    }

    /// Sends `message`, and, over SMTP to a relay that pipelines, starts
    /// the transaction of the message that this sender sends next, whose
    /// envelope is `next` (see [`SmtpSender::send`]).
    pub async fn send_then(
        &mut self,
        message: &lettre::Message,
        file_stem: &str,
        next: Option<&Envelope>,
    ) -> Result<(), SendError> {
        match self {
            Sender::Outbox(dir) => write_eml(dir, file_stem, &message.formatted())
                .await
                .map(|_| ())
                .map_err(|e| SendError::Transient(format!("{e:#}"))),
            Sender::Smtp(smtp) => smtp.send(message, next).await,
        }
    }

    /// Whether [`Sender::send_then`] has a use for the next envelope: an
    /// open SMTP connection to a relay that pipelines.
    pub fn chains(&self) -> bool {
        matches!(self, Sender::Smtp(smtp) if smtp.conn.as_ref().is_some_and(|c| c.pipelined.is_some()))
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
    conn: Option<Connection>,
    /// The bytes of one pipelined transaction, reused from message to message.
    out: Vec<u8>,
    /// The envelope whose MAIL, RCPT and DATA the relay has accepted: it
    /// waits for that message's content.
    primed: Option<Envelope>,
}

/// An open SMTP session.
struct Connection {
    smtp: AsyncSmtpConnection,
    /// The connection under a plain-text or implicit-TLS session (not
    /// STARTTLS) whose relay offers PIPELINING (RFC 2920): a transaction is
    /// then two writes instead of four command-and-reply round trips (see
    /// [`SmtpSender::send_pipelined`]).
    pipelined: Option<SharedStream>,
}

/// What an SMTP session runs over: a TCP stream, or TLS over one.
trait Wire: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Wire for T {}

/// The connection under an SMTP session, shared between lettre's session,
/// which reads every reply and sends the commands of the greeting, EHLO and
/// AUTH, and our pipelined transactions, which write to it directly. Only
/// one of them uses it at a time; the lock is never held across an await.
#[derive(Clone)]
struct SharedStream {
    wire: Arc<std::sync::Mutex<Box<dyn Wire>>>,
    peer: std::net::SocketAddr,
}

impl std::fmt::Debug for SharedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SMTP connection to {}", self.peer)
    }
}

impl SharedStream {
    fn with<T>(&self, f: impl FnOnce(Pin<&mut dyn Wire>) -> T) -> T {
        let mut wire = self.wire.lock().unwrap_or_else(|e| e.into_inner());
        f(Pin::new(&mut **wire))
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.with(|s| s.poll_read(cx, buf))
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.with(|s| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        self.with(|s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        self.with(|s| s.poll_shutdown(cx))
    }
}

impl AsyncTokioStream for SharedStream {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        Ok(self.peer)
    }
}

/// A TLS error, with a hint when the relay's certificate is not trusted.
fn tls_hint(e: &dyn std::fmt::Display) -> String {
    let message = e.to_string();
    if message.contains("UnknownIssuer") {
        format!("{message} (a private relay's certificate authority goes in smtp.ca_file)")
    } else {
        message
    }
}

/// The public certificate authorities and those of `smtp.ca_file`.
fn roots(s: &SmtpSettings) -> Result<rustls::RootCertStore, SendError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in &s.extra_roots {
        roots.add(cert.clone()).map_err(|e| {
            SendError::Permanent(format!("smtp.ca_file: unusable certificate: {e}"))
        })?;
    }
    Ok(roots)
}

/// TLS from the first byte (`smtp.tls = "tls"`).
fn tls_config(s: &SmtpSettings) -> Result<Arc<rustls::ClientConfig>, SendError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SendError::Permanent(format!("TLS setup for {}: {e}", s.host)))?
        .with_root_certificates(roots(s)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// STARTTLS, which lettre performs, trusting the same authorities.
fn starttls_parameters(s: &SmtpSettings) -> Result<TlsParameters, SendError> {
    let mut builder = TlsParameters::builder(s.host.clone());
    for cert in &s.extra_roots {
        let cert =
            lettre::transport::smtp::client::Certificate::from_der(cert.to_vec()).map_err(|e| {
                SendError::Permanent(format!("smtp.ca_file: unusable certificate: {e}"))
            })?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build_rustls()
        .map_err(|e| SendError::Permanent(format!("TLS setup for {}: {e}", s.host)))
}

impl SmtpSender {
    pub fn new(settings: SmtpSettings) -> Self {
        Self {
            settings,
            conn: None,
            out: Vec::new(),
            primed: None,
        }
    }

    /// Opens a connection: our own TCP stream with TCP_NODELAY (lettre
    /// leaves Nagle on, which costs ~40 ms per message), then STARTTLS and
    /// AUTH as configured.
    async fn connect(settings: &SmtpSettings, hello: &ClientId) -> Result<Connection, SendError> {
        let s = settings;
        let addr = (s.host.as_str(), s.port);
        let transient = |what: &str, e: &dyn std::fmt::Display| {
            SendError::Transient(format!("{what} {}:{}: {e}", s.host, s.port))
        };
        let tcp = tokio::time::timeout(s.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| transient("timed out connecting to SMTP relay", &"no answer"))?
            .map_err(|e| transient("cannot connect to SMTP relay", &e))?;
        tcp.set_nodelay(true)
            .map_err(|e| transient("cannot configure connection to", &e))?;
        let peer = tcp
            .peer_addr()
            .map_err(|e| transient("lost connection to", &e))?;
        let stream: Box<dyn Wire> = match s.tls {
            TlsMode::None | TlsMode::Starttls => Box::new(tcp),
            TlsMode::Tls => {
                // Our own TLS under lettre's session, so that the socket
                // keeps TCP_NODELAY (lettre's own connect leaves Nagle on).
                let name =
                    rustls::pki_types::ServerName::try_from(s.host.clone()).map_err(|e| {
                        SendError::Permanent(format!("smtp.host `{}` for TLS: {e}", s.host))
                    })?;
                let tls = tokio::time::timeout(
                    s.timeout,
                    tokio_rustls::TlsConnector::from(tls_config(s)?).connect(name, tcp),
                )
                .await
                .map_err(|_| transient("timed out in the TLS handshake with", &"no answer"))?
                .map_err(|e| transient("TLS handshake failed with", &tls_hint(&e)))?;
                Box::new(tls)
            }
        };
        let stream = SharedStream {
            wire: Arc::new(std::sync::Mutex::new(stream)),
            peer,
        };
        // After STARTTLS lettre encrypts inside its session: only a session
        // that is plain text, or TLS from the start, can be written to
        // directly.
        let shared = (s.tls != TlsMode::Starttls).then(|| stream.clone());
        let mut conn = with_timeout(
            s.timeout,
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), hello),
        )
        .await
        .map_err(|e| transient("SMTP greeting failed at", &e))?;
        // lettre keeps only the extensions it uses: ask again, before AUTH
        // (EHLO resets the session), whether the relay pipelines.
        let pipelined = match shared {
            Some(stream) => {
                let reply = with_timeout(s.timeout, conn.command(Ehlo::new(hello.clone())))
                    .await
                    .map_err(|e| transient("SMTP EHLO failed at", &e))?;
                reply
                    .message()
                    .skip(1)
                    .any(|line| line.trim().eq_ignore_ascii_case("PIPELINING"))
                    .then_some(stream)
            }
            None => None,
        };
        if s.tls == TlsMode::Starttls {
            if !conn.can_starttls() {
                return Err(SendError::Transient(format!(
                    "SMTP relay {}:{} does not offer STARTTLS (set smtp.tls = \"none\" only for a trusted relay)",
                    s.host, s.port
                )));
            }
            with_timeout(s.timeout, conn.starttls(starttls_parameters(s)?, hello))
                .await
                .map_err(|e| transient("STARTTLS failed with", &tls_hint(&e)))?;
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
        Ok(Connection {
            smtp: conn,
            pipelined,
        })
    }

    /// Sends `message` on this sender's connection, opened if need be.
    ///
    /// With `next`, the envelope of the message this sender sends right
    /// after, a relay that pipelines gets that message's MAIL, RCPT and DATA
    /// in the same write as this message's content (RFC 2920 lets message
    /// content open a group), so that each message costs one round trip
    /// instead of two. The relay then waits for that content: a call with
    /// another envelope drops the connection first, which never ends the
    /// waiting message with its dot, so nothing is delivered by it.
    async fn send(
        &mut self,
        message: &lettre::Message,
        next: Option<&Envelope>,
    ) -> Result<(), SendError> {
        let envelope = message.envelope();
        let bytes = message.formatted();
        // Non-ASCII addresses or content need ESMTP parameters that lettre
        // adds (SMTPUTF8, BODY=8BITMIME); our bodies are quoted-printable.
        let plain = bytes.is_ascii() && envelope_is_ascii(envelope);
        let mut primed = match self.primed.take() {
            Some(p) if plain && &p == envelope => true,
            Some(_) => {
                self.conn = None;
                false
            }
            None => false,
        };
        if self.conn.as_ref().is_none_or(|c| c.smtp.has_broken()) {
            primed = false;
            self.conn = Some(Self::connect(&self.settings, &hello_name(&self.settings)).await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let pipelined = conn.pipelined.clone().filter(|_| plain);
        let next = next.filter(|n| pipelined.is_some() && envelope_is_ascii(n));
        let limit = self.settings.timeout;
        let sent = match pipelined {
            Some(stream) => {
                let out = &mut self.out;
                let opening = (!primed).then_some(envelope);
                let send = Self::send_pipelined(&mut conn.smtp, stream, out, opening, &bytes, next);
                with_timeout(limit, send).await
            }
            None => with_timeout(limit, conn.smtp.send(envelope, &bytes)).await,
        };
        match sent {
            Ok(_) => {
                if let Some(next) = next {
                    // This message is accepted whatever comes now: a failure
                    // of the next envelope only drops the connection, and
                    // the next message starts afresh on a new one.
                    let replies = read_envelope_replies(&mut conn.smtp, next);
                    match with_timeout(limit, replies).await {
                        Ok(()) => self.primed = Some(next.clone()),
                        Err(_) => self.conn = None,
                    }
                }
                Ok(())
            }
            Err(e) => {
                // After any failure the SMTP session state is unknown: start
                // the next message on a fresh connection. (QUIT only where
                // the relay cannot be waiting for a message's content.)
                if let Some(mut conn) = self.conn.take()
                    && next.is_none()
                {
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.smtp.abort()).await;
                }
                Err(classify("SMTP relay refused the message", &e))
            }
        }
    }

    /// One transaction in two writes (RFC 2920): MAIL, RCPT and DATA of
    /// `opening` together (`None`: the relay accepted them already), then,
    /// once DATA is accepted, the dot-stuffed message and its final dot,
    /// followed by the commands of `next`. lettre reads and parses every
    /// reply.
    async fn send_pipelined(
        smtp: &mut AsyncSmtpConnection,
        mut stream: SharedStream,
        out: &mut Vec<u8>,
        opening: Option<&Envelope>,
        message: &[u8],
        next: Option<&Envelope>,
    ) -> Result<Response, TimeoutOr> {
        if let Some(envelope) = opening {
            out.clear();
            envelope_commands(envelope, out);
            write_all(&mut stream, out).await?;
            read_envelope_replies(smtp, envelope).await?;
        }
        dot_stuff(message, out);
        if let Some(next) = next {
            envelope_commands(next, out);
        }
        write_all(&mut stream, out).await?;
        Ok(smtp.read_response().await?)
    }

    async fn close(&mut self) {
        if self.primed.take().is_some() {
            // (The relay waits for a message: QUIT would be its content.)
            self.conn = None;
        }
        if let Some(mut conn) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.smtp.quit()).await;
        }
    }
}

fn envelope_is_ascii(envelope: &Envelope) -> bool {
    envelope
        .from()
        .is_none_or(|a| AsRef::<str>::as_ref(a).is_ascii())
        && envelope
            .to()
            .iter()
            .all(|a| AsRef::<str>::as_ref(a).is_ascii())
}

/// Appends MAIL, RCPT and DATA for `envelope` to `out`.
fn envelope_commands(envelope: &Envelope, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{}", Mail::new(envelope.from().cloned(), Vec::new()));
    for to in envelope.to() {
        let _ = write!(out, "{}", Rcpt::new(to.clone(), Vec::new()));
    }
    let _ = write!(out, "{Data}");
}

/// Reads the replies to MAIL, RCPT and DATA of `envelope`. Every reply is
/// read, so that the session stays in step even when one is negative; the
/// first negative one is the error. (A relay that accepted DATA after
/// refusing the sender or every recipient waits for a message: the caller
/// drops the connection.)
async fn read_envelope_replies(
    smtp: &mut AsyncSmtpConnection,
    envelope: &Envelope,
) -> Result<(), TimeoutOr> {
    let mut first_error = None;
    for _ in 0..envelope.to().len() + 2 {
        match smtp.read_response().await {
            Ok(_) => {}
            Err(e) if e.is_transient() || e.is_permanent() => {
                first_error.get_or_insert(e);
            }
            // The connection broke (after a 421, say): the reply that
            // came before says why.
            Err(e) => return Err(first_error.unwrap_or(e).into()),
        }
    }
    match first_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

async fn write_all(stream: &mut SharedStream, bytes: &[u8]) -> Result<(), TimeoutOr> {
    stream.write_all(bytes).await?;
    stream.flush().await?;
    Ok(())
}

/// The DATA content for `message`: a dot doubled at the start of every line
/// (RFC 5321, 4.5.2), then the final `CRLF . CRLF`.
fn dot_stuff(message: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(message.len() + 8);
    let mut start = 0;
    if message.first() == Some(&b'.') {
        out.push(b'.');
    }
    for at in memchr::memmem::find_iter(message, b"\r\n.") {
        out.extend_from_slice(&message[start..at + 2]);
        out.push(b'.');
        start = at + 2;
    }
    out.extend_from_slice(&message[start..]);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

async fn with_timeout<T, E: Into<TimeoutOr>>(
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, TimeoutOr> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(TimeoutOr::Timeout(limit)),
    }
}

#[derive(Debug)]
enum TimeoutOr {
    Smtp(lettre::transport::smtp::Error),
    /// Writing to the connection failed.
    Io(std::io::Error),
    Timeout(Duration),
}

impl From<lettre::transport::smtp::Error> for TimeoutOr {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        TimeoutOr::Smtp(e)
    }
}

impl From<std::io::Error> for TimeoutOr {
    fn from(e: std::io::Error) -> Self {
        TimeoutOr::Io(e)
    }
}

impl TimeoutOr {
    fn status(&self) -> Option<lettre::transport::smtp::response::Code> {
        match self {
            TimeoutOr::Smtp(e) => e.status(),
            TimeoutOr::Io(_) | TimeoutOr::Timeout(_) => None,
        }
    }
}

impl std::fmt::Display for TimeoutOr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeoutOr::Smtp(e) => write!(f, "{e}"),
            TimeoutOr::Io(e) => write!(f, "network error: {e}"),
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
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.smtp.quit()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::BodyEncoder;

    /// What lettre would send for `text`: CRLF line ends, then
    /// quoted-printable over the whole body.
    fn whole(text: &str) -> Vec<u8> {
        let crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
        quoted_printable::encode(crlf)
    }

    #[test]
    fn line_by_line_encoding_equals_encoding_the_whole_body() {
        let long = "word ".repeat(40);
        let samples = [
            String::new(),
            "one line".to_string(),
            "ends with a newline\n".to_string(),
            "Hello Zoë,\nhere are 3 new articles · today\n\n1. A = B\n".to_string(),
            "trailing space \ntrailing tab\t\nCRLF\r\nmixed\n".to_string(),
            format!("{long}\n{long}x\n.leading dot\n"),
            "a lone \r carriage return\n\n\n".to_string(),
            "€".repeat(60),
        ];
        let mut encoder = BodyEncoder::default();
        for round in 0..2 {
            for text in &samples {
                assert_eq!(
                    String::from_utf8(encoder.encode(text)).unwrap(),
                    String::from_utf8(whole(text)).unwrap(),
                    "round {round}, text {text:?}"
                );
                let decoded = quoted_printable::decode(
                    encoder.encode(text),
                    quoted_printable::ParseMode::Strict,
                )
                .unwrap();
                assert_eq!(
                    String::from_utf8(decoded).unwrap(),
                    text.replace("\r\n", "\n").replace('\n', "\r\n")
                );
            }
        }
    }

    #[test]
    fn lines_are_encoded_as_the_quoted_printable_crate_encodes_them() {
        // Every length up to well past two encoded lines, from pieces that
        // take each path: runs, `=`, spaces and tabs (also at the end),
        // control and multi-byte characters, at every offset.
        let pieces = ["a", " ", "\t", "=", "é", "€", "\r", ".", "~", "\u{1}"];
        for len in 0..200 {
            for seed in 0..pieces.len() {
                let line: String = (0..len)
                    .map(|i| {
                        let pick = (i * 7 + seed * 3 + i / 5) % (pieces.len() + 6);
                        pieces.get(pick).copied().unwrap_or("x")
                    })
                    .collect();
                let mut out = b"before".to_vec();
                super::encode_line(line.as_bytes(), &mut out);
                assert_eq!(
                    String::from_utf8_lossy(&out[6..]),
                    String::from_utf8_lossy(&quoted_printable::encode(&line)),
                    "line {line:?}"
                );
            }
        }
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_ends_the_data() {
        let mut out = Vec::new();
        super::dot_stuff(b".a\r\nb.\r\n.\r\n..c\r\nd\n.e", &mut out);
        assert_eq!(out, b"..a\r\nb.\r\n..\r\n...c\r\nd\n.e\r\n.\r\n");
        super::dot_stuff(b"x\r\n", &mut out);
        assert_eq!(out, b"x\r\n.\r\n");
    }

    #[test]
    fn the_encoder_forgets_lines_once_it_holds_its_limit() {
        let mut encoder = BodyEncoder::default();
        for i in 0..50_000 {
            let text = format!("reader number {i} of many, with a line long enough to add up\n");
            assert_eq!(encoder.encode(&text), whole(&text));
            assert!(encoder.held <= BodyEncoder::MAX_HELD);
        }
        assert!(encoder.lines.len() < 50_000);
    }
}
