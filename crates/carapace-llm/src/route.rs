//! Reliability over providers: retries with exponential backoff and jitter (honouring
//! `Retry-After`), and a failover chain of models tried in order when one keeps failing.
//!
//! A streamed attempt that has already shown text is never retried behind the user's
//! back: its error ends the call. A model that used up its retries is skipped for a
//! cool-down, so the next turns go straight to the one that works.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, UnboundedSender};

use crate::{ChatRequest, ChatResponse, Provider, ProviderError, StreamEvent};

/// How often and how patiently one model is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per model, the first included.
    pub attempts: u32,
    /// The wait before the first retry; it doubles with each retry.
    pub base_delay: Duration,
    /// The longest wait. A `Retry-After` longer than this moves on to the next model.
    pub max_delay: Duration,
    /// How long a model that used up its retries is skipped.
    pub cooldown: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 0.5 s doubling up to 20 s, a 60 s cool-down.
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            cooldown: Duration::from_secs(60),
        }
    }
}

/// One model of the chain.
#[derive(Clone)]
pub struct Route {
    /// `provider/model`, as the owner wrote it.
    pub name: String,
    /// The client of its provider.
    pub provider: Arc<dyn Provider>,
    /// The model as the provider knows it.
    pub model: String,
}

/// What the router did that the user and the audit log should know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteEvent {
    /// An attempt failed and the same model is tried again after `wait`.
    Retry {
        /// The model, `provider/model`.
        route: String,
        /// The attempt that failed, from 1.
        attempt: u32,
        /// How long before the next one.
        wait: Duration,
        /// Why it failed.
        error: ProviderError,
    },
    /// A model kept failing; the next one of the chain takes over.
    Failover {
        /// The model given up.
        from: String,
        /// The model used now.
        to: String,
        /// Its last error.
        error: ProviderError,
    },
}

/// The models of a turn, in order of preference, with their retry policy.
pub struct Router {
    routes: Vec<Route>,
    policy: RetryPolicy,
    /// Per route, until when it is skipped.
    down_until: Mutex<Vec<Option<Instant>>>,
}

impl Router {
    /// A router over `routes` (at least one), tried in order.
    pub fn new(routes: Vec<Route>, policy: RetryPolicy) -> Result<Router, ProviderError> {
        if routes.is_empty() {
            return Err(ProviderError::InvalidConfig(
                "a model chain needs at least one model".into(),
            ));
        }
        if policy.attempts == 0 {
            return Err(ProviderError::InvalidConfig(
                "a model needs at least one attempt".into(),
            ));
        }
        let down_until = Mutex::new(vec![None; routes.len()]);
        Ok(Router {
            routes,
            policy,
            down_until,
        })
    }

    /// The models, in order of preference.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// One model turn: `req` (whose `model` is replaced by each route's) is sent to the
    /// first model not cooling down, retried while its errors are worth retrying, then
    /// to the next model. `notify` hears of every retry and failover. Returns the
    /// response and the name of the model that gave it; the error is the last model's.
    pub async fn chat(
        &self,
        req: &ChatRequest,
        events: Option<&UnboundedSender<StreamEvent>>,
        notify: &mut (dyn FnMut(RouteEvent) + Send),
    ) -> Result<(ChatResponse, String), ProviderError> {
        let order = self.order();
        let mut last_error = None;
        for (position, &index) in order.iter().enumerate() {
            let route = &self.routes[index];
            if let Some(error) = last_error.take() {
                notify(RouteEvent::Failover {
                    from: self.routes[order[position - 1]].name.clone(),
                    to: route.name.clone(),
                    error,
                });
            }
            match self.try_route(route, req, events, notify).await {
                Ok(response) => {
                    self.set_down(index, None);
                    return Ok((response, route.name.clone()));
                }
                Err(Attempted { error, shown_text }) => {
                    let moves_on = fails_over(&error) && !shown_text;
                    if fails_over(&error) {
                        self.set_down(index, Some(Instant::now() + self.policy.cooldown));
                    }
                    if !moves_on {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.expect("at least one route was tried"))
    }

    /// Route indexes: those not cooling down first, in order, then the rest (a chain
    /// whose every model is down still tries them all).
    fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let down = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (up, cooling): (Vec<usize>, Vec<usize>) =
            (0..self.routes.len()).partition(|&i| down[i].is_none_or(|t| t <= now));
        up.into_iter().chain(cooling).collect()
    }

    fn set_down(&self, index: usize, until: Option<Instant>) {
        self.down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)[index] = until;
    }

    /// Attempts of one model, with backoff between them.
    async fn try_route(
        &self,
        route: &Route,
        req: &ChatRequest,
        events: Option<&UnboundedSender<StreamEvent>>,
        notify: &mut (dyn FnMut(RouteEvent) + Send),
    ) -> Result<ChatResponse, Attempted> {
        // The history is copied only when this route names another model.
        let req = if req.model == route.model {
            std::borrow::Cow::Borrowed(req)
        } else {
            std::borrow::Cow::Owned(ChatRequest {
                model: route.model.clone(),
                ..req.clone()
            })
        };
        let req = req.as_ref();
        let mut attempt = 1;
        loop {
            let (result, shown_text) = attempt_once(route, req, events).await;
            let error = match result {
                Ok(response) => return Ok(response),
                Err(e) => e,
            };
            let wait = self.wait_before_retry(&error, attempt);
            match wait {
                Some(wait) if !shown_text && attempt < self.policy.attempts => {
                    notify(RouteEvent::Retry {
                        route: route.name.clone(),
                        attempt,
                        wait,
                        error,
                    });
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return Err(Attempted { error, shown_text }),
            }
        }
    }

    /// The wait before retrying after `error` on attempt `attempt` (from 1), or `None`
    /// when retrying is pointless: the error is not transient, or the provider asked for
    /// a longer wait than the policy allows.
    fn wait_before_retry(&self, error: &ProviderError, attempt: u32) -> Option<Duration> {
        if !error.retriable() {
            return None;
        }
        let doubled = self
            .policy
            .base_delay
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.policy.max_delay);
        // Full jitter in the upper half: spread out, never shorter than half the step.
        let wait = doubled / 2 + doubled.mul_f64(jitter() / 2.0);
        match error {
            ProviderError::Http {
                retry_after: Some(asked),
                ..
            } => (*asked <= self.policy.max_delay).then_some((*asked).max(wait)),
            _ => Some(wait),
        }
    }
}

/// A model's last error, and whether its failed attempt had already shown text.
struct Attempted {
    error: ProviderError,
    shown_text: bool,
}

/// Whether a model's failure is a reason to try the next one: it is down or overloaded,
/// or it does not take this key or model. A request the model rejects on its merits
/// (a bad request, a protocol error) would fail on the next one too.
fn fails_over(error: &ProviderError) -> bool {
    error.retriable()
        || matches!(
            error,
            ProviderError::Http {
                status: 401 | 403 | 404,
                ..
            }
        )
}

/// One attempt; with streaming, deltas pass through and are counted.
async fn attempt_once(
    route: &Route,
    req: &ChatRequest,
    events: Option<&UnboundedSender<StreamEvent>>,
) -> (Result<ChatResponse, ProviderError>, bool) {
    let Some(outer) = events else {
        return (route.provider.chat(req, None).await, false);
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let forward = async {
        let mut shown = false;
        while let Some(event) = rx.recv().await {
            shown = true;
            let _ = outer.send(event);
        }
        shown
    };
    let call = async {
        let result = route.provider.chat(req, Some(&tx)).await;
        drop(tx);
        result
    };
    let (result, shown) = tokio::join!(call, forward);
    (result, shown)
}

/// A number in [0, 1) that differs between calls and processes; not for secrets.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use futures_util::FutureExt;
    use futures_util::future::BoxFuture;
    use tokio::sync::mpsc::{self, UnboundedSender};

    use super::{RetryPolicy, Route, RouteEvent, Router};
    use crate::{ChatRequest, ChatResponse, Provider, ProviderError, StreamEvent};

    /// A provider that answers from a script: `Ok(text)` (streamed as two deltas when
    /// asked to stream) or an error, optionally after one delta.
    struct Scripted {
        script: Mutex<VecDeque<Step>>,
        models: Mutex<Vec<String>>,
    }

    enum Step {
        Answer(&'static str),
        Fail(ProviderError),
        FailAfterText(ProviderError),
    }

    impl Scripted {
        fn new(steps: Vec<Step>) -> std::sync::Arc<Scripted> {
            std::sync::Arc::new(Scripted {
                script: Mutex::new(steps.into()),
                models: Mutex::default(),
            })
        }

        fn calls(&self) -> Vec<String> {
            self.models.lock().unwrap().clone()
        }
    }

    impl Provider for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }

        fn chat<'a>(
            &'a self,
            req: &'a ChatRequest,
            events: Option<&'a UnboundedSender<StreamEvent>>,
        ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
            self.models.lock().unwrap().push(req.model.clone());
            let step = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .expect("script ran out");
            async move {
                match step {
                    Step::Answer(text) => {
                        if let Some(tx) = events {
                            let (a, b) = text.split_at(text.len() / 2);
                            let _ = tx.send(StreamEvent::TextDelta(a.into()));
                            let _ = tx.send(StreamEvent::TextDelta(b.into()));
                        }
                        Ok(ChatResponse {
                            content: Some(text.into()),
                            tool_calls: Vec::new(),
                            finish_reason: Some("stop".into()),
                            usage: None,
                            model: req.model.clone(),
                        })
                    }
                    Step::Fail(e) => Err(e),
                    Step::FailAfterText(e) => {
                        if let Some(tx) = events {
                            let _ = tx.send(StreamEvent::TextDelta("partial".into()));
                        }
                        Err(e)
                    }
                }
            }
            .boxed()
        }

        fn list_models(&self) -> BoxFuture<'_, Result<Vec<String>, ProviderError>> {
            async { Ok(Vec::new()) }.boxed()
        }
    }

    fn http(status: u16, retry_after: Option<u64>) -> ProviderError {
        ProviderError::Http {
            status,
            message: format!("status {status}"),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            cooldown: Duration::from_secs(60),
        }
    }

    fn route(name: &str, p: &std::sync::Arc<Scripted>) -> Route {
        Route {
            name: name.into(),
            provider: p.clone(),
            model: name.split_once('/').unwrap().1.into(),
        }
    }

    fn req() -> ChatRequest {
        ChatRequest {
            model: "ignored".into(),
            messages: Vec::new(),
            tools: Vec::new(),
            max_tokens: None,
            temperature: None,
        }
    }

    /// Runs one call and returns (text or error, the model that answered, events).
    async fn run(
        router: &Router,
        stream: bool,
    ) -> (
        Result<(String, String), ProviderError>,
        Vec<RouteEvent>,
        String,
    ) {
        let mut seen = Vec::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let result = router
            .chat(&req(), stream.then_some(&tx), &mut |e| seen.push(e))
            .await
            .map(|(r, name)| (r.content.unwrap_or_default(), name));
        drop(tx);
        let mut streamed = String::new();
        while let Ok(StreamEvent::TextDelta(d)) = rx.try_recv() {
            streamed.push_str(&d);
        }
        (result, seen, streamed)
    }

    #[tokio::test]
    async fn transient_errors_are_retried_then_the_answer_comes_back() {
        let p = Scripted::new(vec![
            Step::Fail(http(503, None)),
            Step::Fail(ProviderError::Connect("refused".into())),
            Step::Answer("hello"),
        ]);
        let router = Router::new(vec![route("a/m1", &p)], fast()).unwrap();
        let (result, events, streamed) = run(&router, true).await;
        assert_eq!(result.unwrap(), ("hello".into(), "a/m1".into()));
        assert_eq!(streamed, "hello");
        assert_eq!(p.calls(), ["m1", "m1", "m1"]);
        let attempts: Vec<u32> = events
            .iter()
            .map(|e| match e {
                RouteEvent::Retry { attempt, .. } => *attempt,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(attempts, [1, 2]);
    }

    #[tokio::test]
    async fn a_model_that_keeps_failing_hands_over_and_is_skipped_afterwards() {
        let a = Scripted::new(vec![
            Step::Fail(http(500, None)),
            Step::Fail(http(502, None)),
            Step::Fail(http(529, None)),
        ]);
        let b = Scripted::new(vec![Step::Answer("from b"), Step::Answer("b again")]);
        let router = Router::new(vec![route("a/m1", &a), route("b/m2", &b)], fast()).unwrap();
        let (result, events, _) = run(&router, false).await;
        assert_eq!(result.unwrap(), ("from b".into(), "b/m2".into()));
        assert_eq!(a.calls().len(), 3);
        assert_eq!(b.calls(), ["m2"]);
        assert!(matches!(
            events.last(),
            Some(RouteEvent::Failover { from, to, error: ProviderError::Http { status: 529, .. } })
                if from == "a/m1" && to == "b/m2"
        ));
        // The next call goes straight to b: a cools down.
        let (result, events, _) = run(&router, false).await;
        assert_eq!(result.unwrap().1, "b/m2");
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(a.calls().len(), 3);
    }

    #[tokio::test]
    async fn a_bad_key_fails_over_at_once_a_bad_request_does_not() {
        let a = Scripted::new(vec![Step::Fail(http(401, None))]);
        let b = Scripted::new(vec![Step::Answer("ok")]);
        let router = Router::new(vec![route("a/m", &a), route("b/m", &b)], fast()).unwrap();
        let (result, events, _) = run(&router, false).await;
        assert_eq!(result.unwrap().1, "b/m");
        assert_eq!(a.calls().len(), 1, "no retry of a 401");
        assert_eq!(events.len(), 1);

        let a = Scripted::new(vec![Step::Fail(http(400, None))]);
        let b = Scripted::new(vec![]);
        let router = Router::new(vec![route("a/m", &a), route("b/m", &b)], fast()).unwrap();
        let (result, events, _) = run(&router, false).await;
        assert!(matches!(
            result,
            Err(ProviderError::Http { status: 400, .. })
        ));
        assert!(events.is_empty());
        assert!(b.calls().is_empty());
    }

    #[tokio::test]
    async fn retry_after_is_honoured_and_one_too_long_moves_on() {
        let a = Scripted::new(vec![Step::Fail(http(429, Some(0))), Step::Answer("ok")]);
        let router = Router::new(vec![route("a/m", &a)], fast()).unwrap();
        let (result, events, _) = run(&router, false).await;
        assert!(result.is_ok());
        assert!(matches!(events[..], [RouteEvent::Retry { .. }]));

        // Asked to wait an hour: not retried here, the next model answers.
        let a = Scripted::new(vec![Step::Fail(http(429, Some(3600)))]);
        let b = Scripted::new(vec![Step::Answer("ok")]);
        let router = Router::new(vec![route("a/m", &a), route("b/m", &b)], fast()).unwrap();
        let (result, events, _) = run(&router, false).await;
        assert_eq!(result.unwrap().1, "b/m");
        assert_eq!(a.calls().len(), 1);
        assert!(matches!(events[..], [RouteEvent::Failover { .. }]));
    }

    #[tokio::test]
    async fn a_stream_that_showed_text_is_not_retried_behind_the_users_back() {
        let a = Scripted::new(vec![Step::FailAfterText(ProviderError::Stalled)]);
        let b = Scripted::new(vec![]);
        let router = Router::new(vec![route("a/m", &a), route("b/m", &b)], fast()).unwrap();
        let (result, events, streamed) = run(&router, true).await;
        assert_eq!(result.unwrap_err(), ProviderError::Stalled);
        assert_eq!(streamed, "partial");
        assert!(events.is_empty(), "{events:?}");
        assert!(b.calls().is_empty());
        // Unstreamed, the same failure is retried.
        let a = Scripted::new(vec![
            Step::FailAfterText(ProviderError::Stalled),
            Step::Answer("whole"),
        ]);
        let router = Router::new(vec![route("a/m", &a)], fast()).unwrap();
        let (result, _, _) = run(&router, false).await;
        assert_eq!(result.unwrap().0, "whole");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let p = Scripted::new(vec![]);
        let policy = RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            cooldown: Duration::from_secs(1),
        };
        let router = Router::new(vec![route("a/m", &p)], policy).unwrap();
        let err = ProviderError::Timeout;
        for (attempt, step) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (9, 1000)] {
            let wait = router.wait_before_retry(&err, attempt).unwrap();
            let step = Duration::from_millis(step);
            assert!(wait >= step / 2 && wait <= step, "{attempt}: {wait:?}");
        }
        assert_eq!(
            router.wait_before_retry(&ProviderError::Protocol("x".into()), 1),
            None
        );
        assert!(Router::new(Vec::new(), policy).is_err());
    }
}
