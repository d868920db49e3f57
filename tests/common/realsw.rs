//! Real software in the tests: programs nobody here wrote, run inside the
//! test's network namespaces.
//!
//! `scripts/tools` installs them (pinned) under `$DATAPATH_TOOLS`
//! (default `target/tools`); `scripts/test` runs it first. What is here:
//!
//! - [`NsCmd`]: any program inside a named namespace (`nsenter --net=`),
//!   optionally placed in a cgroup before it runs, either run to completion
//!   with a timeout ([`NsCmd::run`]) or kept running as a [`Proc`].
//! - [`Proc`]: a running program whose stdout and stderr are collected line
//!   by line; readiness checks ([`Proc::wait_line`], [`Proc::wait_event`]
//!   for JSON lines, [`Proc::wait_listening`]) fail with everything it
//!   printed. Dropping it kills its whole process group and reaps it, also
//!   when the test panics; if the test process itself dies, the kernel
//!   kills it (PR_SET_PDEATHSIG).
//! - Servers: [`McServer`] (Minecraft Java server on the npm package
//!   minecraft-protocol: status, login, several MB of chunk data on join),
//!   [`BedrockResponder`] (RakNet unconnected ping → pong), [`Dnsmasq`]
//!   (fixed records on a given port), [`Mitmdump`] (mitmproxy in
//!   transparent mode, which asks `SO_ORIGINAL_DST` itself), [`HttpServer`]
//!   (Python's `http.server`).
//! - Clients, each run to completion: [`mc_client`] (login, join data,
//!   round trips), [`mcstatus`] (PyPI mcstatus, Java and Bedrock), [`dig`],
//!   [`curl`].
//!
//! A [`Proc`] must be declared after the [`super::topo::Topo`] it runs in,
//! so that it is dropped (killed) first: a process still in the proxy's
//! cgroup keeps the cgroup from being removed. Spawn it on the thread that
//! owns it (the parent-death signal follows the spawning thread).

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::libc;
use serde::Deserialize;
use serde_json::Value;

use super::topo::{within, Ctl};
use super::unique;

/// How long a server may take to start (node loading minecraft-data,
/// mitmproxy generating its CA).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client command may take when everything works.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Where the tools are

/// The installed tools; see `scripts/tools`.
pub struct Tools {
    /// `$DATAPATH_TOOLS`, default `target/tools` of this repository.
    pub dir: PathBuf,
    /// The repository's `tests/tools` (the scripts).
    pub scripts: PathBuf,
}

impl Tools {
    /// The tools, checked to be installed. A missing one is a failure
    /// that says how to install it, never a skip.
    #[track_caller]
    pub fn get() -> Tools {
        let dir = std::env::var_os("DATAPATH_TOOLS")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools"));
        let t = Tools { dir, scripts: Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools") };
        let mut missing = Vec::new();
        for p in [t.node_modules().join("minecraft-protocol/package.json"), t.python(), t.venv_bin("mitmdump")] {
            if !p.exists() {
                missing.push(p.display().to_string());
            }
        }
        for cmd in ["node", "nsenter", "dnsmasq", "dig", "curl"] {
            if find_in_path(cmd).is_none() {
                missing.push(cmd.to_string());
            }
        }
        assert!(
            missing.is_empty(),
            "real-software tools missing: {}; install them with `sudo ./scripts/tools` (scripts/test does)",
            missing.join(", ")
        );
        t
    }

    pub fn node_modules(&self) -> PathBuf {
        self.dir.join("mc/node_modules")
    }

    /// The venv's Python (mcstatus, mitmproxy).
    pub fn python(&self) -> PathBuf {
        self.venv_bin("python")
    }

    pub fn venv_bin(&self, name: &str) -> PathBuf {
        self.dir.join("venv/bin").join(name)
    }

    /// `node tests/tools/mc/<script>` with minecraft-protocol on its path.
    pub fn node(&self, ns: &str, script: &str) -> NsCmd {
        let mut c = NsCmd::new(ns, find_in_path("node").expect("node"));
        c.arg(self.scripts.join("mc").join(script)).env("NODE_PATH", self.node_modules());
        c
    }
}

fn find_in_path(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// Commands in a namespace

/// A command to run inside network namespace `/run/netns/<ns>`.
pub struct NsCmd {
    ns: String,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cgroup: Option<PathBuf>,
}

impl NsCmd {
    pub fn new(ns: &str, program: impl AsRef<OsStr>) -> Self {
        Self { ns: ns.to_string(), program: program.as_ref().into(), args: Vec::new(), env: Vec::new(), cgroup: None }
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(a.as_ref().into());
        self
    }

    pub fn args<S: AsRef<OsStr>>(&mut self, a: impl IntoIterator<Item = S>) -> &mut Self {
        self.args.extend(a.into_iter().map(|s| s.as_ref().into()));
        self
    }

    pub fn env(&mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> &mut Self {
        self.env.push((k.as_ref().into(), v.as_ref().into()));
        self
    }

    /// Moves the process into this cgroup (v2 directory) before it runs,
    /// so every socket it creates belongs to that cgroup.
    pub fn in_cgroup(&mut self, cgroup: &Path) -> &mut Self {
        self.cgroup = Some(cgroup.to_path_buf());
        self
    }

    /// The command line, for messages.
    pub fn describe(&self) -> String {
        let mut s = format!("[netns {}] {}", self.ns, Path::new(&self.program).display());
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn command(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns)).arg("--").arg(&self.program).args(&self.args);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c.env("PYTHONUNBUFFERED", "1");
        c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // Its own process group, so that dropping the Proc kills whatever
        // it forked too.
        c.process_group(0);
        let procs = self
            .cgroup
            .as_ref()
            .map(|cg| CString::new(cg.join("cgroup.procs").as_os_str().as_bytes()).expect("cgroup path without NUL"));
        // SAFETY: between fork and exec the closure only makes raw system
        // calls on memory prepared before the fork (the CString).
        unsafe {
            c.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(procs) = &procs {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if !ok {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
        c
    }

    /// Starts the command; `name` names it in messages.
    #[track_caller]
    pub fn spawn(&self, name: &str) -> Proc {
        let child = self.command().spawn().unwrap_or_else(|e| panic!("{name}: starting {}: {e}", self.describe()));
        Proc::new(name, self.describe(), child)
    }

    /// Runs the command to completion; after `timeout` it is killed and
    /// the result says so.
    #[track_caller]
    pub fn run(&self, timeout: Duration) -> RunOut {
        let p = self.spawn(&self.describe());
        let status = p.wait_exit(timeout);
        // The pipes close when the process (group) is gone.
        let out = p.output.wait_closed(Duration::from_secs(2));
        RunOut {
            command: self.describe(),
            status,
            stdout: out.iter().filter(|l| !l.err).map(|l| format!("{}\n", l.text)).collect(),
            stderr: out.iter().filter(|l| l.err).map(|l| format!("{}\n", l.text)).collect(),
        }
    }
}

/// What a command run to completion did.
#[derive(Debug)]
pub struct RunOut {
    pub command: String,
    /// None: still running at the timeout, and killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl RunOut {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The last line of stdout that is a JSON object.
    pub fn json(&self) -> Option<Value> {
        self.stdout.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok().filter(Value::is_object))
    }

    /// Panics unless the command exited 0.
    #[track_caller]
    pub fn expect_success(&self, what: &str) -> &Self {
        assert!(self.success(), "{what}: {self}");
        self
    }
}

impl std::fmt::Display for RunOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "`{}` exited with {s}", self.command)?,
            None => write!(f, "`{}` did not finish in time and was killed", self.command)?,
        }
        write!(f, "\n--- stdout\n{}--- stderr\n{}---", self.stdout, self.stderr)
    }
}

// ---------------------------------------------------------------------------
// Running processes

#[derive(Clone, Debug)]
pub struct Line {
    /// From stderr (else stdout).
    pub err: bool,
    pub text: String,
}

/// Lines a process printed, in arrival order, with a condition variable
/// that wakes waiters on every new line and when both pipes close.
#[derive(Default)]
struct Output {
    state: Mutex<(Vec<Line>, u8)>,
    changed: Condvar,
}

impl Output {
    fn reader(self: &Arc<Self>, pipe: impl Read + Send + 'static, err: bool) {
        let me = self.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                me.state.lock().unwrap().0.push(Line { err, text });
                me.changed.notify_all();
            }
            me.state.lock().unwrap().1 += 1;
            me.changed.notify_all();
        });
    }

    fn lines(&self) -> Vec<Line> {
        self.state.lock().unwrap().0.clone()
    }

    /// Waits up to `timeout` for both pipes to close; returns the lines.
    fn wait_closed(&self, timeout: Duration) -> Vec<Line> {
        let g = self.state.lock().unwrap();
        let (g, _) = self.changed.wait_timeout_while(g, timeout, |s| s.1 < 2).unwrap();
        g.0.clone()
    }
}

/// A running program (see [`NsCmd::spawn`]); killed with its process
/// group and reaped on drop.
pub struct Proc {
    pub name: String,
    pub command: String,
    child: Mutex<Child>,
    pid: u32,
    /// The child has been reaped: its pid may belong to another process
    /// now, so its group is not signalled any more.
    reaped: AtomicBool,
    output: Arc<Output>,
}

impl Proc {
    fn new(name: &str, command: String, mut child: Child) -> Self {
        let output = Arc::new(Output::default());
        output.reader(child.stdout.take().unwrap(), false);
        output.reader(child.stderr.take().unwrap(), true);
        let pid = child.id();
        Proc { name: name.to_string(), command, child: Mutex::new(child), pid, reaped: AtomicBool::new(false), output }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its exit status, if it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        let s = self.child.lock().unwrap().try_wait().ok().flatten();
        if s.is_some() {
            self.reaped.store(true, Ordering::SeqCst);
        }
        s
    }

    /// Everything it printed so far, stderr lines marked.
    pub fn log(&self) -> String {
        self.output.lines().iter().map(|l| format!("{}{}\n", if l.err { "[stderr] " } else { "" }, l.text)).collect()
    }

    /// Every line so far (stdout and stderr).
    pub fn lines(&self) -> Vec<Line> {
        self.output.lines()
    }

    /// Every JSON object it printed on stdout so far.
    pub fn events(&self) -> Vec<Value> {
        self.output
            .lines()
            .iter()
            .filter(|l| !l.err)
            .filter_map(|l| serde_json::from_str::<Value>(&l.text).ok().filter(Value::is_object))
            .collect()
    }

    #[track_caller]
    fn fail(&self, why: &str) -> ! {
        let status = match self.exited() {
            Some(s) => format!("exited with {s}"),
            None => "still running".to_string(),
        };
        panic!("{}: {why}; `{}` {status}; it printed:\n{}", self.name, self.command, self.log())
    }

    /// Waits until `ready()` holds, re-checking on every line printed and
    /// every 20 ms; fails if the process exits first or `timeout` passes.
    #[track_caller]
    pub fn wait_until<T>(&self, what: &str, timeout: Duration, mut ready: impl FnMut(&Self) -> Option<T>) -> T {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = ready(self) {
                return v;
            }
            if self.exited().is_some() {
                // A last look: it may have printed what we wait for and
                // exited, with the reader not yet done.
                self.output.wait_closed(Duration::from_secs(1));
                if let Some(v) = ready(self) {
                    return v;
                }
                self.fail(&format!("exited while waiting for {what}"));
            }
            let now = Instant::now();
            if now >= end {
                self.fail(&format!("no {what} within {timeout:?}"));
            }
            let g = self.output.state.lock().unwrap();
            let n = g.0.len();
            let _ = self
                .output
                .changed
                .wait_timeout_while(g, (end - now).min(Duration::from_millis(20)), |s| s.0.len() == n)
                .unwrap();
        }
    }

    /// The first line (stdout or stderr) for which `pred` holds.
    #[track_caller]
    pub fn wait_line(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.wait_until(what, timeout, |p| p.output.lines().into_iter().find(|l| pred(&l.text)).map(|l| l.text))
    }

    /// The first JSON object on stdout for which `pred` holds.
    #[track_caller]
    pub fn wait_event(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_until(what, timeout, |p| p.events().into_iter().find(|v| pred(v)))
    }

    /// Waits until a socket of `proto` is listening on (TCP) or bound to
    /// (UDP) `port` in namespace `ns`.
    #[track_caller]
    pub fn wait_listening(&self, ns: &str, proto: Proto, port: u16, timeout: Duration) {
        self.wait_until(&format!("{proto:?} socket on port {port} in {ns}"), timeout, |_| {
            listening(ns, proto, port).then_some(())
        })
    }

    /// Waits for it to exit by itself; None if it is still running after
    /// `timeout` (it is then killed).
    fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if Instant::now() >= end {
                self.kill();
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        if !self.reaped.load(Ordering::SeqCst) {
            // SAFETY: plain kill(2) on the process group this Proc leads;
            // its leader is not reaped yet, so the group is still ours.
            unsafe { libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL) };
        }
        let _ = child.wait();
        self.reaped.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Whether a TCP socket listens on, or a UDP socket is bound to, `port`
/// in namespace `ns` (read from /proc/net/{tcp,tcp6,udp,udp6} there).
pub fn listening(ns: &str, proto: Proto, port: u16) -> bool {
    let files: [&str; 2] = match proto {
        Proto::Tcp => ["tcp", "tcp6"],
        Proto::Udp => ["udp", "udp6"],
    };
    within(ns, || {
        files.iter().any(|f| {
            let text = std::fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap_or_default();
            text.lines().skip(1).any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let local_port =
                    cols.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
                // TCP_LISTEN is 0A; a bound UDP socket is in state 07.
                local_port == Some(port) && (proto == Proto::Udp || cols.get(3) == Some(&"0A"))
            })
        })
    })
}

// ---------------------------------------------------------------------------
// Small things

/// A directory of the test's own under the temporary directory; removed
/// on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `datapathctl stats --json` as "program/reason" -> (packets, bytes).
#[track_caller]
pub fn stats_with_bytes(ctl: &Ctl) -> BTreeMap<String, (u64, u64)> {
    let v = ctl.json(&["stats"]);
    let rows = v.as_array().unwrap_or_else(|| panic!("`stats --json` is not an array: {v}"));
    rows.iter()
        .map(|r| {
            let name = format!("{}/{}", r["program"].as_str().unwrap_or("?"), r["reason"].as_str().unwrap_or("?"));
            let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("counter without {k}: {r}"));
            (name, (n("packets"), n("bytes")))
        })
        .collect()
}

/// A random token, for a page or a message of the day that only this test
/// run can have produced.
pub fn token(prefix: &str) -> String {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).expect("reading /dev/urandom");
    format!("{prefix}-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// "address" and "port" of a JSON event as a socket address.
#[track_caller]
pub fn event_peer(v: &Value) -> SocketAddr {
    let ip: IpAddr = v["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("event without a valid address: {v}"));
    let port =
        v["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or_else(|| panic!("event without a port: {v}"));
    SocketAddr::new(ip, port)
}

// ---------------------------------------------------------------------------
// Minecraft: server, client, Bedrock responder, mcstatus

/// Options of [`McServer::start`].
#[derive(Clone, Debug)]
pub struct McServerOpts {
    pub host: String,
    pub port: u16,
    pub motd: String,
    /// Chunk columns sent on join, about 197 KB of chunk data each.
    pub chunks: u32,
}

impl Default for McServerOpts {
    fn default() -> Self {
        Self { host: "0.0.0.0".into(), port: 25565, motd: "datapath test server".into(), chunks: 32 }
    }
}

/// The Minecraft Java server of `tests/tools/mc/server.js`
/// (minecraft-protocol, offline mode, Java 1.21.4) in a namespace.
pub struct McServer {
    pub proc: Proc,
    pub opts: McServerOpts,
}

impl McServer {
    /// Starts it and waits until it listens.
    #[track_caller]
    pub fn start(ns: &str, opts: McServerOpts) -> Self {
        let mut c = Tools::get().node(ns, "server.js");
        c.args(["--host", &opts.host, "--port", &opts.port.to_string(), "--motd", &opts.motd]);
        c.args(["--chunks", &opts.chunks.to_string()]);
        let proc = c.spawn("minecraft server");
        proc.wait_event("the listening event", START_TIMEOUT, |v| v["event"] == "listening");
        McServer { proc, opts }
    }

    /// The server's login event for `username`: where it saw the player.
    #[track_caller]
    pub fn wait_login(&self, username: &str, timeout: Duration) -> SocketAddr {
        let v = self.proc.wait_event(&format!("a login of {username}"), timeout, |v| {
            v["event"] == "login" && v["username"] == username
        });
        event_peer(&v)
    }

    /// The summary of the world the server sent `username`
    /// (chunks, bytes, sha256).
    #[track_caller]
    pub fn wait_world_sent(&self, username: &str, timeout: Duration) -> Value {
        self.proc.wait_event(&format!("the world sent to {username}"), timeout, |v| {
            v["event"] == "world_sent" && v["username"] == username
        })
    }

    /// Peers of the status pings answered so far.
    pub fn status_peers(&self) -> Vec<SocketAddr> {
        self.proc.events().iter().filter(|v| v["event"] == "status").map(event_peer).collect()
    }
}

#[derive(Debug, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
}

#[derive(Debug, Deserialize)]
pub struct Rtt {
    pub count: u32,
    /// Requests with no answer two seconds after the last was sent.
    pub lost: u32,
    pub min_ms: Option<f64>,
    pub median_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// What `tests/tools/mc/client.js` reported.
#[derive(Debug, Deserialize)]
pub struct McClientReport {
    pub ok: bool,
    pub error: Option<String>,
    /// The client's own address and port, and those of its peer.
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
    pub login_ms: Option<f64>,
    pub join_ms: Option<f64>,
    /// Bytes read from / written to the TCP socket (the wire's payload).
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub chunks: u32,
    /// Sum of the map_chunk data sizes, and their SHA-256.
    pub world_bytes: u64,
    pub world_sha256: Option<String>,
    /// Chunk count, batch size, byte total and SHA-256 all matched the
    /// server's summary.
    pub complete: bool,
    pub rtt: Option<Rtt>,
}

impl McClientReport {
    pub fn local(&self) -> Option<SocketAddr> {
        self.local.as_ref().map(|e| SocketAddr::new(e.address, e.port))
    }

    pub fn remote(&self) -> Option<SocketAddr> {
        self.remote.as_ref().map(|e| SocketAddr::new(e.address, e.port))
    }
}

/// Runs the Minecraft client in namespace `ns` against `server`: login as
/// `username`, join data, then `play` of ping round trips (none if zero).
/// Returns its report whether or not it succeeded; panics only if it
/// printed none.
#[track_caller]
pub fn mc_client(ns: &str, server: SocketAddr, username: &str, play: Duration) -> McClientReport {
    mc_client_in(ns, None, server, username, play)
}

/// [`mc_client`] as a process of `cgroup` (a host process where host
/// access is attached, say).
#[track_caller]
pub fn mc_client_in(
    ns: &str,
    cgroup: Option<&Path>,
    server: SocketAddr,
    username: &str,
    play: Duration,
) -> McClientReport {
    let mut c = Tools::get().node(ns, "client.js");
    if let Some(cg) = cgroup {
        c.in_cgroup(cg);
    }
    c.args(["--host", &server.ip().to_string(), "--port", &server.port().to_string(), "--username", username]);
    c.args(["--play", &format!("{}", play.as_secs_f64()), "--timeout", &CLIENT_TIMEOUT.as_secs().to_string()]);
    let out = c.run(CLIENT_TIMEOUT + play + Duration::from_secs(10));
    let v = out.json().unwrap_or_else(|| panic!("the minecraft client printed no report: {out}"));
    serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("the minecraft client's report {v} does not parse: {e}"))
}

/// The Bedrock status responder of `tests/tools/mc/bedrock.js` in a
/// namespace, bound to `listen` (UDP).
pub struct BedrockResponder {
    pub proc: Proc,
}

impl BedrockResponder {
    #[track_caller]
    pub fn start(ns: &str, listen: SocketAddr, motd: &str) -> Self {
        let mut c = Tools::get().node(ns, "bedrock.js");
        c.args(["--host", &listen.ip().to_string(), "--port", &listen.port().to_string(), "--motd", motd]);
        let proc = c.spawn("bedrock responder");
        proc.wait_event("the listening event", START_TIMEOUT, |v| v["event"] == "listening");
        BedrockResponder { proc }
    }

    /// Peers of the pings answered so far.
    pub fn ping_peers(&self) -> Vec<SocketAddr> {
        self.proc.events().iter().filter(|v| v["event"] == "ping").map(event_peer).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum McEdition {
    Java,
    Bedrock,
}

/// What mcstatus (through `tests/tools/mcstatus_probe.py`) reported.
#[derive(Debug, Deserialize)]
pub struct McStatus {
    pub ok: bool,
    pub error: Option<String>,
    pub version: Option<String>,
    pub protocol: Option<i64>,
    pub motd: Option<String>,
    pub online: Option<i64>,
    pub max: Option<i64>,
    pub latency_ms: Option<f64>,
}

/// Asks `server` for its status with PyPI mcstatus from namespace `ns`.
/// (mcstatus 14's Bedrock client opens an IPv4 socket whatever the
/// address: Bedrock over IPv6 needs another client.)
#[track_caller]
pub fn mcstatus(ns: &str, edition: McEdition, server: SocketAddr) -> McStatus {
    mcstatus_in(ns, None, edition, server)
}

/// [`mcstatus`] as a process of `cgroup`.
#[track_caller]
pub fn mcstatus_in(ns: &str, cgroup: Option<&Path>, edition: McEdition, server: SocketAddr) -> McStatus {
    let t = Tools::get();
    let mut c = NsCmd::new(ns, t.python());
    if let Some(cg) = cgroup {
        c.in_cgroup(cg);
    }
    let kind = if edition == McEdition::Java { "java" } else { "bedrock" };
    c.arg(t.scripts.join("mcstatus_probe.py")).args([kind, &server.ip().to_string(), &server.port().to_string(), "5"]);
    let out = c.run(CLIENT_TIMEOUT);
    let v = out.json().unwrap_or_else(|| panic!("mcstatus printed no JSON: {out}"));
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("mcstatus's answer {v} does not parse: {e}"))
}

// ---------------------------------------------------------------------------
// DNS: dnsmasq and dig

/// dnsmasq answering fixed records (A for an IPv4 address, AAAA for IPv6)
/// on `port` (UDP and TCP) of the given addresses only, logging every
/// query; nothing else (no upstream, no /etc/hosts, no configuration
/// file). Names it has no record for are refused.
pub struct Dnsmasq {
    pub proc: Proc,
}

/// One query dnsmasq logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsQuery {
    pub qtype: String,
    pub name: String,
    pub from: IpAddr,
}

impl Dnsmasq {
    #[track_caller]
    pub fn start(ns: &str, port: u16, listen: &[IpAddr], records: &[(&str, IpAddr)]) -> Self {
        let mut c = NsCmd::new(ns, find_in_path("dnsmasq").expect("dnsmasq"));
        c.args(["--keep-in-foreground", "--log-facility=-", "--log-queries", "--conf-file=/dev/null"]);
        c.args(["--no-resolv", "--no-hosts", "--pid-file=", "--user=root", "--bind-interfaces"]);
        c.arg(format!("--port={port}"));
        for a in listen {
            c.arg(format!("--listen-address={a}"));
        }
        for (name, a) in records {
            c.arg(format!("--host-record={name},{a}"));
        }
        let proc = c.spawn("dnsmasq");
        proc.wait_listening(ns, Proto::Udp, port, START_TIMEOUT);
        proc.wait_listening(ns, Proto::Tcp, port, START_TIMEOUT);
        Dnsmasq { proc }
    }

    /// The queries logged so far ("query[A] name from 10.99.0.2").
    pub fn queries(&self) -> Vec<DnsQuery> {
        self.proc
            .lines()
            .iter()
            .filter_map(|l| {
                let rest = &l.text[l.text.find("query[")? + 6..];
                let (qtype, rest) = rest.split_once("] ")?;
                let (name, from) = rest.split_once(" from ")?;
                Some(DnsQuery { qtype: qtype.into(), name: name.into(), from: from.trim().parse().ok()? })
            })
            .collect()
    }
}

/// What dig printed, parsed.
#[derive(Debug)]
pub struct Dig {
    /// "NOERROR", "NXDOMAIN", "REFUSED", … (empty if no answer came).
    pub status: String,
    /// Answer section: (name, type, data).
    pub answers: Vec<(String, String, String)>,
    /// The server that answered, as dig reports it ("192.0.2.53#53").
    pub server: String,
    pub out: RunOut,
}

impl Dig {
    /// The addresses of the A and AAAA records of the answer.
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.answers.iter().filter(|(_, t, _)| t == "A" || t == "AAAA").filter_map(|(_, _, d)| d.parse().ok()).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// `dig @server -p port name qtype` from namespace `ns`, over `transport`;
/// one try, three seconds.
#[track_caller]
pub fn dig(ns: &str, server: SocketAddr, name: &str, qtype: &str, transport: Transport) -> Dig {
    let mut c = NsCmd::new(ns, find_in_path("dig").expect("dig"));
    c.args([format!("@{}", server.ip()), "-p".into(), server.port().to_string(), name.into(), qtype.into()]);
    c.args(["+tries=1", "+time=3", if transport == Transport::Tcp { "+tcp" } else { "+notcp" }]);
    let out = c.run(CLIENT_TIMEOUT);
    let mut d = Dig { status: String::new(), answers: Vec::new(), server: String::new(), out };
    let mut in_answer = false;
    for l in d.out.stdout.lines() {
        if let Some(i) = l.find("status: ") {
            d.status = l[i + 8..].split(',').next().unwrap_or("").to_string();
        } else if let Some(s) = l.strip_prefix(";; SERVER: ") {
            d.server = s.split('(').next().unwrap_or("").trim().to_string();
        } else if l.starts_with(";; ANSWER SECTION:") {
            in_answer = true;
        } else if in_answer && (l.is_empty() || l.starts_with(';')) {
            in_answer = false;
        } else if in_answer {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() >= 5 {
                d.answers.push((f[0].into(), f[3].into(), f[4..].join(" ")));
            }
        }
    }
    d
}

// ---------------------------------------------------------------------------
// HTTP: mitmproxy, a web server, curl

/// mitmproxy's `mitmdump` in transparent mode listening on `listen`
/// (TCP), in the given cgroup: for every connection it accepts it asks the
/// kernel for the original destination (`getsockopt(SOL_IP,
/// SO_ORIGINAL_DST)`, or the IPv6 option for IPv6 peers) and connects
/// there. Its configuration (and CA) live in a directory of its own.
pub struct Mitmdump {
    pub proc: Proc,
    _conf: TempDir,
}

impl Mitmdump {
    #[track_caller]
    pub fn start(ns: &str, listen: SocketAddr, cgroup: &Path) -> Self {
        let t = Tools::get();
        let conf = TempDir::new("dpmitm");
        let mut c = NsCmd::new(ns, t.venv_bin("mitmdump"));
        let (host, port) = (listen.ip().to_string(), listen.port());
        c.args(["--mode", "transparent", "--listen-host", &host, "--listen-port", &port.to_string()]);
        c.args(["--set", &format!("confdir={}", conf.path.display()), "--set", "termlog_verbosity=info"]);
        c.args(["--set", "flow_detail=1"]).env("HOME", &conf.path).in_cgroup(cgroup);
        let proc = c.spawn("mitmdump");
        proc.wait_listening(ns, Proto::Tcp, port, START_TIMEOUT);
        Mitmdump { proc, _conf: conf }
    }

    /// Destinations it connected to ("server connect A:P" in its log).
    pub fn server_connects(&self) -> Vec<SocketAddr> {
        self.proc
            .lines()
            .iter()
            .filter_map(|l| l.text.split("server connect ").nth(1)?.split_whitespace().next()?.parse().ok())
            .collect()
    }
}

/// Python's `http.server` serving the files in `root` on `listen` in a
/// namespace.
pub struct HttpServer {
    pub proc: Proc,
}

/// One request the web server logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub from: IpAddr,
    /// The request line, e.g. "GET / HTTP/1.1".
    pub request: String,
    pub status: u16,
}

impl HttpServer {
    #[track_caller]
    pub fn start(ns: &str, listen: SocketAddr, root: &Path) -> Self {
        let t = Tools::get();
        let mut c = NsCmd::new(ns, t.python());
        let port = listen.port();
        c.args(["-m", "http.server", &port.to_string(), "--bind", &listen.ip().to_string(), "--directory"]).arg(root);
        let proc = c.spawn("http.server");
        proc.wait_listening(ns, Proto::Tcp, port, START_TIMEOUT);
        HttpServer { proc }
    }

    /// Requests logged so far (`ADDR - - [date] "GET / HTTP/1.1" 200 -`).
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.proc
            .lines()
            .iter()
            .filter_map(|l| {
                let from = l.text.split_whitespace().next()?.parse().ok()?;
                let (_, rest) = l.text.split_once('"')?;
                let (request, rest) = rest.split_once('"')?;
                let status = rest.split_whitespace().next()?.parse().ok()?;
                Some(HttpRequest { from, request: request.into(), status })
            })
            .collect()
    }
}

/// What curl did.
#[derive(Debug)]
pub struct Curl {
    /// HTTP status (0 if no response came).
    pub code: u16,
    pub body: Vec<u8>,
    /// The peer curl was connected to, and its own address, as curl saw
    /// them.
    pub remote: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub out: RunOut,
}

/// `curl URL` from namespace `ns` (no proxy settings, `timeout` overall).
#[track_caller]
pub fn curl(ns: &str, url: &str, timeout: Duration) -> Curl {
    let dir = TempDir::new("dpcurl");
    let body_path = dir.path.join("body");
    let mut c = NsCmd::new(ns, find_in_path("curl").expect("curl"));
    c.args(["-sS", "-g", "--noproxy", "*", "--max-time", &timeout.as_secs().max(1).to_string(), "-o"]);
    c.arg(&body_path).args(["-w", "%{json}", url]);
    let out = c.run(timeout + Duration::from_secs(5));
    let v = out.json().unwrap_or(Value::Null);
    let addr = |ip: &str, port: &str| -> Option<SocketAddr> {
        Some(SocketAddr::new(v[ip].as_str()?.parse().ok()?, u16::try_from(v[port].as_u64()?).ok()?))
    };
    Curl {
        code: v["http_code"].as_u64().and_then(|c| u16::try_from(c).ok()).unwrap_or(0),
        body: std::fs::read(&body_path).unwrap_or_default(),
        remote: addr("remote_ip", "remote_port"),
        local: addr("local_ip", "local_port"),
        out,
    }
}
