//! A flood generator of our own: raw Ethernet frames from an AF_PACKET
//! socket inside a namespace, sent with sendmmsg in batches, each frame
//! with a source address of its own (spoofed) drawn from a prefix, and
//! complete IPv4 and TCP/UDP checksums so that whatever gets through is
//! processed by the receiver's stack like a real packet. Used by the
//! guard's end-to-end test and by the benchmark.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::libc;

use super::packet::{csum_add, csum_fold, pseudo_sum, TCP, UDP};

/// One kind of packet in a flood.
#[derive(Clone, Debug)]
pub struct FloodClass {
    /// Sources are `base + (n mod span)`, n counting up per packet.
    pub src_base: Ipv4Addr,
    pub src_span: u32,
    pub dst: Ipv4Addr,
    pub dport: u16,
    /// TCP SYN (true) or UDP (false).
    pub syn: bool,
    pub payload: Vec<u8>,
}

/// Where the frames go.
#[derive(Clone, Debug)]
pub struct FloodLink {
    pub ns: String,
    pub ifname: String,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// A running flood; stopped (and its threads joined) by [`Flood::stop`] or
/// on drop.
pub struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Frames handed to the kernel, per class.
    pub sent: Arc<Vec<AtomicU64>>,
    started: Instant,
}

const BATCH: usize = 64;

fn frame(link: &FloodLink, c: &FloodClass, src: Ipv4Addr, sport: u16, id: u16) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend(sport.to_be_bytes());
    l4.extend(c.dport.to_be_bytes());
    if c.syn {
        l4.extend(u32::from(src).wrapping_mul(2654435761).to_be_bytes()); // seq
        l4.extend([0, 0, 0, 0]);
        l4.push(5 << 4);
        l4.push(0x02);
        l4.extend(64240u16.to_be_bytes());
        l4.extend([0, 0, 0, 0]);
    } else {
        l4.extend(((8 + c.payload.len()) as u16).to_be_bytes());
        l4.extend([0, 0]);
    }
    l4.extend(&c.payload);
    let proto = if c.syn { TCP } else { UDP };
    let at = if c.syn { 16 } else { 6 };
    let mut s = csum_fold(csum_add(pseudo_sum(src, c.dst, proto, l4.len()), &l4));
    if !c.syn && s == 0 {
        s = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&s.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + l4.len()) as u16).to_be_bytes());
    ip.extend(id.to_be_bytes());
    ip.extend([0x40, 0, 64, proto, 0, 0]);
    ip.extend(src.octets());
    ip.extend(c.dst.octets());
    let ck = csum_fold(csum_add(0, &ip));
    ip[10..12].copy_from_slice(&ck.to_be_bytes());
    let mut f = Vec::with_capacity(14 + ip.len() + l4.len());
    f.extend(link.dst_mac);
    f.extend(link.src_mac);
    f.extend(0x0800u16.to_be_bytes());
    f.extend(ip);
    f.extend(l4);
    f
}

fn packet_socket(link: &FloodLink) -> OwnedFd {
    let _g = datapath::net::netns::NetnsGuard::enter(Some(&link.ns))
        .unwrap_or_else(|e| panic!("entering {}: {e:#}", link.ns));
    let ifindex = datapath::net::netif::index_of(&link.ifname).expect("flood interface");
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: fd is fresh and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    // Protocol 0: send only, nothing is queued to this socket.
    // SAFETY: sll is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "binding the flood socket: {}", std::io::Error::last_os_error());
    fd
}

impl Flood {
    /// Starts `threads` senders cycling through `classes` packet by packet.
    /// `rate` caps the total packets per second (None: as fast as the
    /// machine allows).
    pub fn start(link: &FloodLink, classes: Vec<FloodClass>, threads: usize, rate: Option<u64>) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let sent: Arc<Vec<AtomicU64>> = Arc::new(classes.iter().map(|_| AtomicU64::new(0)).collect());
        let mut hs = Vec::new();
        for t in 0..threads {
            let (link, classes, stop, sent) = (link.clone(), classes.clone(), stop.clone(), sent.clone());
            let per_thread = rate.map(|r| (r / threads as u64).max(1));
            hs.push(std::thread::spawn(move || {
                let fd = packet_socket(&link);
                let mut n: u64 = t as u64 * 0x9e37;
                let started = Instant::now();
                let mut done: u64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(r) = per_thread {
                        // Paced: never ahead of the rate.
                        let due = (started.elapsed().as_secs_f64() * r as f64) as u64;
                        if done >= due {
                            std::thread::sleep(Duration::from_micros(200));
                            continue;
                        }
                    }
                    let mut frames = Vec::with_capacity(BATCH);
                    let mut which = Vec::with_capacity(BATCH);
                    for _ in 0..BATCH {
                        let ci = (n % classes.len() as u64) as usize;
                        let c = &classes[ci];
                        let k = (n / classes.len() as u64) as u32;
                        let src = Ipv4Addr::from(u32::from(c.src_base).wrapping_add(k % c.src_span.max(1)));
                        frames.push(frame(&link, c, src, 1024 + (k % 60000) as u16, k as u16));
                        which.push(ci);
                        n += 1;
                    }
                    let mut iov: Vec<libc::iovec> = frames
                        .iter()
                        .map(|f| libc::iovec { iov_base: f.as_ptr() as *mut _, iov_len: f.len() })
                        .collect();
                    // SAFETY: mmsghdr is plain data; zeroed is a valid value.
                    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
                    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
                        m.msg_hdr.msg_iov = v;
                        m.msg_hdr.msg_iovlen = 1;
                    }
                    // SAFETY: every message points at a live iovec and frame.
                    let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
                    if rc > 0 {
                        for &ci in &which[..rc as usize] {
                            sent[ci].fetch_add(1, Ordering::Relaxed);
                        }
                        done += rc as u64;
                    } else {
                        // ENOBUFS and the like: the link is saturated.
                        std::thread::yield_now();
                    }
                }
            }));
        }
        Flood { stop, threads: hs, sent, started: Instant::now() }
    }

    /// Frames sent so far, per class.
    pub fn sent(&self) -> Vec<u64> {
        self.sent.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// Stops the senders; returns frames sent per class and the duration.
    pub fn stop(mut self) -> (Vec<u64>, Duration) {
        self.halt();
        (self.sent(), self.started.elapsed())
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.halt();
    }
}
