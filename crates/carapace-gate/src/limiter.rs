//! Token-bucket rate limits per principal and tool.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<(String, Cow<'static, str>), Bucket>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute: per_minute.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `(principal, tool)`. Every attempt is charged, allowed or
    /// not; `Err` carries how long until a token is available.
    pub fn charge(
        &self,
        principal: &str,
        tool: Cow<'static, str>,
        now: Instant,
    ) -> Result<(), Duration> {
        let capacity = f64::from(self.per_minute);
        let per_sec = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry((principal.to_string(), tool))
            .or_insert(Bucket {
                tokens: capacity,
                last: now,
            });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_sec).min(capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_then_refills() {
        let l = RateLimiter::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.charge("owner@api", "read_file".into(), t0).is_ok());
        }
        let wait = l.charge("owner@api", "read_file".into(), t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another tool and another principal have their own buckets.
        assert!(l.charge("owner@api", "list_dir".into(), t0).is_ok());
        assert!(l.charge("owner@openai", "read_file".into(), t0).is_ok());
        // A denied attempt was charged: 20 s later there is exactly one token again.
        assert!(
            l.charge(
                "owner@api",
                "read_file".into(),
                t0 + Duration::from_secs(20)
            )
            .is_ok()
        );
        assert!(
            l.charge(
                "owner@api",
                "read_file".into(),
                t0 + Duration::from_secs(20)
            )
            .is_err()
        );
    }
}
