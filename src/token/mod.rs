//! ASAP tokens: signing keys, token specs and their claims, minting, and per-route reuse.
//!
//! A route's configuration becomes a [`TokenSpec`] (validated claims plus an
//! `Arc<SigningKey>`), a [`Minter`] holds the spec and hands each request a [`Token`], and
//! [`mint`] does the signing itself.

mod algorithm;
mod cache;
mod key;
mod mint;
mod parse;
mod spec;

pub use algorithm::{Algorithm, UnknownAlgorithm};
pub use cache::{Clock, MintError, Minter, Provenance, refresh_at};
pub use key::{KeyError, KeyKind, MIN_RSA_BITS, ParsedKey, SignError, SigningKey};
pub use mint::{Token, mint};
pub use spec::{Audience, KeyId, MAX_LIFETIME, SpecError, SpecFields, TokenSpec};

#[cfg(test)]
pub(crate) mod test_keys;
