//! Amazon SES's bounces and complaints through Amazon SNS, on
//! `POST /webhooks/bounces?token=…`, over real HTTP: AWS's sample
//! payloads, signed by `openssl dgst -sign` with a key and self-signed
//! certificate made by `openssl req`; the certificate and the
//! subscription address served by a loopback HTTP server that stands for
//! `sns.us-west-2.amazonaws.com` (`GAZETTE_TEST_SNS_ENDPOINT`), so the
//! real verification runs. A forged, altered or off-host message changes
//! nothing.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use gazette::domain::{BounceKind, BounceSource, SubscriberStatus};

use super::{add, fixture, post_webhook, reader};
use crate::feeds::server::{FeedServer, Route};
use crate::helpers::{Backend, SmtpServer};
use crate::on_both_backends;
use crate::web::WebApp;

on_both_backends!(amazon_ses_through_sns_confirms_its_subscription_and_records_only_signed_reports);

const TOKEN: &str = "bounce-hook-0123456789abcdef012345";
const TOPIC: &str = "arn:aws:sns:us-west-2:123456789012:MyTopic";
const CERT_PATH: &str = "/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem";

/// An RSA key and its self-signed certificate, made by openssl.
struct Signer {
    dir: tempfile::TempDir,
}

impl Signer {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "2",
                "-subj",
                "/CN=sns.amazonaws.com",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn certificate(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cert.pem")).unwrap()
    }

    /// Fills in `Signature` of the SNS message `body`: its canonical
    /// string (AWS's rules, written out here) signed with SHA-1 for
    /// `SignatureVersion` 1, SHA-256 for 2.
    fn sign(&self, mut body: Value) -> Value {
        let keys: &[&str] = if body["Type"] == "Notification" {
            &[
                "Message",
                "MessageId",
                "Subject",
                "Timestamp",
                "TopicArn",
                "Type",
            ]
        } else {
            &[
                "Message",
                "MessageId",
                "SubscribeURL",
                "Timestamp",
                "Token",
                "TopicArn",
                "Type",
            ]
        };
        let mut canonical = String::new();
        for key in keys {
            if let Some(value) = body.get(*key).and_then(Value::as_str) {
                canonical.push_str(&format!("{key}\n{value}\n"));
            }
        }
        let path = self.dir.path().join("canonical.txt");
        std::fs::write(&path, canonical).unwrap();
        let digest = match body["SignatureVersion"].as_str().unwrap() {
            "1" => "-sha1",
            _ => "-sha256",
        };
        let out = Command::new("openssl")
            .args(["dgst", digest, "-sign", "key.pem", "canonical.txt"])
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        body["Signature"] = json!(base64::engine::general_purpose::STANDARD.encode(out.stdout));
        body
    }
}

/// AWS's sample notification carrying `message` (an SES notification).
fn notification(message: &str, version: &str) -> Value {
    let mut body: Value = serde_json::from_str(&fixture("ses-notification.json")).unwrap();
    body["Message"] = json!(message);
    body["SignatureVersion"] = json!(version);
    body
}

async fn post(app: &WebApp, query: &str, body: &Value) -> (StatusCode, Value) {
    let headers = [
        ("content-type", "text/plain; charset=UTF-8"),
        ("x-amz-sns-message-type", body["Type"].as_str().unwrap()),
    ];
    post_webhook(app, query, &headers, body.to_string()).await
}

async fn amazon_ses_through_sns_confirms_its_subscription_and_records_only_signed_reports(
    backend: Backend,
) {
    let signer = Signer::new();
    let sns = FeedServer::start();
    sns.route(
        CERT_PATH,
        Route::Feed {
            body: signer.certificate(),
            etag: None,
            delay: Duration::ZERO,
        },
    );
    let confirmation: Value =
        serde_json::from_str(&fixture("ses-subscription-confirmation.json")).unwrap();
    let subscribe_url = url::Url::parse(confirmation["SubscribeURL"].as_str().unwrap()).unwrap();
    let subscribe_target = format!("/?{}", subscribe_url.query().unwrap());
    sns.route(
        &subscribe_target,
        Route::Feed {
            body: "<ConfirmSubscriptionResponse/>".into(),
            etag: None,
            delay: Duration::ZERO,
        },
    );
    let sections =
        format!("\n[bounces]\nwebhook_token = \"{TOKEN}\"\nsns_topic_arns = [\"{TOPIC}\"]\n");
    let app = WebApp::start_with_env(
        backend,
        "",
        &sections,
        SmtpServer::start(),
        &[("GAZETTE_TEST_SNS_ENDPOINT", &sns.base)],
    )
    .await;
    add(
        &app,
        &[
            "jane@example.com",
            "richard@example.com",
            "mary@example.com",
        ],
    )
    .await;
    let with_token = format!("?token={TOKEN}");

    // The subscription confirmation (SHA1withRSA): Gazette visits the
    // SubscribeURL.
    let (status, body) = post(&app, &with_token, &signer.sign(confirmation.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["results"],
        json!([format!("subscription to {TOPIC} confirmed")])
    );
    assert_eq!(sns.requests(&subscribe_target).len(), 1);
    assert_eq!(sns.requests(CERT_PATH).len(), 1);

    // A permanent bounce, SHA256withRSA: the reader is bounced.
    let bounce = fixture("ses-bounce.json");
    let (status, body) = post(&app, &with_token, &signer.sign(notification(&bounce, "2"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["results"],
        json!([
            "hard bounce for j…@example.com recorded: j…@example.com is bounced and will not be mailed again"
        ])
    );
    let (jane, state) = reader(&app, "jane@example.com").await;
    assert_eq!(state, SubscriberStatus::Bounced);
    let kept = app.engine.store.bounces_of(jane).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].kind, kept[0].source),
        (BounceKind::Hard, BounceSource::Webhook)
    );
    assert!(kept[0].reason.contains("550 5.1.1"), "{kept:?}");

    // A complaint, SHA1withRSA, published without a Subject (as SES
    // does): the reader is unsubscribed.
    let complaint = fixture("ses-complaint.json");
    let mut without_subject = notification(&complaint, "1");
    without_subject.as_object_mut().unwrap().remove("Subject");
    let (status, body) = post(&app, &with_token, &signer.sign(without_subject)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["results"],
        json!(["complaint from r…@example.com recorded: r…@example.com is unsubscribed"])
    );
    assert_eq!(
        reader(&app, "richard@example.com").await.1,
        SubscriberStatus::Unsubscribed
    );

    // A transient bounce, as SES event publishing words it (`eventType`):
    // counted soft, the reader still mailed.
    let transient = bounce
        .replace("\"notificationType\"", "\"eventType\"")
        .replace("\"Permanent\"", "\"Transient\"")
        .replace("jane@example.com", "mary@example.com");
    let (status, body) = post(
        &app,
        &with_token,
        &signer.sign(notification(&transient, "2")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["results"],
        json!(["soft bounce for m…@example.com recorded"])
    );
    let (mary, state) = reader(&app, "mary@example.com").await;
    assert_eq!(state, SubscriberStatus::Confirmed);
    let mary_bounces = app.engine.store.bounces_of(mary).await.unwrap();
    assert_eq!(mary_bounces.len(), 1);
    assert_eq!(mary_bounces[0].kind, BounceKind::Soft);

    // A delivery is no bounce.
    let delivery = bounce
        .replace("\"Bounce\"", "\"Delivery\"")
        .replace("jane@example.com", "mary@example.com");
    let (status, body) = post(
        &app,
        &with_token,
        &signer.sign(notification(&delivery, "2")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["results"],
        json!(["ignored: an Amazon SES `Delivery` notification, not a bounce or complaint"])
    );

    // Refused, and nothing changes: one byte changed in a signed
    // Message; a certificate on another host (not even fetched); a
    // signed message from another topic; the wrong token, or none.
    let hard_for_mary = bounce.replace("jane@example.com", "mary@example.com");
    let mut altered = signer.sign(notification(&hard_for_mary, "1"));
    altered["Message"] = json!(hard_for_mary.replace("... User", "... Uses"));
    let (status, body) = post(&app, &with_token, &altered).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("signature"),
        "{body}"
    );

    let mut elsewhere = notification(&hard_for_mary, "2");
    elsewhere["SigningCertURL"] =
        json!("https://certs.example.net/SimpleNotificationService-1.pem");
    let (status, body) = post(&app, &with_token, &signer.sign(elsewhere)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("SigningCertURL"),
        "{body}"
    );
    let mut lookalike = notification(&hard_for_mary, "2");
    lookalike["SigningCertURL"] =
        json!("https://sns.us-west-2.amazonaws.com.example.net/SimpleNotificationService-1.pem");
    let (status, _) = post(&app, &with_token, &signer.sign(lookalike)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(sns.requests("/SimpleNotificationService-1.pem").is_empty());
    assert_eq!(sns.requests(CERT_PATH).len(), 1, "the certificate is kept");

    let mut other_topic = notification(&hard_for_mary, "2");
    other_topic["TopicArn"] = json!("arn:aws:sns:us-west-2:210987654321:SomeoneElses");
    let (status, body) = post(&app, &with_token, &signer.sign(other_topic)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("sns_topic_arns"),
        "{body}"
    );

    let signed = signer.sign(notification(&hard_for_mary, "2"));
    for query in ["", "?token=wrong", &format!("?token={}", &TOKEN[1..])] {
        let (status, _) = post(&app, query, &signed).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{query}");
    }
    let (mary, state) = reader(&app, "mary@example.com").await;
    assert_eq!(state, SubscriberStatus::Confirmed);
    assert_eq!(app.engine.store.bounces_of(mary).await.unwrap().len(), 1);

    // The same, whole and with the token: recorded.
    let (status, body) = post(&app, &with_token, &signed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        reader(&app, "mary@example.com").await.1,
        SubscriberStatus::Bounced
    );
    assert_eq!(sns.requests(&subscribe_target).len(), 1);
}
