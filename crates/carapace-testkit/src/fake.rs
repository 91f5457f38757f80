//! What the fakes of this crate share: serving a router on 127.0.0.1, the script of
//! replies, locks that outlive a panicked test, counting clients that went away, and bodies
//! sent piece by piece that can stop halfway.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The lock, also after a test panicked while holding it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fake's server task on 127.0.0.1; it stops when dropped.
pub(crate) struct Served {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// The address the server listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app` on a free loopback port, on the current tokio runtime.
pub(crate) async fn serve(app: Router, what: &str) -> Served {
    bind(0, app)
        .await
        .unwrap_or_else(|e| panic!("bind the fake {what} server on 127.0.0.1: {e}"))
}

/// Serves `app` on `127.0.0.1:port` (0 picks a free one), on the current tokio runtime.
pub(crate) async fn bind(port: u16, app: Router) -> std::io::Result<Served> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        // Serving only ends when the task is aborted.
        let _ = axum::serve(listener, app).await;
    });
    Ok(Served { addr, task })
}

/// The replies a fake plays in order and, once they are used up, the repeated one, if any.
pub(crate) struct Script<R> {
    queue: Mutex<VecDeque<R>>,
    repeat: Mutex<Option<R>>,
}

impl<R: Clone> Script<R> {
    /// A script of these replies, repeating none.
    pub(crate) fn new(replies: Vec<R>) -> Script<R> {
        Script {
            queue: Mutex::new(replies.into()),
            repeat: Mutex::default(),
        }
    }

    /// Appends a reply.
    pub(crate) fn push(&self, reply: R) {
        lock(&self.queue).push_back(reply);
    }

    /// Answers with `reply` whenever the queue is empty.
    pub(crate) fn repeat(&self, reply: R) {
        *lock(&self.repeat) = Some(reply);
    }

    /// The next reply of the queue, else the repeated one, if any.
    pub(crate) fn next_reply(&self) -> Option<R> {
        let scripted = lock(&self.queue).pop_front();
        scripted.or_else(|| lock(&self.repeat).clone())
    }
}

/// Counts a disconnect when dropped before [`DisconnectGuard::finish`]: hyper drops the
/// handler future, or the body stream, when the client goes away.
pub(crate) struct DisconnectGuard {
    count: Arc<AtomicUsize>,
    finished: bool,
}

impl DisconnectGuard {
    /// A guard that adds to `count`.
    pub(crate) fn new(count: Arc<AtomicUsize>) -> DisconnectGuard {
        DisconnectGuard {
            count,
            finished: false,
        }
    }

    /// The reply went out whole: no disconnect.
    pub(crate) fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A 200 whose body is sent piece by piece; with `stall` it then hangs without closing.
/// The guard, if any, is finished once the last piece is handed to hyper.
pub(crate) fn body_response<P: Into<Bytes> + Send + 'static>(
    content_type: &'static str,
    pieces: Vec<P>,
    stall: bool,
    guard: Option<DisconnectGuard>,
) -> Response {
    let body = futures_util::stream::unfold(
        (pieces.into_iter(), guard),
        move |(mut pieces, mut guard)| async move {
            let piece = pieces.next();
            if let Some(guard) = guard.take_if(|_| pieces.as_slice().is_empty() && !stall) {
                guard.finish();
            }
            match piece {
                Some(piece) => Some((Ok::<Bytes, Infallible>(piece.into()), (pieces, guard))),
                None => {
                    if stall {
                        std::future::pending::<()>().await;
                    }
                    None
                }
            }
        },
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// The response with `Cache-Control: no-cache`, as OpenAI and Anthropic send their bodies.
pub(crate) fn no_cache(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
