//! Delivery end to end: a run's emails as a reader's mail client sees
//! them, faults of the relay, the database and the process, and the
//! confirmation emails.

mod confirmations;
mod faults;
mod pipeline;
mod planning;
