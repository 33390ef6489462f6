//! Client probes with bounded timeouts. Each `fn x(ns, ..)` runs in namespace `ns`; the
//! [`here`] module has the same probes for the calling thread's namespace (for a long-running
//! prober thread started with [`Netns::spawn`](crate::netns::Netns::spawn)).

use crate::limits;
use crate::netns::Netns;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Payload of the UDP probe (tests compute the frame length the filter counts from it).
pub const UDP_PAYLOAD: &[u8] = b"serve-guard udp probe";

/// Why a TCP connect failed. A dropped SYN is `TimedOut`; a closed port is `Refused`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection refused")]
    Refused,
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("connect failed: {0}")]
    Other(#[source] io::Error),
    #[error("cannot enter the client namespace: {0}")]
    Namespace(#[source] io::Error),
}

/// Why an HTTP or UDP probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("I/O after connecting: {0}")]
    Io(#[source] io::Error),
    #[error("malformed HTTP response: {0}")]
    BadResponse(String),
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// TCP connect from `ns` to `addr`, closed at once.
pub fn tcp_connect(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<(), ConnectError> {
    ns.run(|| here::tcp_connect(addr, timeout))
        .map_err(ConnectError::Namespace)?
}

/// `GET /` from `ns`; the status code.
pub fn http_get(ns: &Netns, addr: SocketAddr) -> Result<u16, ProbeError> {
    http_request(ns, addr, "/", &[]).map(|r| r.status)
}

/// `GET path` from `ns` with extra request headers, bounded by [`limits::PROBE_IO`].
pub fn http_request(
    ns: &Netns,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, ProbeError> {
    ns.run(|| here::http_request(addr, path, headers, limits::PROBE_IO))
        .map_err(|e| ProbeError::Connect(ConnectError::Namespace(e)))?
}

/// Sends one datagram from `ns` and waits up to `timeout` for it to come back.
pub fn udp_echo(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
    ns.run(|| here::udp_echo(addr, timeout))
        .map_err(|e| ProbeError::Connect(ConnectError::Namespace(e)))?
}

/// [`udp_echo`] from an unconnected socket in `ns` (see [`here::udp_echo_unconnected`]).
pub fn udp_echo_unconnected(
    ns: &Netns,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), ProbeError> {
    ns.run(|| here::udp_echo_unconnected(addr, timeout))
        .map_err(|e| ProbeError::Connect(ConnectError::Namespace(e)))?
}

/// [`here::http_send`] from `ns`.
pub fn http_send(
    ns: &Netns,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, ProbeError> {
    ns.run(|| here::http_send(addr, method, path, headers, body, timeout))
        .map_err(|e| ProbeError::Connect(ConnectError::Namespace(e)))?
}

/// A probe loop on a thread of its own in a namespace, stopped by [`Background::finish`] (or by
/// dropping it) between two rounds.
pub struct Background<R> {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<io::Result<R>>>,
}

impl<R: Send + 'static> Background<R> {
    /// Runs `f` on a thread in `ns`; `f` loops while [`Stop::wait`] says go on.
    pub fn start(ns: &Netns, f: impl FnOnce(Stop) -> R + Send + 'static) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || f(Stop(rx)))?;
        Ok(Background {
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stops the loop after its current round and returns what it gathered.
    pub fn finish(mut self) -> io::Result<R> {
        self.stop.take();
        let thread = self.thread.take().expect("joined only here and in drop");
        match thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<R> Drop for Background<R> {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The stop signal of a [`Background`] loop.
pub struct Stop(std::sync::mpsc::Receiver<()>);

impl Stop {
    /// Waits `gap` (returning early when stopped); true if the loop should go on.
    pub fn wait(&self, gap: Duration) -> bool {
        matches!(
            self.0.recv_timeout(gap),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        )
    }
}

/// What a [`RequestLoop`] saw.
#[derive(Debug, Clone, Default)]
pub struct RequestReport {
    pub sent: u64,
    /// Requests whose response passed the check.
    pub answered: u64,
    /// The first failures (at most [`RequestLoop::KEPT_FAILURES`]), in order.
    pub failures: Vec<String>,
    pub failed: u64,
    /// Answered requests by the label the check gave them (e.g. which replica answered).
    pub labels: std::collections::BTreeMap<String, u64>,
}

/// One HTTP request after another from a namespace to one address, each checked, until
/// finished: "every request answered" over a period.
pub struct RequestLoop(Background<RequestReport>);

impl RequestLoop {
    pub const KEPT_FAILURES: usize = 20;

    /// `GET path` with `headers` to `addr` from `ns` every `gap` (after the previous answer),
    /// each bounded by `timeout`; `check` turns a response into a label or says why it is
    /// wrong.
    pub fn start(
        ns: &Netns,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        gap: Duration,
        timeout: Duration,
        check: impl Fn(&HttpResponse) -> Result<String, String> + Send + 'static,
    ) -> io::Result<Self> {
        let path = path.to_owned();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        Background::start(ns, move |stop| {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let mut report = RequestReport::default();
            loop {
                report.sent += 1;
                let verdict = here::http_request(addr, &path, &headers, timeout)
                    .map_err(|e| e.to_string())
                    .and_then(|r| check(&r));
                match verdict {
                    Ok(label) => {
                        report.answered += 1;
                        *report.labels.entry(label).or_default() += 1;
                    }
                    Err(why) => {
                        report.failed += 1;
                        if report.failures.len() < Self::KEPT_FAILURES {
                            report
                                .failures
                                .push(format!("request {}: {why}", report.sent));
                        }
                    }
                }
                if !stop.wait(gap) {
                    return report;
                }
            }
        })
        .map(RequestLoop)
    }

    pub fn finish(self) -> io::Result<RequestReport> {
        self.0.finish()
    }
}

/// The probes, run in the calling thread's namespace.
pub mod here {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::{TcpStream, UdpSocket};

    /// Largest response read: the test servers and the agent's pages are far smaller.
    const MAX_RESPONSE: u64 = 1 << 20;

    fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectError::Refused,
            io::ErrorKind::TimedOut => ConnectError::TimedOut(timeout),
            _ => ConnectError::Other(e),
        })
    }

    pub fn tcp_connect(addr: SocketAddr, timeout: Duration) -> Result<(), ConnectError> {
        connect(addr, timeout).map(drop)
    }

    /// [`tcp_connect`] to every address at once (one thread each, in the calling thread's
    /// namespace): the whole set takes about one `timeout`. Results in the order of `addrs`.
    pub fn tcp_connect_all(
        addrs: &[SocketAddr],
        timeout: Duration,
    ) -> Vec<Result<(), ConnectError>> {
        // Threads inherit the namespace of the thread that creates them.
        std::thread::scope(|s| {
            let probes: Vec<_> = addrs
                .iter()
                .map(|&addr| s.spawn(move || tcp_connect(addr, timeout)))
                .collect();
            probes
                .into_iter()
                .map(|p| {
                    p.join().unwrap_or_else(|_| {
                        Err(ConnectError::Other(io::Error::other(
                            "probe thread panicked",
                        )))
                    })
                })
                .collect()
        })
    }

    pub fn http_get(addr: SocketAddr, timeout: Duration) -> Result<u16, ProbeError> {
        http_request(addr, "/", &[], timeout).map(|r| r.status)
    }

    /// `GET path` with `Connection: close`; connect, write and read each bounded by `timeout`.
    pub fn http_request(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<HttpResponse, ProbeError> {
        http_send(addr, "GET", path, headers, None, timeout)
    }

    /// `method path` with `Connection: close` and, if given, a body (with its
    /// `Content-Length`); connect, write and read each bounded by `timeout`.
    pub fn http_send(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<HttpResponse, ProbeError> {
        let mut conn = connect(addr, timeout)?;
        conn.set_read_timeout(Some(timeout))
            .map_err(ProbeError::Io)?;
        conn.set_write_timeout(Some(timeout))
            .map_err(ProbeError::Io)?;
        let host = match addr {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut req = req.into_bytes();
        req.extend_from_slice(body.unwrap_or_default());
        conn.write_all(&req).map_err(ProbeError::Io)?;
        let mut raw = Vec::new();
        conn.take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .map_err(ProbeError::Io)?;
        parse_response(&raw)
    }

    /// A request/response over a connected UDP socket (as DNS and NTP clients use).
    pub fn udp_echo(addr: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
        udp_exchange(addr, timeout, true)
    }

    /// The same exchange from an unconnected socket (`sendto`/`recvfrom`): a reply reaches it
    /// only from `addr`, as for [`udp_echo`], but the socket takes datagrams from anyone.
    pub fn udp_echo_unconnected(addr: SocketAddr, timeout: Duration) -> Result<(), ProbeError> {
        udp_exchange(addr, timeout, false)
    }

    fn udp_exchange(
        addr: SocketAddr,
        timeout: Duration,
        connected: bool,
    ) -> Result<(), ProbeError> {
        let local: SocketAddr = match addr {
            SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
            SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
        };
        let sock = UdpSocket::bind(local).map_err(ProbeError::Io)?;
        sock.set_read_timeout(Some(timeout))
            .map_err(ProbeError::Io)?;
        let mut buf = [0u8; 64];
        let got = if connected {
            sock.connect(addr).map_err(ProbeError::Io)?;
            sock.send(UDP_PAYLOAD).map_err(ProbeError::Io)?;
            sock.recv(&mut buf)
        } else {
            sock.send_to(UDP_PAYLOAD, addr).map_err(ProbeError::Io)?;
            let deadline = std::time::Instant::now() + timeout;
            loop {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) if from == addr => break Ok(n),
                    // Not the peer's answer: keep waiting out the same deadline.
                    Ok(_) => {
                        let left = deadline.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() {
                            break Err(io::ErrorKind::TimedOut.into());
                        }
                        sock.set_read_timeout(Some(left)).map_err(ProbeError::Io)?;
                    }
                    Err(e) => break Err(e),
                }
            }
        };
        match got {
            Ok(n) if &buf[..n] == UDP_PAYLOAD => Ok(()),
            Ok(_) => Err(ProbeError::BadResponse("UDP echo differs".into())),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ConnectError::TimedOut(timeout).into())
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                Err(ConnectError::Refused.into())
            }
            Err(e) => Err(ProbeError::Io(e)),
        }
    }
}

/// Parses a complete `Connection: close` response: status line, headers, and the rest as body
/// (de-chunked if `Transfer-Encoding: chunked`).
pub fn parse_response(raw: &[u8]) -> Result<HttpResponse, ProbeError> {
    let bad = |m: &str| ProbeError::BadResponse(m.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty response"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(&format!("status line {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(&format!("status line {status_line:?}")))?;
    let headers = lines
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .ok_or_else(|| bad(&format!("header {l:?}")))?;
            Ok((n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect::<Result<Vec<_>, ProbeError>>()?;
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{HttpServer, UdpEchoServer, body_for};
    use crate::topology::{Ip, Topology};

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain =
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 2\r\n\r\nno";
        let r = parse_response(plain).unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(r.body, b"no");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap().body, b"abcde");
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn refused_and_served_are_told_apart_on_both_families() {
        let topo = Topology::new().unwrap();
        let _http = HttpServer::start(&topo.server.ns, &[8000]).unwrap();
        let udp = UdpEchoServer::start(&topo.server.ns, &[9000]).unwrap();
        for ip in Ip::BOTH {
            let served = topo.server.sock(ip, 8000);
            let resp = http_request(&topo.outside.ns, served, "/x", &[("X-Test", "1")]).unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(resp.body_text(), body_for(8000));
            let closed = topo.server.sock(ip, 8001);
            let err = tcp_connect(&topo.inside.ns, closed, limits::DROPPED_CONNECT).unwrap_err();
            assert!(matches!(err, ConnectError::Refused), "{ip:?}: {err}");
            udp_echo(
                &topo.inside.ns,
                topo.server.sock(ip, 9000),
                limits::PROBE_IO,
            )
            .unwrap();
        }
        assert_eq!(udp.datagrams(9000), 2);
    }

    #[test]
    fn a_body_goes_with_its_length_and_unconnected_udp_gets_its_echo() {
        let topo = Topology::new().unwrap();
        let http = HttpServer::start(&topo.server.ns, &[8000]).unwrap();
        let _udp = UdpEchoServer::start(&topo.server.ns, &[9000]).unwrap();
        for ip in Ip::BOTH {
            let resp = http_send(
                &topo.inside.ns,
                topo.server.sock(ip, 8000),
                "PUT",
                "/x",
                &[("Content-Type", "application/json")],
                Some(b"{}"),
                limits::PROBE_IO,
            )
            .unwrap();
            assert_eq!(resp.status, 200);
            udp_echo_unconnected(
                &topo.inside.ns,
                topo.server.sock(ip, 9000),
                limits::PROBE_IO,
            )
            .unwrap();
        }
        assert_eq!(http.requests(8000), 2);
    }

    #[test]
    fn dropped_syn_times_out() {
        let topo = Topology::new().unwrap();
        let _http = HttpServer::start(&topo.server.ns, &[8000]).unwrap();
        // A real drop of the SYN on the server, independent of the XDP program under test.
        let rules = "table inet probe_test {\n chain input {\n  type filter hook input priority 0;\n  tcp dport 8000 drop\n }\n}\n";
        let mut nft = topo.server.ns.command("nft");
        let out = nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
        let mut child = out.spawn().unwrap();
        io::Write::write_all(&mut child.stdin.take().unwrap(), rules.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
        for ip in Ip::BOTH {
            let addr = topo.server.sock(ip, 8000);
            let err = tcp_connect(&topo.inside.ns, addr, limits::DROPPED_CONNECT).unwrap_err();
            assert!(matches!(err, ConnectError::TimedOut(_)), "{ip:?}: {err}");
        }
    }
}
