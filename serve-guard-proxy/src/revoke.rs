//! Revocation is total: what a token opened ends when the token leaves the token file.
//!
//! The token check runs per request, so a removed token gets 401 on its next request. What it
//! already opened outlives that check: a WebSocket tunnel, a streaming response (server-sent
//! events, a gRPC stream), an upload, a request waiting for the upstream. Each of those carries a
//! [`Grant`]: which token of which set admitted it ([`Credential`], never the token's text).
//! Every grant in flight is listed in [`Revocations`]; when a new token set is published the
//! [`Sweeper`] asks the new set, in constant time, whether it still holds each grant's token, and
//! revokes those it does not:
//!
//! - a tunnel's copy loop stops and both connections close;
//! - a response body ends with [`RevokedError`]: hyper resets the HTTP/2 stream (RST_STREAM) or
//!   closes the HTTP/1.1 connection before the message is complete, so no client takes the cut
//!   body for a whole one;
//! - a request body (an upload) ends with the same error, which aborts the upstream request;
//! - a request still waiting for the upstream's answer is dropped and answered 401.
//!
//! Both the listing of a grant and a sweep judge by the newest set published, read under the
//! registry's lock: sets only get newer, so a grant listed after a set came out was checked
//! against it (or a newer one), and one listed before is in the list the next sweep reads. Neither
//! a set published between a request's token check and its listing is missed, nor a request
//! admitted by a token that a set published just before the sweep added is revoked.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::reply::{self, Body, BoxError};
use crate::metrics::{self as metrics, Revoked};
use crate::token::{TokenIndex, TokenReceiver, TokenSet};

/// What a body whose token was revoked ends with.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the token that admitted this request was revoked")]
pub struct RevokedError;

/// The token that admitted a request: the set it was checked against and its place there. The
/// set is shared (an `Arc` the handler holds anyway), so this costs no copy of a token.
#[derive(Debug, Clone)]
pub struct Credential {
    set: Arc<TokenSet>,
    index: TokenIndex,
}

impl Credential {
    pub fn new(set: Arc<TokenSet>, index: TokenIndex) -> Credential {
        Credential { set, index }
    }

    /// Whether `tokens` still holds this token. The same set (the usual case: nothing changed
    /// since the check) needs no comparison.
    fn still_in(&self, tokens: &Arc<TokenSet>) -> bool {
        Arc::ptr_eq(&self.set, tokens) || tokens.keeps(&self.set, self.index)
    }
}

/// Every grant in flight, and the token sets they are judged by.
#[derive(Clone)]
pub struct Revocations(Arc<Registry>);

struct Registry {
    /// The newest set is `borrow()`; read under `state`'s lock (see the module's notes).
    tokens: TokenReceiver,
    state: Mutex<State>,
}

struct State {
    /// Weak: a grant is listed while something it admitted is alive, and unlists itself when
    /// the last of it drops.
    live: HashMap<u64, Weak<Live>>,
    next_id: u64,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn newest(&self) -> Arc<TokenSet> {
        self.tokens.borrow().clone()
    }
}

/// What one sweep ended, and what it let go on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub tunnels: usize,
    pub streams: usize,
    /// Grants whose token the new set still holds.
    pub kept: usize,
}

impl Revocations {
    /// The registry judging by the sets `tokens` receives, and the sweeper that follows them
    /// (see [`Sweeper::run`]).
    pub fn new(tokens: &TokenReceiver) -> (Revocations, Sweeper) {
        let mut changes = tokens.clone();
        // Marked seen: the sweeper wakes for the next set, not for this one.
        changes.borrow_and_update();
        let registry = Revocations(Arc::new(Registry {
            tokens: tokens.clone(),
            state: Mutex::new(State {
                live: HashMap::new(),
                next_id: 0,
            }),
        }));
        let sweeper = Sweeper {
            revocations: registry.clone(),
            changes,
        };
        (registry, sweeper)
    }

    /// Lists what `credential` admitted (a tunnel or a request in flight) until it ends. Revoked
    /// at once when the newest set no longer holds the token (it was removed since the check).
    pub fn admit(&self, credential: Credential, what: Revoked) -> Grant {
        let mut state = self.0.lock();
        let id = state.next_id;
        state.next_id += 1;
        let newest = self.0.newest();
        let live = Arc::new(Live {
            id,
            credential,
            what,
            revoked: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            registry: self.0.clone(),
        });
        state.live.insert(id, Arc::downgrade(&live));
        drop(state);
        if !live.credential.still_in(&newest) && live.revoke() {
            tracing::debug!(
                kind = what.as_str(),
                "a request's token was revoked before it was forwarded"
            );
        }
        Grant(live)
    }

    /// Revokes every grant whose token the newest set does not hold.
    pub fn sweep(&self) -> Swept {
        let (tokens, live): (_, Vec<Arc<Live>>) = {
            let state = self.0.lock();
            let tokens = self.0.newest();
            (
                tokens,
                state.live.values().filter_map(Weak::upgrade).collect(),
            )
        };
        // Checked and dropped outside the lock: a grant's last reference dropping here unlists
        // it, which takes the lock.
        let mut swept = Swept::default();
        for grant in live {
            if grant.credential.still_in(&tokens) {
                swept.kept += 1;
            } else if grant.revoke() {
                match grant.what {
                    Revoked::Tunnel => swept.tunnels += 1,
                    Revoked::Stream => swept.streams += 1,
                }
            }
        }
        swept
    }

    /// Grants listed now, revoked ones still winding down included.
    pub fn in_flight(&self) -> usize {
        self.0.lock().live.len()
    }
}

/// Follows the token sets the proxy receives and sweeps on each.
pub struct Sweeper {
    revocations: Revocations,
    /// Only a trigger: the sweep reads the newest set itself.
    changes: TokenReceiver,
}

impl Sweeper {
    /// Sweeps on every new set until the sender is gone. One log line per sweep: counts only.
    pub async fn run(mut self) {
        while self.changes.changed().await.is_ok() {
            self.changes.borrow_and_update();
            let swept = self.revocations.sweep();
            tracing::info!(
                tunnels = swept.tunnels,
                streams = swept.streams,
                still_open = swept.kept,
                "new token set: ended the tunnels and requests in flight that a removed token admitted"
            );
        }
    }
}

/// One listed admission.
struct Live {
    id: u64,
    credential: Credential,
    what: Revoked,
    /// Set once, before `cancel` fires: a flag the bodies read on every frame without a lock.
    revoked: AtomicBool,
    /// Wakes whatever waits (a tunnel, a body with nothing to send, a request awaiting the
    /// upstream).
    cancel: CancellationToken,
    registry: Arc<Registry>,
}

impl Live {
    /// Revokes; true the first time (what the metrics count).
    fn revoke(&self) -> bool {
        if self.revoked.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.cancel.cancel();
        metrics::global().revoked(self.what);
        true
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.registry.lock().live.remove(&self.id);
    }
}

/// What a token admitted: held by its request's bodies and, for a WebSocket, its tunnel.
#[derive(Clone)]
pub struct Grant(Arc<Live>);

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("kind", &self.0.what.as_str())
            .field("revoked", &self.is_revoked())
            .finish_non_exhaustive()
    }
}

impl Grant {
    pub fn is_revoked(&self) -> bool {
        self.0.revoked.load(Ordering::Acquire)
    }

    /// Completes when the grant is revoked.
    pub async fn revoked(&self) {
        self.0.cancel.cancelled().await;
    }

    /// `work`'s output, or `None` when the grant is revoked first.
    pub async fn unless_revoked<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            out = work => Some(out),
            () = self.revoked() => None,
        }
    }
}

/// `body` as the proxy's body type: ending with [`RevokedError`] once `grant` is revoked, when
/// there is one (requests on unauthenticated paths carry none).
pub fn body<B>(body: B, grant: Option<&Grant>) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match grant {
        Some(grant) => reply::stream(Revocable {
            body,
            revoked: grant.0.cancel.clone().cancelled_owned(),
            grant: grant.clone(),
        }),
        None => reply::stream(body),
    }
}

pin_project_lite::pin_project! {
    /// A body that ends with [`RevokedError`] once its grant is revoked: checked on every frame
    /// (an atomic load), and waited for while the body has nothing to send.
    struct Revocable<B> {
        #[pin]
        body: B,
        #[pin]
        revoked: WaitForCancellationFutureOwned,
        grant: Grant,
    }
}

impl<B> hyper::body::Body for Revocable<B>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if this.grant.is_revoked() {
            return Poll::Ready(Some(Err(RevokedError.into())));
        }
        match this.body.poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            // Registered for the revocation only while idle: a body that keeps sending pays an
            // atomic load per frame, no lock.
            Poll::Pending => match this.revoked.poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(RevokedError.into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Token;
    use http_body_util::{BodyExt, StreamBody};
    use std::time::Duration;
    use tokio::sync::{mpsc, watch};

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const WAIT: Duration = Duration::from_secs(5);

    fn set(tokens: &[&str]) -> Arc<TokenSet> {
        Arc::new(TokenSet::new(
            tokens.iter().map(|t| Token::parse(t).unwrap()),
        ))
    }

    fn credential(set: &Arc<TokenSet>, token: &str) -> Credential {
        Credential::new(set.clone(), set.position(token.as_bytes()).unwrap())
    }

    /// A body that sends what the test pushes, and stays open until the sender drops.
    fn pushed() -> (
        mpsc::Sender<Bytes>,
        impl hyper::body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
    ) {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let data = rx.recv().await?;
            Some((Ok::<_, BoxError>(Frame::data(data)), rx))
        });
        (tx, StreamBody::new(frames))
    }

    #[tokio::test]
    async fn a_sweep_revokes_only_what_a_removed_token_admitted() {
        let (tx, rx) = watch::channel(set(&[A, B]));
        let (revocations, sweeper) = Revocations::new(&rx);
        let first = tx.borrow().clone();
        let by_a = revocations.admit(credential(&first, A), Revoked::Stream);
        let by_b = revocations.admit(credential(&first, B), Revoked::Tunnel);
        assert_eq!(revocations.in_flight(), 2);

        // `b` stays (reordered, in a new Arc); `a` goes.
        tx.send_replace(set(&[B]));
        let swept = revocations.sweep();
        assert_eq!(
            swept,
            Swept {
                tunnels: 0,
                streams: 1,
                kept: 1
            }
        );
        assert!(by_a.is_revoked() && !by_b.is_revoked());
        tokio::time::timeout(WAIT, by_a.revoked()).await.unwrap();
        // A second sweep does not count it again.
        let again = revocations.sweep();
        assert_eq!((again.tunnels, again.streams, again.kept), (0, 0, 1));

        // Admitted by the old set once a newer one is out: revoked at once, never missed.
        let late = revocations.admit(credential(&first, A), Revoked::Stream);
        assert!(late.is_revoked());

        drop((by_a, by_b, late));
        assert_eq!(revocations.in_flight(), 0, "grants unlist themselves");
        drop(sweeper);
    }

    #[tokio::test]
    async fn a_token_added_by_a_set_no_sweep_has_seen_yet_is_not_revoked() {
        let (tx, rx) = watch::channel(set(&[A]));
        let (revocations, _sweeper) = Revocations::new(&rx);
        // `b` arrives; a request checks it against the new set before any sweep ran.
        tx.send_replace(set(&[B, A]));
        let newer = tx.borrow().clone();
        let by_b = revocations.admit(credential(&newer, B), Revoked::Stream);
        assert!(!by_b.is_revoked());
        assert_eq!(revocations.sweep().kept, 1);
        assert!(!by_b.is_revoked());
    }

    #[tokio::test]
    async fn the_sweeper_follows_published_sets() {
        let (tx, rx) = watch::channel(set(&[A]));
        let (revocations, sweeper) = Revocations::new(&rx);
        let task = tokio::spawn(sweeper.run());
        let grant = revocations.admit(credential(&rx.borrow(), A), Revoked::Tunnel);
        tx.send_replace(set(&[B]));
        tokio::time::timeout(WAIT, grant.revoked()).await.unwrap();
        drop(tx);
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_body_ends_with_an_error_when_revoked_even_while_idle() {
        let (tx, rx) = watch::channel(set(&[A]));
        let (revocations, _sweeper) = Revocations::new(&rx);
        let grant = revocations.admit(credential(&rx.borrow(), A), Revoked::Stream);
        let (push, inner) = pushed();
        let mut body = body(inner, Some(&grant));
        push.send(Bytes::from_static(b"one")).await.unwrap();
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "one");

        // Idle (nothing pushed): the revocation alone wakes it, with an error, not an end.
        let waiting = tokio::spawn(async move { body.frame().await });
        tokio::task::yield_now().await;
        tx.send_replace(set(&[B]));
        revocations.sweep();
        let ended = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
        let err = ended.expect("an error, not a clean end").unwrap_err();
        assert!(err.downcast_ref::<RevokedError>().is_some(), "{err}");
        drop(push);
    }

    #[tokio::test]
    async fn unless_revoked_drops_the_work() {
        let (tx, rx) = watch::channel(set(&[A]));
        let (revocations, _sweeper) = Revocations::new(&rx);
        let grant = revocations.admit(credential(&rx.borrow(), A), Revoked::Stream);
        assert_eq!(grant.unless_revoked(async { 7 }).await, Some(7));
        let never = std::future::pending::<()>();
        let sweep = async {
            tokio::task::yield_now().await;
            tx.send_replace(set(&[B]));
            revocations.sweep();
        };
        let (out, ()) = tokio::join!(grant.unless_revoked(never), sweep);
        assert_eq!(out, None);
    }
}
