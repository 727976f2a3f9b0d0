//! DKIM: every digest, confirmation, preview and test email carries one
//! signature per `[[dkim]]` section, and each one verifies with an
//! independent verifier (Python's dkimpy, given the DNS records that
//! `gazette dkim keygen` and `gazette check` print); one changed byte of
//! the body or the Subject fails it. Bad keys stop `gazette check` with an
//! error naming the section and the file.

use std::path::{Path, PathBuf};

use crate::helpers::{Backend, SmtpServer, TestDb, Workspace, digest_section, stderr, stdout};
use crate::web::WebApp;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dkim");

/// Runs dkimpy on `message`, the TXT records served from `records`
/// (name, value): whether each DKIM-Signature verifies, top to bottom.
fn dkimpy_verify(message: &[u8], records: &[(String, String)]) -> Vec<bool> {
    use std::io::Write;
    const SCRIPT: &str = r#"
import json, sys
import dkim
records = json.loads(sys.argv[1])
message = sys.stdin.buffer.read()
def txt(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    value = records.get(name.rstrip("."))
    return value.encode() if value is not None else None
def verifies(i):
    try:
        return bool(dkim.DKIM(message).verify(idx=i, dnsfunc=txt))
    except dkim.DKIMException:
        return False
count = sum(1 for line in message.split(b"\r\n") if line.lower().startswith(b"dkim-signature:"))
print(json.dumps([verifies(i) for i in range(count)]))
"#;
    let records: serde_json::Map<String, serde_json::Value> = records
        .iter()
        .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            SCRIPT,
            &serde_json::Value::Object(records).to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed to verify DKIM signatures with dkimpy");
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dkimpy failed (pip install dkimpy pynacl): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A new key made with `gazette dkim keygen`, and the DNS record (name,
/// value) it printed.
struct Key {
    file: PathBuf,
    record: (String, String),
    algorithm: &'static str,
}

/// The zone file line `NAME. IN TXT "PART" "PART"…` in `out`, as (name,
/// value): the parts joined, as a resolver joins them. Each part must fit
/// a TXT string (255 bytes).
fn record_in(out: &str) -> (String, String) {
    let line = out
        .lines()
        .find(|l| l.contains(" IN TXT "))
        .unwrap_or_else(|| panic!("no TXT record in {out}"));
    let (name, strings) = line.trim().split_once(". IN TXT ").unwrap();
    let parts: Vec<&str> = strings
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, part)| part)
        .collect();
    assert!(!parts.is_empty(), "no quoted string in {line}");
    for part in &parts {
        assert!(
            part.len() <= 255,
            "a TXT string of {} bytes in {line}",
            part.len()
        );
    }
    let between: String = strings
        .split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, gap)| gap)
        .collect();
    assert!(between.trim().is_empty(), "{line}");
    (name.to_string(), parts.concat())
}

fn keygen(dir: &Path, domain: &str, selector: &str, ed25519: bool) -> Key {
    let file = dir.join(format!("{selector}.pem"));
    let mut args = vec![
        "dkim",
        "keygen",
        "--domain",
        domain,
        "--selector",
        selector,
        "--out",
        file.to_str().unwrap(),
    ];
    if ed25519 {
        args.push("--ed25519");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let record = record_in(&text);
    let (kind, algorithm) = if ed25519 {
        ("k=ed25519", "ed25519-sha256")
    } else {
        ("k=rsa", "rsa-sha256")
    };
    assert_eq!(record.0, format!("{selector}._domainkey.{domain}"));
    assert!(
        record.1.starts_with(&format!("v=DKIM1; {kind}; p=")),
        "{text}"
    );
    Key {
        file,
        record,
        algorithm,
    }
}

fn dkim_section(domain: &str, selector: &str, file: &Path) -> String {
    format!(
        "\n[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey_file = \"{}\"\n",
        file.display()
    )
}

/// The `a=` tags of the message's signatures, top to bottom.
fn algorithms(message: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    let head = &text[..text.find("\r\n\r\n").unwrap()];
    head.split("\r\nDKIM-Signature:")
        .skip(usize::from(!head.starts_with("DKIM-Signature:")))
        .map(|sig| {
            let at = sig.find("a=").unwrap() + 2;
            sig[at..].split(';').next().unwrap().to_string()
        })
        .collect()
}

/// `message` with the first occurrence of `from` (after `after`) changed to `to`.
fn altered(message: &[u8], after: &str, from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(message.to_vec()).unwrap();
    let start = text.find(after).unwrap_or_else(|| panic!("no {after:?}"));
    let at = start + text[start..].find(from).unwrap();
    let mut changed = text.clone();
    changed.replace_range(at..at + from.len(), to);
    assert_ne!(changed, text);
    changed.into_bytes()
}

/// Each signature verifies; one changed byte of the body, or of the
/// Subject, fails every one.
fn assert_signed(message: &[u8], keys: &[&Key]) {
    let records: Vec<(String, String)> = keys.iter().map(|k| k.record.clone()).collect();
    let expected: Vec<&str> = keys.iter().map(|k| k.algorithm).collect();
    assert_eq!(algorithms(message), expected);
    assert_eq!(
        dkimpy_verify(message, &records),
        vec![true; keys.len()],
        "{}",
        String::from_utf8_lossy(message)
    );
    let body = String::from_utf8_lossy(message);
    let body_start = body.find("\r\n\r\n").unwrap();
    // One byte of the text part: the first letter after the headers that
    // is a lowercase `e`.
    let at = body_start + body[body_start..].find('e').unwrap();
    let mut changed = message.to_vec();
    changed[at] = b'a';
    assert_eq!(dkimpy_verify(&changed, &records), vec![false; keys.len()]);
    let subject = altered(message, "\r\nSubject:", "e", "a");
    assert_eq!(dkimpy_verify(&subject, &records), vec![false; keys.len()]);
    // (The unchanged message still verifies: the check is not just failing.)
    assert_eq!(dkimpy_verify(message, &records), vec![true; keys.len()]);
}

/// A workspace sending through `smtp` with `sections`, two readers and one
/// article.
fn workspace(db: &TestDb, smtp: &SmtpServer, sections: &str) -> Workspace {
    let ws = Workspace::new(
        &db.url,
        Some(smtp.port),
        &format!("{}{sections}", digest_section("daily", "")),
    );
    assert!(
        ws.run(&["subscribers", "add", "ada@example.org", "--name", "Ada L."])
            .status
            .success()
    );
    assert!(
        ws.run(&["subscribers", "add", "grace@example.org"])
            .status
            .success()
    );
    ws.add_article("Signed news");
    ws
}

#[tokio::test]
async fn a_digest_signed_with_rsa_ed25519_or_both_verifies_and_a_changed_byte_does_not() {
    let keys_dir = tempfile::tempdir().unwrap();
    let rsa = keygen(keys_dir.path(), "example.org", "rsa2026", false);
    let ed = keygen(keys_dir.path(), "news.example.org", "ed2026", true);
    for keys in [vec![&rsa], vec![&ed], vec![&rsa, &ed]] {
        let smtp = SmtpServer::start();
        let db = TestDb::new(Backend::Sqlite).await;
        let sections: String = keys
            .iter()
            .map(|k| {
                let (name, _) = &k.record;
                let (selector, domain) = name.split_once("._domainkey.").unwrap();
                dkim_section(domain, selector, &k.file)
            })
            .collect();
        let ws = workspace(&db, &smtp, &sections);
        let out = ws.run(&["send", "daily"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("2 sent"), "{}", stdout(&out));
        let received = smtp.received();
        assert_eq!(received.len(), 2);
        for mail in &received {
            let parsed = mail.parsed();
            assert!(
                parsed.subject().unwrap().starts_with("The daily Digest"),
                "{:?}",
                parsed.subject()
            );
            assert!(parsed.header("List-Unsubscribe-Post").is_some());
            assert_signed(&mail.data, &keys);
        }
        // `send --test` is signed the same way.
        let out = ws.run(&["send", "daily", "--test", "someone@example.org"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let test = smtp.received_by("someone@example.org");
        assert_eq!(test.len(), 1);
        assert!(test[0].parsed().subject().unwrap().starts_with("[TEST] "));
        assert_signed(&test[0].data, &keys);
    }
}

#[tokio::test]
async fn every_signature_covers_the_headers_gmail_needs_signed() {
    let keys_dir = tempfile::tempdir().unwrap();
    let rsa = keygen(keys_dir.path(), "example.org", "s1", false);
    let smtp = SmtpServer::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let ws = workspace(&db, &smtp, &dkim_section("example.org", "s1", &rsa.file));
    assert!(ws.run(&["send", "daily"]).status.success());
    let mail = &smtp.received()[0];
    let parsed = mail.parsed();
    let signature = parsed
        .header_raw("DKIM-Signature")
        .expect("no DKIM-Signature");
    let unfolded: String = signature.split_whitespace().collect();
    let at = unfolded.find("h=").unwrap() + 2;
    let signed: Vec<String> = unfolded[at..]
        .split(';')
        .next()
        .unwrap()
        .split(':')
        .map(str::to_ascii_lowercase)
        .collect();
    for header in [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ] {
        assert!(
            signed.iter().any(|h| h == header),
            "{header} not in {signed:?}"
        );
    }
    assert!(unfolded.contains("c=relaxed/relaxed;"), "{unfolded}");
    assert!(unfolded.contains("d=example.org;"), "{unfolded}");
    // A header added in transit (a second List-Unsubscribe above the
    // first) is seen by the verifier: the signature no longer holds.
    let mut forged = b"List-Unsubscribe: <https://evil.example.com/>\r\n".to_vec();
    forged.extend_from_slice(&mail.data);
    assert_eq!(
        dkimpy_verify(&forged, std::slice::from_ref(&rsa.record)),
        vec![false]
    );
}

#[tokio::test]
async fn the_confirmation_email_is_signed() {
    let keys_dir = tempfile::tempdir().unwrap();
    let ed = keygen(keys_dir.path(), "example.org", "confirm", true);
    let app = WebApp::start_with_sections(
        Backend::Sqlite,
        "",
        &dkim_section("example.org", "confirm", &ed.file),
        SmtpServer::start(),
    )
    .await;
    let (status, _) = app
        .post_form("/subscribe", "email=ada%40example.org&digest=daily")
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let link = app.confirmation_link("ada@example.org").await;
    assert!(link.contains("/confirm/"));
    let mail = app.smtp.received_by("ada@example.org").pop().unwrap();
    assert_signed(&mail.data, &[&ed]);
}

#[tokio::test]
async fn preview_writes_the_signed_eml_that_send_would_deliver() {
    let keys_dir = tempfile::tempdir().unwrap();
    let rsa = keygen(keys_dir.path(), "news.example.org", "preview", false);
    let db = TestDb::new(Backend::Sqlite).await;
    let ws = Workspace::new(
        &db.url,
        None,
        &format!(
            "{}{}",
            digest_section("daily", ""),
            dkim_section("news.example.org", "preview", &rsa.file)
        ),
    );
    ws.add_article("Previewed news");
    let out_dir = ws.dir.path().join("preview");
    let out = ws.run(&["preview", "daily", "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let eml = std::fs::read(out_dir.join("daily.eml")).unwrap();
    assert_signed(&eml, &[&rsa]);
}

#[test]
fn check_prints_each_dns_record_and_warns_when_no_domain_aligns_with_from() {
    let keys_dir = tempfile::tempdir().unwrap();
    let rsa = keygen(keys_dir.path(), "example.org", "a", false);
    let ed = keygen(keys_dir.path(), "example.org", "b", true);
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    // From is digest@news.example.org: example.org aligns (a parent).
    let ws = Workspace::new(
        &db,
        None,
        &format!(
            "{}{}",
            dkim_section("example.org", "a", &rsa.file),
            dkim_section("example.org", "b", &ed.file)
        ),
    );
    let out = ws.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("dkim: 2 signatures per message"), "{text}");
    assert!(
        text.contains("d=example.org s=a: rsa-sha256 (2048 bits)"),
        "{text}"
    );
    assert!(
        text.contains("d=example.org s=b: ed25519-sha256 (256 bits)"),
        "{text}"
    );
    let printed: Vec<(String, String)> = text
        .lines()
        .filter(|l| l.contains(" IN TXT "))
        .map(record_in)
        .collect();
    for key in [&rsa, &ed] {
        assert!(
            printed.contains(&key.record),
            "{:?} not in {text}",
            key.record
        );
    }
    // An RSA-2048 record is longer than one TXT string can hold.
    let rsa_line = text
        .lines()
        .find(|l| l.contains(&format!("{}. IN TXT ", rsa.record.0)))
        .unwrap();
    assert!(rsa.record.1.len() > 255, "{}", rsa.record.1);
    assert!(rsa_line.matches('"').count() >= 4, "{rsa_line}");
    assert!(!text.contains("warning"), "{text}");

    // A signing domain other than the From address's.
    let ws = Workspace::new(&db, None, &dkim_section("example.com", "a", &rsa.file));
    let out = ws.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "warning: no signing domain (example.com) aligns with the From address's domain \
             `news.example.org`"
        ),
        "{text}"
    );
    assert!(text.contains("a._domainkey.example.com. IN TXT \"v=DKIM1; k=rsa; p="));
}

#[test]
fn bad_keys_stop_check_with_an_error_naming_the_section_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-key.pem");
    std::fs::write(&not_pem, "hello, I am not a key\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let fixture = |name: &str| Path::new(FIXTURES).join(name);
    let cases: Vec<(PathBuf, &str, &str)> = vec![
        (missing, "", "cannot read the key file"),
        (not_pem, "", "not a PEM private key"),
        (
            fixture("rsa-1024.pem"),
            "",
            "an RSA key of 1024 bits: DKIM keys must have 2048 bits or more",
        ),
        (fixture("rsa-512-pkcs1.pem"), "", "an RSA key of 512 bits"),
        (
            fixture("ec-p256-sec1.pem"),
            "",
            "an elliptic-curve (SEC1) key",
        ),
        (fixture("ec-p256-pkcs8.pem"), "", "neither RSA nor Ed25519"),
        (
            fixture("ed25519.pem"),
            "algorithm = \"rsa\"\n",
            "holds an Ed25519 key, but `algorithm = \"rsa\"`",
        ),
        (
            fixture("rsa-2048-pkcs1.pem"),
            "algorithm = \"ed25519\"\n",
            "holds an RSA key, but `algorithm = \"ed25519\"`",
        ),
    ];
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    for (file, extra, expected) in cases {
        // The bad key is the second section: the error names it.
        let sections = format!(
            "{}{}{extra}",
            dkim_section("example.org", "good", &fixture("ed25519.pem")),
            dkim_section("example.org", "bad", &file),
        );
        let ws = Workspace::new(&db, None, &sections);
        let out = ws.run(&["check"]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "key `dkim[1].key_file` ([[dkim]] section 2, domain `example.org`, selector `bad`): `{}`",
                file.display()
            )),
            "{err}"
        );
        assert!(err.contains(expected), "{expected} not in {err}");
        assert!(!err.contains("dkim[0]"), "{err}");
        // No part of a key reaches the error.
        if let Ok(pem) = std::fs::read_to_string(&file) {
            let body_line = pem.lines().nth(1).unwrap_or_default();
            assert!(body_line.is_empty() || !err.contains(body_line), "{err}");
        }
    }
}

#[tokio::test]
async fn keys_in_pkcs1_and_openssl_ed25519_files_sign_verified_messages() {
    let smtp = SmtpServer::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let fixture = |name: &str| Path::new(FIXTURES).join(name);
    let ws = workspace(
        &db,
        &smtp,
        &format!(
            "{}{}",
            dkim_section("example.org", "pkcs1", &fixture("rsa-2048-pkcs1.pem")),
            dkim_section("example.org", "openssl", &fixture("ed25519.pem"))
        ),
    );
    let out = ws.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let records: Vec<(String, String)> = text
        .lines()
        .filter(|l| l.contains(" IN TXT "))
        .map(record_in)
        .collect();
    assert_eq!(records.len(), 2, "{text}");
    let keys = [
        Key {
            file: fixture("rsa-2048-pkcs1.pem"),
            record: records[0].clone(),
            algorithm: "rsa-sha256",
        },
        Key {
            file: fixture("ed25519.pem"),
            record: records[1].clone(),
            algorithm: "ed25519-sha256",
        },
    ];
    assert!(ws.run(&["send", "daily"]).status.success());
    for mail in smtp.received() {
        assert_signed(&mail.data, &[&keys[0], &keys[1]]);
    }
}

#[test]
fn keygen_writes_a_private_file_and_never_over_an_existing_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "example.org", "sel", false);
    let mode = std::fs::metadata(&key.file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = std::fs::read(&key.file).unwrap();
    assert!(before.starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args([
            "dkim",
            "keygen",
            "--domain",
            "example.org",
            "--selector",
            "sel",
            "--ed25519",
            "--out",
            key.file.to_str().unwrap(),
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&key.file).unwrap(), before);
}
