//! Opening a connection to the relay: our own TCP stream with
//! TCP_NODELAY, TLS from the first byte or STARTTLS, EHLO and AUTH.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::reply::{SendError, classify, with_timeout};
use crate::config::{SmtpSettings, TlsMode};

/// An open SMTP session.
pub(super) struct Connection {
    pub(super) smtp: AsyncSmtpConnection,
    /// The connection under a plain-text or implicit-TLS session (not
    /// STARTTLS) whose relay offers PIPELINING (RFC 2920): a transaction is
    /// then two writes instead of four command-and-reply round trips (see
    /// [`SmtpSender::send_pipelined`]).
    pub(super) pipelined: Option<SharedStream>,
}

/// What an SMTP session runs over: a TCP stream, or TLS over one.
trait Wire: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Wire for T {}

/// The connection under an SMTP session, shared between lettre's session,
/// which reads every reply and sends the commands of the greeting, EHLO and
/// AUTH, and our pipelined transactions, which write to it directly. Only
/// one of them uses it at a time; the lock is never held across an await.
#[derive(Clone)]
pub(super) struct SharedStream {
    wire: Arc<std::sync::Mutex<Box<dyn Wire>>>,
    peer: std::net::SocketAddr,
    /// What the relay says while this is set: the greeting and the EHLO
    /// reply, read for its extensions (lettre keeps only those it uses).
    heard: Arc<Heard>,
}

#[derive(Default)]
struct Heard {
    listening: std::sync::atomic::AtomicBool,
    bytes: std::sync::Mutex<Vec<u8>>,
}

impl Heard {
    fn record(&self, bytes: &[u8]) {
        if self.listening.load(std::sync::atomic::Ordering::Relaxed) {
            let mut heard = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
            heard.extend_from_slice(bytes);
        }
    }

    /// Stops recording; whether what was heard offers PIPELINING.
    fn offers_pipelining(&self) -> bool {
        self.listening
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let heard = std::mem::take(&mut *self.bytes.lock().unwrap_or_else(|e| e.into_inner()));
        String::from_utf8_lossy(&heard).lines().any(|line| {
            line.strip_prefix("250")
                .and_then(|rest| rest.strip_prefix(['-', ' ']))
                .is_some_and(|keyword| keyword.trim().eq_ignore_ascii_case("PIPELINING"))
        })
    }
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
        let before = buf.filled().len();
        let read = self.with(|s| s.poll_read(cx, buf));
        if matches!(read, Poll::Ready(Ok(()))) {
            self.heard.record(&buf.filled()[before..]);
        }
        read
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

/// A failed TLS handshake. A certificate that does not chain to a trusted
/// authority, has expired or names another host is a configuration error
/// (with a hint when its authority is unknown); anything else may pass on
/// another try.
fn tls_failure(what: &str, s: &SmtpSettings, e: &dyn std::fmt::Display) -> SendError {
    let mut message = format!("{what} {}:{}: {e}", s.host, s.port);
    if message.contains("UnknownIssuer") {
        message.push_str(" (a private relay's certificate authority goes in smtp.ca_file)");
    }
    if message.contains("invalid peer certificate") {
        SendError::Setup(message)
    } else {
        SendError::Transient(message)
    }
}

/// The public certificate authorities and those of `smtp.ca_file`.
fn roots(s: &SmtpSettings) -> Result<rustls::RootCertStore, SendError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in &s.extra_roots {
        roots
            .add(cert.clone())
            .map_err(|e| SendError::Setup(format!("smtp.ca_file: unusable certificate: {e}")))?;
    }
    Ok(roots)
}

/// TLS from the first byte (`smtp.tls = "tls"`).
fn tls_config(s: &SmtpSettings) -> Result<Arc<rustls::ClientConfig>, SendError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SendError::Setup(format!("TLS setup for {}: {e}", s.host)))?
        .with_root_certificates(roots(s)?)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// STARTTLS, which lettre performs, trusting the same authorities.
fn starttls_parameters(s: &SmtpSettings) -> Result<TlsParameters, SendError> {
    let mut builder = TlsParameters::builder(s.host.clone());
    for cert in &s.extra_roots {
        let cert = lettre::transport::smtp::client::Certificate::from_der(cert.to_vec())
            .map_err(|e| SendError::Setup(format!("smtp.ca_file: unusable certificate: {e}")))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build_rustls()
        .map_err(|e| SendError::Setup(format!("TLS setup for {}: {e}", s.host)))
}

/// Opens a connection: our own TCP stream with TCP_NODELAY (lettre
/// leaves Nagle on, which costs ~40 ms per message), then STARTTLS and
/// AUTH as configured.
pub(super) async fn connect(
    settings: &SmtpSettings,
    hello: &ClientId,
) -> Result<Connection, SendError> {
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
            let name = rustls::pki_types::ServerName::try_from(s.host.clone())
                .map_err(|e| SendError::Setup(format!("smtp.host `{}` for TLS: {e}", s.host)))?;
            let tls = tokio::time::timeout(
                s.timeout,
                tokio_rustls::TlsConnector::from(tls_config(s)?).connect(name, tcp),
            )
            .await
            .map_err(|_| transient("timed out in the TLS handshake with", &"no answer"))?
            .map_err(|e| tls_failure("TLS handshake failed with", s, &e))?;
            Box::new(tls)
        }
    };
    let heard = Arc::new(Heard::default());
    heard.listening.store(
        s.tls != TlsMode::Starttls,
        std::sync::atomic::Ordering::Relaxed,
    );
    let stream = SharedStream {
        wire: Arc::new(std::sync::Mutex::new(stream)),
        peer,
        heard: heard.clone(),
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
    // lettre keeps only the extensions it uses: whether the relay
    // pipelines is read from its EHLO reply as it came (a second EHLO
    // would be refused by strict servers: "503 Duplicate HELO/EHLO").
    let pipelined = shared.filter(|_| heard.offers_pipelining());
    if s.tls == TlsMode::Starttls {
        if !conn.can_starttls() {
            return Err(SendError::Setup(format!(
                "SMTP relay {}:{} does not offer STARTTLS (set smtp.tls = \"none\" only for a trusted relay)",
                s.host, s.port
            )));
        }
        with_timeout(s.timeout, conn.starttls(starttls_parameters(s)?, hello))
            .await
            .map_err(|e| tls_failure("STARTTLS failed with", s, &e))?;
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
                // (A refusal is the credentials': nothing to retry.)
                match classify(&format!("SMTP authentication failed{hint}"), &e) {
                    SendError::Permanent(m) | SendError::NoMailbox(m) => SendError::Setup(m),
                    other => other,
                }
            })?;
    }
    Ok(Connection {
        smtp: conn,
        pipelined,
    })
}
