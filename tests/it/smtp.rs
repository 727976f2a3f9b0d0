//! An SMTP server on a loopback port for the tests: it speaks enough of
//! RFC 5321 for any client (EHLO, MAIL, RCPT, DATA with dot-stuffing, RSET,
//! NOOP, QUIT), records every accepted message, and can be told to
//! misbehave the way real relays do: 4xx replies, 5xx for some recipients,
//! connections dropped in the middle of DATA or after it, slow replies.
//! It can also require TLS (STARTTLS, or TLS from the first byte, with the
//! certificate in `tests/fixtures/tls`) and AUTH PLAIN.
//!
//! Whatever the client does wrong (a command the server does not know, a
//! bare CR or LF, a line too long, a write after STARTTLS) and whatever
//! fails in a session (an I/O error other than the client hanging up, a
//! panic) is recorded, and fails the test at its next look at what the
//! server received, or when the server is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A loopback port with nothing listening on it (connections are refused).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One message as the server accepted it.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
    /// Whether the message came over TLS.
    pub encrypted: bool,
    /// The user the client authenticated as.
    pub user: Option<String>,
}

impl Received {
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.data)
            .expect("the received message does not parse as MIME")
    }

    pub fn message_id(&self) -> String {
        self.parsed().message_id().unwrap_or_default().to_string()
    }
}

/// What the server does with the n-th DATA transaction (counted from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Accept,
    /// `451 4.3.0`: try again later.
    TempFail,
    /// Close the connection after part of the message, before the final dot.
    DropMidData,
    /// Read the whole message, keep it, and close without replying: the
    /// client cannot know it was delivered.
    DropAfterData,
}

type Policy = Arc<dyn Fn(u64) -> Fault + Send + Sync>;

#[derive(Clone)]
pub struct Behaviour {
    /// Answered `550 5.1.1` at RCPT.
    pub reject: Vec<String>,
    pub policy: Policy,
    /// Waited before answering the end of DATA (a slow relay).
    pub delay: Duration,
    /// Offer PIPELINING (RFC 2920) in the EHLO reply, as Postfix does.
    pub pipelining: bool,
    pub tls: Tls,
    /// Require AUTH PLAIN with this user and password.
    pub auth: Option<(String, String)>,
}

/// How the server speaks TLS, with the certificate of `tests/fixtures/tls`
/// (for 127.0.0.1, signed by its `ca.pem`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    None,
    /// Offers STARTTLS and refuses mail before it.
    Starttls,
    /// TLS from the first byte.
    Implicit,
}

impl Tls {
    /// The `[smtp]` keys of a gazette that talks to a relay speaking
    /// TLS this way, trusting the test certificate authority.
    pub fn keys(self) -> String {
        let mode = match self {
            Tls::None => return "tls = \"none\"\n".into(),
            Tls::Starttls => "starttls",
            Tls::Implicit => "tls",
        };
        format!(
            "tls = \"{mode}\"\nca_file = \"{}\"\n",
            test_ca_file().display()
        )
    }
}

/// Generates one test per session kind, plain text and STARTTLS, from
/// `async fn name(tls: Tls)`: what holds for one holds for the other.
#[macro_export]
macro_rules! in_plain_text_and_over_starttls {
    ($($name:ident),* $(,)?) => {
        mod plain_text {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::smtp::Tls::None).await
                }
            )*
        }
        mod starttls {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::smtp::Tls::Starttls).await
                }
            )*
        }
    };
}

/// The test certificate authority's file, for `smtp.ca_file`.
pub fn test_ca_file() -> std::path::PathBuf {
    fixtures().join("ca.pem")
}

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls")
}

fn acceptor() -> tokio_rustls::TlsAcceptor {
    let certs = CertificateDer::pem_file_iter(fixtures().join("relay.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixtures().join("relay.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            reject: Vec::new(),
            policy: Arc::new(|_| Fault::Accept),
            delay: Duration::ZERO,
            pipelining: true,
            tls: Tls::None,
            auth: None,
        }
    }
}

struct State {
    inbox: Mutex<Vec<Received>>,
    transactions: AtomicU64,
    /// MAIL commands that arrived with more commands behind them, sent
    /// before their reply.
    pipelined: AtomicU64,
    /// Final dots that arrived with the next transaction's commands behind
    /// them.
    chained: AtomicU64,
    faults: Mutex<Vec<Fault>>,
    /// Set by [`SmtpServer::stop`].
    stopped: std::sync::atomic::AtomicBool,
    /// Sessions open now, and the most ever open at once.
    sessions: AtomicU64,
    most_sessions: AtomicU64,
    /// What went wrong in sessions (see the module's comment).
    failures: Mutex<Vec<String>>,
    behaviour: Behaviour,
}

impl State {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

pub struct SmtpServer {
    pub port: u16,
    state: Arc<State>,
}

impl SmtpServer {
    pub fn start() -> Self {
        Self::start_with(Behaviour::default())
    }

    pub fn start_rejecting(reject: &[&str]) -> Self {
        Self::start_with(Behaviour {
            reject: reject.iter().map(|s| s.to_string()).collect(),
            ..Behaviour::default()
        })
    }

    /// Starts the server on its own thread and runtime: it outlives the
    /// test's runtime and serves any number of connections at once.
    pub fn start_with(behaviour: Behaviour) -> Self {
        Self::start_on(0, behaviour)
    }

    /// Starts on a given port (0: any free one).
    pub fn start_on(port: u16, behaviour: Behaviour) -> Self {
        let state = Arc::new(State {
            inbox: Mutex::new(Vec::new()),
            transactions: AtomicU64::new(0),
            pipelined: AtomicU64::new(0),
            chained: AtomicU64::new(0),
            faults: Mutex::new(Vec::new()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            sessions: AtomicU64::new(0),
            most_sessions: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
            behaviour,
        });
        let server_state = state.clone();
        let addr = crate::helpers::serve_on_own_thread(port, move |stream, peer| {
            let state = server_state.clone();
            async move {
                let open = state.sessions.fetch_add(1, Ordering::SeqCst) + 1;
                state.most_sessions.fetch_max(open, Ordering::SeqCst);
                let served = tokio::spawn(session(stream, peer, state.clone())).await;
                state.sessions.fetch_sub(1, Ordering::SeqCst);
                match served {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if hung_up(&e) => {}
                    Ok(Err(e)) => state.fail(format!("session with {peer}: {e}")),
                    Err(e) => state.fail(format!("session with {peer} panicked: {e}")),
                }
            }
        });
        Self {
            port: addr.port(),
            state,
        }
    }

    /// The messages accepted so far; fails the test if anything went wrong
    /// in a session.
    pub fn received(&self) -> Vec<Received> {
        self.fail_on_failures();
        self.state.inbox.lock().unwrap().clone()
    }

    fn fail_on_failures(&self) {
        let failures = self.take_failures();
        if !failures.is_empty() && !std::thread::panicking() {
            panic!(
                "the SMTP server saw {} failure(s):\n{}",
                failures.len(),
                failures.join("\n")
            );
        }
    }

    /// What went wrong in the sessions so far, taken: a test that makes
    /// the client fail on purpose checks it, and the server's drop does
    /// not report it again.
    pub fn take_failures(&self) -> Vec<String> {
        std::mem::take(&mut *self.state.failures.lock().unwrap())
    }

    /// The messages addressed to `email` (envelope recipient).
    pub fn received_by(&self, email: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(email)))
            .collect()
    }

    /// How many transactions the client pipelined (wrote MAIL FROM and
    /// what follows before reading the reply).
    pub fn pipelined(&self) -> u64 {
        self.state.pipelined.load(Ordering::SeqCst)
    }

    /// How many messages ended with the next transaction's commands already
    /// written after their final dot: one round trip per message.
    pub fn chained(&self) -> u64 {
        self.state.chained.load(Ordering::SeqCst)
    }

    /// The most sessions that were ever open at once.
    pub fn most_sessions_at_once(&self) -> u64 {
        self.state.most_sessions.load(Ordering::SeqCst)
    }

    /// Stops the relay as an MTA shutting down does: from now on every
    /// session, open or new, gets `421` to its next command (a message
    /// whose final dot comes now is not kept) and is closed.
    pub fn stop(&self) {
        self.state.stopped.store(true, Ordering::SeqCst);
    }

    /// How many times each fault was applied.
    pub fn faults(&self, fault: Fault) -> usize {
        self.state
            .faults
            .lock()
            .unwrap()
            .iter()
            .filter(|f| **f == fault)
            .count()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.fail_on_failures();
    }
}

/// Whether `e` is the client going away (closing, or killed): a client may
/// hang up at any time.
fn hung_up(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
}

/// Longest line RFC 5321 allows, with its CRLF: 512 for a command, 1000
/// for a line of text.
const COMMAND_LINE: usize = 512;
const TEXT_LINE: usize = 1000;

/// Records what is wrong with `line`, a line the client sent up to its LF.
fn check_line(state: &State, line: &[u8], limit: usize, what: &str) {
    let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
    match line.strip_suffix(b"\r\n") {
        None => state.fail(format!("{what} ending in a bare LF: {shown:?}")),
        Some(body) if body.contains(&b'\r') => {
            state.fail(format!("{what} with a bare CR: {shown:?}"))
        }
        Some(_) => {}
    }
    if line.len() > limit {
        state.fail(format!(
            "{what} of {} bytes (at most {limit}): {shown:?}",
            line.len()
        ));
    }
}

fn address(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg[start..].find('>').map_or(arg.len(), |i| start + i);
    arg[start..end].to_string()
}

async fn session(stream: TcpStream, _peer: SocketAddr, state: Arc<State>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    match state.behaviour.tls {
        Tls::Implicit => {
            let stream = acceptor().accept(stream).await?;
            serve(stream, &state, true).await.map(|_| ())
        }
        Tls::None | Tls::Starttls => {
            if let Some(stream) = serve(stream, &state, false).await? {
                let stream = acceptor().accept(stream).await?;
                serve(stream, &state, true).await?;
            }
            Ok(())
        }
    }
}

/// One SMTP session over `stream`; returns the stream when the client
/// asked for STARTTLS, for the session to go on over TLS.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    state: &State,
    encrypted: bool,
) -> std::io::Result<Option<S>> {
    let mut io = BufReader::new(stream);
    const STOPPED: &[u8] = b"421 4.3.2 shutting down\r\n";
    if state.stopped.load(Ordering::SeqCst) {
        io.write_all(STOPPED).await?;
        io.flush().await?;
        return Ok(None);
    }
    if !encrypted || state.behaviour.tls == Tls::Implicit {
        io.write_all(b"220 smtp.test ESMTP ready\r\n").await?;
        io.flush().await?;
    }
    let behaviour = &state.behaviour;
    let mut user: Option<String> = None;
    let mut from = String::new();
    let mut to: Vec<String> = Vec::new();
    let mut line = Vec::new();
    // (Strict, as Python's smtpd is: one greeting per session; STARTTLS
    // starts a new session, which greets again.)
    let mut greeted = false;
    loop {
        line.clear();
        // (Without its LF, the line was cut short by the client hanging up.)
        if io.read_until(b'\n', &mut line).await? == 0 || !line.ends_with(b"\n") {
            return Ok(None);
        }
        check_line(state, &line, COMMAND_LINE, "a command");
        if state.stopped.load(Ordering::SeqCst) {
            io.write_all(STOPPED).await?;
            io.flush().await?;
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let must_encrypt = behaviour.tls == Tls::Starttls && !encrypted;
        let reply: Vec<u8> = if (upper.starts_with("EHLO") || upper.starts_with("HELO"))
            && std::mem::replace(&mut greeted, true)
        {
            state.fail(format!("a second greeting in one session: {text}"));
            b"503 Duplicate HELO/EHLO\r\n".to_vec()
        } else if upper.starts_with("EHLO") {
            let mut ehlo = vec!["smtp.test"];
            if behaviour.pipelining {
                ehlo.push("PIPELINING");
            }
            if must_encrypt {
                ehlo.push("STARTTLS");
            } else if behaviour.auth.is_some() {
                ehlo.push("AUTH PLAIN");
            }
            ehlo.extend(["8BITMIME", "SMTPUTF8", "SIZE 10485760"]);
            let last = ehlo.len() - 1;
            ehlo.iter()
                .enumerate()
                .map(|(i, l)| format!("250{}{l}\r\n", if i == last { ' ' } else { '-' }))
                .collect::<String>()
                .into_bytes()
        } else if upper.starts_with("HELO") {
            b"250 smtp.test\r\n".to_vec()
        } else if upper == "STARTTLS" && must_encrypt {
            io.write_all(b"220 2.0.0 ready to start TLS\r\n").await?;
            io.flush().await?;
            if !io.buffer().is_empty() {
                state.fail("the client wrote after STARTTLS before the handshake".into());
                return Ok(None);
            }
            return Ok(Some(io.into_inner()));
        } else if upper.starts_with("AUTH PLAIN ") && !must_encrypt {
            // "\0user\0password", base64.
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(text[11..].trim())
                .unwrap_or_default();
            let parts: Vec<String> = decoded
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            match (&behaviour.auth, parts.as_slice()) {
                (Some((u, p)), [_, user_given, password]) if user_given == u && password == p => {
                    user = Some(u.clone());
                    b"235 2.7.0 authenticated\r\n".to_vec()
                }
                _ => b"535 5.7.8 authentication credentials invalid\r\n".to_vec(),
            }
        } else if upper.starts_with("MAIL FROM:") {
            if !io.buffer().is_empty() {
                state.pipelined.fetch_add(1, Ordering::SeqCst);
            }
            if must_encrypt {
                b"530 5.7.0 must issue a STARTTLS command first\r\n".to_vec()
            } else if behaviour.auth.is_some() && user.is_none() {
                b"530 5.7.0 authentication required\r\n".to_vec()
            } else {
                from = address(&text[10..]);
                to.clear();
                b"250 2.1.0 OK\r\n".to_vec()
            }
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = address(&text[8..]);
            if from.is_empty() {
                b"503 5.5.1 MAIL first\r\n".to_vec()
            } else if behaviour
                .reject
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&rcpt))
            {
                b"550 5.1.1 <mailbox> unknown user\r\n".to_vec()
            } else {
                to.push(rcpt);
                b"250 2.1.5 OK\r\n".to_vec()
            }
        } else if upper == "DATA" {
            if to.is_empty() {
                io.write_all(b"503 5.5.1 no valid recipients\r\n").await?;
                io.flush().await?;
                continue;
            }
            io.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            io.flush().await?;
            let n = state.transactions.fetch_add(1, Ordering::SeqCst) + 1;
            let fault = (behaviour.policy)(n);
            let mut data = Vec::new();
            let mut lines = 0;
            loop {
                line.clear();
                if io.read_until(b'\n', &mut line).await? == 0 || !line.ends_with(b"\n") {
                    return Ok(None);
                }
                check_line(state, &line, TEXT_LINE, "a line of DATA");
                if line == b".\r\n" {
                    if !io.buffer().is_empty() {
                        state.chained.fetch_add(1, Ordering::SeqCst);
                    }
                    break;
                }
                lines += 1;
                if fault == Fault::DropMidData && lines == 5 {
                    state.faults.lock().unwrap().push(fault);
                    return Ok(None); // dropping the stream closes the socket
                }
                let content = line.strip_prefix(b".").unwrap_or(&line);
                data.extend_from_slice(content);
            }
            if !behaviour.delay.is_zero() {
                tokio::time::sleep(behaviour.delay).await;
            }
            if state.stopped.load(Ordering::SeqCst) {
                io.write_all(STOPPED).await?;
                io.flush().await?;
                return Ok(None);
            }
            let received = Received {
                from: std::mem::take(&mut from),
                to: std::mem::take(&mut to),
                data,
                encrypted,
                user: user.clone(),
            };
            match fault {
                Fault::Accept | Fault::DropMidData => {
                    state.inbox.lock().unwrap().push(received);
                    b"250 2.0.0 queued\r\n".to_vec()
                }
                Fault::TempFail => {
                    state.faults.lock().unwrap().push(fault);
                    b"451 4.3.0 temporary failure, try again later\r\n".to_vec()
                }
                Fault::DropAfterData => {
                    state.faults.lock().unwrap().push(fault);
                    state.inbox.lock().unwrap().push(received);
                    return Ok(None);
                }
            }
        } else if upper == "RSET" {
            from.clear();
            to.clear();
            b"250 2.0.0 OK\r\n".to_vec()
        } else if upper == "NOOP" {
            b"250 2.0.0 OK\r\n".to_vec()
        } else if upper == "QUIT" {
            io.write_all(b"221 2.0.0 bye\r\n").await?;
            io.flush().await?;
            return Ok(None);
        } else {
            state.fail(format!("a command the server does not know: {text:?}"));
            b"500 5.5.2 command not recognized\r\n".to_vec()
        };
        io.write_all(&reply).await?;
        io.flush().await?;
    }
}
