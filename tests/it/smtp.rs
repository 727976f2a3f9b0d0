//! An SMTP server on a loopback port for the tests: it speaks enough of
//! RFC 5321 for any client (EHLO, MAIL, RCPT, DATA with dot-stuffing, RSET,
//! NOOP, QUIT), records every accepted message, and can be told to
//! misbehave the way real relays do: 4xx replies, 5xx for some recipients,
//! connections dropped in the middle of DATA or after it, slow replies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

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
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            reject: Vec::new(),
            policy: Arc::new(|_| Fault::Accept),
            delay: Duration::ZERO,
            pipelining: true,
        }
    }
}

struct State {
    inbox: Mutex<Vec<Received>>,
    transactions: AtomicU64,
    /// MAIL commands that arrived with more commands behind them, sent
    /// before their reply.
    pipelined: AtomicU64,
    faults: Mutex<Vec<Fault>>,
    behaviour: Behaviour,
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
            faults: Mutex::new(Vec::new()),
            behaviour,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let server_state = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    let Ok((stream, peer)) = listener.accept().await else {
                        continue;
                    };
                    let state = server_state.clone();
                    tokio::spawn(async move {
                        let _ = session(stream, peer, state).await;
                    });
                }
            });
        });
        let addr: SocketAddr = rx.recv().unwrap();
        Self {
            port: addr.port(),
            state,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.inbox.lock().unwrap().clone()
    }

    /// The messages addressed to `email` (envelope recipient).
    pub fn received_by(&self, email: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(email)))
            .collect()
    }

    /// How many times each fault was applied.
    /// How many transactions the client pipelined (wrote MAIL FROM and
    /// what follows before reading the reply).
    pub fn pipelined(&self) -> u64 {
        self.state.pipelined.load(Ordering::SeqCst)
    }

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

fn address(arg: &str) -> String {
    let start = arg.find('<').map_or(0, |i| i + 1);
    let end = arg[start..].find('>').map_or(arg.len(), |i| start + i);
    arg[start..end].to_string()
}

async fn session(stream: TcpStream, _peer: SocketAddr, state: Arc<State>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(b"220 smtp.test ESMTP ready\r\n").await?;
    let mut from = String::new();
    let mut to: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let upper = text.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            if state.behaviour.pipelining {
                b"250-smtp.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760\r\n"
            } else {
                b"250-smtp.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760\r\n"
            }
        } else if upper.starts_with("HELO") {
            b"250 smtp.test\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            if !reader.buffer().is_empty() {
                state.pipelined.fetch_add(1, Ordering::SeqCst);
            }
            from = address(&text[10..]);
            to.clear();
            b"250 2.1.0 OK\r\n"
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = address(&text[8..]);
            if state
                .behaviour
                .reject
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&rcpt))
            {
                b"550 5.1.1 <mailbox> unknown user\r\n"
            } else {
                to.push(rcpt);
                b"250 2.1.5 OK\r\n"
            }
        } else if upper == "DATA" {
            if to.is_empty() {
                write
                    .write_all(b"503 5.5.1 no valid recipients\r\n")
                    .await?;
                continue;
            }
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let n = state.transactions.fetch_add(1, Ordering::SeqCst) + 1;
            let fault = (state.behaviour.policy)(n);
            let mut data = Vec::new();
            let mut lines = 0;
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(());
                }
                if line == b".\r\n" {
                    break;
                }
                lines += 1;
                if fault == Fault::DropMidData && lines == 5 {
                    state.faults.lock().unwrap().push(fault);
                    return Ok(()); // dropping the halves closes the socket
                }
                let content = line.strip_prefix(b".").unwrap_or(&line);
                data.extend_from_slice(content);
            }
            if !state.behaviour.delay.is_zero() {
                tokio::time::sleep(state.behaviour.delay).await;
            }
            let received = Received {
                from: from.clone(),
                to: std::mem::take(&mut to),
                data,
            };
            match fault {
                Fault::Accept | Fault::DropMidData => {
                    state.inbox.lock().unwrap().push(received);
                    b"250 2.0.0 queued\r\n"
                }
                Fault::TempFail => {
                    state.faults.lock().unwrap().push(fault);
                    b"451 4.3.0 temporary failure, try again later\r\n"
                }
                Fault::DropAfterData => {
                    state.faults.lock().unwrap().push(fault);
                    state.inbox.lock().unwrap().push(received);
                    return Ok(());
                }
            }
        } else if upper == "RSET" {
            to.clear();
            b"250 2.0.0 OK\r\n"
        } else if upper == "NOOP" {
            b"250 2.0.0 OK\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            b"500 5.5.2 command not recognized\r\n"
        };
        write.write_all(reply).await?;
    }
}
