"""Times the reference ASAP library, atlassian-jwt-auth, signing tokens on one thread.

Run: .venv/bin/python bench/signing.py [--seconds 1.0] [ALG ...]
(the venv is the one `bash .ci/run` makes from tests/interop/requirements.txt).
Pin it to one core with `taskset -c 0` for a per-core figure; bench/signing.sh does.

It signs with the same fixture keys, issuer, kid, audience and lifetime as
benches/mint.rs and prints one line per algorithm: `ALG tokens_per_second`.
"""

import argparse
import os
import sys
import time

from atlassian_jwt_auth import create_signer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = os.path.join(ROOT, "tests", "fixtures", "keys")

ISSUER = "bench-issuer"
KEY_ID = "bench-issuer/key-1"
AUDIENCE = "bench-audience"

ALGORITHM_KEYS = {
    "RS256": "rsa-2048",
    "RS384": "rsa-2048",
    "RS512": "rsa-2048",
    "PS256": "rsa-2048",
    "PS384": "rsa-2048",
    "PS512": "rsa-2048",
    "ES256": "ec-p256",
    "ES384": "ec-p384",
    "ES512": "ec-p521",
}

# Tokens signed between clock reads, so timing costs nothing next to an EC signature.
BATCH = 20
WARM_UP_TOKENS = 20


def tokens_per_second(algorithm, seconds):
    with open(os.path.join(KEYS, ALGORITHM_KEYS[algorithm] + ".pkcs8.pem"), "rb") as f:
        pem = f.read()
    signer = create_signer(ISSUER, KEY_ID, pem, algorithm=algorithm)
    # The first call parses the PEM and caches the key; later calls only sign, like the proxy.
    for _ in range(WARM_UP_TOKENS):
        signer.generate_jwt(AUDIENCE)

    signed = 0
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        for _ in range(BATCH):
            signer.generate_jwt(AUDIENCE)
        signed += BATCH
        elapsed = time.perf_counter() - start
    return signed / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="how long to sign with each algorithm"
    )
    parser.add_argument(
        "algorithms", nargs="*", default=list(ALGORITHM_KEYS), help="default: all nine"
    )
    args = parser.parse_args()
    unknown = [a for a in args.algorithms if a not in ALGORITHM_KEYS]
    if unknown:
        parser.error("unknown algorithm: " + ", ".join(unknown))

    for algorithm in args.algorithms:
        print(f"{algorithm} {tokens_per_second(algorithm, args.seconds):.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
