//! The `Store`: every query Gazette makes, on SQLite (the embedded default)
//! or Postgres (production, shared by replicas), one file per aggregate:
//! [`articles`], [`subscribers`] (and their streamed
//! [`subscriber_import`]), [`runs`] (planning), [`ledger`] (claims,
//! outcomes, the held connection), [`retention`] (old runs' ledger rows
//! folded into counts), [`readers`] (the readers' links and
//! confirmations), [`feeds`] (their state between fetches, the lease, their
//! entries), [`bounces`] (bounces, complaints and the readers they
//! stop) and [`lock`] (one delivering process per SQLite file).
//!
//! Most statements are the same text on both backends (`$1` placeholders
//! work on both); `on_pool!` expands one body per backend so each is
//! type-checked against its own driver. Where the dialects differ, the
//! method matches on the backend explicitly; [`backend`] is the one place
//! that knows which backends there are.

#[macro_use]
mod backend;

mod articles;
mod bounces;
mod confirmations;
mod feeds;
mod ledger;
mod lock;
mod readers;
mod retention;
mod runs;
mod states;
mod subscriber_import;
mod subscribers;
mod time;

pub use self::articles::{Article, NewArticle, RunArticle};
pub use self::backend::Store;
pub use self::bounces::{BounceLimits, BounceOutcome, BounceRecord, BounceReport, RunBounces};
pub use self::confirmations::ConfirmationEmail;
pub use self::feeds::{EntryChange, FeedArticle, FeedClaim, FeedStatus, FetchRecord};
pub use self::ledger::{Claimed, DeliveryCounts, FailedDelivery, LedgerConnection, OpenDelivery};
pub use self::lock::ProcessLock;
pub use self::readers::{Reader, SubscribeOutcome, SubscriptionRequest};
pub use self::retention::{FoldReport, FoldableRun};
pub use self::runs::{PLAN_CHUNK, PlanChunk, PlanOutcome, Run, RunPlan};
pub use self::subscriber_import::SubscriberImport;
pub use self::subscribers::{ImportCounts, NewSubscriber, Subscriber, SubscriberChange};
pub use self::time::Timestamp;
