//! A string that never shows itself: passwords and the userinfo of URLs.
//!
//! `Debug` and `Display` print a placeholder, so a configuration that holds
//! one can be logged, put in an error or `{:?}`-formatted without leaking
//! it. Only [`Secret::expose`] gives the text, at the one place that sends
//! it to the broker.
use std::fmt;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    /// The text itself: only for handing it to the broker's client crate.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_text() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "\"<redacted>\" <redacted>");
        assert_eq!(secret.expose(), "hunter2");
    }
}
