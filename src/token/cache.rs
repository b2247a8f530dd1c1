//! Handing a route its token: reuse the current one until 90% of its life has passed, or,
//! without reuse, a fresh one per request. Background minting keeps both ready, so that
//! after the first request no request waits for a signature.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;

use super::key::SignError;
use super::mint::{Token, mint};
use super::spec::TokenSpec;

/// Where the time comes from; tests inject a fake one to step past the refresh point.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Whether a request's token was signed for it or shared with earlier requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provenance {
    Minted,
    Reused,
}

impl Provenance {
    pub fn as_str(self) -> &'static str {
        match self {
            Provenance::Minted => "minted",
            Provenance::Reused => "reused",
        }
    }
}

/// Why a route got no token. Messages include their cause rather than chaining it, so a
/// log line with just `%err` says everything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    #[error("minting token failed: {0}")]
    Sign(SignError),
    #[error("minting task did not finish: {0}")]
    Task(tokio::task::JoinError),
}

impl From<SignError> for MintError {
    fn from(e: SignError) -> Self {
        MintError::Sign(e)
    }
}

impl From<tokio::task::JoinError> for MintError {
    fn from(e: tokio::task::JoinError) -> Self {
        MintError::Task(e)
    }
}

/// The instant after which a cached token is no longer handed out: 90% into its life, so
/// every request gets a token with at least a tenth of its lifetime left.
pub fn refresh_at(token: &Token) -> SystemTime {
    token.issued_at() + token.lifetime() * 9 / 10
}

/// The instant from which the background task replaces a reused token: 80% into its life,
/// well before the refresh point at 90%.
pub fn premint_at(token: &Token) -> SystemTime {
    token.issued_at() + token.lifetime() * 8 / 10
}

/// Shortest pause of the background task, so a clock oddity cannot make it spin.
const RECHECK: Duration = Duration::from_millis(10);
/// Pause after a failed background mint.
const RETRY: Duration = Duration::from_secs(5);

/// Fresh tokens kept ready for a route without reuse.
pub const POOL_SIZE: usize = 32;

/// A pooled token older than this share of its lifetime is discarded, never served.
const POOL_MAX_AGE_DIVISOR: u32 = 10;

/// Mints a route's tokens off the async threads, reusing each one while it is fresh.
pub struct Minter {
    spec: Arc<TokenSpec>,
    reuse: bool,
    clock: Clock,
    /// The token requests share. Holding the lock while minting makes concurrent requests
    /// wait for that one signature instead of each making their own.
    current: Mutex<Option<Token>>,
    /// Without reuse: fresh, never-used tokens, oldest first.
    pool: std::sync::Mutex<std::collections::VecDeque<Token>>,
    /// Wakes the background task when the pool runs low.
    refill: Arc<tokio::sync::Notify>,
}

impl Minter {
    /// A minter on the system clock. With `reuse` false every request gets a fresh token.
    pub fn new(spec: Arc<TokenSpec>, reuse: bool) -> Minter {
        Minter::with_clock(spec, reuse, Arc::new(SystemTime::now))
    }

    pub fn with_clock(spec: Arc<TokenSpec>, reuse: bool, clock: Clock) -> Minter {
        Minter {
            spec,
            reuse,
            clock,
            current: Mutex::new(None),
            pool: std::sync::Mutex::default(),
            refill: Arc::new(tokio::sync::Notify::new()),
        }
    }

    pub fn spec(&self) -> &TokenSpec {
        &self.spec
    }

    pub fn reuse(&self) -> bool {
        self.reuse
    }

    /// A token for one request, and whether it was minted for it or reused.
    pub async fn token(&self) -> Result<(Token, Provenance), MintError> {
        if !self.reuse {
            let pooled = self.take_pooled();
            self.refill.notify_one();
            let token = match pooled {
                Some(token) => token,
                None => self.mint_at((self.clock)()).await?,
            };
            return Ok((token, Provenance::Minted));
        }

        let mut current = self.current.lock().await;
        let now = (self.clock)();
        if let Some(token) = current.as_ref().filter(|token| is_fresh(token, now)) {
            return Ok((token.clone(), Provenance::Reused));
        }
        // Only the first request, or one after the background task failed, gets here. If
        // this future is dropped mid-mint the lock is released and the next request mints
        // again; the abandoned signature is wasted, not leaked.
        let token = self.mint_at(now).await?;
        *current = Some(token.clone());
        Ok((token, Provenance::Minted))
    }

    /// Keeps tokens ready in the background for as long as the minter is in use: the next
    /// reused token is minted at 80% of the current one's life, and the pool of fresh
    /// tokens is refilled as requests take them. Stops when the minter is dropped, as on a
    /// configuration reload.
    pub fn keep_ready(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let wake = Arc::clone(&self.refill);
        tokio::spawn(async move {
            loop {
                let Some(minter) = weak.upgrade() else { return };
                let wait = if minter.reuse {
                    minter.replace_current().await
                } else {
                    minter.fill_pool().await
                };
                // Only a weak reference is held while idle, so a dropped minter ends this.
                drop(minter);
                let _ = tokio::time::timeout(wait, wake.notified()).await;
            }
        });
    }

    /// Mints the next reused token once the current one passes 80% of its life. Returns how
    /// long to sleep before looking again.
    async fn replace_current(&self) -> Duration {
        let now = (self.clock)();
        let due = self.current.lock().await.as_ref().map(premint_at);
        if let Some(due) = due
            && let Ok(wait) = due.duration_since(now)
        {
            return wait.max(RECHECK);
        }
        match self.mint_at(now).await {
            Ok(token) => {
                let mut current = self.current.lock().await;
                // A request may have minted meanwhile; keep the token already handed out.
                let keep = current.as_ref().is_some_and(|t| now < premint_at(t));
                if !keep {
                    *current = Some(token);
                }
                let due = current.as_ref().map_or(now, premint_at);
                due.duration_since(now).unwrap_or_default().max(RECHECK)
            }
            Err(err) => {
                tracing::warn!(kid = %self.spec.kid(), error = %err, "background minting failed");
                RETRY
            }
        }
    }

    /// Tops the pool up to `POOL_SIZE`, dropping tokens past the freshness bound. Returns
    /// when the oldest pooled token goes stale.
    async fn fill_pool(&self) -> Duration {
        loop {
            let now = (self.clock)();
            let (len, oldest) = {
                let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
                pool.retain(|t| self.pool_fresh(t, now));
                (
                    pool.len(),
                    pool.front().map(|t| t.issued_at() + self.max_pool_age()),
                )
            };
            if len >= POOL_SIZE {
                let stale = oldest
                    .and_then(|stale| stale.duration_since(now).ok())
                    .unwrap_or_default();
                return stale.max(RECHECK);
            }
            match self.mint_at(now).await {
                Ok(token) => self
                    .pool
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(token),
                Err(err) => {
                    tracing::warn!(kid = %self.spec.kid(), error = %err, "background minting failed");
                    return RETRY;
                }
            }
        }
    }

    fn take_pooled(&self) -> Option<Token> {
        let now = (self.clock)();
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(token) = pool.pop_front() {
            if self.pool_fresh(&token, now) {
                return Some(token);
            }
        }
        None
    }

    fn max_pool_age(&self) -> Duration {
        self.spec.lifetime() / POOL_MAX_AGE_DIVISOR
    }

    fn pool_fresh(&self, token: &Token, now: SystemTime) -> bool {
        token.issued_at() <= now && now < token.issued_at() + self.max_pool_age()
    }

    /// Signs on the blocking pool: an RSA signature takes milliseconds of CPU.
    async fn mint_at(&self, now: SystemTime) -> Result<Token, MintError> {
        let spec = Arc::clone(&self.spec);
        let token = tokio::task::spawn_blocking(move || mint(&spec, now)).await??;
        Ok(token)
    }
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("kid", &self.spec.kid().as_str())
            .field("reuse", &self.reuse)
            .finish_non_exhaustive()
    }
}

/// A token may be handed out from its issue instant until its refresh point. A clock that
/// stepped back before `iat` gets a new token, since verifiers would refuse it as not yet valid.
fn is_fresh(token: &Token, now: SystemTime) -> bool {
    token.issued_at() <= now && now < refresh_at(token)
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
