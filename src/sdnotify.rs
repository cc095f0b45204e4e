//! The systemd notification protocol (`sd_notify`), spoken by `mailsync run` so that a unit
//! with `Type=notify` knows when the service is ready, that it is alive (`WatchdogSec=`), and
//! that it is stopping.
//!
//! A datagram with newline-separated `KEY=VALUE` lines goes to the socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Without that variable, or
//! on a system without Unix sockets, every call does nothing: the same binary runs under
//! systemd, in a container and in a terminal. The environment is read through
//! [`Environment`], so tests need no global state.

use std::time::Duration;

use crate::environment::Environment;

/// The variable naming the notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog interval systemd expects a `WATCHDOG=1` within, in microseconds.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The process the watchdog interval is meant for (absent: this one).
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Where notifications go; `None` inside when the service does not run under systemd.
#[derive(Debug, Default)]
pub struct Notifier {
    /// The socket address from `NOTIFY_SOCKET`.
    target: Option<String>,
}

impl Notifier {
    /// The notifier the environment asks for.
    pub fn from_env(env: &dyn Environment) -> Self {
        Notifier {
            target: env.var(NOTIFY_SOCKET).filter(|s| !s.is_empty()),
        }
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1`: startup is complete.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STATUS=…`: one line shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// `WATCHDOG=1`: the service is alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `STOPPING=1`: a graceful stop has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping: letting running steps finish");
    }

    /// Sends one datagram; a failure is logged, never fatal (the service works without it).
    pub fn send(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        if let Err(e) = send_to(target, message) {
            tracing::warn!(socket = %target, error = %e, "sd_notify failed");
        }
    }
}

/// How often to send `WATCHDOG=1`: half the interval systemd asked for, when it asked this
/// process (`WATCHDOG_PID` unset or ours).
pub fn watchdog_interval(env: &dyn Environment) -> Option<Duration> {
    if let Some(pid) = env.var(WATCHDOG_PID) {
        if pid.trim() != std::process::id().to_string() {
            return None;
        }
    }
    let usec: u64 = env.var(WATCHDOG_USEC)?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(unix)]
fn send_to(target: &str, message: &str) -> std::io::Result<()> {
    use std::os::unix::net::UnixDatagram;
    let socket = UnixDatagram::unbound()?;
    if let Some(name) = target.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(message.as_bytes(), &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "abstract socket names exist on Linux only",
            ));
        }
    }
    socket.send_to(message.as_bytes(), target)?;
    Ok(())
}

#[cfg(not(unix))]
fn send_to(_target: &str, _message: &str) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::net::UnixDatagram;

    use super::*;

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages_reach_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let env: HashMap<&str, &str> = [(NOTIFY_SOCKET, path.to_str().unwrap())].into();
        let n = Notifier::from_env(&env);
        assert!(n.enabled());
        n.ready("3 mailboxes running");
        n.watchdog();
        n.stopping();
        assert_eq!(recv(&socket), "READY=1\nSTATUS=3 mailboxes running");
        assert_eq!(recv(&socket), "WATCHDOG=1");
        assert!(recv(&socket).starts_with("STOPPING=1\n"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_socket_names_work() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("mailsync-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        let target = format!("@{name}");
        let env: HashMap<&str, &str> = [(NOTIFY_SOCKET, target.as_str())].into();
        Notifier::from_env(&env).watchdog();
        assert_eq!(recv(&socket), "WATCHDOG=1");
    }

    #[test]
    fn without_the_socket_nothing_is_sent_and_nothing_fails() {
        let env: HashMap<&str, &str> = HashMap::new();
        let n = Notifier::from_env(&env);
        assert!(!n.enabled());
        n.ready("x");
    }

    #[test]
    fn the_watchdog_interval_is_half_of_what_systemd_asks_for_this_process() {
        let own = std::process::id().to_string();
        for (usec, pid, expected) in [
            (Some("20000000"), None, Some(Duration::from_secs(10))),
            (
                Some("20000000"),
                Some(own.as_str()),
                Some(Duration::from_secs(10)),
            ),
            (Some("20000000"), Some("1"), None),
            (Some("0"), None, None),
            (Some("soon"), None, None),
            (None, None, None),
        ] {
            let mut env: HashMap<&str, &str> = HashMap::new();
            if let Some(u) = usec {
                env.insert(WATCHDOG_USEC, u);
            }
            if let Some(p) = pid {
                env.insert(WATCHDOG_PID, p);
            }
            assert_eq!(watchdog_interval(&env), expected, "{usec:?} {pid:?}");
        }
    }
}
