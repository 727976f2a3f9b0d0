//! A pipelined SMTP transaction (RFC 2920): the envelope's commands in one
//! write, the message and the next envelope in the next.

use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::response::Response;
use tokio::io::AsyncWriteExt;

use super::connect::SharedStream;
use super::reply::TimeoutOr;

/// One transaction in two writes (RFC 2920): MAIL, RCPT and DATA of
/// `opening` together (`None`: the relay accepted them already), then,
/// once DATA is accepted, the dot-stuffed message and its final dot,
/// followed by the commands of `next`. lettre reads and parses every
/// reply.
pub(super) async fn send_pipelined(
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
pub(super) async fn read_envelope_replies(
    smtp: &mut AsyncSmtpConnection,
    envelope: &Envelope,
) -> Result<(), TimeoutOr> {
    let mut first_error = None;
    let recipients = 1..=envelope.to().len();
    for reply in 0..envelope.to().len() + 2 {
        match smtp.read_response().await {
            Ok(_) => {}
            Err(e) if e.is_transient() || e.is_permanent() => {
                // (Which command it answers: a refused RCPT can say the
                // mailbox does not exist.)
                let e = if recipients.contains(&reply) {
                    TimeoutOr::Recipient(e)
                } else {
                    TimeoutOr::Smtp(e)
                };
                first_error.get_or_insert(e);
            }
            // The connection broke (after a 421, say): the reply that
            // came before says why.
            Err(e) => return Err(first_error.unwrap_or(TimeoutOr::Smtp(e))),
        }
    }
    match first_error {
        Some(e) => Err(e),
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

#[cfg(test)]
mod tests {
    #[test]
    fn dot_stuffing_doubles_leading_dots_and_ends_the_data() {
        let mut out = Vec::new();
        super::dot_stuff(b".a\r\nb.\r\n.\r\n..c\r\nd\n.e", &mut out);
        assert_eq!(out, b"..a\r\nb.\r\n..\r\n...c\r\nd\n.e\r\n.\r\n");
        super::dot_stuff(b"x\r\n", &mut out);
        assert_eq!(out, b"x\r\n.\r\n");
    }
}
