// Run with `cargo bench --bench mint`; `bench/signing.sh` compares the results with the
// reference Python library.
//
//! How long minting one token takes for each algorithm, with the committed fixture keys.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use asap_proxy::token::{self, Algorithm, SigningKey, SpecFields, TokenSpec};
use criterion::{Criterion, criterion_group, criterion_main};

fn fixture_key(algorithm: Algorithm) -> Arc<SigningKey> {
    let file = match algorithm {
        Algorithm::Es256 => "ec-p256.pkcs8.pem",
        Algorithm::Es384 => "ec-p384.pkcs8.pem",
        Algorithm::Es512 => "ec-p521.pkcs8.pem",
        _ => "rsa-2048.pkcs8.pem",
    };
    let path = format!("{}/tests/fixtures/keys/{file}", env!("CARGO_MANIFEST_DIR"));
    let pem = std::fs::read_to_string(&path).expect("fixture key is committed");
    Arc::new(SigningKey::parse(&pem).expect("fixture key parses").key)
}

fn spec(algorithm: Algorithm) -> TokenSpec {
    TokenSpec::new(SpecFields {
        algorithm,
        kid: "bench-issuer/key-1".to_owned(),
        issuer: "bench-issuer".to_owned(),
        subject: None,
        audience: vec!["bench-audience".to_owned()],
        lifetime: Duration::from_secs(60),
        additional_claims: serde_json::Map::new(),
        key: fixture_key(algorithm),
    })
    .expect("fixture key fits its algorithm")
}

fn mint(c: &mut Criterion) {
    let mut group = c.benchmark_group("mint");
    for algorithm in Algorithm::ALL {
        let spec = spec(algorithm);
        group.bench_function(algorithm.as_str(), |b| {
            b.iter(|| token::mint(black_box(&spec), SystemTime::now()).expect("mint succeeds"))
        });
    }
    group.finish();
}

criterion_group!(benches, mint);
criterion_main!(benches);
