//! What every command's delivery needs: the settings, the store, the
//! renderer and the key of readers' links.

use std::sync::Arc;

use crate::bounces::ReturnPath;
use crate::config::Settings;
use crate::domain::ReaderTokens;
use crate::mail::{Relays, Sealer};
use crate::metrics::Metrics;
use crate::render::Renderer;
use crate::store::Store;

/// What the delivery code needs, shared by every command.
#[derive(Clone)]
pub struct Engine {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub renderer: Arc<Renderer>,
    /// Signs the tokens of readers' links.
    pub tokens: ReaderTokens,
    /// Signs and checks the return paths of `[bounces] return_path`
    /// (`None`: messages go out with the From address as their sender).
    pub return_path: Option<ReturnPath>,
    /// Signs every message with the `[[dkim]]` keys, on threads of its own.
    pub sealer: Sealer,
    /// The relays' shares and health, for every sender of the process.
    pub relays: Arc<Relays>,
    /// What the admin port's `/metrics` shows.
    pub metrics: Arc<Metrics>,
    /// Woken when a subscribe request leaves a confirmation email to send.
    pub confirmations_due: Arc<tokio::sync::Notify>,
    /// A worker handed this reader's delivery panics: for the tests of
    /// what a panicking worker leaves behind.
    #[doc(hidden)]
    pub panic_for_tests: Option<String>,
}
