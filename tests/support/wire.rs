//! A raw HTTP/1.1 client, so tests control and see exactly the bytes on the wire.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct RawResponse {
    /// The minor version of the status line: 1 for HTTP/1.1.
    pub minor_version: u8,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as written and reads one response; the request should ask for
/// `Connection: close` so the body ends with the connection when it has no length.
pub async fn send(addr: SocketAddr, request: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect to proxy");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    read_response(&mut stream).await
}

pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let deadline = Duration::from_secs(30);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) =
            response.parse(&buf).expect("valid response head")
        {
            let status = response.code.expect("status");
            let minor_version = response.version.expect("version");
            let headers: Vec<(String, String)> = response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let mut body = buf[head_len..].to_vec();
            let length = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse::<usize>().expect("numeric content-length"));
            let chunked = headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
            match length {
                Some(length) => {
                    while body.len() < length {
                        read_more(stream, &mut body, deadline).await;
                    }
                    body.truncate(length);
                }
                None if chunked => body = read_chunked(stream, body, deadline).await,
                None => while read_more(stream, &mut body, deadline).await > 0 {},
            }
            return RawResponse {
                minor_version,
                status,
                headers,
                body,
            };
        }
        assert!(
            read_more(stream, &mut buf, deadline).await > 0,
            "connection closed before a response"
        );
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Duration) -> usize {
    let mut chunk = [0u8; 16 * 1024];
    let n = tokio::time::timeout(deadline, stream.read(&mut chunk))
        .await
        .expect("response within the deadline")
        .expect("read");
    buf.extend_from_slice(&chunk[..n]);
    n
}

async fn read_chunked(stream: &mut TcpStream, mut raw: Vec<u8>, deadline: Duration) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        match httparse::parse_chunk_size(&raw).expect("valid chunk size") {
            httparse::Status::Complete((at, 0)) => {
                // Wait for the final CRLF so the connection can be reused or closed cleanly.
                while raw.len() < at + 2 {
                    read_more(stream, &mut raw, deadline).await;
                }
                return body;
            }
            httparse::Status::Complete((at, size)) => {
                let size = usize::try_from(size).expect("chunk fits in memory");
                while raw.len() < at + size + 2 {
                    assert!(
                        read_more(stream, &mut raw, deadline).await > 0,
                        "truncated chunk"
                    );
                }
                body.extend_from_slice(&raw[at..at + size]);
                raw.drain(..at + size + 2);
            }
            httparse::Status::Partial => {
                assert!(
                    read_more(stream, &mut raw, deadline).await > 0,
                    "truncated chunked body"
                );
            }
        }
    }
}
