"""An upstream for trying asap-proxy offline: answers every request with the headers it got.

Run: python3 examples/echo_headers.py [PORT]      (default 9999, on 127.0.0.1)
Then: curl -x http://127.0.0.1:8080 http://127.0.0.1:9999/hello
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        lines = ["%s %s" % (self.command, self.path)]
        lines += ["%s: %s" % (name, value) for name, value in self.headers.items()]
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9999
    print("echoing request headers on http://127.0.0.1:%d" % port)
    ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()
