"""An HTTP upstream that checks every request's ASAP token with the reference verifier.

Run: .venv/bin/python tests/interop/asap_upstream.py --audience AUD --key KID=PUBLIC.pem

Prints `listening <port>` on stdout once bound, then answers every request: 200 with the
verified header and claims when the one Authorization header carries a token that
atlassian-jwt-auth's JWTAuthVerifier accepts, 401 otherwise. The interop tests put asap-proxy
in front of it, so a 200 means the reference library accepts what the proxy minted.

Nothing goes to stdout after the `listening` line and nothing to stderr per request unless
--log-requests is given: a test harness that pipes both and stops reading must not stall us.
"""

import argparse
import json
import signal
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from atlassian_jwt_auth import JWTAuthVerifier
from atlassian_jwt_auth.exceptions import PublicKeyRetrieverException
from atlassian_jwt_auth.frameworks.common.backend import Backend
from atlassian_jwt_auth.key import BasePublicKeyRetriever, KeyIdentifier, validate_key_identifier
from cryptography.hazmat.primitives import serialization

# Headers kept out of the echoed header list, so no credential lands in a test log.
HIDDEN_HEADERS = {"authorization", "cookie"}

# Longer chunk-size lines are refused; bodies are read in blocks and dropped, never held whole.
MAX_CHUNK_LINE_BYTES = 4096
READ_BLOCK_BYTES = 64 * 1024


class StaticPublicKeyRetriever(BasePublicKeyRetriever):
    """Serves the public keys named on the command line instead of fetching them over HTTPS."""

    def __init__(self, pems_by_kid):
        self._pems_by_kid = dict(pems_by_kid)

    def retrieve(self, key_identifier, **requests_kwargs):
        if not isinstance(key_identifier, KeyIdentifier):
            key_identifier = KeyIdentifier(key_identifier)
        pem = self._pems_by_kid.get(key_identifier.key_id)
        if pem is None:
            # The frameworks in atlassian-jwt-auth turn a 404 from the key server into
            # "401 Unauthorized: Key not found"; say the same thing they would have seen.
            raise PublicKeyRetrieverException(
                "no public key for kid %r" % key_identifier.key_id, status_code=404
            )
        return pem


class _HeaderBackend(Backend):
    """Lends the library's own Authorization parsing (scheme, single space, token)."""

    def get_authorization_header(self, request=None):
        return request


def bearer_token(header_value):
    """Returns the token from an Authorization value exactly as the reference frameworks do."""
    return _HeaderBackend().get_asap_token(header_value)


def load_public_keys(key_args):
    pems = {}
    for arg in key_args:
        kid, sep, path = arg.partition("=")
        if not sep or not kid or not path:
            raise SystemExit("--key %r: expected KID=PATH" % arg)
        try:
            validate_key_identifier(kid)
        except ValueError as e:
            raise SystemExit("--key: %s" % e)
        if kid in pems:
            raise SystemExit("--key: kid %r given twice" % kid)
        try:
            with open(path, "rb") as f:
                pem = f.read()
            # Fails fast on a private key or garbage rather than on the first request.
            serialization.load_pem_public_key(pem)
        except (OSError, ValueError) as e:
            raise SystemExit("--key %s: cannot load a public key PEM from %s: %s" % (kid, path, e))
        pems[kid] = pem.decode("ascii")
    return pems


class BodyError(Exception):
    """The request body is framed in a way we cannot read; the connection must close."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "asap-interop-upstream"

    def version_string(self):
        return self.server_version

    def __getattr__(self, name):
        # BaseHTTPRequestHandler dispatches to do_<METHOD> and answers 501 when none exists;
        # the upstream must accept any method a proxy forwards, PROPFIND included.
        if name.startswith("do_"):
            return self.handle_any
        raise AttributeError(name)

    def handle_any(self):
        authorizations = self.headers.get_all("Authorization") or []
        count = len(authorizations)
        try:
            body_length = self.discard_body()
        except BodyError as e:
            self.close_connection = True
            self.send_json(400, {"verified": False, "authorization_count": count, "error": str(e)})
            return

        try:
            header, claims = self.server.verify(authorizations)
        except VerificationError as e:
            self.send_json(
                401,
                {"verified": False, "authorization_count": count, "error": str(e)},
                extra_headers=[("WWW-Authenticate", "Bearer")],
            )
            return

        self.send_json(
            200,
            {
                "verified": True,
                "authorization_count": count,
                "header": header,
                "claims": claims,
                "method": self.command,
                "path": self.path,
                "host": self.headers.get("Host"),
                "headers": [
                    [name, value]
                    for name, value in self.headers.items()
                    if name.lower() not in HIDDEN_HEADERS
                ],
                "body_length": body_length,
            },
        )

    def discard_body(self):
        """Reads and drops the body so the next request on this connection parses cleanly."""
        transfer_encodings = self.headers.get_all("Transfer-Encoding") or []
        content_lengths = self.headers.get_all("Content-Length") or []
        if transfer_encodings:
            codings = [c.strip().lower() for v in transfer_encodings for c in v.split(",")]
            if codings[-1] != "chunked":
                raise BodyError("transfer-encoding without final chunked cannot be framed")
            if content_lengths:
                # Both framings on one message is a smuggling pattern; read it as chunked but
                # do not trust the connection afterwards.
                self.close_connection = True
            return self.discard_chunked()
        if not content_lengths:
            return 0
        values = {v.strip() for line in content_lengths for v in line.split(",")}
        if len(values) != 1:
            raise BodyError("conflicting content-length values")
        value = values.pop()
        if not value.isdigit():
            raise BodyError("content-length is not a number")
        return self.discard_exact(int(value))

    def discard_exact(self, length):
        remaining = length
        while remaining:
            block = self.rfile.read(min(remaining, READ_BLOCK_BYTES))
            if not block:
                raise BodyError("connection closed inside the body")
            remaining -= len(block)
        return length

    def discard_chunked(self):
        total = 0
        while True:
            line = self.rfile.readline(MAX_CHUNK_LINE_BYTES + 1)
            if len(line) > MAX_CHUNK_LINE_BYTES or not line.endswith(b"\n"):
                raise BodyError("chunk size line is too long or truncated")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BodyError("chunk size is not hexadecimal")
            if size < 0:
                raise BodyError("chunk size is negative")
            if size == 0:
                break
            total += self.discard_exact(size)
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise BodyError("chunk data is not followed by a line end")
        # Trailer fields, if any, end at an empty line.
        while True:
            line = self.rfile.readline(MAX_CHUNK_LINE_BYTES + 1)
            if not line.endswith(b"\n"):
                raise BodyError("chunked trailer is too long or truncated")
            if line in (b"\r\n", b"\n"):
                return total

    def send_json(self, status, body, extra_headers=()):
        payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra_headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def log_request(self, code="-", size="-"):
        if self.server.log_requests:
            # Method, path without its query and status: never headers, never the token.
            path = self.path.split("?", 1)[0]
            sys.stderr.write("%s %s %s\n" % (self.command, path, code))
            sys.stderr.flush()

    def log_message(self, format, *args):
        # Only malformed requests reach here (send_error); the text holds no header values.
        if self.server.log_requests:
            sys.stderr.write("%s\n" % (format % args))
            sys.stderr.flush()


class VerificationError(Exception):
    """Why a request was refused, worded so it never contains the token."""


class AsapUpstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, verifier, audience, log_requests):
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.verifier = verifier
        self.audience = audience
        self.log_requests = log_requests
        # JWTAuthVerifier keeps its seen-jti record in a plain OrderedDict; one request at a
        # time inside it keeps that record consistent across connection threads.
        self._verify_lock = threading.Lock()

    def verify(self, authorizations):
        """Returns (header, claims) or raises VerificationError."""
        if not authorizations:
            raise VerificationError("no Authorization header")
        if len(authorizations) != 1:
            raise VerificationError(
                "expected exactly one Authorization header, got %d" % len(authorizations)
            )
        token = bearer_token(authorizations[0])
        if not token:
            raise VerificationError("Authorization is not a Bearer token")
        try:
            with self._verify_lock:
                claims = self.verifier.verify_jwt(token, self.audience)
            header = jwt.get_unverified_header(token)
        except Exception as e:  # the verifier raises KeyError and TypeError as well as ValueError
            raise VerificationError(describe(e, token))
        return header, claims


def describe(error, token):
    text = "%s: %s" % (type(error).__name__, error)
    token_text = token.decode("ascii", "replace") if isinstance(token, bytes) else str(token)
    # Library messages quote kids and jtis, never the token, but make sure of it.
    for part in [token_text] + token_text.split("."):
        if len(part) >= 16:
            text = text.replace(part, "<redacted>")
    return text


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audience", required=True, help="the aud the tokens must name")
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KID=PATH",
        help="public key PEM (SubjectPublicKeyInfo) for a kid; repeatable",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--check-jti-replay",
        action="store_true",
        help=(
            "refuse a jti seen before (the library remembers the last 1000). Off by default: "
            "a proxy may send one token with many requests until it nears expiry"
        ),
    )
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate chain (PEM)")
    parser.add_argument("--tls-key", help="the private key (PEM) for --tls-cert")
    parser.add_argument(
        "--log-requests",
        action="store_true",
        help="write method, path and status of each request to stderr",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    retriever = StaticPublicKeyRetriever(load_public_keys(args.key))
    # The library's own switch; it is off unless asked for, as in its frameworks.
    verifier = JWTAuthVerifier(
        retriever,
        subject_should_match_issuer=True,
        check_jti_uniqueness=args.check_jti_replay,
    )
    server = AsapUpstream((args.host, args.port), verifier, args.audience, args.log_requests)
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        # The handshake runs in each connection's thread, not in the accept loop.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    sys.stdout.write("listening %d\n" % server.server_address[1])
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
