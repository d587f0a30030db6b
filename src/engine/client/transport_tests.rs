//! The measured path's transport against small servers of known behaviour: connections are
//! reused, a stale one is resent on, and an error status, a broken-off answer or a full pool each
//! leave the pool in the right state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HOST;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tests::{completion_body, completion_call, start_sim};
use super::*;

const STREAM: &str = "data: {\"choices\":[{\"text\":\" a\"}]}\n\ndata: {\"choices\":[{\"text\":\" b\"}]}\n\n\
    data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";

/// A hyper server answering every request with `status` and `body`; returns its base URL and
/// the number of connections it accepted so far.
async fn counting_server(status: u16, body: &'static str) -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            let service = service_fn(move |_: Request<hyper::body::Incoming>| async move {
                let mut answer = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                *answer.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                answer.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                Ok::<_, std::convert::Infallible>(answer)
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(sock), service));
        }
    });
    (url, accepted)
}

async fn send(client: &EngineClient) -> RequestRecord {
    let mut record = RequestRecord::default();
    client.send(&completion_call(2), b"{}", Instant::now(), &mut record).await;
    record
}

#[tokio::test]
async fn connections_are_kept_alive_and_reused() {
    let (url, accepted) = counting_server(200, STREAM).await;
    let client = EngineClient::new(&url, vec![], 4).unwrap();
    for _ in 0..5 {
        let record = send(&client).await;
        assert!(record.ok(), "{record:?}");
        assert_eq!((record.content_events, record.usage_completion_tokens), (2, Some(2)));
        assert_eq!(record.connection_retries, 0);
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
    assert_eq!(client.inner.transport.opened(), 1);

    // Clones share the pool; eight at once open eight, of which four stay.
    let records: Vec<_> = futures_util::future::join_all((0..8).map(|_| {
        let client = client.clone();
        async move { send(&client).await }
    }))
    .await;
    assert!(records.iter().all(RequestRecord::ok));
    let opened = client.inner.transport.opened();
    assert!((2..=8).contains(&opened), "{opened}");
    for _ in 0..8 {
        assert!(send(&client).await.ok());
    }
    assert!(client.inner.transport.opened() <= opened + 1, "a kept connection was not reused");
    assert_eq!(accepted.load(Ordering::Relaxed), client.inner.transport.opened());
}

#[tokio::test]
async fn an_error_status_quotes_the_body_and_keeps_the_connection() {
    let (url, accepted) = counting_server(503, r#"{"error":"overloaded, retry later"}"#).await;
    let client = EngineClient::new(&url, vec![], 2).unwrap();
    for _ in 0..3 {
        let record = send(&client).await;
        assert_eq!((record.error, record.status), (Some(ErrorKind::Status(503)), Some(503)), "{record:?}");
        assert!(record.error_detail.as_deref().unwrap().contains("overloaded, retry later"), "{record:?}");
        assert!(record.headers_ns.is_some() && record.end_ns >= record.headers_ns.unwrap());
    }
    // The short error body was read to its end, so its connection carried the next request.
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
}

/// A server that answers 200 with an SSE `body` announced as `announced` bytes long (`None`: no
/// answer at all), then closes the connection, whatever it announced.
async fn raw_server(body: &'static str, announced: Option<usize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                let Some(length) = announced else { return };
                let head =
                    format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {length}\r\n\r\n");
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn an_answer_that_breaks_off_is_a_stream_error() {
    let url = raw_server("data: {\"choices\":[{\"text\":\" a\"}]}\n\n", Some(4096)).await;
    let client = EngineClient::new(&url, vec![], 2).unwrap();
    let record = send(&client).await;
    assert_eq!(record.error, Some(ErrorKind::Stream), "{record:?}");
    assert!(record.error_detail.as_deref().unwrap().starts_with("the answer broke off"), "{record:?}");
    assert_eq!((record.status, record.content_events), (Some(200), 1));
    assert!(record.first_byte_ns.is_some() && record.end_ns >= record.first_byte_ns.unwrap());
    // The broken connection is not pooled: the next request opens a new one and is no retry.
    let record = send(&client).await;
    assert_eq!((record.error, record.connection_retries), (Some(ErrorKind::Stream), 0));
    assert_eq!(client.inner.transport.opened(), 2);
}

#[tokio::test]
async fn an_answer_cut_before_its_head_is_not_resent_on_a_fresh_connection() {
    let url = raw_server("", None).await;
    let client = EngineClient::new(&url, vec![], 2).unwrap();
    let record = send(&client).await;
    assert_eq!((record.error, record.status, record.connection_retries), (Some(ErrorKind::Connect), None, 0));
    assert!(record.error_detail.as_deref().unwrap().starts_with("request failed: "), "{record:?}");
}

#[tokio::test]
async fn a_refused_connection_names_the_address() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let client = EngineClient::new(&format!("http://{addr}"), vec![], 1).unwrap();
    let record = send(&client).await;
    assert_eq!(record.error, Some(ErrorKind::Connect));
    let detail = record.error_detail.unwrap();
    assert!(detail.starts_with(&format!("cannot connect to {addr}: ")), "{detail}");
}

/// A connection the server closed while it sat idle in the pool is skipped, not sent on.
#[tokio::test]
async fn a_connection_closed_while_idle_is_skipped() {
    const ANSWER: &str = "data: {\"choices\":[{\"text\":\" a\"}]}\n\ndata: [DONE]\n\n";
    let url = raw_server(ANSWER, Some(ANSWER.len())).await;
    let client = EngineClient::new(&url, vec![], 2).unwrap();
    assert!(send(&client).await.ok());
    tokio::time::sleep(Duration::from_millis(50)).await; // the close reaches the connection's task
    let record = send(&client).await;
    assert!(record.ok(), "{record:?}");
    assert_eq!(record.connection_retries, 0);
    assert_eq!(client.inner.transport.opened(), 2);
}

#[tokio::test]
async fn a_base_path_prefixes_the_target_and_the_sim_streams() {
    let url = start_sim(&[]).await;
    let client = EngineClient::new(&format!("{url}/"), vec![], 1).unwrap();
    let mut record = RequestRecord::default();
    let body = Bytes::from(completion_body("a b", 3).to_string());
    client.send(&completion_call(3), &body, Instant::now(), &mut record).await;
    assert!(record.ok(), "{record:?}");
    assert_eq!(record.content_events, 3);

    let prefixed = EngineClient::new(&format!("{url}/prefix"), vec![], 1).unwrap();
    let record = send(&prefixed).await;
    assert_eq!(record.error, Some(ErrorKind::Status(404)), "{record:?}");
}

#[test]
fn the_target_and_host_are_built_once_from_the_base_url() {
    let defaults = vec![("Authorization".into(), "s3cret".into()), ("Content-Length".into(), "7".into())];
    let client = EngineClient::new("https://engine.example/base/", defaults, 1).unwrap();
    let transport = &client.inner.transport;
    assert_eq!((transport.host.as_str(), transport.port), ("engine.example", 443));
    assert_eq!(transport.headers[HOST], "engine.example");
    assert!(transport.headers["authorization"].is_sensitive());
    assert!(!format!("{:?}", transport.headers).contains("s3cret"));
    let route = transport.route(&completion_call(1)).unwrap();
    let mut out = Vec::new();
    route.write(b"{}", &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("POST /base/v1/completions HTTP/1.1\r\n"), "{text}");
    for line in ["host: engine.example\r\n", "content-type: application/json\r\n", "authorization: s3cret\r\n"] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    assert!(text.ends_with("content-length: 2\r\n\r\n{}"), "{text}");
    assert_eq!(text.matches("content-length").count(), 1, "{text}");

    let client = EngineClient::new("http://[::1]:8080", vec![], 1).unwrap();
    let transport = &client.inner.transport;
    assert_eq!((transport.host.as_str(), transport.port), ("::1", 8080));
    assert_eq!(transport.headers[HOST], "[::1]:8080");

    let mut call = completion_call(1);
    call.path = "/v1/completions?x=a b".into();
    assert!(transport.route(&call).err().unwrap().contains("not a request path"));
    call.path = "/v1/completions".into();
    call.method = "PO ST".into();
    assert!(transport.route(&call).err().unwrap().contains("not an HTTP method"));
}

/// A server that writes `answer` in `pieces` (split at those offsets, each piece sent on its own
/// after a pause, so reads end there) to every request, and keeps the connection open; its base URL.
fn scripted_server(answer: Vec<u8>, pieces: Vec<usize>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { return };
            sock.set_nodelay(true).unwrap();
            let (answer, pieces) = (answer.clone(), pieces.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok(1..) = sock.read(&mut buf) {
                    let mut at = 0;
                    for cut in pieces.iter().copied().chain([answer.len()]) {
                        if sock.write_all(&answer[at..cut]).is_err() {
                            return;
                        }
                        at = cut;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            });
        }
    });
    url
}

fn chunked(body: &str, size: usize) -> String {
    let mut out = String::new();
    for piece in body.as_bytes().chunks(size) {
        out.push_str(&format!("{:x};ext=1\r\n{}\r\n", piece.len(), std::str::from_utf8(piece).unwrap()));
    }
    out + "0\r\nx-trailer: 1\r\n\r\n"
}

/// Every way HTTP/1.1 delimits a body, cut into reads anywhere: the events come out whole and the
/// connection is kept only where the server keeps it.
#[tokio::test]
async fn bodies_by_length_chunks_and_close_in_any_cuts() {
    let cases: [(String, bool); 5] = [
        (format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{STREAM}", STREAM.len()), true),
        (format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}", chunked(STREAM, 7)), true),
        (
            format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: CHUNKED\r\n\r\n{}",
                chunked(STREAM, 64)
            ),
            true,
        ),
        (format!("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{STREAM}", STREAM.len()), false),
        (format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{STREAM}", STREAM.len()), false),
    ];
    for (answer, kept) in cases {
        let len = answer.len();
        for pieces in [vec![], vec![1], vec![20, 40], (1..len).step_by(5).collect(), (1..len).collect()] {
            let url = scripted_server(answer.clone().into_bytes(), pieces.clone());
            let client = EngineClient::new(&url, vec![], 2).unwrap();
            let record = send(&client).await;
            assert!(record.ok(), "{answer:?} cut at {pieces:?}: {record:?}");
            assert_eq!((record.content_events, record.usage_completion_tokens), (2, Some(2)), "{answer:?}");
            let record = send(&client).await;
            assert!(record.ok(), "{answer:?} cut at {pieces:?}: {record:?}");
            let opened = client.inner.transport.opened();
            assert_eq!(opened, if kept { 1 } else { 2 }, "{answer:?} cut at {pieces:?}");
        }
    }
}

/// A body that lasts until the close is complete at the close; a body in neither form breaks off.
#[tokio::test]
async fn a_body_until_close_ends_with_the_connection() {
    // No end marker either: the close alone ends the answer.
    let stream = STREAM.trim_end_matches("data: [DONE]\n\n");
    let url = raw_server_plain(format!("HTTP/1.1 200 OK\r\n\r\n{stream}")).await;
    let client = EngineClient::new(&url, vec![], 2).unwrap();
    let record = send(&client).await;
    assert!(record.ok(), "{record:?}");
    assert_eq!((record.content_events, record.usage_completion_tokens), (2, Some(2)));
    assert!(record.end_ns >= record.last_event_ns.unwrap());
    assert!(send(&client).await.ok());
    assert_eq!(client.inner.transport.opened(), 2, "a connection whose answer ended at its close was reused");
}

/// Answers that are not HTTP/1.1 fail the request with what was wrong.
#[tokio::test]
async fn malformed_answers_name_the_fault() {
    let cases = [
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", ErrorKind::Stream, "chunk size"),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
            ErrorKind::Stream,
            "longer than its size",
        ),
        ("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", ErrorKind::Connect, "Content-Length"),
        ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", ErrorKind::Connect, "two different"),
        ("SMTP ready\r\n\r\n", ErrorKind::Connect, "not a valid HTTP/1.1 answer"),
    ];
    for (answer, kind, words) in cases {
        let url = raw_server_plain(answer.to_string()).await;
        let client = EngineClient::new(&url, vec![], 2).unwrap();
        let record = send(&client).await;
        assert_eq!(record.error, Some(kind), "{answer:?}: {record:?}");
        let detail = record.error_detail.unwrap();
        assert!(detail.contains(words), "{answer:?}: {detail}");
    }
}

/// A server that answers every connection's first request with `answer`, then closes it.
async fn raw_server_plain(answer: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

/// An answer head larger than the read buffer is read whole; one over the limit is refused.
#[tokio::test]
async fn long_answer_heads_grow_the_buffer_up_to_a_limit() {
    let big = "x".repeat(40 << 10);
    let url = scripted_server(
        format!("HTTP/1.1 200 OK\r\nX-Padding: {big}\r\nContent-Length: {}\r\n\r\n{STREAM}", STREAM.len()).into_bytes(),
        vec![1000, 20000],
    );
    let client = EngineClient::new(&url, vec![], 1).unwrap();
    let record = send(&client).await;
    assert!(record.ok(), "{:?}", record.error_detail);
    assert_eq!(record.content_events, 2);

    let huge = "x".repeat(70 << 10);
    let url = raw_server_plain(format!("HTTP/1.1 200 OK\r\nX-Padding: {huge}\r\n\r\n")).await;
    let client = EngineClient::new(&url, vec![], 1).unwrap();
    let record = send(&client).await;
    assert_eq!(record.error, Some(ErrorKind::Connect));
    assert!(record.error_detail.unwrap().contains("an answer head longer than 64 KiB"));
}

/// What a scripted server does with one request.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Answers it whole (`ANSWER`, kept alive).
    Answer,
    /// Closes the connection without a byte of answer.
    Close,
    /// Resets the connection (RST) after writing these bytes of answer.
    ResetAfter(&'static str),
    /// Writes these bytes, then sends nothing more, keeping the connection open.
    Stall(&'static str),
    /// Writes the head, then an event every 50 ms, forever.
    Trickle,
}

const ANSWER: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 49\r\n\r\n\
    data: {\"choices\":[{\"text\":\" a\"}]}\n\ndata: [DONE]\n\n";
const HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
const ONE_EVENT: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
    23\r\ndata: {\"choices\":[{\"text\":\" a\"}]}\n\n\r\n";

/// A server that does `script(connection, request on it)` with every request it reads, each
/// connection on a thread of its own; its base URL and the log of the requests it read.
/// What a scripted server does, by (connection, request on it).
type Script = fn(usize, usize) -> Act;
/// The requests a scripted server read, as (connection, request on it).
type Log = Arc<std::sync::Mutex<Vec<(usize, usize)>>>;

fn script_server(script: Script) -> (String, Log) {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&log);
    std::thread::spawn(move || {
        for (conn, sock) in listener.incoming().enumerate() {
            let Ok(mut sock) = sock else { return };
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                for req in 0.. {
                    let Ok(1..) = sock.read(&mut buf) else { return };
                    seen.lock().unwrap().push((conn, req));
                    match script(conn, req) {
                        Act::Answer => {
                            let _ = sock.write_all(ANSWER.as_bytes());
                        }
                        Act::Close => return,
                        Act::ResetAfter(bytes) => {
                            let _ = sock.write_all(bytes.as_bytes());
                            std::thread::sleep(Duration::from_millis(20));
                            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                            // SAFETY: a valid socket and a correctly sized option value.
                            unsafe {
                                libc::setsockopt(
                                    sock.as_raw_fd(),
                                    libc::SOL_SOCKET,
                                    libc::SO_LINGER,
                                    (&raw const linger).cast(),
                                    size_of::<libc::linger>() as libc::socklen_t,
                                );
                            }
                            return; // dropped with a zero linger: RST
                        }
                        Act::Stall(bytes) => {
                            let _ = sock.write_all(bytes.as_bytes());
                            std::thread::sleep(Duration::from_secs(30));
                            return;
                        }
                        Act::Trickle => {
                            let _ = sock.write_all(HEAD.as_bytes());
                            let event = "23\r\ndata: {\"choices\":[{\"text\":\" a\"}]}\n\n\r\n";
                            while sock.write_all(event.as_bytes()).is_ok() {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, log)
}

async fn send_within(client: &EngineClient, deadlines: Deadlines) -> RequestRecord {
    let mut record = RequestRecord::default();
    client.send_within(&completion_call(2), b"{}", Instant::now(), &deadlines, &mut record).await;
    record
}

fn deadlines(first_token_ms: u64, between_events_ms: u64, total_ms: u64) -> Deadlines {
    Deadlines {
        first_token: Duration::from_millis(first_token_ms),
        between_events: Duration::from_millis(between_events_ms),
        total: Duration::from_millis(total_ms),
        step_cutoff: None,
    }
}

/// Each deadline ends a request that passes it as `timeout`, naming it, at about its time; the
/// connection is dropped, and the next request goes out on a new one.
#[tokio::test]
async fn each_deadline_ends_a_request_as_a_timeout_naming_it() {
    let cases: [(Script, Deadline, u64); 4] = [
        (|_, _| Act::Stall(""), Deadline::FirstToken, 300),
        (|_, _| Act::Stall(HEAD), Deadline::FirstToken, 300),
        (|_, _| Act::Stall(ONE_EVENT), Deadline::BetweenEvents, 200),
        (|_, _| Act::Trickle, Deadline::Total, 500),
    ];
    for (script, which, after_ms) in cases {
        let (url, log) = script_server(script);
        let client = EngineClient::new(&url, vec![], 2).unwrap();
        let started = Instant::now();
        let record = send_within(&client, deadlines(300, 200, 500)).await;
        let took = started.elapsed();
        assert_eq!((record.error, record.deadline), (Some(ErrorKind::Timeout), Some(which)), "{record:?}");
        let detail = record.error_detail.as_deref().unwrap();
        assert!(detail.contains(&format!("`{}` deadline", which.name())), "{detail}");
        assert!(took >= Duration::from_millis(after_ms), "{which:?} ended after {took:?}");
        assert!(took < Duration::from_millis(after_ms + 2000), "{which:?} ended after {took:?}");
        let cut_at = record.end_ns - record.sent_ns;
        assert!(cut_at >= after_ms * 1_000_000, "{which:?}: end − sent {cut_at} ns");
        if which == Deadline::BetweenEvents {
            assert_eq!(record.content_events, 1, "the event before the stall is kept");
        }
        let _ = send_within(&client, deadlines(100, 100, 100)).await;
        assert_eq!(client.inner.transport.opened(), 2, "a timed-out connection was reused");
        assert_eq!(log.lock().unwrap().len(), 2);
    }
}

/// A reset after the engine has the request and sent part of its answer is the request's error
/// (`connection_reset`, with the bytes received); it is never resent, even on a reused
/// connection.
#[tokio::test]
async fn a_reset_after_part_of_the_answer_is_an_error_and_never_resent() {
    let (url, log) = script_server(|_, req| if req == 0 { Act::Answer } else { Act::ResetAfter("HTTP/1.1 2") });
    let client = EngineClient::new(&url, vec![], 2).unwrap();
    assert!(send(&client).await.ok());
    let record = send(&client).await;
    assert_eq!((record.error, record.connection_retries), (Some(ErrorKind::ConnectionReset), 0), "{record:?}");
    let detail = record.error_detail.unwrap();
    assert!(detail.contains("after 10 bytes of the answer"), "{detail}");
    // The engine saw that request once: its connection's second, and nothing after it.
    assert_eq!(*log.lock().unwrap(), vec![(0, 0), (0, 1)]);
    assert_eq!(client.inner.transport.opened(), 1);
}

/// A kept-alive connection that the server closes (or resets) as the request arrives, before a
/// byte of answer, was one the server had given up while idle: the request goes out once more on
/// a new connection, and its send stamp stays the first one's.
#[tokio::test]
async fn a_reused_connection_closed_before_any_answer_is_resent_once_on_a_new_one() {
    for script in [(|conn, req| if conn == 0 && req == 1 { Act::Close } else { Act::Answer }) as Script, |conn, req| {
        if conn == 0 && req == 1 { Act::ResetAfter("") } else { Act::Answer }
    }] {
        let (url, log) = script_server(script);
        let client = EngineClient::new(&url, vec![], 2).unwrap();
        assert!(send(&client).await.ok());
        let origin = Instant::now();
        let mut record = RequestRecord::default();
        let before = Instant::now();
        client.send(&completion_call(2), b"{}", origin, &mut record).await;
        assert!(record.ok(), "{record:?}");
        assert_eq!(record.connection_retries, 1);
        assert!(record.sent_ns <= u64::try_from(before.duration_since(origin).as_nanos()).unwrap() + 1_000_000);
        assert_eq!(*log.lock().unwrap(), vec![(0, 0), (0, 1), (1, 0)]);
        // A second failure of that kind is the request's: never a second resend.
        let (url, log) = script_server(|conn, req| if conn == 0 && req == 0 { Act::Answer } else { Act::Close });
        let client = EngineClient::new(&url, vec![], 2).unwrap();
        assert!(send(&client).await.ok());
        let record = send(&client).await;
        assert_eq!((record.error, record.connection_retries), (Some(ErrorKind::Connect), 1), "{record:?}");
        assert_eq!(log.lock().unwrap().len(), 3);
    }
}
