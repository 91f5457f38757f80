use std::fmt;

/// A value that must never be printed. `Debug` and `Display` show `[REDACTED]`; the
/// value is only reachable through [`Secret::expose`], which makes each use visible in
/// review.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The secret value. Call only where the value is handed to its one consumer.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn formatting_never_shows_the_value() {
        let s = Secret::new("sk-live-123".to_string());
        assert_eq!(
            format!("{s} {s:?} {s:#?}"),
            "[REDACTED] [REDACTED] [REDACTED]"
        );
        assert_eq!(s.expose(), "sk-live-123");
    }
}
