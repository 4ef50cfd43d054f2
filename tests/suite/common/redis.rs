//! A real `redis-server` per test: a free port, a temporary directory, killed when the guard
//! drops. A machine without redis-server fails the test, saying how to install it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers may fail loudly

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A running redis-server (or one stopped on purpose, to be started again on the same port).
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
}

fn binary() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = PathBuf::from(dir).join("redis-server");
        if p.is_file() {
            return p;
        }
    }
    let p = PathBuf::from("/usr/bin/redis-server");
    assert!(
        p.is_file(),
        "redis-server is not installed: the Redis ledger tests need a real Redis \
         (apt-get install redis-server)"
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl RedisServer {
    /// No persistence: a restart starts empty.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Append-only file, fsync on every write: a restart keeps every budget (as production
    /// Redis should be run).
    pub fn start_persistent() -> Self {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "llm-meter-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            persistent,
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let mut cmd = Command::new(binary());
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", if self.persistent { "yes" } else { "no" }])
            .args(["--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("redis-server starts (apt-get install redis-server)"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.try_command(&["PING"]).is_some_and(|r| r == "PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (a crash: nothing is saved on the way out).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    /// Sends one command; the reply as text (integers and strings alike; arrays joined by
    /// newlines; `nil` for a null).
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|| panic!("redis on port {} did not answer {args:?}", self.port))
    }

    fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        read_reply(&mut r)
    }

    /// An integer key (`GET`), 0 when absent.
    pub fn int(&self, key: &str) -> i64 {
        let v = self.command(&["GET", key]);
        if v == "nil" {
            0
        } else {
            v.parse().unwrap()
        }
    }
}

fn read_reply(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1.min(line.len()));
    match kind {
        "+" | ":" => Some(rest.to_owned()),
        "-" => Some(format!("ERR {rest}")),
        "$" => {
            let n: i64 = rest.parse().ok()?;
            if n < 0 {
                return Some("nil".into());
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf).ok()?;
            buf.truncate(n as usize);
            Some(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let n: i64 = rest.parse().ok()?;
            let mut out = Vec::new();
            for _ in 0..n.max(0) {
                out.push(read_reply(r)?);
            }
            Some(out.join("\n"))
        }
        _ => None,
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
