//! Prometheus metrics, kept by the code that knows them (the outcome
//! writer, the run loop, the worker, the web middleware) and served on the
//! admin port (`web::admin`); the counts the store holds (subscribers by
//! status, open deliveries) are read from it at each scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub digest: String,
    /// `sent`, `failed`, `retried` or `skipped`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's pattern (`/unsubscribe/{token}`), never a token.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayLabels {
    /// `host:port`.
    pub relay: String,
    /// `sent`, `refused` (5xx) or `failed` (4xx, timeouts, connections).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayName {
    /// `host:port`.
    pub relay: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BounceLabels {
    /// `hard`, `soft` or `complaint`.
    pub kind: String,
    /// `dsn`, `arf`, `webhook` or `smtp`.
    pub source: String,
}

/// Every metric gazette keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub messages: Family<MessageLabels, Counter>,
    pub run_seconds: Histogram,
    pub send_seconds: Histogram,
    pub breaker_open: Gauge,
    pub relay_messages: Family<RelayLabels, Counter>,
    pub relay_down: Family<RelayName, Gauge>,
    pub web_requests: Family<RequestLabels, Counter>,
    pub open_deliveries: Family<StatusLabels, Gauge>,
    pub subscribers: Family<StatusLabels, Gauge>,
    pub bounces: Family<BounceLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gazette");
        let messages = Family::<MessageLabels, Counter>::default();
        registry.register(
            "messages",
            "Delivery outcomes recorded in the ledger, by digest",
            messages.clone(),
        );
        // 1 s to about 9 h.
        let run_seconds = Histogram::new(exponential_buckets(1.0, 3.0, 10));
        registry.register(
            "run_duration_seconds",
            "From a run's planning to its last delivery",
            run_seconds.clone(),
        );
        // 0.1 ms to about 13 s.
        let send_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "send_duration_seconds",
            "Handing one message to the relay (or writing it to the outbox)",
            send_seconds.clone(),
        );
        let breaker_open = Gauge::default();
        registry.register(
            "relay_breaker_open",
            "1 while deliveries pause because the relay keeps failing",
            breaker_open.clone(),
        );
        let relay_messages = Family::<RelayLabels, Counter>::default();
        registry.register(
            "relay_messages",
            "Messages handed to each SMTP relay, by outcome",
            relay_messages.clone(),
        );
        let relay_down = Family::<RelayName, Gauge>::default();
        registry.register(
            "relay_down",
            "1 while a relay's share goes to the other relays because it keeps failing",
            relay_down.clone(),
        );
        let web_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "web_requests",
            "Requests to the reader pages, by route and status",
            web_requests.clone(),
        );
        let open_deliveries = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "open_deliveries",
            "Deliveries of unfinished runs, pending or sending",
            open_deliveries.clone(),
        );
        let subscribers = Family::<StatusLabels, Gauge>::default();
        registry.register("subscribers", "Subscribers by status", subscribers.clone());
        let bounces = Family::<BounceLabels, Counter>::default();
        registry.register(
            "bounces",
            "Bounces and complaints recorded (duplicates and ignored reports not counted), by kind and source",
            bounces.clone(),
        );
        Self {
            registry,
            messages,
            run_seconds,
            send_seconds,
            breaker_open,
            relay_messages,
            relay_down,
            web_requests,
            open_deliveries,
            subscribers,
            bounces,
        }
    }
}

impl Metrics {
    /// Counts `n` outcomes of a digest's deliveries.
    pub fn count_messages(&self, digest: &str, outcome: &str, n: usize) {
        if n > 0 {
            self.messages
                .get_or_create(&MessageLabels {
                    digest: digest.to_string(),
                    outcome: outcome.to_string(),
                })
                .inc_by(n as u64);
        }
    }

    /// The deliveries of `digest` this process has finished: sent, failed
    /// or skipped.
    pub fn messages_done(&self, digest: &str) -> u64 {
        ["sent", "failed", "skipped"]
            .iter()
            .map(|outcome| {
                self.messages
                    .get_or_create(&MessageLabels {
                        digest: digest.to_string(),
                        outcome: outcome.to_string(),
                    })
                    .get()
            })
            .sum()
    }

    /// The metrics in the text format of Prometheus (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // (Writing to a String cannot fail.)
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
