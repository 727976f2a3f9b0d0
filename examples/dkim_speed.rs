//! How fast one core signs: RSA-2048 (PKCS#1 v1.5, SHA-256) with aws-lc-rs
//! and with ring, the same key; then a whole DKIM signature of a 12 KB
//! digest (canonicalization, body hash, signature) with gazette's signer,
//! RSA and Ed25519. Run with `cargo run --release --example dkim_speed`;
//! the figures are in docs/benchmarks.md.

use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use gazette::mail::{Algorithm, DkimKey, dkim};

/// Calls `f` for `secs` seconds; how many calls a second.
fn rate(secs: f64, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while start.elapsed() < limit {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let data = vec![b'x'; 600];

    let aws = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = aws.as_der().unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let mut sig = vec![0u8; aws.public_modulus_len()];
    let aws_rate = rate(secs, || {
        aws.sign(
            &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            &rng,
            &data,
            &mut sig,
        )
        .unwrap()
    });
    println!("aws-lc-rs RSA-2048 sign: {aws_rate:.0}/s");

    let ring_key = ring::signature::RsaKeyPair::from_pkcs8(der.as_ref()).unwrap();
    let ring_rng = ring::rand::SystemRandom::new();
    let ring_rate = rate(secs, || {
        ring_key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring_rng,
                &data,
                &mut sig,
            )
            .unwrap()
    });
    println!("ring      RSA-2048 sign: {ring_rate:.0}/s");

    // A digest-sized message: headers, then 12 KB of quoted-printable lines.
    let mut message = b"From: Gazette <digest@example.org>\r\nTo: Reader <r@example.org>\r\n\
Subject: The Daily Digest\r\nDate: Mon, 30 Nov 2026 07:00:00 +0000\r\n\
Message-ID: <daily.1.1@example.org>\r\nList-Id: Daily <daily.example.org>\r\n\
List-Unsubscribe: <https://example.org/unsubscribe/abc>\r\n\
List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/alternative;\r\n boundary=\"b\"\r\n\r\n"
        .to_vec();
    while message.len() < 12_000 {
        message.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod=\r\n",
        );
    }
    for algorithm in [Algorithm::Rsa, Algorithm::Ed25519] {
        let (key, _) = DkimKey::generate("example.org", "s", algorithm).unwrap();
        let keys = [key];
        let r = rate(secs, || {
            dkim::sign(&keys, &message, 0).unwrap();
        });
        println!(
            "gazette DKIM signature of a {} byte message, {}: {r:.0}/s ({:.1} µs)",
            message.len(),
            algorithm.tag(),
            1e6 / r
        );
    }
}
