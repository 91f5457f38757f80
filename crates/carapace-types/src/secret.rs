use std::any::Any;
use std::fmt;

use zeroize::Zeroize;

/// A value that must never be printed. `Debug` and `Display` show `[REDACTED]`; the
/// value is only reachable through [`Secret::expose`], which makes each use visible in
/// review.
///
/// On drop the value is overwritten with zeros when it is a `String`, a `Vec<u8>` or a
/// `Box<str>`/`Box<[u8]>` (the types secrets are kept in). Other types (an
/// `http::HeaderValue`, whose buffer is shared and immutable) are dropped as they are,
/// which is why `T: 'static`: the type is looked up at run time, since a `Drop` impl
/// cannot be specialised.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T: 'static>(T);

impl<T: 'static> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The secret value. Call only where the value is handed to its one consumer.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: 'static> Drop for Secret<T> {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Overwrites the value with zeros when its type is one secrets are kept in; true when it
/// did.
fn wipe(value: &mut dyn Any) -> bool {
    if let Some(s) = value.downcast_mut::<String>() {
        s.zeroize();
    } else if let Some(v) = value.downcast_mut::<Vec<u8>>() {
        v.zeroize();
    } else if let Some(s) = value.downcast_mut::<Box<str>>() {
        s.zeroize();
    } else if let Some(b) = value.downcast_mut::<Box<[u8]>>() {
        b.zeroize();
    } else {
        return false;
    }
    true
}

impl<T: 'static> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<T: 'static> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[cfg(test)]
mod tests {
    use super::{Secret, wipe};

    #[test]
    fn formatting_never_shows_the_value() {
        let s = Secret::new("sk-live-123".to_string());
        assert_eq!(
            format!("{s} {s:?} {s:#?}"),
            "[REDACTED] [REDACTED] [REDACTED]"
        );
        assert_eq!(s.expose(), "sk-live-123");
    }

    #[test]
    fn clones_compare_equal_and_stay_usable_after_the_original_is_dropped() {
        let a = Secret::new("sk-live-123".to_string());
        let b = a.clone();
        assert_eq!(a, b);
        drop(a);
        assert_eq!(b.expose(), "sk-live-123");
    }

    #[test]
    fn the_drop_wipe_zeroes_the_types_secrets_are_kept_in() {
        let mut s = String::from("sk-live-123");
        assert!(wipe(&mut s));
        assert!(s.is_empty());
        let mut v = b"sk-live-123".to_vec();
        assert!(wipe(&mut v));
        assert!(v.is_empty());
        let mut b: Box<[u8]> = Box::new(*b"sk-live-123");
        assert!(wipe(&mut b));
        assert!(b.iter().all(|&x| x == 0));
        // Other types are dropped as they are.
        let mut n = 42u32;
        assert!(!wipe(&mut n));
        assert_eq!(n, 42);
    }
}
