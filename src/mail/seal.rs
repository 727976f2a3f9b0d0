//! Messages as they go out: formatted, and signed with the `[[dkim]]`
//! keys on threads of their own.
//!
//! An RSA-2048 signature takes about 0.3 ms of CPU and every message needs
//! its own, so signing is the heaviest step of a send: it runs on one
//! thread per core, fed by a bounded queue, away from the async workers,
//! which keep the SMTP connections busy meanwhile. The queue holds at most
//! a few messages per thread, and each worker waits for its own message,
//! so memory stays bounded.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use lettre::address::Envelope;
use tokio::sync::{mpsc, oneshot};

use super::dkim::{self, DkimKey};

/// A message ready for the relay: its envelope, and its bytes with the
/// DKIM-Signature fields first.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub envelope: Envelope,
    pub bytes: Vec<u8>,
}

impl Outgoing {
    /// `message` as it is, unsigned.
    pub fn unsigned(message: &lettre::Message) -> Self {
        Self {
            envelope: message.envelope().clone(),
            bytes: message.formatted(),
        }
    }

    /// `message` signed with each of `keys` (unsigned without keys), on
    /// the calling thread.
    pub fn signed(message: &lettre::Message, keys: &[DkimKey]) -> Result<Self> {
        let mut outgoing = Self::unsigned(message);
        if keys.is_empty() {
            return Ok(outgoing);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut bytes = dkim::sign(keys, &outgoing.bytes, now)
            .map_err(|e| anyhow!("cannot sign the message: {e}"))?;
        bytes.extend_from_slice(&outgoing.bytes);
        outgoing.bytes = bytes;
        Ok(outgoing)
    }
}

type Request = (lettre::Message, oneshot::Sender<Result<Outgoing>>);

/// Signs messages with the configured keys, on a pool of threads started
/// on first use (one per core), shared by every clone.
#[derive(Clone)]
pub struct Sealer {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Arc<[DkimKey]>,
    queue: OnceLock<mpsc::Sender<Request>>,
}

impl Sealer {
    pub fn new(keys: Vec<DkimKey>) -> Self {
        Self {
            inner: Arc::new(Inner {
                keys: keys.into(),
                queue: OnceLock::new(),
            }),
        }
    }

    pub fn keys(&self) -> &[DkimKey] {
        &self.inner.keys
    }

    /// `message` as it goes out: signed with each key, on the pool; as it
    /// is, on this thread, without keys.
    pub async fn seal(&self, message: lettre::Message) -> Result<Outgoing> {
        if self.inner.keys.is_empty() {
            return Ok(Outgoing::unsigned(&message));
        }
        let (reply, signed) = oneshot::channel();
        self.queue()
            .send((message, reply))
            .await
            .map_err(|_| anyhow!("the signing threads have stopped"))?;
        signed
            .await
            .map_err(|_| anyhow!("a signing thread stopped while signing"))?
    }

    fn queue(&self) -> &mpsc::Sender<Request> {
        self.inner.queue.get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let (tx, rx) = mpsc::channel::<Request>(threads * 2);
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..threads {
                let rx = rx.clone();
                let keys = self.inner.keys.clone();
                std::thread::Builder::new()
                    .name(format!("dkim-{i}"))
                    .spawn(move || sign_loop(&rx, &keys))
                    .expect("cannot start a signing thread");
            }
            tx
        })
    }
}

/// One signing thread: signs what the queue brings until every
/// [`Sealer`] is gone.
fn sign_loop(queue: &Mutex<mpsc::Receiver<Request>>, keys: &[DkimKey]) {
    loop {
        let request = match queue.lock() {
            Ok(mut rx) => rx.blocking_recv(),
            Err(_) => None,
        };
        let Some((message, reply)) = request else {
            break;
        };
        let _ = reply.send(Outgoing::signed(&message, keys));
    }
}
