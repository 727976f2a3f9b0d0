//! The progress of a long command (`send`, `retry`, the imports): a bar
//! with count, rate and time left when standard error is a terminal, a log
//! line every few seconds when it is not.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tracing::info;

/// How often a progress line is logged when standard error is not a
/// terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The bar on screen, if any: log lines are written around it.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// The progress of one task of `total` items.
pub struct Progress {
    what: String,
    unit: &'static str,
    /// `None`: not known ahead.
    total: Option<u64>,
    started: Instant,
    bar: Option<ProgressBar>,
    /// When standard error is not a terminal: when the last line was logged.
    logged: Mutex<Instant>,
}

impl Progress {
    /// Starts showing the progress of `what` (`daily: sending`), counted in
    /// `unit` (`emails`).
    pub fn start(what: impl Into<String>, total: u64, unit: &'static str) -> Self {
        Self::begin(what.into(), Some(total), unit)
    }

    /// Starts showing the progress of a task whose size is not known
    /// ahead (reading standard input): a count and a rate.
    pub fn counting(what: impl Into<String>, unit: &'static str) -> Self {
        Self::begin(what.into(), None, unit)
    }

    fn begin(what: String, total: Option<u64>, unit: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            let template = match total {
                Some(_) => format!(
                    "{{prefix}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit}, {{rate}}/s, {{eta}} left"
                ),
                None => format!("{{prefix}} {{spinner}} {{human_pos}} {unit}, {{rate}}/s"),
            };
            if let Ok(style) = ProgressStyle::with_template(&template) {
                let rate = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}", state.per_sec());
                };
                bar.set_style(style.with_key("rate", rate).progress_chars("=> "));
            }
            bar.set_prefix(what.clone());
            bar.enable_steady_tick(Duration::from_millis(250));
            *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
            bar
        });
        Self {
            what,
            unit,
            total,
            started: Instant::now(),
            bar,
            logged: Mutex::new(Instant::now()),
        }
    }

    /// `done` of the items are done.
    pub fn set(&self, done: u64) {
        let done = self.total.map_or(done, |total| done.min(total));
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.elapsed() < LOG_EVERY || Some(done) == self.total {
            return;
        }
        *logged = Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        let rate = done as f64 / secs.max(0.001);
        let Some(total) = self.total else {
            info!("{}: {done} {}, {rate:.1}/s", self.what, self.unit);
            return;
        };
        let left = if rate > 0.0 {
            format!(
                ", about {} left",
                humantime::format_duration(Duration::from_secs(
                    ((total - done) as f64 / rate).ceil() as u64
                ))
            )
        } else {
            String::new()
        };
        info!(
            "{}: {done} of {total} {}, {rate:.1}/s{left}",
            self.what, self.unit
        );
    }
}

impl Drop for Progress {
    /// Takes the bar off the screen.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

/// Standard error for the log, written around the progress bar on screen
/// (if any), so that a log line never lands inside it.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match shown {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
