//! Tiny real servers inside a namespace: an HTTP/1.1 server answering `200 OK` on every path and a
//! UDP echo server. Each listens on `[::]:port` (dual stack: IPv4 and IPv6), serves from plain std
//! threads with bounded reads, counts what it served, and stops when dropped.

use crate::netns::Netns;
use std::collections::BTreeMap;
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the serving loop waits for activity before checking whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(50);
/// A client that sends nothing for this long is dropped.
const CLIENT_IO: Duration = Duration::from_secs(2);
/// Largest request head read; a longer one closes the connection unanswered.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 64;
/// Largest UDP datagram echoed.
const MAX_DATAGRAM: usize = 2048;

/// Body the HTTP server sends, so a test can tell it apart from any other server.
pub fn body_for(port: u16) -> String {
    format!("serve-guard test server on port {port}\n")
}

/// Requests served, per port.
type Hits = Arc<BTreeMap<u16, AtomicU64>>;

struct Loop {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    hits: Hits,
}

impl Loop {
    fn count(&self, port: u16) -> u64 {
        self.hits
            .get(&port)
            .map_or(0, |h| h.load(Ordering::Relaxed))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// HTTP/1.1 server on some ports of a namespace. Every request gets `200 OK` with
/// [`body_for`]`(port)` and `Connection: close`.
pub struct HttpServer {
    inner: Loop,
}

impl HttpServer {
    pub fn start(ns: &Netns, ports: &[u16]) -> io::Result<Self> {
        let listeners = ns.run(|| {
            ports
                .iter()
                .map(|&p| TcpListener::bind(dual_stack(p)))
                .collect::<io::Result<Vec<_>>>()
        })??;
        for l in &listeners {
            l.set_nonblocking(true)?;
        }
        let hits: Hits = Arc::new(ports.iter().map(|&p| (p, AtomicU64::new(0))).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, hits) = (stop.clone(), hits.clone());
            std::thread::Builder::new()
                .name("http-server".into())
                .spawn(move || {
                    let fds: Vec<RawFd> = listeners.iter().map(|l| l.as_raw_fd()).collect();
                    while !stop.load(Ordering::Relaxed) {
                        for i in ready(&fds) {
                            let listener = &listeners[i];
                            let port = listener.local_addr().map_or(0, |a| a.port());
                            while let Ok((conn, _)) = listener.accept() {
                                if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                                    continue; // dropped: closes the connection
                                }
                                active.fetch_add(1, Ordering::Relaxed);
                                let (conn_active, hits) = (active.clone(), hits.clone());
                                let spawned = std::thread::Builder::new()
                                    .name("http-conn".into())
                                    .spawn(move || {
                                        let _ = serve_http(conn, port, hits.get(&port));
                                        conn_active.fetch_sub(1, Ordering::Relaxed);
                                    });
                                if spawned.is_err() {
                                    active.fetch_sub(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                })?
        };
        Ok(HttpServer {
            inner: Loop {
                stop,
                thread: Some(thread),
                hits,
            },
        })
    }

    /// Complete request heads received (and answered) on `port` so far.
    pub fn requests(&self, port: u16) -> u64 {
        self.inner.count(port)
    }
}

/// Reads one request head, counts it in `hit`, answers it. Counted before answering, so a
/// client that has its response sees the count include it.
fn serve_http(mut conn: TcpStream, port: u16, hit: Option<&AtomicU64>) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(CLIENT_IO))?;
    conn.set_write_timeout(Some(CLIENT_IO))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    if let Some(h) = hit {
        h.fetch_add(1, Ordering::Relaxed);
    }
    let body = body_for(port);
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// UDP echo server on some ports of a namespace: every datagram is sent back to its sender.
pub struct UdpEchoServer {
    inner: Loop,
}

impl UdpEchoServer {
    pub fn start(ns: &Netns, ports: &[u16]) -> io::Result<Self> {
        let sockets = ns.run(|| {
            ports
                .iter()
                .map(|&p| UdpSocket::bind(dual_stack(p)))
                .collect::<io::Result<Vec<_>>>()
        })??;
        for s in &sockets {
            s.set_nonblocking(true)?;
        }
        let hits: Hits = Arc::new(ports.iter().map(|&p| (p, AtomicU64::new(0))).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, hits) = (stop.clone(), hits.clone());
            std::thread::Builder::new()
                .name("udp-echo".into())
                .spawn(move || {
                    let fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
                    let mut buf = [0u8; MAX_DATAGRAM];
                    while !stop.load(Ordering::Relaxed) {
                        for i in ready(&fds) {
                            let sock = &sockets[i];
                            let port = sock.local_addr().map_or(0, |a| a.port());
                            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                                // Counted before the echo, so a client holding its echo
                                // sees the count include it.
                                if let Some(h) = hits.get(&port) {
                                    h.fetch_add(1, Ordering::Relaxed);
                                }
                                let _ = sock.send_to(&buf[..n], from);
                            }
                        }
                    }
                })?
        };
        Ok(UdpEchoServer {
            inner: Loop {
                stop,
                thread: Some(thread),
                hits,
            },
        })
    }

    /// Datagrams received (and echoed) on `port` so far.
    pub fn datagrams(&self, port: u16) -> u64 {
        self.inner.count(port)
    }
}

/// `[::]:port`: with the namespace's default `bindv6only = 0` this also accepts IPv4.
fn dual_stack(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
}

/// Indexes of the fds that are readable, waiting at most [`STOP_CHECK`].
fn ready(fds: &[RawFd]) -> Vec<usize> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout_ms = STOP_CHECK.as_millis() as libc::c_int;
    // SAFETY: pfds is a valid array of pfds.len() pollfd structs for the duration of the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if n <= 0 {
        return Vec::new();
    }
    pfds.iter()
        .enumerate()
        .filter(|(_, p)| p.revents != 0)
        .map(|(i, _)| i)
        .collect()
}
