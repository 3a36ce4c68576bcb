//! Dialling a VIP a bounded number of times and recording where each connection went: the
//! check behind `switchyard dataplane probe`, the demo and the integration tests.
//!
//! Each attempt records the outcome (errno name on failure), what `getpeername` says, the
//! first line the server sent (when asked: test backends announce who they are), and what the
//! dataplane recorded in the socket's storage (when a handle is given). Sockets close with
//! SO_LINGER 0 (reset), so thousands of attempts leave no TIME_WAIT behind.
use std::{
    collections::BTreeMap,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::Dataplane;

/// What to dial and how.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The VIP (an IPv4-mapped IPv6 address dials from an AF_INET6 socket).
    pub target: SocketAddr,
    pub count: u32,
    pub connect_timeout: Duration,
    /// Read the first line the server sends (up to 128 bytes) and tally by it.
    pub read_banner: bool,
}

/// Tallies over all attempts. Keys are rendered addresses, banners and errno names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub target: String,
    pub attempts: u32,
    pub connected: u32,
    /// Failed connects by errno name (`ECONNREFUSED`, `ETIMEDOUT`, ...).
    pub errors: BTreeMap<String, u32>,
    /// What `getpeername` returned on connected sockets.
    pub peers: BTreeMap<String, u32>,
    /// First line sent by the server (banner mode).
    pub banners: BTreeMap<String, u32>,
    /// Backend recorded in the socket's storage (with a dataplane handle).
    pub steered_to: BTreeMap<String, u32>,
    /// Connections the dataplane counted as open (with a dataplane handle).
    pub counted: u32,
}

/// Dials `config.count` times, one connection at a time, closing each before the next.
pub fn run(config: &ProbeConfig, dataplane: Option<&Dataplane>) -> ProbeReport {
    let mut report = ProbeReport::new(config);
    for _ in 0..config.count {
        if let Some(socket) = attempt(config, dataplane, &mut report) {
            drop(socket);
        }
    }
    report
}

/// Dials `config.count` times keeping every connection open, calls `while_held` with the
/// report (connections still open), then closes them all.
pub fn run_held(
    config: &ProbeConfig,
    dataplane: Option<&Dataplane>,
    while_held: impl FnOnce(&ProbeReport),
) -> ProbeReport {
    let mut report = ProbeReport::new(config);
    let mut open = Vec::with_capacity(config.count as usize);
    for _ in 0..config.count {
        if let Some(socket) = attempt(config, dataplane, &mut report) {
            open.push(socket);
        }
    }
    while_held(&report);
    drop(open);
    report
}

impl ProbeReport {
    fn new(config: &ProbeConfig) -> Self {
        Self {
            target: config.target.to_string(),
            ..Self::default()
        }
    }
}

fn attempt(
    config: &ProbeConfig,
    dataplane: Option<&Dataplane>,
    report: &mut ProbeReport,
) -> Option<Socket> {
    report.attempts += 1;
    let socket = match connect(config) {
        Ok(socket) => socket,
        Err(err) => {
            *report.errors.entry(errno_name(&err)).or_default() += 1;
            return None;
        }
    };
    report.connected += 1;
    let peer = socket
        .peer_addr()
        .ok()
        .and_then(|addr| addr.as_socket())
        .map_or_else(|| "unknown".to_owned(), |addr| addr.to_string());
    *report.peers.entry(peer).or_default() += 1;
    if let Some(dataplane) = dataplane {
        match dataplane.socket_steering(&socket) {
            Ok(Some(steering)) => {
                *report
                    .steered_to
                    .entry(steering.backend.to_string())
                    .or_default() += 1;
                report.counted += u32::from(steering.counted);
            }
            Ok(None) => *report.steered_to.entry("not steered".into()).or_default() += 1,
            Err(err) => tracing::debug!(error = %err, "socket storage lookup failed"),
        }
    }
    if config.read_banner {
        let banner = read_line(&socket).unwrap_or_else(|err| format!("<{}>", errno_name(&err)));
        *report.banners.entry(banner).or_default() += 1;
    }
    Some(socket)
}

fn connect(config: &ProbeConfig) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(config.target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    // Close with a reset: no TIME_WAIT, so bounded probes never exhaust local ports.
    socket.set_linger(Some(Duration::ZERO))?;
    socket.connect_timeout(&SockAddr::from(config.target), config.connect_timeout)?;
    Ok(socket)
}

fn read_line(socket: &Socket) -> io::Result<String> {
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 128];
    let mut len = 0;
    let mut reader = socket;
    while len < buf.len() {
        let n = reader.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].contains(&b'\n') {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf[..len]);
    Ok(text.lines().next().unwrap_or("").to_owned())
}

/// The probe's counterpart: a TCP server that writes `<name>\n` to every client and closes, so
/// the prober learns which backend it reached. Used by the demo, the benchmark (empty name:
/// accept and close) and the tests. Stops when dropped.
#[derive(Debug)]
pub struct BannerServer {
    name: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BannerServer {
    /// Listens on `bind` (port 0 picks a free port) with a deep backlog, so a tight connect
    /// loop never waits on a full accept queue.
    pub fn start(name: &str, bind: SocketAddr) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(bind), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&SockAddr::from(bind))?;
        socket.listen(4096)?;
        let listener: TcpListener = socket.into();
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let banner = if name.is_empty() {
            Vec::new()
        } else {
            format!("{name}\n").into_bytes()
        };
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("banner-{addr}"))
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Ok(mut stream) = stream
                            && !banner.is_empty()
                        {
                            // The client may already have reset the connection: nothing to do.
                            let _ = stream.write_all(&banner);
                        }
                    }
                })?
        };
        Ok(Self {
            name: name.to_owned(),
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for BannerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Short name of an I/O error: the errno symbol when known.
pub fn errno_name(err: &io::Error) -> String {
    let name = match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL",
        Some(libc::EAGAIN) => "EAGAIN",
        Some(libc::EINVAL) => "EINVAL",
        Some(code) => return format!("errno {code}"),
        None if err.kind() == io::ErrorKind::TimedOut => "ETIMEDOUT",
        None if err.kind() == io::ErrorKind::WouldBlock => "EAGAIN",
        None => return err.to_string(),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_tallies_peers_banners_and_errors_without_bpf() {
        let server = BannerServer::start("backend-a", "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.addr();
        let config = |count, read_banner| ProbeConfig {
            target: addr,
            count,
            connect_timeout: Duration::from_secs(2),
            read_banner,
        };
        let report = run(&config(3, true), None);
        assert_eq!(report.connected, 3);
        assert_eq!(report.banners.get("backend-a"), Some(&3));
        assert_eq!(report.peers.get(&addr.to_string()), Some(&3));

        let held = run_held(&config(2, false), None, |held| {
            assert_eq!(held.connected, 2)
        });
        assert_eq!(held.connected, 2);

        drop(server);
        // Nobody listens on the port any more: refused.
        let refused = run(&config(2, false), None);
        assert_eq!(refused.errors.get("ECONNREFUSED"), Some(&2));
    }
}
