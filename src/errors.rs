//! How an error is shown: its message, then each cause that the message
//! does not already say (many errors repeat their source in their own
//! text, as sqlx's do, so `{:#}` would print it twice).

use std::error::Error;
use std::fmt;

/// Shows `error` and its causes, `: `-separated, each said once.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = String::new();
        let mut next = Some(self.0);
        while let Some(error) = next {
            let text = error.to_string();
            if !text.is_empty() && !said.contains(&text) {
                if !said.is_empty() {
                    said.push_str(": ");
                }
                said.push_str(&text);
            }
            next = error.source();
        }
        f.write_str(&said)
    }
}

/// [`Chain`] of an `anyhow` error.
pub fn chain(error: &anyhow::Error) -> Chain<'_> {
    Chain(error.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Repeats(std::io::Error);

    impl fmt::Display for Repeats {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "error communicating with database: {}", self.0)
        }
    }

    impl Error for Repeats {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_said_is_not_said_again() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let said = refused.to_string();
        let e = anyhow::Error::new(Repeats(refused)).context("cannot connect to Postgres");
        assert_eq!(
            chain(&e).to_string(),
            format!("cannot connect to Postgres: error communicating with database: {said}")
        );
        // Causes that add something are all said, in order.
        let e = anyhow::anyhow!("no such file").context("cannot read a.csv");
        let e = e.context("nothing was imported");
        assert_eq!(
            chain(&e).to_string(),
            "nothing was imported: cannot read a.csv: no such file"
        );
    }
}
