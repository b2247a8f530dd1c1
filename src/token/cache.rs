//! Handing a route its token: reuse the current one until 90% of its life has passed.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

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

/// Mints a route's tokens off the async threads, reusing each one while it is fresh.
pub struct Minter {
    spec: Arc<TokenSpec>,
    reuse: bool,
    clock: Clock,
    /// The token requests share. Holding the lock while minting makes concurrent requests
    /// wait for that one signature instead of each making their own.
    current: Mutex<Option<Token>>,
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
            let token = self.mint_at((self.clock)()).await?;
            return Ok((token, Provenance::Minted));
        }

        let mut current = self.current.lock().await;
        let now = (self.clock)();
        if let Some(token) = current.as_ref().filter(|token| is_fresh(token, now)) {
            return Ok((token.clone(), Provenance::Reused));
        }
        // Pre-minting belongs here: a background task started some time before
        // `refresh_at` would leave its token in the slot, so that no request waits on a
        // signature. If this future is dropped mid-mint the lock is released and the next
        // request mints again; the abandoned signature is wasted, not leaked.
        let token = self.mint_at(now).await?;
        *current = Some(token.clone());
        Ok((token, Provenance::Minted))
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
