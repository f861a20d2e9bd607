//! HTTP/1.1 by hand on a tokio socket: one request at a time per connection, with the exact
//! faults a framework would smooth over (no answer at all, a closed socket, no length).

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use uuid::Uuid;

use super::{route, State, HANG};

/// Bounds that keep a misbehaving client from making us buffer without limit.
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) content_length: usize,
    pub(crate) chunked: bool,
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
}

pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) headers: Vec<(&'static str, &'static str)>,
    /// Send no `Content-Length`: the body ends when the connection closes.
    pub(crate) no_length: bool,
    /// Sent instead of `body`, as HTML: a page that is not JSON.
    pub(crate) html: Option<&'static str>,
    /// Sent instead of `body`, as Prometheus text.
    pub(crate) text: Option<String>,
}

pub(crate) enum Reply {
    Send(Response),
    Hang,
    Drop,
}

/// Serves requests on one connection until the client closes it, asks for `Connection: close`,
/// or a fault ends it. Bytes past the current request stay in `buf` for the next one.
pub(crate) async fn serve_connection(
    mut sock: TcpStream,
    state: Arc<State>,
) -> std::io::Result<()> {
    let pretty = state.args.pretty;
    let mut buf = Vec::with_capacity(8192);
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return send(
                    &mut sock,
                    error(431, "request headers too large"),
                    false,
                    pretty,
                )
                .await;
            }
            if read_more(&mut sock, &mut buf).await? == 0 {
                return Ok(()); // closed between requests (normal) or mid-head
            }
        };
        let req = match parse_head(&String::from_utf8_lossy(&buf[..head_end])) {
            Ok(req) => req,
            Err(msg) => return send(&mut sock, error(400, msg), false, pretty).await,
        };
        // Without a length we cannot tell where the body ends, so the connection is done after.
        if req.chunked {
            let resp = error(411, "chunked bodies are not supported: send Content-Length");
            return send(&mut sock, resp, false, pretty).await;
        }
        if req.content_length > MAX_BODY {
            return send(
                &mut sock,
                error(413, "request body too large"),
                false,
                pretty,
            )
            .await;
        }
        let end = head_end + req.content_length;
        // curl waits (up to 1 s) for this before it sends a large body.
        if req.expect_continue && buf.len() < end {
            sock.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        while buf.len() < end {
            if read_more(&mut sock, &mut buf).await? == 0 {
                return Ok(());
            }
        }
        let body: Vec<u8> = buf.drain(..end).skip(head_end).collect();
        match route(&state, &req, &body).await {
            Reply::Send(resp) => {
                let close = resp.no_length;
                send(&mut sock, resp, req.keep_alive, pretty).await?;
                if close {
                    return Ok(());
                }
            }
            Reply::Drop => return Ok(()), // dropping the socket closes it with no response
            Reply::Hang => {
                // Read and discard so that we notice when the client gives up: otherwise a
                // benchmark with many hangs would pile up open sockets for an hour.
                let mut sink = [0u8; 4096];
                let drain = async { while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {} };
                let _ = tokio::time::timeout(HANG, drain).await;
                return Ok(());
            }
        }
        if !req.keep_alive {
            return Ok(());
        }
    }
}

pub(crate) async fn read_more(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = sock.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

pub(crate) fn parse_head(head: &str) -> Result<Request, &'static str> {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        content_length: 0,
        chunked: false,
        // HTTP/1.1 connections are persistent by default, HTTP/1.0 ones are not.
        keep_alive: version == "HTTP/1.1",
        expect_continue: false,
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                req.content_length = value.parse().map_err(|_| "bad Content-Length")?
            }
            "transfer-encoding" => req.chunked = true,
            "expect" => req.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        req.keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        req.keep_alive = true;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(req)
}

pub(crate) async fn send(
    sock: &mut TcpStream,
    resp: Response,
    keep_alive: bool,
    pretty: bool,
) -> std::io::Result<()> {
    let (body, content_type) = match (resp.html, resp.text) {
        (Some(page), _) => (page.to_owned(), "text/html"),
        (None, Some(text)) => (text, "text/plain; version=0.0.4"),
        _ if pretty => (
            serde_json::to_string_pretty(&resp.body).expect("a JSON value serialises"),
            "application/json",
        ),
        _ => (resp.body.to_string(), "application/json"),
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let connection = if resp.no_length { "close" } else { connection };
    let length = if resp.no_length {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\n{length}\
         x-request-id: req_{}\r\nConnection: {connection}\r\n",
        resp.status,
        reason(resp.status),
        Uuid::new_v4(),
    );
    for (name, value) in resp.headers {
        out += &format!("{name}: {value}\r\n");
    }
    out += "\r\n";
    out += &body;
    sock.write_all(out.as_bytes()).await
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Fake Status",
    }
}

pub(crate) fn ok(body: Value) -> Response {
    let headers = Vec::new();
    Response {
        status: 200,
        body,
        headers,
        no_length: false,
        html: None,
        text: None,
    }
}

/// OpenAI's error envelope, with the `type` OpenAI uses for each class of status.
pub(crate) fn error(status: u16, message: impl Into<String>) -> Response {
    let kind = match status {
        429 => "requests",
        500.. => "server_error",
        _ => "invalid_request_error",
    };
    let error = json!({"message": message.into(), "type": kind, "param": null, "code": null});
    Response {
        status,
        ..ok(json!({ "error": error }))
    }
}

impl Response {
    /// Sets a field (`param` or `code`) of the error object.
    pub(crate) fn with(mut self, field: &str, value: &str) -> Self {
        self.body["error"][field] = value.into();
        self
    }
}
