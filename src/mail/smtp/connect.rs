//! Opening a connection to the relay: our own TCP stream with
//! TCP_NODELAY, TLS from the first byte or STARTTLS, EHLO and AUTH.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::Ehlo;
use lettre::transport::smtp::extension::ClientId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::reply::{SendError, classify, with_timeout};
use crate::config::{SmtpSettings, TlsMode};

/// An open SMTP session.
pub(super) struct Connection {
    pub(super) smtp: AsyncSmtpConnection,
    /// The connection under a session whose relay offers PIPELINING (RFC
    /// 2920), in plain text or TLS (from the first byte or after
    /// STARTTLS, where TLS is ours too): a transaction is
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

/// The relay's TLS client, built once with the settings.
fn tls_client(s: &SmtpSettings) -> Result<Arc<rustls::ClientConfig>, SendError> {
    s.tls_client
        .clone()
        .ok_or_else(|| SendError::Setup(format!("no TLS settings for {}", s.host)))
}

/// The TLS handshake on `tcp`, under our own TLS so that the socket keeps
/// TCP_NODELAY and our pipelined transactions can write to it.
async fn handshake(
    s: &SmtpSettings,
    tcp: TcpStream,
    what: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SendError> {
    let name = rustls::pki_types::ServerName::try_from(s.host.clone())
        .map_err(|e| SendError::Setup(format!("smtp.host `{}` for TLS: {e}", s.host)))?;
    let connector = tokio_rustls::TlsConnector::from(tls_client(s)?);
    tokio::time::timeout(s.timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| {
            SendError::Transient(format!(
                "timed out in the TLS handshake with {}:{}: no answer",
                s.host, s.port
            ))
        })?
        .map_err(|e| tls_failure(what, s, &e))
}

/// The plain-text start of a STARTTLS session (RFC 3207): the greeting,
/// EHLO, and STARTTLS, read and written here so that TLS is ours. The EHLO
/// reply is only read for STARTTLS: what the relay offers counts after the
/// handshake, where lettre sends EHLO again.
async fn starttls(
    s: &SmtpSettings,
    tcp: TcpStream,
    hello: &ClientId,
) -> Result<TcpStream, SendError> {
    use tokio::io::{AsyncWriteExt, BufReader};
    let at = format!("{}:{}", s.host, s.port);
    let mut io = BufReader::new(tcp);
    let exchange = async {
        let greeting = read_reply(&mut io).await?;
        if !greeting.starts_with('2') {
            return Ok(Err(SendError::Transient(format!(
                "SMTP greeting failed at {at}: {}",
                greeting.trim_end()
            ))));
        }
        io.write_all(format!("{}", Ehlo::new(hello.clone())).as_bytes())
            .await?;
        io.flush().await?;
        let ehlo = read_reply(&mut io).await?;
        let offers = ehlo.lines().any(|line| {
            line.get(4..)
                .is_some_and(|keyword| keyword.trim().eq_ignore_ascii_case("STARTTLS"))
        });
        if !ehlo.starts_with('2') || !offers {
            return Ok(Err(SendError::Setup(format!(
                "SMTP relay {at} does not offer STARTTLS (set smtp.tls = \"none\" only for a trusted relay)"
            ))));
        }
        io.write_all(b"STARTTLS\r\n").await?;
        io.flush().await?;
        let ready = read_reply(&mut io).await?;
        if !ready.starts_with('2') {
            return Ok(Err(SendError::Transient(format!(
                "STARTTLS refused by {at}: {}",
                ready.trim_end()
            ))));
        }
        Ok::<_, std::io::Error>(Ok(()))
    };
    match tokio::time::timeout(s.timeout, exchange).await {
        Err(_) => Err(SendError::Transient(format!(
            "timed out starting TLS with {at}: no answer"
        ))),
        Ok(Err(e)) => Err(SendError::Transient(format!(
            "STARTTLS failed with {at}: {e}"
        ))),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Ok(Ok(()))) => {
            // Bytes after the reply to STARTTLS would have been written by
            // someone in the middle, to be taken as the relay's over TLS
            // (CVE-2011-0411): refused.
            if !io.buffer().is_empty() {
                return Err(SendError::Transient(format!(
                    "STARTTLS failed with {at}: plain text after the reply to STARTTLS"
                )));
            }
            Ok(io.into_inner())
        }
    }
}

/// One reply, all its lines (`250-…` up to `250 …`); an error if the relay
/// hangs up or sends a line that is not a reply.
async fn read_reply(io: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> std::io::Result<String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        // (A reply line is at most 512 bytes; more is not a relay.)
        let n = (&mut *io).take(4096).read_line(&mut line).await?;
        if n == 0 || !line.ends_with('\n') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the relay hung up",
            ));
        }
        let bytes = line.as_bytes();
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an SMTP reply: {:?}", line.trim_end()),
            ));
        }
        let more = bytes.get(3) == Some(&b'-');
        reply.push_str(&line);
        if !more {
            return Ok(reply);
        }
    }
}

/// What lettre reads first on a connection, which after STARTTLS has no
/// greeting of its own (RFC 3207: the session starts over with EHLO).
struct Greeted<S> {
    greeting: &'static [u8],
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Greeted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.greeting.is_empty() {
            let n = self.greeting.len().min(buf.remaining());
            buf.put_slice(&self.greeting[..n]);
            self.greeting = &self.greeting[n..];
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Greeted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
        TlsMode::None => Box::new(tcp),
        TlsMode::Tls => Box::new(handshake(s, tcp, "TLS handshake failed with").await?),
        TlsMode::Starttls => {
            let tcp = starttls(s, tcp, hello).await?;
            let tls = handshake(s, tcp, "STARTTLS failed with").await?;
            Box::new(Greeted {
                greeting: b"220 TLS started\r\n",
                inner: tls,
            })
        }
    };
    let heard = Arc::new(Heard::default());
    heard
        .listening
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let stream = SharedStream {
        wire: Arc::new(std::sync::Mutex::new(stream)),
        peer,
        heard: heard.clone(),
    };
    let shared = stream.clone();
    let mut conn = with_timeout(
        s.timeout,
        AsyncSmtpConnection::connect_with_transport(Box::new(stream), hello),
    )
    .await
    .map_err(|e| transient("SMTP greeting failed at", &e))?;
    // lettre keeps only the extensions it uses: whether the relay
    // pipelines is read from its EHLO reply as it came (a second EHLO
    // would be refused by strict servers: "503 Duplicate HELO/EHLO").
    // After STARTTLS that is the reply to the EHLO sent over TLS.
    let pipelined = heard.offers_pipelining().then_some(shared);
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
