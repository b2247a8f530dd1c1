"""Proves asap_upstream.py accepts tokens the reference signer makes and refuses bad ones.

Run: .venv/bin/python tests/interop/selftest.py

It needs nothing from asap-proxy: keys are made here, tokens are signed with
atlassian-jwt-auth's own signer, and requests go to the upstream on a loopback port.
"""

import base64
import datetime
import http.client
import json
import os
import select
import subprocess
import sys
import tempfile
import time

import requests
from atlassian_jwt_auth import create_signer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

HERE = os.path.dirname(os.path.abspath(__file__))
UPSTREAM = os.path.join(HERE, "asap_upstream.py")

ISSUER = "interop-selftest"
AUDIENCE = "interop-upstream"
START_TIMEOUT_SECONDS = 15

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


def make_keys():
    """Returns {name: (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)}."""
    private_keys = {
        "rsa-2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec-p256": ec.generate_private_key(ec.SECP256R1()),
        "ec-p384": ec.generate_private_key(ec.SECP384R1()),
        "ec-p521": ec.generate_private_key(ec.SECP521R1()),
    }
    pems = {}
    for name, key in private_keys.items():
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        pems[name] = (private_pem, public_pem)
    return pems


class Upstream:
    """asap_upstream.py in a child process, stopped with SIGTERM."""

    def __init__(self, key_args, extra_args=()):
        command = [sys.executable, UPSTREAM, "--audience", AUDIENCE]
        for kid, path in key_args:
            command += ["--key", "%s=%s" % (kid, path)]
        command += list(extra_args)
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE)
        self.port = self._read_port()
        self.url = "http://127.0.0.1:%d" % self.port

    def _read_port(self):
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT_SECONDS)
        if not ready:
            self.process.kill()
            raise RuntimeError("upstream printed nothing in %ds" % START_TIMEOUT_SECONDS)
        line = self.process.stdout.readline().decode("ascii").strip()
        word, _, port = line.partition(" ")
        if word != "listening" or not port.isdigit():
            self.process.kill()
            raise RuntimeError("upstream's first line is %r, not 'listening <port>'" % line)
        return int(port)

    def stop(self):
        """Returns the exit code after SIGTERM."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def run(self, name, check):
        try:
            check()
        except Exception as e:
            self.failed += 1
            print("FAIL %s: %s: %s" % (name, type(e).__name__, e))
        else:
            self.passed += 1
            print("ok   %s" % name)
        sys.stdout.flush()


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


class SelfTest:
    def __init__(self, keys, upstream, replay_upstream):
        self.keys = keys
        self.upstream = upstream
        self.replay_upstream = replay_upstream
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy from the environment for loopback calls

    # Signing, always through the reference library's signer.

    def sign(self, algorithm, audience=AUDIENCE, issuer=ISSUER, kid=None, **kwargs):
        key_name = ALGORITHM_KEYS[algorithm]
        claims = kwargs.pop("claims", {})
        signer = create_signer(
            issuer,
            kid or "%s/%s" % (ISSUER, key_name),
            self.keys[key_name][0],
            algorithm=algorithm,
            **kwargs,
        )
        return signer.generate_jwt(audience, additional_claims=claims).decode("ascii")

    # Requests.

    def get(self, authorization=None, path="/", upstream=None, **kwargs):
        headers = kwargs.pop("headers", {})
        if authorization is not None:
            headers["Authorization"] = authorization
        url = (upstream or self.upstream).url + path
        return self.session.get(url, headers=headers, timeout=10, **kwargs)

    def expect_ok(self, response):
        expect(response.status_code == 200, "status %d: %s" % (response.status_code, response.text))
        body = response.json()
        expect(body["verified"] is True, "verified is %r" % body["verified"])
        expect(body["authorization_count"] == 1, "count %r" % body["authorization_count"])
        return body

    def expect_refused(self, response, token=None, reason=None, count=1):
        expect(response.status_code == 401, "status %d: %s" % (response.status_code, response.text))
        body = response.json()
        expect(body["verified"] is False, "verified is %r" % body["verified"])
        expect(body["authorization_count"] == count, "count %r" % body["authorization_count"])
        if reason is not None:
            expect(reason in body["error"], "error %r lacks %r" % (body["error"], reason))
        if token is not None:
            for part in token.split("."):
                expect(part not in response.text, "the response repeats the token")
        return body

    def refuse(self, token, reason):
        self.expect_refused(self.get("Bearer " + token), token=token, reason=reason)

    # Accepted.

    def algorithm(self, algorithm):
        token = self.sign(algorithm)
        body = self.expect_ok(self.get("Bearer " + token, path="/alg/%s?x=1" % algorithm))
        expect(body["header"]["alg"] == algorithm, "header %r" % body["header"])
        expect(body["header"]["kid"] == "%s/%s" % (ISSUER, ALGORITHM_KEYS[algorithm]), "kid")
        claims = body["claims"]
        expect(claims["iss"] == ISSUER and claims["sub"] == ISSUER, "claims %r" % claims)
        expect(claims["aud"] == AUDIENCE, "aud %r" % claims["aud"])
        expect(body["method"] == "GET", "method %r" % body["method"])
        expect(body["path"] == "/alg/%s?x=1" % algorithm, "path %r" % body["path"])
        expect(body["host"] == "127.0.0.1:%d" % self.upstream.port, "host %r" % body["host"])
        names = [name.lower() for name, _ in body["headers"]]
        expect("authorization" not in names, "Authorization echoed")
        expect("host" in names, "headers %r" % body["headers"])

    def audience_list(self):
        token = self.sign("ES256", audience=["someone-else", AUDIENCE])
        body = self.expect_ok(self.get("Bearer " + token))
        expect(body["claims"]["aud"] == ["someone-else", AUDIENCE], "aud %r" % body["claims"])

    def lifetime_of_one_hour(self):
        token = self.sign("RS256", lifetime=datetime.timedelta(hours=1))
        self.expect_ok(self.get("Bearer " + token))

    def lowercase_scheme(self):
        self.expect_ok(self.get("bearer " + self.sign("RS256")))

    def reuse_by_default(self):
        token = self.sign("ES384")
        for _ in range(3):
            self.expect_ok(self.get("Bearer " + token))

    def bodies_on_one_connection(self):
        token = self.sign("PS256")
        connection = http.client.HTTPConnection("127.0.0.1", self.upstream.port, timeout=10)
        try:
            auth = {"Authorization": "Bearer " + token, "Cookie": "session=secret"}
            connection.request("POST", "/sized", body=b"a" * 100000, headers=auth)
            sized = self.read_json(connection, 200)
            first_socket = connection.sock
            chunks = iter([b"one", b"", b"three" * 5000, b"4"])
            connection.request("PUT", "/chunked", body=chunks, headers=auth, encode_chunked=True)
            chunked = self.read_json(connection, 200)
            connection.request("PROPFIND", "/after", headers=auth)
            after = self.read_json(connection, 200)
            expect(connection.sock is first_socket, "the connection was not kept alive")
        finally:
            connection.close()
        expect(sized["body_length"] == 100000, "sized body %r" % sized["body_length"])
        expect(chunked["body_length"] == 3 + 25000 + 1, "chunked body %r" % chunked["body_length"])
        expect(after["method"] == "PROPFIND" and after["path"] == "/after", "after %r" % after)
        names = [name.lower() for name, _ in chunked["headers"]]
        expect("transfer-encoding" in names, "headers %r" % chunked["headers"])
        expect("cookie" not in names and "authorization" not in names, "secret header echoed")

    @staticmethod
    def read_json(connection, status):
        response = connection.getresponse()
        text = response.read()
        expect(response.status == status, "status %d: %r" % (response.status, text))
        return json.loads(text)

    # Refused.

    def no_header(self):
        self.expect_refused(self.get(), reason="no Authorization", count=0)

    def two_headers(self):
        token = self.sign("RS256")
        connection = http.client.HTTPConnection("127.0.0.1", self.upstream.port, timeout=10)
        try:
            connection.putrequest("GET", "/two")
            connection.putheader("Authorization", "Bearer " + token)
            connection.putheader("Authorization", "Bearer " + token)
            connection.endheaders()
            response = connection.getresponse()
            text = response.read().decode("utf-8")
        finally:
            connection.close()
        expect(response.status == 401, "status %d: %s" % (response.status, text))
        expect('"authorization_count": 2' in text, text)
        expect(token.split(".")[2] not in text, "the response repeats the token")

    def not_bearer(self):
        self.expect_refused(self.get("Basic dXNlcjpwYXNz"), reason="not a Bearer token")

    def wrong_audience(self):
        self.refuse(self.sign("RS256", audience="someone-else"), "Audience doesn't match")

    def kid_outside_issuer(self):
        # other-issuer/rsa-2048 holds the right public key, so only the prefix rule can fail.
        token = self.sign("RS256", kid="other-issuer/rsa-2048")
        self.refuse(token, "Issuer does not own the supplied public key")

    def unknown_kid(self):
        self.refuse(self.sign("RS256", kid=ISSUER + "/missing"), "no public key")

    def subject_not_issuer(self):
        self.refuse(self.sign("RS256", subject="someone-else"), "Issuer does not match the subject")

    def expired(self):
        now = int(time.time())
        claims = {"iat": now - 120, "nbf": now - 120, "exp": now - 60}
        self.refuse(self.sign("ES256", claims=claims), "Signature has expired")

    def lifetime_over_one_hour(self):
        now = int(time.time())
        claims = {"iat": now, "nbf": now, "exp": now + 3601}
        self.refuse(self.sign("ES256", claims=claims), "exceeds the maximum 1 hour")

    def issued_in_future(self):
        now = int(time.time())
        claims = {"iat": now + 60, "nbf": now, "exp": now + 120}
        self.refuse(self.sign("ES256", claims=claims), "not yet valid (iat)")

    def not_before_in_future(self):
        now = int(time.time())
        claims = {"iat": now, "nbf": now + 60, "exp": now + 120}
        self.refuse(self.sign("ES256", claims=claims), "not yet valid (nbf)")

    def tampered_signature(self):
        head, payload, signature = self.sign("RS256").split(".")
        raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
        raw[len(raw) // 2] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode("ascii")
        self.refuse("%s.%s.%s" % (head, payload, forged), "Signature verification failed")

    def replay_when_asked(self):
        token = self.sign("ES512")
        self.expect_ok(self.get("Bearer " + token, upstream=self.replay_upstream))
        response = self.get("Bearer " + token, upstream=self.replay_upstream)
        self.expect_refused(response, reason="JtiUniquenessException")
        self.expect_ok(self.get("Bearer " + self.sign("ES512"), upstream=self.replay_upstream))


def main():
    keys = make_keys()
    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="asap-interop-") as directory:
        key_args = []
        for name, (_, public_pem) in keys.items():
            path = os.path.join(directory, name + ".pub.pem")
            with open(path, "wb") as f:
                f.write(public_pem)
            key_args.append(("%s/%s" % (ISSUER, name), path))
        key_args.append(("other-issuer/rsa-2048", os.path.join(directory, "rsa-2048.pub.pem")))

        upstream = Upstream(key_args)
        replay_upstream = Upstream(key_args, ["--check-jti-replay"])
        try:
            test = SelfTest(keys, upstream, replay_upstream)
            for algorithm in ALGORITHM_KEYS:
                checks.run("accepts %s" % algorithm, lambda a=algorithm: test.algorithm(a))
            for name, check in [
                ("accepts aud as a list holding the audience", test.audience_list),
                ("accepts a lifetime of exactly one hour", test.lifetime_of_one_hour),
                ("accepts a lowercase bearer scheme", test.lowercase_scheme),
                ("accepts a reused token by default", test.reuse_by_default),
                ("drains bodies on one kept-alive connection", test.bodies_on_one_connection),
                ("refuses no Authorization header", test.no_header),
                ("refuses two Authorization headers", test.two_headers),
                ("refuses a non-Bearer scheme", test.not_bearer),
                ("refuses a wrong audience", test.wrong_audience),
                ("refuses a kid outside the issuer", test.kid_outside_issuer),
                ("refuses an unknown kid", test.unknown_kid),
                ("refuses a subject other than the issuer", test.subject_not_issuer),
                ("refuses an expired token", test.expired),
                ("refuses a lifetime over one hour", test.lifetime_over_one_hour),
                ("refuses iat in the future", test.issued_in_future),
                ("refuses nbf in the future", test.not_before_in_future),
                ("refuses a tampered signature", test.tampered_signature),
                ("refuses a replayed jti with --check-jti-replay", test.replay_when_asked),
            ]:
                checks.run(name, check)
        finally:
            codes = (upstream.stop(), replay_upstream.stop())
        checks.run(
            "exits 0 on SIGTERM",
            lambda: expect(codes == (0, 0), "exit codes %r" % (codes,)),
        )

    print("%d passed, %d failed" % (checks.passed, checks.failed))
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
