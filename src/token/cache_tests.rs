//! Tests for token reuse, on a fake clock so the 90% rule needs no sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Map;

use super::*;
use crate::token::test_keys::key_for;
use crate::token::{Algorithm, SpecFields};

const START_MS: u64 = 1_800_000_000_000;
const LIFETIME_SECS: u64 = 100;

/// A clock the test moves by hand, in milliseconds since the epoch.
struct FakeClock(Arc<AtomicU64>);

impl FakeClock {
    fn new() -> (FakeClock, Clock) {
        let millis = Arc::new(AtomicU64::new(START_MS));
        let read = Arc::clone(&millis);
        let clock: Clock =
            Arc::new(move || UNIX_EPOCH + Duration::from_millis(read.load(Ordering::SeqCst)));
        (FakeClock(millis), clock)
    }

    /// Sets the time to `millis` after the start.
    fn set(&self, millis: u64) {
        self.0.store(START_MS + millis, Ordering::SeqCst);
    }
}

fn spec() -> Arc<TokenSpec> {
    Arc::new(
        TokenSpec::new(SpecFields {
            algorithm: Algorithm::Es256,
            kid: "svc/key-1".to_owned(),
            issuer: "svc".to_owned(),
            subject: None,
            audience: vec!["upstream".to_owned()],
            lifetime: Duration::from_secs(LIFETIME_SECS),
            additional_claims: Map::new(),
            key: key_for(Algorithm::Es256),
        })
        .expect("valid spec"),
    )
}

#[tokio::test]
async fn reuses_until_ninety_percent_of_the_lifetime() {
    let (time, clock) = FakeClock::new();
    let minter = Minter::with_clock(spec(), true, clock);

    let (first, how) = minter.token().await.expect("token");
    assert_eq!(how, Provenance::Minted);
    assert_eq!(
        refresh_at(&first),
        first.issued_at() + Duration::from_secs(90)
    );

    for millis in [0, 1, 50_000, 89_999] {
        time.set(millis);
        let (again, how) = minter.token().await.expect("token");
        assert_eq!(how, Provenance::Reused, "at +{millis}ms");
        assert_eq!(again.as_str(), first.as_str());
        let left = again
            .expires_at()
            .duration_since(clock_now(&time))
            .expect("not expired");
        assert!(
            left >= Duration::from_secs(LIFETIME_SECS / 10),
            "at +{millis}ms"
        );
    }

    time.set(90_000);
    let (second, how) = minter.token().await.expect("token");
    assert_eq!(how, Provenance::Minted);
    assert_ne!(second.as_str(), first.as_str());
    assert_eq!(
        second.issued_at(),
        first.issued_at() + Duration::from_secs(90)
    );

    time.set(100_000);
    let (third, how) = minter.token().await.expect("token");
    assert_eq!(how, Provenance::Reused);
    assert_eq!(third.as_str(), second.as_str());
}

fn clock_now(time: &FakeClock) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(time.0.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_clock_stepping_back_gets_a_new_token() {
    let (time, clock) = FakeClock::new();
    let minter = Minter::with_clock(spec(), true, clock);
    time.set(10_000);
    let (first, _) = minter.token().await.expect("token");
    time.set(5_000);
    let (second, how) = minter.token().await.expect("token");
    assert_eq!(how, Provenance::Minted);
    assert_ne!(second.as_str(), first.as_str());
}

#[tokio::test]
async fn without_reuse_every_request_gets_a_fresh_token() {
    let (_time, clock) = FakeClock::new();
    let minter = Minter::with_clock(spec(), false, clock);
    assert!(!minter.reuse());
    let mut seen = Vec::new();
    for _ in 0..5 {
        let (token, how) = minter.token().await.expect("token");
        assert_eq!(how, Provenance::Minted);
        seen.push(token.as_str().to_owned());
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5, "each token has its own jti");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_one_mint() {
    let minter = Arc::new(Minter::new(spec(), true));
    let requests: Vec<_> = (0..16)
        .map(|_| {
            let minter = Arc::clone(&minter);
            tokio::spawn(async move { minter.token().await.expect("token") })
        })
        .collect();
    let mut minted = 0;
    let mut values = Vec::new();
    for request in requests {
        let (token, how) = request.await.expect("task");
        minted += usize::from(how == Provenance::Minted);
        values.push(token.as_str().to_owned());
    }
    assert_eq!(minted, 1, "one signature for all concurrent requests");
    values.dedup();
    assert_eq!(values.len(), 1);
}

#[test]
fn debug_and_accessors() {
    let minter = Minter::new(spec(), true);
    assert_eq!(
        format!("{minter:?}"),
        r#"Minter { kid: "svc/key-1", reuse: true, .. }"#
    );
    assert_eq!(minter.spec().kid().as_str(), "svc/key-1");
    assert_eq!(Provenance::Reused.as_str(), "reused");
}

/// Waits, on the real clock, for the background task to do its first work.
async fn until(mut ready: impl FnMut() -> bool) {
    for _ in 0..500 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the background task did not get there");
}

#[tokio::test]
async fn background_minting_means_no_request_signs() {
    let minter = Arc::new(Minter::new(spec(), true));
    minter.keep_ready();
    until(|| minter.current.try_lock().is_ok_and(|c| c.is_some())).await;

    for _ in 0..5 {
        let (_, how) = minter.token().await.expect("token");
        assert_eq!(
            how,
            Provenance::Reused,
            "the token was ready before the request"
        );
    }
}

#[tokio::test]
async fn background_premint_replaces_the_token_before_its_refresh_point() {
    let (time, clock) = FakeClock::new();
    let minter = Arc::new(Minter::with_clock(spec(), true, clock));
    minter.keep_ready();
    until(|| minter.current.try_lock().is_ok_and(|c| c.is_some())).await;
    let (first, _) = minter.token().await.expect("token");

    // Past 80% of the lifetime, before the 90% refresh point: the task mints the next one.
    time.set(85_000);
    minter.refill.notify_one();
    until(|| {
        minter.current.try_lock().is_ok_and(|c| {
            c.as_ref()
                .is_some_and(|t| t.issued_at() > first.issued_at())
        })
    })
    .await;
    let (next, how) = minter.token().await.expect("token");
    assert_eq!(how, Provenance::Reused);
    assert_ne!(next.as_str(), first.as_str());
}

#[tokio::test]
async fn the_pool_serves_fresh_unused_tokens_and_drops_stale_ones() {
    let (time, clock) = FakeClock::new();
    let minter = Arc::new(Minter::with_clock(spec(), false, clock));
    minter.keep_ready();
    until(|| minter.pool.lock().expect("lock").len() == POOL_SIZE).await;

    let mut seen = std::collections::HashSet::new();
    for _ in 0..POOL_SIZE {
        let (token, how) = minter.token().await.expect("token");
        assert_eq!(how, Provenance::Minted);
        assert!(seen.insert(token.as_str().to_owned()), "never served twice");
    }

    // Pooled tokens older than a tenth of the lifetime are never served.
    until(|| minter.pool.lock().expect("lock").len() == POOL_SIZE).await;
    time.set(LIFETIME_SECS * 1000 / 10 + 1_000);
    let (token, _) = minter.token().await.expect("token");
    assert!(
        clock_now(&time)
            .duration_since(token.issued_at())
            .expect("issued before now")
            < Duration::from_secs(2)
    );
}
