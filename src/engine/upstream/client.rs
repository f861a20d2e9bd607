//! The HTTP client that sends batch lines: hyper's pooled client with rustls, driven directly.
//! reqwest (kept for the rare model listings) costs about 40 µs of CPU per request at a
//! replica's request rate against ~25 µs for this (measured with both against the fake
//! upstream at 2,000 requests/s, one thread): on a machine whose cores the upstream shares, that
//! difference is the upstream's.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Request, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

#[derive(Clone)]
pub struct LineClient {
    client: Client<Connector, Full<Bytes>>,
}

/// An answer, whatever its status, with its body read in full.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug)]
pub enum SendError {
    /// No complete answer within the attempt's timeout.
    Timeout,
    /// The body passed the size limit (declared or streamed); it was not kept.
    TooLarge,
    /// Could not connect: the server is down (or unreachable); the request was not sent.
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed before the answer was complete, or the request could not be built.
    Transport(Box<dyn std::error::Error + Send + Sync>),
}

impl LineClient {
    pub fn new() -> anyhow::Result<Self> {
        let mut http = HttpConnector::new();
        http.enforce_http(false); // https is the TLS layer's
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(30)));
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(tls);
        Ok(Self { client })
    }

    /// POSTs a JSON `body` to `uri` and reads the answer, all within `timeout`. Redirects are
    /// not followed: a 3xx is the answer.
    pub async fn post(
        &self,
        uri: Uri,
        body: Bytes,
        traceparent: &str,
        authorization: Option<&HeaderValue>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Answer, SendError> {
        let mut req = Request::post(uri)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| SendError::Transport(e.into()))?;
        let headers = req.headers_mut();
        if let Ok(tp) = HeaderValue::from_str(traceparent) {
            headers.insert("traceparent", tp);
        }
        if let Some(auth) = authorization {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        let exchange = async {
            let res = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    SendError::Connect(e.into())
                } else {
                    SendError::Transport(e.into())
                }
            })?;
            let (parts, body) = res.into_parts();
            let body = read_capped(body, max_body).await?;
            Ok(Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(SendError::Timeout))
    }
}

/// The body, abandoned as soon as it passes `limit`: one huge answer, times the lines in flight,
/// must not take the replica's memory. A declared `Content-Length` over the limit is refused
/// before anything is read. A body that came in one frame is kept without a copy.
async fn read_capped(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, SendError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(SendError::TooLarge);
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(SendError::TooLarge),
        Err(e) => Err(SendError::Transport(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that reads one request head and then answers with `reply` (raw bytes), or, with
    /// `None`, holds the connection open without answering.
    async fn server(reply: Option<Vec<u8>>) -> Uri {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    match reply {
                        Some(r) => {
                            let _ = sock.write_all(&r).await;
                            let _ = sock.shutdown().await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(3600)).await,
                    }
                });
            }
        });
        format!("http://{addr}/v1/chat/completions")
            .parse()
            .unwrap()
    }

    async fn post(uri: Uri, timeout: Duration, max_body: usize) -> Result<Answer, SendError> {
        let auth = HeaderValue::from_static("Bearer k");
        LineClient::new()
            .unwrap()
            .post(
                uri,
                Bytes::from_static(b"{}"),
                "00-x-y-01",
                Some(&auth),
                timeout,
                max_body,
            )
            .await
    }

    fn reply(status: &str, headers: &str, body: &str) -> Option<Vec<u8>> {
        Some(format!("HTTP/1.1 {status}\r\n{headers}\r\n{body}").into_bytes())
    }

    #[tokio::test]
    async fn an_answer_of_any_status_is_read_whole() {
        let uri = server(reply(
            "503 Service Unavailable",
            "content-length: 11\r\nretry-after: 2\r\n",
            "{\"e\":\"x\"}\n\n",
        ))
        .await;
        let a = post(uri, Duration::from_secs(10), 1024).await.unwrap();
        assert_eq!(a.status, 503);
        assert_eq!(a.headers["retry-after"], "2");
        assert_eq!(&a.body[..], b"{\"e\":\"x\"}\n\n");
    }

    #[tokio::test]
    async fn a_body_in_many_chunks_is_joined() {
        let uri = server(reply(
            "200 OK",
            "transfer-encoding: chunked\r\n",
            "3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        ))
        .await;
        let a = post(uri, Duration::from_secs(10), 1024).await.unwrap();
        assert_eq!(&a.body[..], b"{\"a\":1}");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_declared_or_streamed() {
        let declared = server(reply("200 OK", "content-length: 100\r\n", &"x".repeat(100))).await;
        let r = post(declared, Duration::from_secs(10), 99).await;
        assert!(matches!(r, Err(SendError::TooLarge)), "{:?}", r.err());
        let streamed = server(reply(
            "200 OK",
            "transfer-encoding: chunked\r\n",
            "40\r\n{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}{}\r\n0\r\n\r\n",
        ))
        .await;
        let r = post(streamed, Duration::from_secs(10), 63).await;
        assert!(matches!(r, Err(SendError::TooLarge)), "{:?}", r.err());
    }

    #[tokio::test]
    async fn silence_is_a_timeout_and_a_dropped_connection_a_transport_error() {
        let silent = server(None).await;
        let r = post(silent, Duration::from_millis(300), 1024).await;
        assert!(matches!(r, Err(SendError::Timeout)), "{:?}", r.err());
        let dropped = server(Some(Vec::new())).await;
        let r = post(dropped, Duration::from_secs(10), 1024).await;
        assert!(matches!(r, Err(SendError::Transport(_))), "{:?}", r.err());
        // Nothing listens there any more.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let uri = format!("http://{closed}/v1/x").parse().unwrap();
        let r = post(uri, Duration::from_secs(10), 1024).await;
        assert!(matches!(r, Err(SendError::Connect(_))), "{:?}", r.err());
    }
}
